"""The shared harness of the training benchmarks (``train_model.py``, ``train_wgan_gp.py``).

One recipe for every model, so their numbers are comparable:

* data: a training file (seed :data:`TRAIN_SEED`) and a held-out reference file (seed
  :data:`REF_SEED`), simulated once and cached under ``out/bench_data/`` by a name that
  encodes every simulation setting; ``--seed`` seeds the training and the sampling only;
* training: ``calosim.train.train`` (or ``--eval-only``: the run in ``--out``); the wall time
  covers data loading, fitting, training and validation in both cases;
* fidelity: high-level features (``calosim.metrics.observables``) plus log10 E_inc of showers
  generated for the reference's conditions vs the reference: a quick gradient-boosting AUC,
  the metrics package's classifier AUC (``--no-mlp-auc`` skips it) and the worst features;
* speed: ``model.sample`` at batch 1024 for the first 1024 reference conditions in
  ``torch.inference_mode`` (one warm-up call, then the minimum over :data:`SPEED_REPEATS`
  calls, since the CPU is shared), and ``Run.sample`` end to end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calosim.geometry import Geometry, get_geometry
from calosim.io import ShowerData

TRAIN_SEED, REF_SEED = 1000, 2000
SPEED_BATCH, SPEED_REPEATS = 1024, 15
ROOT = Path("out")


def add_common_args(ap: argparse.ArgumentParser, *, geometry: str = "calogan", particle: str = "e+") -> None:
    """The command-line options every training benchmark takes."""
    ap.add_argument("--geometry", default=geometry)
    ap.add_argument("--particle", default=particle)
    ap.add_argument("--n", type=int, default=50_000, help="training showers")
    ap.add_argument("--n-ref", type=int, default=20_000, help="held-out reference showers")
    ap.add_argument("--energy", default="1:100", help="GeV")
    ap.add_argument("--theta", default="0", help="polar angle in degrees (fixed or lo:hi)")
    ap.add_argument("--phi", default="0", help="azimuth in degrees (fixed or lo:hi)")
    ap.add_argument("--position", default="0", help="impact position in mm (fixed, lo:hi or x,y)")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default_config")
    ap.add_argument("--config", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is faster than 2 when other jobs share the 2 cores)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0, help="seeds the training and the sampling (not the data)")
    ap.add_argument("--no-mlp-auc", action="store_true", help="only the quick gradient-boosting AUC")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the finished run in --out, no training")


def cached_dataset(root: Path, geometry: str, particle: str, n: int, seed: int, energy: str, theta: str = "0",
                   phi: str = "0", position: str = "0") -> Path:
    """Simulate once and cache; the name encodes every setting and is shared by all benchmarks."""
    from calosim.simulate import simulate_to_file

    tag = hashlib.sha1(f"{geometry}|{particle}|{n}|{seed}|{energy}|{theta}|{phi}|{position}".encode()).hexdigest()[:8]
    path = root / f"{geometry}_{particle}_{n}_s{seed}_{tag}.h5"
    if not path.is_file():
        t0 = time.perf_counter()
        simulate_to_file(path, geometry, particle, n, energy=energy, theta=theta, phi=phi, position=position,
                         seed=seed, progress=False)
        print(f"simulated {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def datasets(args: argparse.Namespace) -> tuple[Path, Path]:
    """The (training, held-out reference) files of the benchmark's simulation settings."""
    spec = dict(energy=args.energy, theta=args.theta, phi=args.phi, position=args.position)
    data = ROOT / "bench_data"
    return (cached_dataset(data, args.geometry, args.particle, args.n, TRAIN_SEED, **spec),
            cached_dataset(data, args.geometry, args.particle, args.n_ref, REF_SEED, **spec))


def train_or_load(model: str, train_path: Path, out: Path, config: dict[str, Any], args: argparse.Namespace
                  ) -> tuple[Path, float, dict[str, Any]]:
    """Train (or, with ``--eval-only``, take the run in ``out``); returns (run dir, wall seconds, run summary)."""
    from calosim.train import checkpoint as ck
    from calosim.train import train

    t0 = time.perf_counter()
    run_dir = out if args.eval_only else train(model, train_path, out, config=config, steps=args.steps,
                                               seed=args.seed, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    summary = json.loads((Path(run_dir) / ck.SUMMARY_FILE).read_text())
    if args.eval_only:  # the recorded wall time of the same stages
        train_s = summary["time_s"] + summary.get("load_time_s", 0.0)
    return Path(run_dir), train_s, summary


def highlevel_features(showers: np.ndarray, e_inc: np.ndarray, geometry: Geometry,
                       columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``(N, D + 1)`` high-level features (metrics package) with log10 E_inc as the last column."""
    from calosim.metrics.observables import compute_observables, highlevel_columns, highlevel_matrix

    obs = compute_observables(showers, e_inc, geometry)
    cols = highlevel_columns(obs) if columns is None else columns
    return np.c_[highlevel_matrix(obs, cols), np.log10(e_inc.reshape(-1))], cols


def quick_auc(ref: np.ndarray, gen: np.ndarray, seed: int = 0) -> float:
    """Held-out AUC of a gradient-boosted tree classifier (half train, half test)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = min(len(ref), len(gen))
    x = np.concatenate([ref[:n], gen[:n]])
    y = np.r_[np.ones(n), np.zeros(n)]
    order = np.random.default_rng(seed).permutation(2 * n)
    tr, te = order[:n], order[n:]
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x[tr], y[tr])
    return float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))


def worst_features(ref: np.ndarray, gen: np.ndarray, names: list[str], k: int = 6) -> dict[str, float]:
    """The ``k`` features with the largest separation power (reference-binned, 40 bins)."""
    from calosim.metrics.distances import separation_power

    sp = {n: separation_power(ref[:, j], gen[:, j], n_bins=40, name=n) for j, n in enumerate(names)}
    return {n: round(v, 4) for n, v in sorted(sp.items(), key=lambda kv: -kv[1])[:k]}


def sampling_ms(model: Any, cond: torch.Tensor, repeats: int = SPEED_REPEATS) -> float:
    """ms/shower of ``model.sample`` at ``len(cond)`` showers per call (one warm-up, then the min over repeats)."""
    g = torch.Generator().manual_seed(0)
    times = []
    with torch.inference_mode():
        model.sample(cond, g)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.sample(cond, g)
            times.append(time.perf_counter() - t0)
    return 1e3 * min(times) / len(cond)


def measure(run: Any, ref: ShowerData, geometry: str, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """Sampling speed and fidelity of a loaded run against the reference; returns (results, generated showers)."""
    geo = get_geometry(geometry)
    t0 = time.perf_counter()
    gen = run.sample(ref, generator=args.seed)
    run_ms = 1e3 * (time.perf_counter() - t0) / len(ref)
    cond = run.conditions.encode(ref.subset(slice(0, SPEED_BATCH)))
    fr, cols = highlevel_features(ref.showers, ref.incident_energies, geo)
    fg, _ = highlevel_features(gen, ref.incident_energies, geo, cols)
    e = ref.incident_energies[:, 0]
    names = cols + ["log10_E_inc"]
    res: dict[str, Any] = {
        "ms_per_shower_b1024": sampling_ms(run.model, cond), "ms_per_shower_run_sample": run_ms,
        "etot_ratio_ref": [float(np.mean(ref.showers.sum(1) / e)), float(np.std(ref.showers.sum(1) / e))],
        "etot_ratio_gen": [float(np.mean(gen.sum(1) / e)), float(np.std(gen.sum(1) / e))],
        "auc_hgb": quick_auc(fr, fg, args.seed), "features": names, "worst_features": worst_features(fr, fg, names),
    }
    if not args.no_mlp_auc:
        from calosim.metrics.classifier import classifier_two_sample_test

        r = classifier_two_sample_test(fr, fg, seed=args.seed, n_threads=args.threads)
        res["auc_highlevel"], res["auc_highlevel_err"] = r["auc"], r["auc_err"]
    return res, gen


def write_results(out: Path, res: dict[str, Any], name: str = "results.json") -> None:
    """``out/name`` (JSON) and the same without the feature list on stdout."""
    (out / name).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "features"}, indent=1))
