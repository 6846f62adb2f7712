"""CALPAGAN's balancing fixes measured against the seed's recipe (issue 14, seed 004's conclusion).

    PYTHONPATH=src python benchmarks/events_balance.py --data out/events_demo [--process wjets] [--epochs 4]

Uses the image files of ``calosim events demo`` (``<data>/<process>_{train,test}_{fast,detailed}.h5``)
and trains, with the same data, epochs and seed: the seed's recipe (one G update per D update,
equal learning rates, U-Net width 16), then each fix alone: ``g_steps`` 2 (G updated twice per
D update), ``d_lr_scale`` 0.25 (D learns 4x slower), ``hidden`` 32 (a stronger G). For each it
reports the test set's Fréchet distances (detailed-generated vs detailed-fast), the jet chi2 sums
and on how many jet observables the generated images are closer to the detailed ones than the
fast images are. Writes ``<out>/balance.json`` and ``balance.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CONFIGS = {"seed recipe": {}, "g_steps=2": {"g_steps": 2}, "d_lr_scale=0.25": {"d_lr_scale": 0.25},
           "hidden=32": {"hidden": 32}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="out/events_demo")
    ap.add_argument("--process", default="wjets", choices=["wjets", "dijet"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <data>/balance")
    ap.add_argument("--only", nargs="*", default=None, help="config names to run (default: all)")
    args = ap.parse_args()
    from calosim.events.report import jet_validation
    from calosim.events.views import read_images
    from calosim.models.calpagan import CalpaganConfig, plot_history, train_calpagan

    data = Path(args.data)
    out = Path(args.out) if args.out else data / "balance"
    out.mkdir(parents=True, exist_ok=True)
    img = {(s, v): read_images(data / f"{args.process}_{s}_{v}.h5")[0] for s in ("train", "test")
           for v in ("fast", "detailed")}
    results = {}
    for name, kw in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        cfg = CalpaganConfig(epochs=args.epochs, seed=args.seed, **kw)
        t0 = time.perf_counter()
        model, hist = train_calpagan(img["train", "fast"], img["train", "detailed"], cfg,
                                     test=(img["test", "fast"], img["test", "detailed"]),
                                     log=lambda s, n=name: print(f"{n}: {s}", flush=True))
        sec = time.perf_counter() - t0
        tag = name.replace("=", "").replace(" ", "_").replace(".", "")
        plot_history(hist, out / f"frechet_{tag}.png")
        gen = model.generate(img["test", "fast"], seed=args.seed)
        res = jet_validation({"fast": img["test", "fast"], "detailed": img["test", "detailed"], "calpagan": gen},
                             out, title=f"{args.process}_{tag}")
        tab = res["table"]
        fin = [r for r in tab.values() if np.isfinite(r["fast-detailed"]) and np.isfinite(r["detailed-calpagan"])]
        results[name] = {"config": kw, "train_s": sec,
                         "fd_detailed_fast_test": hist["fd_detailed-fast_test"][-1],
                         "fd_detailed_calpagan_test": hist["fd_detailed-calpagan_test"][-1],
                         "fd_detailed_calpagan_test_best": min(hist["fd_detailed-calpagan_test"]),
                         "loss_d_last": hist["loss_d"][-1], "loss_g_last": hist["loss_g"][-1],
                         "chi2_sum_fast_detailed": float(sum(r["fast-detailed"] for r in fin)),
                         "chi2_sum_detailed_calpagan": float(sum(r["detailed-calpagan"] for r in fin)),
                         "closer": list(res["closer"])}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    (out / "balance.json").write_text(json.dumps(results, indent=1))
    lines = [f"# CALPAGAN balancing, {args.process}, {len(img['train', 'fast'])} train / {len(img['test', 'fast'])} "
             f"test events, {args.epochs} epochs, seed {args.seed}", "",
             "| config | FD det-gen (test, last / best) | FD det-fast | sum chi2 det-gen | sum chi2 fast-det "
             "| closer on | D loss | G loss | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['fd_detailed_calpagan_test']:.1f} / {r['fd_detailed_calpagan_test_best']:.1f} "
                     f"| {r['fd_detailed_fast_test']:.1f} | {r['chi2_sum_detailed_calpagan']:.0f} "
                     f"| {r['chi2_sum_fast_detailed']:.0f} | {r['closer'][0]} of {r['closer'][1]} "
                     f"| {r['loss_d_last']:.3f} | {r['loss_g_last']:.3f} | {r['train_s']:.0f} |")
    (out / "balance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
