"""How far is the built-in simulator from Geant4? Classifier AUCs before and after its calibration.

For each held-out Geant4 file (one particle each), the ``mc`` engine simulates an independent
sample of the same size and conditions (energy spectrum, directions, positions from the file's
attributes) twice: with the textbook defaults (``MCTuning()``, "before") and with the tuning
stored for the geometry ("after", see ``benchmarks/calibrate_mc.py``). ``calosim.evaluate``
then trains its low- and high-level classifiers Geant4 vs mc and reports AUCs, FPD and the
worst observables. Results go to ``--out`` (JSON) and print as a table.

    python benchmarks/mc_vs_geant4.py data/geant4/calogan_e+_test_1000_s1011.h5 \\
        data/geant4/calogan_gamma_test_1000_s1011.h5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from calosim.io import ShowerData, read_showers
from calosim.metrics.evaluate import evaluate
from calosim.simulate.mc import MCEngine, MCTuning, tuning_for

BLOCK = 1024


def mc_sample(ref: ShowerData, tuning: MCTuning, seed: int) -> ShowerData:
    """An independent mc sample with ``ref``'s conditions: energies drawn from ``ref``'s own (shuffled)."""
    rng = np.random.default_rng(seed)
    n, geo = len(ref), ref.geometry
    # the same marginal of the conditions, independent showers: permute the reference's rows
    perm = rng.permutation(n)
    e = ref.incident_energies[perm, 0].astype(np.float64)
    cond = {k: v[perm] for k, v in ref.conditions.items()}
    th = cond.get("theta", np.zeros(n)).astype(np.float64)
    ph = cond.get("phi", np.zeros(n)).astype(np.float64)
    pos = cond.get("position", np.zeros((n, 2))).astype(np.float64)
    pdg = int(cond["pdg"][0])
    eng = MCEngine(tuning)
    cells, over = [], []
    for k, lo in enumerate(range(0, n, BLOCK)):
        sl = slice(lo, lo + BLOCK)
        c, o = eng.simulate_block(geo, pdg, e[sl], th[sl], ph[sl], pos[sl], np.random.default_rng([seed, 7, k]))
        cells.append(c)
        over.append(o)
    return ShowerData(np.concatenate(cells), e[:, None], geo, cond, np.concatenate(over) if geo.overflow else None,
                      {"engine": "mc"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", nargs="+", help="held-out Geant4 files, one particle each")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", default="out/mc_vs_geant4.json")
    ap.add_argument("--report-dir", default="out/mc_vs_geant4")
    args = ap.parse_args()
    rows = {}
    for path in args.reference:
        ref = read_showers(path)
        particle = str(ref.attrs.get("particle", Path(path).stem))
        tuned = tuning_for(ref.geometry)
        samples = [mc_sample(ref, MCTuning(), args.seed), mc_sample(ref, tuned, args.seed)]
        res = evaluate(ref, samples, names=["mc_before", "mc_after"], out_dir=Path(args.report_dir) / particle,
                       seed=args.seed, progress=False, n_boot=20)
        rows[particle] = {
            s["name"]: {"auc_high": s["classifier"]["high"]["auc"], "auc_high_err": s["classifier"]["high"]["auc_err"],
                        "auc_low": s["classifier"]["low"]["auc"], "auc_low_err": s["classifier"]["low"]["auc_err"],
                        "fpd": s["fpd"]["value"], "worst": s["worst_observables"]}
            for s in res["samples"]}
        rows[particle]["n"] = len(ref)
        rows[particle]["tuning_source"] = tuned.source
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"{'particle':<9}{'sample':<11}{'AUC high':>10}{'AUC low':>10}{'FPD':>9}  worst observables")
    for particle, r in rows.items():
        for name in ("mc_before", "mc_after"):
            s = r[name]
            print(f"{particle:<9}{name:<11}{s['auc_high']:>10.3f}{s['auc_low']:>10.3f}{s['fpd']:>9.3g}  "
                  f"{', '.join(s['worst'])}")


if __name__ == "__main__":
    main()
