"""Known-answer EM physics checks (``calosim.simulate.validate``) at benchmark statistics.

    python benchmarks/geant4_validation.py --engines geant4 mc --n 200 --json out/validation.json

Prints each engine's check table (value, expectation, tolerance) and writes the measurements.
The test suite runs the same checks with 40 showers (tests/simulate/test_validate.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from calosim.simulate.validate import validate_em


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["geant4", "mc"])
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--energies", nargs="+", type=float, default=[1, 4, 16, 64], help="GeV")
    ap.add_argument("--photon-energy", type=float, default=16.0, help="GeV, for the gamma - e- depth check")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {}
    for engine in args.engines:
        t0 = time.time()
        rep = validate_em(engine, args.geometry, energies=tuple(args.energies), n=args.n, seed=args.seed,
                          tmax_energy=args.photon_energy)
        print(f"== {engine} on {args.geometry} ({args.n} showers per point, {time.time() - t0:.0f} s)")
        print(rep.table())
        out[engine] = rep.to_dict()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
