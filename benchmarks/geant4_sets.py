"""Produce (or reuse) the Geant4 benchmark sets of the ``calogan`` detector.

Each set is one native HDF5 file under ``--dir`` (default ``data/geant4/``, git-ignored), with
a ``manifest.json`` beside it recording engine, Geant4 version, data source, seed, N and the
file's sha256. A set whose manifest entry and checksum match is reused, never regenerated, so
the script can be re-run across sessions (it resumes with the missing sets).

    python benchmarks/geant4_sets.py                       # e+ and gamma, 10k train + 5k test
    python benchmarks/geant4_sets.py --train 2000 --test 1000 --particles e+ --workers 2
    python benchmarks/geant4_sets.py --shards 10 --particles gamma e+ pi+   # resumable in shards

With ``--shards N`` each set is made as N shard files under ``--parts`` (each written
atomically, so an interrupted run loses at most the shard in flight and a re-run resumes with
the missing shards), then joined by ``calosim merge`` into the set's file. The merged file holds
the same showers as an unsharded run with the same seed. The default ``--parts`` folder,
``benchmarks/geant4-parts/``, is tracked by git: a set costs 2-4 core-hours of Geant4 here,
more than one session, and machines are not kept between sessions, so finished shards are
committed and every later checkout merges them instead of simulating them again.

Training sets use seed ``--seed``, held-out sets ``--seed + 1000``. Hadrons (pi+) run FTFP_BERT;
without the official Geant4 data (``GEANT4_DATA_DIR``) their hadronic cross sections are the
stand-in ones (labelled "experimental" in the files' provenance), so treat pi+ sets made that
way as a Geant4-like reference, not as validated Geant4 hadron showers.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import time
from pathlib import Path

import h5py

from calosim.scaleout import merge
from calosim.simulate import BLOCK, simulate_to_file


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _adoptable(path: Path, particle: str, n: int, seed: int) -> bool:
    """A finished file (written atomically) of this set whose manifest entry was lost."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            return (str(a.get("engine")) == "geant4" and int(a.get("seed", -1)) == seed
                    and str(a.get("particle")) == particle and len(f["showers"]) == n)
    except (OSError, KeyError, ValueError):
        return False


def _sharded(path: Path, parts: Path, args: argparse.Namespace, particle: str, n: int, seed: int,
             kw: dict) -> float:
    """Make ``path`` from ``args.shards`` shard files (missing ones first); return their summed wall time."""
    count = max(1, min(args.shards, -(-n // BLOCK)))    # a shard holds at least one block
    parts.mkdir(parents=True, exist_ok=True)
    files, wall = [], 0.0
    for k in range(count):
        part = parts / f"{path.stem}.shard{k:03d}of{count:03d}.h5"
        timing = part.with_suffix(".wall")
        if not part.exists():
            t0 = time.time()
            simulate_to_file(part, args.geometry, particle, n, energy=args.energy, seed=seed, engine="geant4",
                             shard=(k, count), overwrite=True, progress=True, **kw)
            timing.write_text(f"{time.time() - t0:.1f}\n")
        wall += float(timing.read_text()) if timing.exists() else float("nan")
        files.append(part)
    merge(files, path, overwrite=True, progress=True)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="data/geant4")
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--particles", nargs="+", default=["e+", "gamma"])
    ap.add_argument("--energy", default="1:100", help="GeV, as for calosim simulate")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shards", type=int, default=1,
                    help="make each set as this many shard files under --parts (resumable), then merge them")
    ap.add_argument("--parts", default="benchmarks/geant4-parts",
                    help="folder of the shard files (tracked by git, so finished shards are kept)")
    args = ap.parse_args()

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    man_path = out / "manifest.json"
    kw = {"workers": args.workers} if "workers" in inspect.signature(simulate_to_file).parameters else {}
    for particle in args.particles:
        for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 1000)):
            name = f"{args.geometry}_{particle}_{split}_{n}_s{seed}.h5"
            path = out / name
            manifest = json.loads(man_path.read_text()) if man_path.exists() else {}   # other runs may add sets
            entry = manifest.get(name)
            if entry and path.exists() and entry.get("sha256") == sha256(path):
                print(f"reuse {name}")
                continue
            wall = float("nan")
            if path.exists() and not entry and _adoptable(path, particle, n, seed):
                print(f"adopt {name} (complete, no manifest entry)")
            else:
                t0 = time.time()
                if args.shards > 1:
                    wall = _sharded(path, Path(args.parts), args, particle, n, seed, kw)
                else:
                    simulate_to_file(path, args.geometry, particle, n, energy=args.energy, seed=seed,
                                     engine="geant4", overwrite=True, progress=True, **kw)
                    wall = time.time() - t0
            with h5py.File(path, "r") as f:
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                         if k in ("engine", "engine_version", "engine_label", "data_source", "physics_list")}
            manifest[name] = {"particle": particle, "split": split, "n": n, "seed": seed, "energy_gev": args.energy,
                              "geometry": args.geometry, **attrs, "wall_s": round(wall, 1), "workers": args.workers,
                              "sha256": sha256(path)}
            manifest = {**(json.loads(man_path.read_text()) if man_path.exists() else {}), name: manifest[name]}
            tmp = man_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            tmp.replace(man_path)
            print(f"wrote {name}: {n} showers in {wall:.0f} s ({1000 * wall / max(n, 1) * args.workers:.0f} ms/shower/core)")


if __name__ == "__main__":
    main()
