"""Fit the built-in simulator's tuning (:class:`calosim.simulate.mc.MCTuning`) to Geant4 showers.

For each Geant4 reference file (one particle each, e.g. the e+ and gamma training sets of
``benchmarks/geant4_sets.py``) the ``mc`` engine simulates a *twin* sample with exactly the same
incident energies, directions and impact points, and the high-level observables of
:func:`calosim.metrics.observables.compute_observables` (the ones the AUC(high) classifier sees,
plus the full response (cells + overflow) / E) are compared by the Kolmogorov-Smirnov statistic
within bins of incident energy. The fit minimises the mean KS over observables, energy bins
and particles with Nelder-Mead; the twin samples use fixed random numbers, so the objective is
smooth in the parameters. The result is written into ``src/calosim/data/mc_tunings.json``
under the geometry's name (``--write``), with the data it was fitted on.

    python benchmarks/calibrate_mc.py data/geant4/calogan_e+_train_2000_s11.h5 \\
        data/geant4/calogan_gamma_train_2000_s11.h5 --write

Run it again after new Geant4 sets; report the before/after AUCs with
``benchmarks/mc_vs_geant4.py`` on the held-out sets.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import ks_2samp

from calosim.io import ShowerData, read_showers
from calosim.metrics.observables import compute_observables, highlevel_columns
from calosim.simulate.mc import MCEngine, MCTuning, tuning_for

TUNINGS = Path(__file__).resolve().parents[1] / "src" / "calosim" / "data" / "mc_tunings.json"
BLOCK = 1024
# fitted parameters: (name, transform to the optimiser's variable, inverse, initial step)
PARAMS = [
    ("c_electron", "lin", 0.3), ("c_pair", "lin", 0.3), ("alpha_scale", "log", 0.15),
    ("sigma_scale", "log", 0.3), ("radial_scale", "log", 0.1), ("tail_scale", "log", 0.15),
    ("core_scale", "log", 0.1), ("stochastic", "log", 0.15), ("response", "lin", 0.01),
    ("response_slope", "lin", 0.003), ("spot_mev", "log", 0.5), ("cluster_mm", "lin", 2.0),
    ("halo_fraction", "lin", 0.01), ("halo_mm", "log", 0.5), ("cluster_core", "lin", 0.1), ("tail_clumps", "lin", 0.03),
]


def twin(ref: ShowerData, tuning: MCTuning, seed: int) -> ShowerData:
    """The ``mc`` engine's showers for exactly ``ref``'s incident particles (fixed random numbers)."""
    eng = MCEngine(tuning)
    geo, n = ref.geometry, len(ref)
    pdg = int(ref.conditions["pdg"][0])
    e = ref.incident_energies[:, 0].astype(np.float64)
    th = ref.conditions.get("theta", np.zeros(n)).astype(np.float64)
    ph = ref.conditions.get("phi", np.zeros(n)).astype(np.float64)
    pos = ref.conditions.get("position", np.zeros((n, 2))).astype(np.float64)
    cells, over = [], []
    for k, lo in enumerate(range(0, n, BLOCK)):
        sl = slice(lo, lo + BLOCK)
        c, o = eng.simulate_block(geo, pdg, e[sl], th[sl], ph[sl], pos[sl], np.random.default_rng([seed, k]))
        cells.append(c)
        over.append(o)
    return ShowerData(np.concatenate(cells), ref.incident_energies, geo, dict(ref.conditions),
                      np.concatenate(over) if geo.overflow else None)


def features(d: ShowerData) -> dict[str, np.ndarray]:
    obs = compute_observables(d.showers, d.incident_energies, d.geometry, conditions=d.conditions)
    total = d.showers.sum(1, dtype=np.float64) + (0.0 if d.overflow is None else d.overflow.sum(1, dtype=np.float64))
    obs["response_full"] = total / d.incident_energies[:, 0]
    for k in [k for k in obs if k.startswith("occupancy_")]:  # the high-level columns name them sparsity_*
        obs["sparsity_" + k[len("occupancy_"):]] = 1.0 - obs[k]
    return obs


def energy_bins(e: np.ndarray, n_bins: int) -> np.ndarray:
    return np.quantile(e, np.linspace(0, 1, n_bins + 1))


def mean_ks(ref_f: dict[str, np.ndarray], gen_f: dict[str, np.ndarray], e: np.ndarray, edges: np.ndarray,
            columns: list[str], power: float = 1.0) -> tuple[float, dict[str, float]]:
    """Power mean (exponent ``power``) over ``columns`` of their KS averaged over energy bins; also the per-column KS.

    ``power`` > 1 weights the worst observables more: a classifier needs only one badly
    modelled observable to separate the samples, and a plain mean hides it among ~50 good ones.
    """
    per: dict[str, float] = {}
    idx = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, len(edges) - 2)
    for c in columns:
        vals = [ks_2samp(ref_f[c][idx == b], gen_f[c][idx == b]).statistic for b in range(len(edges) - 1)]
        per[c] = float(np.mean(vals))
    return float(np.mean(np.array(list(per.values())) ** power) ** (1.0 / power)), per


def classifier_auc(ref_f: dict[str, np.ndarray], gen_f: dict[str, np.ndarray], columns: list[str], seed: int) -> float:
    """Cross-validated AUC of a boosted-tree classifier, reference vs twin, on ``columns``.

    What ``calosim evaluate``'s high-level classifier measures, cheaply: 3 folds, fixed seed, so
    the objective is a deterministic function of the tuning (the twin's random numbers are fixed).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.r_[np.stack([ref_f[c] for c in columns], 1), np.stack([gen_f[c] for c in columns], 1)]
    y = np.r_[np.zeros(len(x) // 2), np.ones(len(x) // 2)]
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(3, shuffle=True, random_state=seed), method="predict_proba")
    return float(roc_auc_score(y, p[:, 1]))


def encode(t: MCTuning, base_stochastic: float) -> np.ndarray:
    out = []
    for name, kind, _ in PARAMS:
        v = getattr(t, name)
        if name == "stochastic" and v is None:
            v = base_stochastic
        if name == "spot_mev" and v is None:
            v = min(max(1000.0 * (t.stochastic or base_stochastic) ** 2, 5.0), 50.0)
        out.append(np.log(v) if kind == "log" else v)
    return np.array(out, float)


def decode(x: np.ndarray, base: MCTuning) -> MCTuning:
    kw = {name: float(np.exp(v) if kind == "log" else v) for (name, kind, _), v in zip(PARAMS, x)}
    return replace(base, **kw)


def main() -> None:
    global PARAMS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", nargs="+", help="Geant4 files, one particle each (same geometry)")
    ap.add_argument("--n", type=int, default=None, help="showers used per file (default: all)")
    ap.add_argument("--energy-bins", type=int, default=4)
    ap.add_argument("--maxfev", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--power", type=float, default=1.0,
                    help="objective: power mean of the per-observable KS (1: plain mean; 2-4 weight the worst more)")
    ap.add_argument("--start", nargs="*", default=[], metavar="NAME=VALUE",
                    help="starting values, e.g. c_electron=-1.3 (default: the stored tuning or the defaults)")
    ap.add_argument("--objective", choices=["ks", "classifier"], default="ks",
                    help="ks: power mean of per-observable KS in energy bins; classifier: cross-validated "
                         "boosted-tree AUC on the high-level observables (slower, closer to evaluate's AUC)")
    ap.add_argument("--params", nargs="*", default=None, metavar="NAME",
                    help=f"fit only these parameters (default: all of {', '.join(p for p, _, _ in PARAMS)})")
    ap.add_argument("--write", action="store_true", help=f"store the result in {TUNINGS.name}")
    ap.add_argument("--out", default="out/calibrate_mc.json", help="fit log (JSON)")
    args = ap.parse_args()
    if args.params:
        unknown = sorted(set(args.params) - {p for p, _, _ in PARAMS})
        if unknown:
            raise SystemExit(f"--params: unknown {', '.join(unknown)} (known: {', '.join(p for p, _, _ in PARAMS)})")
        PARAMS = [row for row in PARAMS if row[0] in args.params]

    refs = [read_showers(p, n=args.n) for p in args.reference]
    geo = refs[0].geometry
    if any(r.geometry.name != geo.name for r in refs):
        raise SystemExit("all reference files must share one geometry")
    start = tuning_for(geo)
    known = {f.name for f in fields(MCTuning)}
    for item in args.start:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise SystemExit(f"--start {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        start = replace(start, **{name: float(value)}, source="--start " + " ".join(args.start))
    base_a = geo.layers[0].material.stochastic
    ref_f = [features(r) for r in refs]
    e = [r.incident_energies[:, 0] for r in refs]
    edges = [energy_bins(x, args.energy_bins) for x in e]
    columns = list(highlevel_columns(*ref_f))
    # plus what the report's worst-observable list flags first: the presampler's fine-strip shape
    columns += [c for c in ref_f[0] if c.startswith(("E_ratio_", "asymmetry_")) and c != "E_ratio_inc"
                and all(c in f for f in ref_f)]
    columns.append("response_full")

    hl_columns = [c for c in highlevel_columns(*ref_f)]

    def objective(t: MCTuning) -> tuple[float, list[dict[str, float]]]:
        vals, pers = [], []
        for k, r in enumerate(refs):
            gen_f = features(twin(r, t, args.seed + k))
            v, per = mean_ks(ref_f[k], gen_f, e[k], edges[k], columns, args.power)
            if args.objective == "classifier":
                v = classifier_auc(ref_f[k], gen_f, hl_columns, args.seed)
            vals.append(v)
            pers.append(per)
        return float(np.mean(vals)), pers

    t0 = time.time()
    before, before_per = objective(start)
    label = "classifier AUC" if args.objective == "classifier" else "mean KS"
    print(f"start ({start.source}): {label} {before:.4f}", flush=True)
    n_eval = [0]
    best = [before, start]

    def f(x: np.ndarray) -> float:
        t = decode(x, start)
        if not (0.01 < (t.stochastic or 0) < 0.5) or t.response <= 0.5 or t.cluster_mm < 0 or t.tail_clumps < 0 or t.cluster_core < 0 or (t.spot_mev or 1) < 0.2 or not 0 <= t.halo_fraction < 0.5:
            return 1.0
        v = objective(t)[0]
        n_eval[0] += 1
        if v < best[0]:
            best[0], best[1] = v, t
            print(f"  eval {n_eval[0]:4d}: {label} {v:.4f}  " + " ".join(
                f"{p}={getattr(t, p):.4g}" for p, _, _ in PARAMS), flush=True)
        return v

    x0 = encode(start, base_a)
    simplex = np.vstack([x0] + [x0 + np.eye(len(PARAMS))[i] * PARAMS[i][2] for i in range(len(PARAMS))])
    res = minimize(f, x0, method="Nelder-Mead",
                   options={"maxfev": args.maxfev, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 2e-4})
    fitted = replace(decode(res.x, start) if res.fun <= best[0] else best[1])
    after, after_per = objective(fitted)
    names = [str(r.attrs.get("particle", "?")) for r in refs]
    source = (f"fitted to Geant4 ({refs[0].attrs.get('engine_label', 'geant4')}) {', '.join(names)} "
              f"showers, {', '.join(str(len(r)) for r in refs)} each, by benchmarks/calibrate_mc.py: "
              + (f"classifier AUC {before:.3f} -> {after:.3f}" if args.objective == "classifier" else
               f"{'mean' if args.power == 1 else f'power-{args.power:g} mean'} KS {before:.3f} -> {after:.3f}"))
    fitted = replace(fitted, source=source)
    print(f"done in {time.time() - t0:.0f} s, {n_eval[0]} evaluations: {label} {before:.4f} -> {after:.4f}")
    worst = sorted(((v, c, names[k]) for k, per in enumerate(after_per) for c, v in per.items()), reverse=True)[:8]
    print("worst observables after the fit:", ", ".join(f"{c} ({p}) {v:.3f}" for v, c, p in worst))
    log = {"geometry": geo.name, "references": args.reference, "before": before, "after": after,
           "before_per_observable": dict(zip(names, before_per)), "after_per_observable": dict(zip(names, after_per)),
           "tuning": asdict(fitted), "evaluations": n_eval[0], "seconds": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(log, indent=1))
    if args.write:
        stored = json.loads(TUNINGS.read_text())
        stored[geo.name] = {fl.name: getattr(fitted, fl.name) for fl in fields(MCTuning)}
        tmp = TUNINGS.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1) + "\n")
        tmp.replace(TUNINGS)
        print(f"stored the tuning of {geo.name!r} in {TUNINGS}")


if __name__ == "__main__":
    main()
