#!/usr/bin/env python
"""Time sampling of trained runs (no training): ms per shower per batch size vs the reference simulator.

    python benchmarks/bench_models.py runs/calogan runs/wgan --device cpu --batches 1,128,1024 --json bench.json

A thin wrapper over :func:`calosim.bench.bench`; prints the table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import sys

import torch

from calosim.bench import DEFAULT_BATCHES, bench, format_table, write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories written by `calosim train`")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="comma-separated batch sizes")
    p.add_argument("--n-showers", type=int, default=4096, help="showers timed per batch size (batch 1: 1/16 of it)")
    p.add_argument("--min-time", type=float, default=0.5, help="minimum seconds timed per batch size")
    p.add_argument("--no-reference", action="store_true", help="skip timing the reference simulator")
    p.add_argument("--reference-n", type=int, default=200, help="showers simulated to time the reference")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    except ValueError:
        p.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    try:
        rows = bench(args.runs, device=args.device, batches=batches, n_showers=args.n_showers,
                     reference=not args.no_reference, seed=args.seed, min_time=args.min_time,
                     reference_n=args.reference_n)
    except ValueError as exc:  # user errors (missing run dir, bad batch): one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json_path:
        write_json(rows, args.json_path)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
