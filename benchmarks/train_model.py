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

Data, timing and the fidelity measures are those of the shared harness (``benchmarks/harness.py``):
``out/bench_data/`` holds the training file (``--n`` showers, seed 1000) and a held-out reference
file (``--n-ref`` showers, seed 2000), simulated once and reused.

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
import json
from pathlib import Path
from typing import Any

from harness import ROOT, add_common_args, datasets, measure, train_or_load, write_results

from calosim.io import read_showers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="calogan", help="a registered model trained from showers alone (calogan, spots)")
    ap.add_argument("--which", default="final", choices=["final", "best", "last"],
                    help="weights to evaluate: the final EMA model, or the best / last checkpoint (EMA)")
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    from calosim.runs import load_run

    torch.set_num_threads(args.threads)
    train_path, ref_path = datasets(args)
    out = Path(args.out or ROOT / f"bench_{args.model}_{args.geometry}_{args.particle}")
    config = {"val_size": 5000, "threads": args.threads, **json.loads(args.config)}
    run_dir, train_s, summary = train_or_load(args.model, train_path, out, config, args)

    run = load_run(run_dir, which=args.which)
    measured, _ = measure(run, read_showers(ref_path), args.geometry, args)
    res: dict[str, Any] = {
        "model": args.model, "geometry": args.geometry, "particle": args.particle, "n_train": summary["n_train"],
        "steps": summary["steps"], "weights": args.which, "best_step": summary.get("best_step"),
        "config": {k: run.config.get(k) for k in run.model.default_config},
        "train_time_s": round(train_s, 1), "train_loop_s": round(summary["train_time_s"], 1),
        "ms_per_step": summary["ms_per_step"], **measured,
    }
    write_results(out, res, "results.json" if args.which == "final" else f"results_{args.which}.json")


if __name__ == "__main__":
    main()
