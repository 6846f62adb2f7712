"""The detailed event view with Geant4 against the built-in one, on a small sample (issue 14).

    PYTHONPATH=src python benchmarks/events_geant4.py [--process wjets] [-n 6] [--out out/events_geant4]
    PYTHONPATH=src python benchmarks/events_geant4.py --sampling-fraction   # measures G4_HCAL_SAMPLING_FRACTION

Makes the fast, built-in detailed and Geant4 detailed images of the same Pythia events and
prints the seconds per event image of each view and how far the built-in view is from Geant4:
total energy, energy in the hit towers' neighbours, and the leading jets (anti-kT 0.4).
Writes ``<out>/summary.json`` and the three image files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def sampling_fraction(n: int = 10, energy_gev: float = 10.0) -> float:
    """Visible share of ``n`` electron showers of ``energy_gev`` in the Geant4 HCAL stack."""
    from calosim.events.views import geant4_geometries
    from calosim.simulate import get_engine

    hcal = geant4_geometries()[1]
    geo = dataclasses.replace(hcal, sampling=dataclasses.replace(hcal.sampling, sampling_fraction=1.0))
    eng = get_engine("geant4")
    cells, over = eng.simulate_block(geo, 11, np.full(n, energy_gev * 1000.0), np.zeros(n), np.zeros(n),
                                     np.zeros((n, 2)), np.random.default_rng(0))
    eng.close()
    return float((np.asarray(cells).sum(1) + np.asarray(over).reshape(n, -1).sum(1)).mean() / (energy_gev * 1000.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--process", default="wjets", choices=["wjets", "dijet"])
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="out/events_geant4")
    ap.add_argument("--sampling-fraction", action="store_true")
    args = ap.parse_args()
    if args.sampling_fraction:
        print(f"HCAL stack sampling fraction (10 e- of 10 GeV): {sampling_fraction():.4f}")
        return
    from calosim.events.jets import leading_pair
    from calosim.events.pythia import ECM_GEV, _settings, generate_events, write_events
    from calosim.events.views import CHANNELS, make_images, write_images

    out = Path(args.out)
    ev = out / f"{args.process}_events.h5"
    write_events(ev, generate_events(args.process, args.n, seed=args.seed),
                 {"process": args.process, "seed": args.seed, "ecm_gev": ECM_GEV, "settings": _settings(args.process, None)},
                 overwrite=True)
    imgs, sec = {}, {}
    for name, view, engine in (("fast", "fast", "mc"), ("detailed", "detailed", "mc"),
                               ("geant4", "detailed", "geant4")):
        t0 = time.perf_counter()
        imgs[name], sec[name] = make_images(ev, view, engine=engine)
        wall = time.perf_counter() - t0
        write_images(out / f"{args.process}_{name}.h5", imgs[name],
                     {"view": view, "engine": engine, "events": str(ev), "channels": list(CHANNELS[view]),
                      "seconds_per_event": sec[name]}, overwrite=True)
        print(f"{name:9s} {1000 * sec[name]:9.1f} ms/event image  (wall incl. start-up {wall:.1f} s)")
    tot = {k: v.reshape(len(v), -1).sum(1) for k, v in imgs.items()}

    jets = {k: leading_pair(v) for k, v in imgs.items()}
    summary = {"process": args.process, "n": args.n, "ms_per_event": {k: 1000 * v for k, v in sec.items()},
               "mean_total_gev": {k: float(v.mean()) for k, v in tot.items()},
               "total_ratio_to_geant4": {k: float(np.mean(tot[k] / tot["geant4"])) for k in ("fast", "detailed")},
               "mean_tower_abs_diff_over_total_vs_geant4": {
                   k: float(np.mean(np.abs(imgs[k].sum(1) - imgs["geant4"].sum(1)).reshape(args.n, -1).sum(1)
                                    / tot["geant4"])) for k in ("fast", "detailed")},
               "towers_above_0": {k: float((v.sum(1) > 0).reshape(args.n, -1).sum(1).mean()) for k, v in imgs.items()},
               "leading_jet_pt_mean": {k: float(np.nanmean(v["pt1"])) for k, v in jets.items()},
               "leading_jet_girth_mean": {k: float(np.nanmean(v["girth1"])) for k, v in jets.items()},
               "leading_jet_pt_ratio_to_geant4": {k: float(np.nanmean(jets[k]["pt1"] / jets["geant4"]["pt1"]))
                                                  for k in ("fast", "detailed")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
