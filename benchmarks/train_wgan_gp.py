"""Benchmark of the ``wgan-gp`` model: simulate → train → generate → classifier AUC, ms/shower.

Examples (CPU)::

    # the default recipe: 50k calogan e+ showers, 1-100 GeV, default_config (<= 20 min)
    python benchmarks/train_wgan_gp.py
    # a short run on lhcb-ecal with sampled direction and impact point; regressor check
    python benchmarks/train_wgan_gp.py --geometry lhcb-ecal --particle e- --n 30000 \
        --theta 0:15 --phi 0:360 --position=-40:40 --conditions energy,momentum,position --steps 3000

Data, timing and the fidelity measures are those of the shared harness (``benchmarks/harness.py``,
the same as ``train_model.py``): cached under ``out/bench_data/`` (train file seed 1000, held-out
reference seed 2000). Printed and written to ``<out>/results.json``:

* ``auc_highlevel``: classifier two-sample test (``calosim.metrics``) on the high-level
  features (per-layer energies, E_tot/E_inc, centroids, widths, sparsity) plus log E_inc,
  generated (for the reference's conditions) vs held-out reference showers;
  ``auc_hgb``: a quick gradient-boosting AUC on the same features;
* ``ms_per_shower_b1024``: generator-only sampling time at batch 1024 (min over repeats), and
  ``ms_per_shower_run_sample``: the full ``Run.sample`` time including the inverse transform;
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
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import ROOT, add_common_args, datasets, measure, train_or_load, write_results

from calosim.io import read_showers


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
    ap.add_argument("--conditions", default="energy")
    add_common_args(ap)
    args = ap.parse_args()

    from calosim.runs import load_run

    torch.set_num_threads(args.threads)
    train_path, ref_path = datasets(args)
    out = Path(args.out or ROOT / f"bench_wgan_gp_{args.geometry}_{args.particle}")
    config = {"conditions": args.conditions.split(","), "val_size": 5000, "threads": args.threads,
              **json.loads(args.config)}
    run_dir, train_s, summary = train_or_load("wgan-gp", train_path, out, config, args)

    run = load_run(run_dir)
    ref = read_showers(ref_path)
    measured, gen = measure(run, ref, args.geometry, args)
    res: dict[str, Any] = {
        "model": "wgan-gp", "geometry": args.geometry, "particle": args.particle, "n_train": summary["n_train"],
        "steps": summary["steps"],
        "config": {k: run.config[k] for k in run.model.default_config if k in run.config}
        | {"conditions": config["conditions"]},
        "train_time_s": round(train_s, 1), "train_loop_s": round(summary["train_time_s"], 1),
        "pretrain": summary.get("pretrain"), **measured,
    }
    if len(run.conditions.columns) > 1:
        res["regressor"] = regressor_check(run, ref, gen)
    write_results(out, res)


if __name__ == "__main__":
    main()
