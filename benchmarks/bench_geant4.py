"""Geant4 speed per shower against energy: CPU ms of the worker process (one core) and wall ms.

One Geant4 worker (``calosim.simulate.geant4.Geant4Engine``) is started and warmed up per
particle; then ``--n`` showers per energy are simulated in one call and the worker's CPU time
(``/proc/<pid>/stat`` utime + stime) and the wall time are measured. A straight line
``ms = a + b E[GeV]`` is fitted per particle (the issue's independent Geant4 model of the same
detector measured 0.5 + 7.45 E ms of CPU).

    python benchmarks/bench_geant4.py --geometry calogan --particles e+ gamma --json out/bench_geant4.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from calosim.geometry import get_geometry
from calosim.simulate.conditions import resolve_particle
from calosim.simulate.geant4 import Geant4Engine


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--particles", nargs="+", default=["e+", "gamma"])
    ap.add_argument("--energies", nargs="+", type=float, default=[1, 2, 5, 10, 20, 50, 100], help="GeV")
    ap.add_argument("--n", type=int, default=20, help="showers per energy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    geo = get_geometry(args.geometry)
    rows = []
    for particle in args.particles:
        pdg = resolve_particle(particle)
        eng = Geant4Engine()
        rng = np.random.default_rng(args.seed)
        z = np.zeros(1)
        t0 = time.perf_counter()
        eng.simulate_block(geo, pdg, np.array([1000.0]), z, z, np.zeros((1, 2)), rng)   # start-up + warm-up
        startup = time.perf_counter() - t0
        pid = eng._proc.pid
        for e_gev in args.energies:
            n = args.n
            c0, w0 = cpu_seconds(pid), time.perf_counter()
            eng.simulate_block(geo, pdg, np.full(n, 1000.0 * e_gev), np.zeros(n), np.zeros(n), np.zeros((n, 2)), rng)
            cpu, wall = cpu_seconds(pid) - c0, time.perf_counter() - w0
            rows.append({"particle": particle, "energy_gev": e_gev, "n": n, "cpu_ms": 1000 * cpu / n,
                         "wall_ms": 1000 * wall / n, "startup_s": startup})
            print(f"{particle:6s} {e_gev:6.1f} GeV  {1000 * cpu / n:8.1f} ms CPU  {1000 * wall / n:8.1f} ms wall", flush=True)
        eng.close()
    fits = {}
    for particle in args.particles:
        r = [x for x in rows if x["particle"] == particle]
        b, a = np.polyfit([x["energy_gev"] for x in r], [x["cpu_ms"] for x in r], 1)
        fits[particle] = {"a_ms": float(a), "b_ms_per_gev": float(b)}
        print(f"{particle}: CPU ms/shower = {a:.1f} + {b:.2f} E[GeV]; start-up {r[0]['startup_s']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"geometry": geo.name, "rows": rows, "fits": fits,
                                               "label": Geant4Engine().label}, indent=1))


if __name__ == "__main__":
    main()
