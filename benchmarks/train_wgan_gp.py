"""Benchmark of the ``wgan-gp`` model: simulate → train → generate → classifier AUC, ms/shower.

Examples (CPU)::

    # the default recipe: 50k calogan e+ showers, 1-100 GeV, default_config (<= 20 min)
    python benchmarks/train_wgan_gp.py
    # a short run on lhcb-ecal with sampled direction and impact point; regressor check
    python benchmarks/train_wgan_gp.py --geometry lhcb-ecal --particle e- --n 30000 \
        --theta 0:15 --phi 0:360 --position=-40:40 --conditions energy,momentum,position --steps 3000

Data are cached under ``out/bench_data/`` (train file and a held-out reference file simulated
with another seed). Printed and written to ``<out>/results.json``:

* ``auc_highlevel``: classifier two-sample test (``calosim.metrics``) on the high-level
  features (per-layer energies, E_tot/E_inc, centroids, widths, sparsity) plus log E_inc,
  generated (for the reference's conditions) vs held-out reference showers;
  ``auc_hgb``: a quick gradient-boosting AUC on the same features;
* ``ms_per_shower``: generator-only sampling time at batch 1024 (min over repeats), and the
  full ``Run.sample`` time including the inverse transform;
* with more conditions than the energy: the frozen regressor's error on each encoded condition
  column for real showers and for generated showers asked for the same conditions (the LHCb
  seed's check that G respects the conditions), also in physical units.

Measured on the shared 2-core CPU machine (1 torch thread, other jobs running), default config:

* calogan e+ 1-100 GeV, 50k showers, 5000 steps: 12.7 min training; generator 0.077 ms/shower
  at batch 1024; classifier AUC (high-level + log E_inc) ~1.0 - the < 0.75 target is NOT met.
  Single features are close (E_tot/E_inc mean 0.978 vs 0.978, per-feature AUC <= 0.8); what
  separates is the energy dependence of the layer-1 occupancy (corr. with log E: 0.95 real,
  0.15 generated), i.e. the generator follows the energy condition too weakly in this budget.
  With ``--config '{"lambda_reg": 20}'`` (16 min): occupancy corr. 0.69, regression loss 0.06
  instead of 0.25, but E_tot/E_inc picks up a wrong energy trend and the AUC stays ~1.0.
  Sampling speed depends on the load: 0.077-0.14 ms/shower (calogan), 0.14-0.36 (lhcb-ecal),
  0.04-0.07 (besiii-emc); the 0.05 ms/shower target for calogan is not met on this machine.
* lhcb-ecal e-, theta 0:15 deg, phi 0:360, position -40:40 mm, 20k showers, 2000 steps: the
  frozen regressor's predictions correlate with the requested conditions at 0.70-0.97 on real
  showers but ~0 on generated ones (lambda_reg 1 and 20): conditioning is not learned yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calosim.geometry import get_geometry
from calosim.io import read_showers


def dataset(out: Path, geometry: str, particle: str, n: int, seed: int, energy: str, theta: str, phi: str,
            position: str) -> Path:
    """Simulate (once) and cache a shower file; returns its path."""
    from calosim.simulate import simulate_to_file

    key = hashlib.sha1(f"{geometry}|{particle}|{n}|{seed}|{energy}|{theta}|{phi}|{position}".encode()).hexdigest()[:8]
    path = out / f"{geometry}_{particle}_{n}_s{seed}_{key}.h5"
    if not path.is_file():
        t0 = time.perf_counter()
        simulate_to_file(path, geometry, particle, n, energy=energy, theta=theta, phi=phi, position=position,
                         seed=seed, progress=False)
        print(f"simulated {path.name} in {time.perf_counter() - t0:.0f} s")
    return path


def features(showers: np.ndarray, e_inc: np.ndarray, geometry: Any, columns: list[str] | None = None
             ) -> tuple[np.ndarray, list[str]]:
    """High-level feature matrix (N, D + 1) (metrics package) with log10 E_inc appended."""
    from calosim.metrics.observables import compute_observables, highlevel_columns, highlevel_matrix

    obs = compute_observables(showers, e_inc, geometry)
    cols = columns if columns is not None else highlevel_columns(obs)
    m = highlevel_matrix(obs, cols)
    return np.concatenate([m, np.log10(e_inc.reshape(-1, 1))], 1), cols


def hgb_auc(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Quick AUC of a gradient-boosting classifier (50/50 split) separating ``a`` from ``b``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = min(len(a), len(b))
    x = np.concatenate([a[:n], b[:n]])
    y = np.r_[np.ones(n), np.zeros(n)]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(2 * n)
    tr, te = idx[: n], idx[n:]
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x[tr], y[tr])
    return float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))


def sampling_speed(model: torch.nn.Module, cond_dim: int, batch: int = 1024, repeats: int = 7) -> float:
    """Generator-only ms/shower at ``batch`` (min over ``repeats``; the CPU is shared)."""
    c = torch.zeros(batch, cond_dim)
    g = torch.Generator().manual_seed(0)
    times = []
    with torch.inference_mode():
        model.sample(c, g)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.sample(c, g)
            times.append(time.perf_counter() - t0)
    return 1e3 * min(times) / batch


def regressor_check(run: Any, ref: Any, gen_showers: np.ndarray) -> dict[str, Any]:
    """Frozen regressor on real vs generated showers for the same conditions, per condition column."""
    enc, model = run.conditions, run.model
    cond = enc.encode(ref)
    e = torch.as_tensor(ref.incident_energies)
    out: dict[str, Any] = {}
    with torch.no_grad():
        x_real = run.transform(torch.as_tensor(ref.showers), e)
        x_gen = run.transform(torch.as_tensor(gen_showers), e)
        pr, pg = model.regressor(model._to_h(x_real)), model.regressor(model._to_h(x_gen))
    scale = []  # physical unit per encoded column (std of the condition); energy column: log E half-range
    for name in enc.names:
        if name == "energy":
            scale.append(enc.log_e_half)
        elif name in enc.std:
            scale += list(enc.std[name])
        else:
            scale += [1.0] * (enc.slices[name].stop - enc.slices[name].start)
    for j, col in enumerate(enc.columns):
        c, r, g = cond[:, j].numpy(), pr[:, j].numpy(), pg[:, j].numpy()
        out[col] = {
            "rmse_real": float(np.sqrt(np.mean((r - c) ** 2)) * scale[j]),
            "rmse_gen": float(np.sqrt(np.mean((g - c) ** 2)) * scale[j]),
            "corr_real": float(np.corrcoef(r, c)[0, 1]), "corr_gen": float(np.corrcoef(g, c)[0, 1]),
            "unit": "log E" if col == "log_energy" else ("MeV" if col.startswith("momentum") else
                                                         "mm" if col.startswith("position") else "rad"),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--particle", default="e+")
    ap.add_argument("--n", type=int, default=50_000, help="training showers")
    ap.add_argument("--n-ref", type=int, default=20_000, help="held-out reference showers")
    ap.add_argument("--energy", default="1:100")
    ap.add_argument("--theta", default="0")
    ap.add_argument("--phi", default="0")
    ap.add_argument("--position", default="0")
    ap.add_argument("--conditions", default="energy")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default_config")
    ap.add_argument("--config", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is faster than 2 when other jobs share the 2 cores)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the finished run in --out, no training")
    ap.add_argument("--no-mlp-auc", action="store_true", help="skip the (slower) metrics-package classifier")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from calosim.runs import load_run
    from calosim.train import train

    root = Path("out")
    data_dir = root / "bench_data"
    spec = dict(energy=args.energy, theta=args.theta, phi=args.phi, position=args.position)
    train_path = dataset(data_dir, args.geometry, args.particle, args.n, 1000 + args.seed, **spec)
    ref_path = dataset(data_dir, args.geometry, args.particle, args.n_ref, 2000 + args.seed, **spec)
    out = Path(args.out or root / f"bench_wgan_gp_{args.geometry}_{args.particle}")
    config = {"conditions": args.conditions.split(","), "val_size": 5000, **json.loads(args.config)}

    from calosim.train.checkpoint import SUMMARY_FILE

    t0 = time.perf_counter()
    if args.eval_only:
        run_dir = out
    else:
        run_dir = train("wgan-gp", train_path, out, config=config, steps=args.steps, seed=args.seed, overwrite=True,
                        progress=False)
    train_s = time.perf_counter() - t0
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    if args.eval_only:
        train_s = summary["time_s"]

    run = load_run(run_dir)
    ref = read_showers(ref_path)
    geo = get_geometry(args.geometry)
    t0 = time.perf_counter()
    gen = run.sample(ref, generator=args.seed)
    gen_ms = 1e3 * (time.perf_counter() - t0) / len(ref)
    ms = sampling_speed(run.model, run.model.cond_dim)

    fr, cols = features(ref.showers, ref.incident_energies, geo)
    fg, _ = features(gen, ref.incident_energies, geo, cols)
    res: dict[str, Any] = {
        "geometry": args.geometry, "particle": args.particle, "n_train": summary["n_train"], "steps": summary["steps"],
        "config": {k: run.config[k] for k in run.model.default_config if k in run.config} | {"conditions": config["conditions"]},
        "train_time_s": train_s, "train_loop_s": summary["train_time_s"], "pretrain": summary["pretrain"],
        "ms_per_shower_generator_b1024": ms, "ms_per_shower_run_sample": gen_ms,
        "etot_ratio_ref": float(np.mean(ref.showers.sum(1) / ref.incident_energies[:, 0])),
        "etot_ratio_gen": float(np.mean(gen.sum(1) / ref.incident_energies[:, 0])),
        "auc_hgb": hgb_auc(fr, fg), "features": cols + ["log10_E_inc"],
    }
    if not args.no_mlp_auc:
        from calosim.metrics.classifier import classifier_two_sample_test

        r = classifier_two_sample_test(fr, fg, seed=args.seed)
        res["auc_highlevel"], res["auc_highlevel_err"] = r["auc"], r["auc_err"]
    if len(run.conditions.columns) > 1:
        res["regressor"] = regressor_check(run, ref, gen)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("features",)}, indent=1))


if __name__ == "__main__":
    main()
