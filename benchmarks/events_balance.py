"""CALPAGAN recipes measured on the same images (issue 14, seed 004): the seed's recipe, its balancing
fixes, and calosim's recipe and its ablations.

    PYTHONPATH=src python benchmarks/events_balance.py --data out/events_demo [--process wjets] [--epochs 4] \
        [--only "seed recipe" calosim]

Uses the image files of ``calosim events demo`` (``<data>/<process>_{train,test}_{fast,detailed}.h5``)
and trains every selected entry of :data:`CONFIGS` with the same data, epochs and seed. The seed's
balancing fixes (its conclusion: D outpaces G) are ``g_steps`` 2, ``d_lr_scale`` 0.25 and
``hidden`` 32 on top of the seed's recipe. For each entry it reports the test set's Fréchet
distances, the image statistics of :func:`calosim.events.report.image_stats` (energy response,
towers, the floor over empty towers), the jet chi2 sums and on how many of the 18 jet observables the
generated images are closer to the detailed ones than the fast images are. Results accumulate in
``<out>/balance.json`` (one entry per config, re-running one replaces it) and ``balance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SEED = {"recipe": "seed"}
CONFIGS: dict[str, dict] = {
    "seed recipe": SEED,
    "seed g_steps=2": {**SEED, "g_steps": 2},
    "seed d_lr_scale=0.25": {**SEED, "d_lr_scale": 0.25},
    "seed hidden=32": {**SEED, "hidden": 32},
    "seed + threshold 0.2": {**SEED, "threshold_gev": 0.2},
    "seed + relu gate": {**SEED, "gate": "relu"},
    "seed + fast-peak norm": {**SEED, "norm": "fast-peak"},
    "calosim-v1 (no spread kernel)": {"recipe": "calosim-v1"},
    "calosim-v1 + blur 1": {"recipe": "calosim-v1", "blur_weight": 1.0},
    "spread kernel fit only (0 epochs)": {"recipe": "calosim", "epochs": 0},
    "calosim (default)": {"recipe": "calosim"},
    "calosim spread_train": {"recipe": "calosim", "spread_train": True},
    "calosim blur 1": {"recipe": "calosim", "blur_weight": 1.0},
    "calosim spread_radius=2": {"recipe": "calosim", "spread_radius": 2},
    "calosim lr=5e-5": {"recipe": "calosim", "lr": 5e-5},
    "calosim no residual_init": {"recipe": "calosim", "residual_init": False},
    "calosim no bn_recalibrate": {"recipe": "calosim", "bn_recalibrate": False},
    "calosim g_steps=2": {"recipe": "calosim", "g_steps": 2},
    "calosim d_lr_scale=1": {"recipe": "calosim", "d_lr_scale": 1.0},
    "calosim energy_weight=0": {"recipe": "calosim", "energy_weight": 0.0},
    "calosim energy_weight=0.2": {"recipe": "calosim", "energy_weight": 0.2},
    "calosim energy_weight=0, lr=1e-3": {"recipe": "calosim", "energy_weight": 0.0, "lr": 1e-3},
    "calosim energy_weight=0, lam=10": {"recipe": "calosim", "energy_weight": 0.0, "lam": 10.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="out/events_demo")
    ap.add_argument("--process", default="wjets", choices=["wjets", "dijet"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <data>/balance_<process>")
    ap.add_argument("--only", nargs="*", default=None, help="config names to run (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    import torch

    from calosim.events.report import image_stats, jet_validation
    from calosim.events.views import read_images
    from calosim.models.calpagan import CalpaganConfig, frechet_image_distance, plot_history, train_calpagan

    torch.set_num_threads(args.threads)
    unknown = set(args.only or ()) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown config(s) {sorted(unknown)}; known: {list(CONFIGS)}")
    data = Path(args.data)
    out = Path(args.out) if args.out else data / f"balance_{args.process}"
    out.mkdir(parents=True, exist_ok=True)
    img = {(s, v): read_images(data / f"{args.process}_{s}_{v}.h5")[0] for s in ("train", "test")
           for v in ("fast", "detailed")}
    fast, det = img["test", "fast"], img["test", "detailed"]
    store = out / "balance.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    results["fast view"] = {"config": {}, "stats": image_stats(fast, det, fast)}
    for name, kw in CONFIGS.items():
        if args.only is not None and name not in args.only:
            continue
        kw = dict(kw)
        cfg = CalpaganConfig.recipe(kw.pop("recipe"), **{"epochs": args.epochs, "seed": args.seed, **kw})
        t0 = time.perf_counter()
        model, hist = train_calpagan(img["train", "fast"], img["train", "detailed"], cfg, test=(fast, det),
                                     log=lambda s, n=name: print(f"{n}: {s}", flush=True), frechet_every_epoch=False)
        sec = time.perf_counter() - t0
        tag = "".join(c if c.isalnum() else "_" for c in name)
        if hist["epoch"]:
            plot_history(hist, out / f"frechet_{tag}.png")
        gen = model.generate(fast, seed=args.seed)
        res = jet_validation({"fast": fast, "detailed": det, "calpagan": gen}, out, title=f"{args.process}_{tag}")
        tab = res["table"]
        fin = [r for r in tab.values() if np.isfinite(r["fast-detailed"]) and np.isfinite(r["detailed-calpagan"])]
        results[name] = {"config": CONFIGS[name], "train_s": sec,
                         "fd_detailed_fast_test": frechet_image_distance(det, fast),
                         "fd_detailed_calpagan_test": frechet_image_distance(det, gen),
                         "fd_detailed_calpagan_test_best": min(hist.get("fd_detailed-calpagan_test", [np.inf])),
                         "loss_d_last": (hist["loss_d"] or [np.nan])[-1], "loss_g_last": (hist["loss_g"] or [np.nan])[-1],
                         "chi2_sum_fast_detailed": float(sum(r["fast-detailed"] for r in fin)),
                         "chi2_sum_detailed_calpagan": float(sum(r["detailed-calpagan"] for r in fin)),
                         "closer": list(res["closer"]), "stats": image_stats(fast, det, gen),
                         "n_jets_ge2": res["n_jets_ge2"]["calpagan"]}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
        tmp = store.with_name(f".{store.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, store)
    fv = results["fast view"]["stats"]
    lines = [f"# CALPAGAN recipes, {args.process}, {len(img['train', 'fast'])} train / {len(fast)} test events, "
             f"{args.epochs} epochs, seed {args.seed}", "",
             f"Detailed test images: {fv['energy_detailed']:.0f} GeV, {fv['towers_detailed']:.0f} towers; fast: "
             f"{fv['energy_fast']:.0f} GeV (response {fv['response_fast']:.2f}), {fv['towers_fast']:.0f} towers.", "",
             "| config | closer on | sum chi2 det-gen (fast-det) | FD det-gen test last / best (det-fast) "
             "| response gen/det | towers | floor, MeV | E in empty | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "fast view":
            continue
        st = r["stats"]
        lines.append(f"| {name} | {r['closer'][0]} of {r['closer'][1]} | {r['chi2_sum_detailed_calpagan']:.0f} "
                     f"({r['chi2_sum_fast_detailed']:.0f}) | {r['fd_detailed_calpagan_test']:.1f} / "
                     f"{r['fd_detailed_calpagan_test_best']:.1f} ({r['fd_detailed_fast_test']:.1f}) "
                     f"| {st['response_generated']:.2f} | {st['towers_generated']:.0f} | {1000 * st['floor_gev']:.1f} "
                     f"| {st['energy_fraction_in_empty']:.2f} | {r['train_s']:.0f} |")
    (out / "balance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
