"""Speed of the built-in ``mc`` simulator: showers per second per particle and geometry.

Examples::

    python benchmarks/bench_simulate.py                       # default cases, 4096 showers each
    python benchmarks/bench_simulate.py --n 8192 --json out/bench_simulate.json
    python benchmarks/bench_simulate.py --stream 1000000      # + streamed 10^6-shower file, peak RSS

Cases: CaloGAN e+, gamma, pi+ and CaloChallenge dataset 2 e+, energies uniform in 1-100 GeV.
``showers/s`` is wall-clock (best of ``--repeat``), ``cpu showers/s`` uses process CPU time, which
is the better number on a machine shared with other jobs. The streaming check runs in a child
process so that its peak RSS (``resource.getrusage``) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = [("calogan", "e+"), ("calogan", "gamma"), ("calogan", "pi+"), ("calochallenge-2", "e+")]


def bench_case(geometry: str, particle: str, n: int, energy: str, repeat: int, seed: int = 0) -> dict[str, Any]:
    from calosim.simulate import simulate

    simulate(geometry, particle, 256, energy=energy, seed=seed + 999)  # warm-up (tables, imports)
    walls, cpus = [], []
    for r in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        simulate(geometry, particle, n, energy=energy, seed=seed + r)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"geometry": geometry, "particle": particle, "n": n, "energy_gev": energy,
            "showers_per_s": n / min(walls), "cpu_showers_per_s": n / min(cpus)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def stream_child(n: int, geometry: str, particle: str, energy: str, chunk: int) -> dict[str, Any]:
    from calosim.simulate import simulate_to_file

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "stream.h5"
        t0, c0 = time.perf_counter(), time.process_time()
        simulate_to_file(path, geometry, particle, n, energy=energy, seed=1, chunk=chunk, progress=sys.stderr.isatty())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = path.stat().st_size
    return {"geometry": geometry, "particle": particle, "n": n, "chunk": chunk, "energy_gev": energy,
            "showers_per_s": n / wall, "cpu_showers_per_s": n / cpu, "file_mb": size / 2 ** 20,
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="showers per case (default 4096)")
    ap.add_argument("--repeat", type=int, default=2, help="repeats per case; the best is reported")
    ap.add_argument("--energy", default="1:100", help="energy spec in GeV (default 1:100)")
    ap.add_argument("--cases", default=",".join(f"{g}/{p}" for g, p in CASES),
                    help="comma-separated geometry/particle pairs")
    ap.add_argument("--stream", type=int, default=0, help="also stream this many CaloGAN e+ showers to a file")
    ap.add_argument("--stream-chunk", type=int, default=10000)
    ap.add_argument("--json", type=Path, default=None, help="write results to this JSON file")
    ap.add_argument("--_stream-child", dest="stream_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.stream_child:  # child process of the streaming check
        print(json.dumps(stream_child(args.stream, "calogan", "e+", args.energy, args.stream_chunk)))
        return {}

    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "cases": []}
    print(f"{'geometry':18s} {'particle':8s} {'showers/s':>10s} {'cpu showers/s':>14s}")
    for case in args.cases.split(","):
        geometry, particle = case.strip().split("/")
        r = bench_case(geometry, particle, args.n, args.energy, args.repeat)
        results["cases"].append(r)
        print(f"{geometry:18s} {particle:8s} {r['showers_per_s']:10.0f} {r['cpu_showers_per_s']:14.0f}", flush=True)
    if args.stream:
        cmd = [sys.executable, __file__, "--_stream-child", "--stream", str(args.stream),
               "--stream-chunk", str(args.stream_chunk), "--energy", args.energy]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        s = json.loads(out.strip().splitlines()[-1])
        results["stream"] = s
        print(f"streamed {s['n']:,} calogan e+ showers: {s['showers_per_s']:.0f} showers/s "
              f"(cpu {s['cpu_showers_per_s']:.0f}), file {s['file_mb']:.0f} MB, peak RSS {s['peak_rss_mb']:.0f} MB")
    results["load_avg_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
