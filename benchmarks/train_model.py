"""CPU training recipes and benchmark of the models trained from showers alone (``--model``
``spots`` or ``calogan``; ``train_wgan_gp.py`` covers the condition regressor of ``wgan-gp``).

simulate (cached) -> train with ``calosim.train.train`` -> generate for held-out conditions ->
classifier AUC on high-level features -> sampling speed.

Measured (2-core machine shared with other jobs, one torch thread, 50k showers, 1-100 GeV):

* ``spots``, default recipe (energy MDN 2000 steps + shape MLP 3000 steps, ~1.5 min): AUC
  high-level e+ 0.661 +- 0.003, gamma 0.661 +- 0.002, pi+ 0.865 +- 0.002 (worst: layer-1 centroids);
  ``centroids=true``: e+ 0.774, pi+ 0.819; with ``mdn_steps=4000, mdn_components=16`` pi+ 0.736 +- 0.003 (8 min). model.sample at batch 1024: 0.037 ms/shower idle.
* ``calogan``, default recipe (mdn layer energies + hit counts, Gumbel-top-k hits, mirror,
  lr_d 1e-4, 3000 steps, best validation weights = step 1750): AUC high-level 0.952 +- 0.001
  (gradient boosting 0.956), 19 min including data loading, pretraining and validations.
  Worst single features: the layer-1 centroids (separation power 0.12) and layer-2 widths
  (0.09); layer energies, E_tot/E_inc and sparsity match (family AUCs 0.52).
* ``calogan`` with the seed's design (``layer_energies="generator"``), 1000-5000 steps: AUC ~1.0.
* history of the calogan recipe: mdn energies alone 0.9995 (widths too narrow, sparsity too
  low); + hit counts (top-k) 0.977; + Gumbel-top-k 0.968 at its best checkpoint, then D ran
  away; + lr_d 1e-4 0.952. Tried and dropped: lambda_fm 5, lr 5e-4 (unstable), drawing
  per-layer centroids/widths with the energy network and a moment-matching loss (0.99+).

Examples::

    # a recipe: 50k calogan e+ (1-100 GeV) with the model's default_config
    python benchmarks/train_model.py --model spots
    python benchmarks/train_model.py --model calogan --threads 1
    # a short exploratory run with overrides
    python benchmarks/train_model.py --model calogan --steps 2000 --config '{"lambda_e": 0.1}' --out out/cg_try
    # other particles
    python benchmarks/train_model.py --model spots --particle gamma
    python benchmarks/train_model.py --model spots --particle pi+

Data: ``out/bench_data/`` holds the training file (``--n`` showers, seed 1000) and a held-out
reference file (``--n-ref`` showers, seed 2000), simulated once and reused.

Printed and written to ``<out>/results.json``:

* ``auc_highlevel`` (± ``auc_highlevel_err``): ``calosim.metrics.classifier`` two-sample test on
  the high-level features of ``calosim.metrics.observables`` (per-layer energies, E_tot/E_inc,
  sparsity, centroids and widths per layer) plus log10 E_inc, generated (conditioned on the
  held-out energies) vs held-out reference; ``auc_hgb``: a quick gradient-boosting AUC on the
  same features;
* ``ms_per_shower_b1024``: ``model.sample`` at batch 1024 in ``torch.inference_mode`` with the
  EMA weights (the min over repeats, since the CPU is shared), in the transform space;
  ``ms_per_shower_run_sample``: ``Run.sample`` end-to-end (encoding, inverse transform, clean-up);
* ``train_time_s``: wall time of ``train(...)`` (data loading, fitting, training, validation).
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

from calosim.geometry import Geometry, get_geometry
from calosim.io import read_showers


def cached_dataset(root: Path, geometry: str, particle: str, n: int, seed: int, energy: str) -> Path:
    """Simulate once (``theta = phi = position = 0``) and cache; the name is shared with the other benchmarks."""
    from calosim.simulate import simulate_to_file

    tag = hashlib.sha1(f"{geometry}|{particle}|{n}|{seed}|{energy}|0|0|0".encode()).hexdigest()[:8]
    path = root / f"{geometry}_{particle}_{n}_s{seed}_{tag}.h5"
    if not path.is_file():
        t0 = time.perf_counter()
        simulate_to_file(path, geometry, particle, n, energy=energy, seed=seed, progress=False)
        print(f"simulated {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def highlevel_features(showers: np.ndarray, e_inc: np.ndarray, geometry: Geometry,
                       columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``(N, D + 1)`` high-level features (metrics package) with log10 E_inc as the last column."""
    from calosim.metrics.observables import compute_observables, highlevel_columns, highlevel_matrix

    obs = compute_observables(showers, e_inc, geometry)
    cols = highlevel_columns(obs) if columns is None else columns
    return np.c_[highlevel_matrix(obs, cols), np.log10(e_inc.reshape(-1))], cols


def quick_auc(ref: np.ndarray, gen: np.ndarray, seed: int = 0) -> float:
    """Held-out AUC of a gradient-boosted tree classifier (half train, half test)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = min(len(ref), len(gen))
    x = np.concatenate([ref[:n], gen[:n]])
    y = np.r_[np.ones(n), np.zeros(n)]
    order = np.random.default_rng(seed).permutation(2 * n)
    tr, te = order[:n], order[n:]
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x[tr], y[tr])
    return float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))


def worst_features(ref: np.ndarray, gen: np.ndarray, names: list[str], k: int = 6) -> dict[str, float]:
    """The ``k`` features with the largest separation power (reference-binned, 40 bins)."""
    from calosim.metrics.distances import separation_power

    sp = {n: separation_power(ref[:, j], gen[:, j], n_bins=40, name=n) for j, n in enumerate(names)}
    return {n: round(v, 4) for n, v in sorted(sp.items(), key=lambda kv: -kv[1])[:k]}


def sampling_ms(model: Any, cond: torch.Tensor, repeats: int = 15) -> float:
    """ms/shower of ``model.sample`` at ``len(cond)`` showers per call (min over repeats)."""
    g = torch.Generator().manual_seed(0)
    times = []
    with torch.inference_mode():
        model.sample(cond, g)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.sample(cond, g)
            times.append(time.perf_counter() - t0)
    return 1e3 * min(times) / len(cond)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="calogan", help="a registered model trained from showers alone (calogan, spots)")
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--particle", default="e+")
    ap.add_argument("--n", type=int, default=50_000, help="training showers")
    ap.add_argument("--n-ref", type=int, default=20_000, help="held-out reference showers")
    ap.add_argument("--energy", default="1:100", help="GeV")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default_config")
    ap.add_argument("--config", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mlp-auc", action="store_true", help="only the quick gradient-boosting AUC")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the run in --out, no training")
    ap.add_argument("--which", default="final", choices=["final", "best", "last"],
                    help="weights to evaluate: the final EMA model, or the best / last checkpoint (EMA)")
    args = ap.parse_args()

    from calosim.train import checkpoint as ck
    from calosim.runs import load_run
    from calosim.train import train

    torch.set_num_threads(args.threads)
    root = Path("out")
    train_path = cached_dataset(root / "bench_data", args.geometry, args.particle, args.n, 1000, args.energy)
    ref_path = cached_dataset(root / "bench_data", args.geometry, args.particle, args.n_ref, 2000, args.energy)
    out = Path(args.out or root / f"bench_{args.model}_{args.geometry}_{args.particle}")
    config = {"val_size": 5000, "threads": args.threads, **json.loads(args.config)}

    t0 = time.perf_counter()
    if args.eval_only:
        run_dir = out
    else:
        run_dir = train(args.model, train_path, out, config=config, steps=args.steps, seed=args.seed, overwrite=True,
                        progress=False)
    train_s = time.perf_counter() - t0
    summary = json.loads((run_dir / ck.SUMMARY_FILE).read_text())
    if args.eval_only:
        train_s = summary["time_s"] + summary["load_time_s"]

    run = load_run(run_dir, which=args.which)
    ref = read_showers(ref_path)
    geo = get_geometry(args.geometry)
    t0 = time.perf_counter()
    gen = run.sample(ref, generator=args.seed)
    run_ms = 1e3 * (time.perf_counter() - t0) / len(ref)
    cond = run.conditions.encode({"incident_energies": ref.incident_energies[:1024]})
    ms = sampling_ms(run.model, cond)

    fr, cols = highlevel_features(ref.showers, ref.incident_energies, geo)
    fg, _ = highlevel_features(gen, ref.incident_energies, geo, cols)
    e = ref.incident_energies[:, 0]
    res: dict[str, Any] = {
        "model": args.model, "geometry": args.geometry, "particle": args.particle, "n_train": summary["n_train"], "steps": summary["steps"],
        "weights": args.which, "best_step": summary.get("best_step"),
        "config": {k: run.config.get(k) for k in run.model.default_config},
        "train_time_s": round(train_s, 1), "train_loop_s": round(summary["train_time_s"], 1),
        "ms_per_step": summary["ms_per_step"],
        "ms_per_shower_b1024": ms, "ms_per_shower_run_sample": run_ms,
        "etot_ratio_ref": [float(np.mean(ref.showers.sum(1) / e)), float(np.std(ref.showers.sum(1) / e))],
        "etot_ratio_gen": [float(np.mean(gen.sum(1) / e)), float(np.std(gen.sum(1) / e))],
        "auc_hgb": quick_auc(fr, fg, args.seed), "features": cols + ["log10_E_inc"],
        "worst_features": worst_features(fr, fg, cols + ["log10_E_inc"]),
    }
    if not args.no_mlp_auc:
        from calosim.metrics.classifier import classifier_two_sample_test

        r = classifier_two_sample_test(fr, fg, seed=args.seed, n_threads=args.threads)
        res["auc_highlevel"], res["auc_highlevel_err"] = r["auc"], r["auc_err"]
    (out / ("results.json" if args.which == "final" else f"results_{args.which}.json")).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "features"}, indent=1))


if __name__ == "__main__":
    main()
