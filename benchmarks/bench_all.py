"""All models on one table, measured on Geant4 showers (issue 12, section 4).

For every particle with a Geant4 benchmark set (``benchmarks/geant4_sets.py``: training and
held-out files under ``--data``, listed in its ``manifest.json``) and every model, this script

1. trains the model with its CPU recipe (its ``Config`` defaults; ``--steps`` / ``--config``
   override them for exploration) on the training file: ``calosim.train.train``;
2. samples each of the model's samplers (``VARIANTS``: e.g. a flow's teacher and student) for
   the held-out file's conditions and evaluates them with ``calosim.metrics.evaluate`` against
   the held-out showers (classifier AUC on low- and high-level inputs ± error, FPD, the three
   observables with the largest separation power), with the geometry's voxel cut;
3. times ``Run.sample`` at batch 1 and 1024 on one torch thread (``calosim.bench.time_run``),
   and Geant4 on the same geometry, particle and energy range in the same run
   (``calosim.bench.reference_ms``), for the speed-up.

Rows go to ``<out>/results.json`` (one per particle × model × sampler) and a Markdown table to
``<out>/table.md``; a finished (particle, model) run directory is reused unless ``--retrain``.

    python benchmarks/bench_all.py                                  # every model, e+, gamma and pi+
    python benchmarks/bench_all.py --models spots caloflow --particles gamma
    python benchmarks/bench_all.py --models flowmatch --steps 2000  # a short exploratory run

Particles without a Geant4 set are skipped with a note unless ``--builtin-fallback`` simulates
them with the built-in engine (labelled). The π+ sets are Geant4 FTFP_BERT with the stand-in
hadronic cross sections (see ``geant4_sets.py``). When a larger set appears in the manifest
(e.g. the 10k / 5k sets), the largest training and held-out files are used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

DEFAULT_MODELS = ["spots", "calogan", "wgan-gp", "caloflow", "flowmatch"]
#: Samplers of one trained run: (label, config fields set on the loaded model before sampling).
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "caloflow": [("teacher", {"sampler": "teacher"}), ("student", {"sampler": "student"})],
    "flowmatch": [("full", {"sampler": "full"}), ("distilled", {"sampler": "distilled"})],
}


def find_sets(data: Path, geometry: str, particle: str) -> tuple[Path, Path] | None:
    """(train, test) files of the manifest for geometry/particle (the largest of each), or None."""
    man = data / "manifest.json"
    if not man.is_file():
        return None
    entries = json.loads(man.read_text())
    best: dict[str, tuple[int, Path]] = {}
    for name, e in entries.items():
        if e.get("geometry") == geometry and e.get("particle") == particle and (data / name).is_file():
            split = e.get("split")
            if split in ("train", "test") and e.get("n", 0) > best.get(split, (-1, None))[0]:
                best[split] = (int(e["n"]), data / name)
    if "train" in best and "test" in best:
        return best["train"][1], best["test"][1]
    return None


def builtin_sets(out: Path, geometry: str, particle: str, n_train: int, n_test: int, energy: str) -> tuple[Path, Path]:
    from calosim.simulate import simulate_to_file

    paths = []
    for split, n, seed in (("train", n_train, 11), ("test", n_test, 1011)):
        p = out / "data" / f"{geometry}_{particle}_{split}_{n}_s{seed}_builtin.h5"
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            simulate_to_file(p, geometry, particle, n, energy=energy, seed=seed, progress=False)
        paths.append(p)
    return paths[0], paths[1]


def set_sampler(run: Any, fields: dict[str, Any]) -> None:
    """Switch a loaded run's sampler by setting config fields (refused if the model has none)."""
    if not fields:
        return
    names = {f.name for f in dataclasses.fields(run.model.config)}
    missing = sorted(set(fields) - names)
    if missing:
        raise KeyError(f"model {run.model_name!r} has no config field(s) {missing}")
    for k, v in fields.items():
        setattr(run.model.config, k, v)


def one_model(model: str, particle: str, train_path: Path, test_path: Path, engine_label: str, out: Path,
              args: argparse.Namespace, g4_cache: dict[str, float | None]) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from calosim.bench import reference_ms, time_run
    from calosim.io import ShowerData, read_showers
    from calosim.metrics.evaluate import evaluate
    from calosim.runs import load_run
    from calosim.train import checkpoint as ck
    from calosim.train import train

    run_dir = out / "runs" / f"{particle}_{model}"
    summary_file = run_dir / ck.SUMMARY_FILE
    config = {"threads": 1, **json.loads(args.config)}
    n_train = len(read_showers(train_path))
    config.setdefault("val_size", max(min(1000, n_train // 10), 1))
    if args.retrain or not summary_file.is_file():
        t0 = time.perf_counter()
        train(model, train_path, run_dir, config=config, steps=args.steps, seed=args.seed, overwrite=True,
              progress=not args.quiet)
        train_s = time.perf_counter() - t0
    else:
        s = json.loads(summary_file.read_text())
        train_s = s["time_s"] + s.get("load_time_s", 0.0)
    ref = read_showers(test_path)
    rows = []
    for label, fields in VARIANTS.get(model, [("", {})]):
        run = load_run(run_dir)
        try:
            set_sampler(run, fields)
        except KeyError as exc:
            print(f"  skip {model}/{label}: {exc}")
            continue
        name = f"{model}-{label}" if label else model
        t0 = time.perf_counter()
        gen = run.sample(ref, generator=args.seed)
        gen_s = time.perf_counter() - t0
        sample = ShowerData(gen, ref.incident_energies, ref.geometry, dict(ref.conditions))
        m = evaluate(ref, [sample], names=[name], out_dir=out / "reports" / f"{particle}_{name}",
                     overwrite=True, seed=args.seed, progress=False)
        s = m["samples"][0]
        clf = s.get("classifier") or {}
        ms = {b: time_run(run, b, n_showers=max(b, 256 if b == 1 else 4096), seed=args.seed)[0] for b in (1, 1024)}
        key = f"{run.geometry.name}|{particle}|{run.conditions.energy_range_mev}"
        if key not in g4_cache:
            g4_cache[key] = reference_ms(run, n=args.geant4_n, seed=args.seed, engine="geant4") if not args.no_geant4 else None
        g4 = g4_cache[key]
        row = {
            "particle": particle, "model": name, "engine": engine_label, "n_train": n_train, "n_test": len(ref),
            "auc_low": clf.get("low", {}).get("auc"), "auc_low_err": clf.get("low", {}).get("auc_err"),
            "auc_high": clf.get("high", {}).get("auc"), "auc_high_err": clf.get("high", {}).get("auc_err"),
            "fpd": (s.get("fpd") or {}).get("value"), "fpd_err": (s.get("fpd") or {}).get("err"),
            "worst": s.get("worst_observables", [])[:3], "train_time_s": round(train_s, 1),
            "generate_s": round(gen_s, 2), "ms_b1": ms[1], "ms_b1024": ms[1024], "geant4_ms": g4,
            "speedup_vs_geant4_b1024": (g4 / ms[1024]) if g4 and ms[1024] > 0 else None,
            "e_ratio_ref": float(np.mean(ref.showers.sum(1) / ref.incident_energies[:, 0])),
            "e_ratio_gen": float(np.mean(gen.sum(1) / ref.incident_energies[:, 0])),
        }
        print("  " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("engine",)), flush=True)
        rows.append(row)
        del run
        torch.set_num_threads(1)
    return rows


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.{nd}f}".rstrip("0").rstrip(".")
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| particle | model | engine | AUC low | AUC high | FPD | worst observables | train | ms/shower b1 | "
            "ms/shower b1024 | × Geant4 (b1024) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        auc = lambda k: "–" if r[k] is None else f"{r[k]:.3f} ± {r[k + '_err']:.3f}"  # noqa: E731
        lines.append(f"| {r['particle']} | {r['model']} | {r['engine']} | {auc('auc_low')} | {auc('auc_high')} | "
                     f"{_fmt(r['fpd'])} | {_fmt(r['worst'])} | {r['train_time_s'] / 60:.1f} min | {_fmt(r['ms_b1'])} | "
                     f"{_fmt(r['ms_b1024'])} | {_fmt(r['speedup_vs_geant4_b1024'], 2)} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--particles", nargs="+", default=["e+", "gamma", "pi+"])
    ap.add_argument("--geometry", default="calogan")
    ap.add_argument("--data", default="data/geant4", help="folder of the Geant4 sets and their manifest.json")
    ap.add_argument("--out", default="out/bench_all")
    ap.add_argument("--steps", type=int, default=None, help="default: each model's recipe")
    ap.add_argument("--config", default="{}", help="JSON overrides applied to every model's config")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true", help="train again even if the run directory is finished")
    ap.add_argument("--builtin-fallback", action="store_true",
                    help="particles without a Geant4 set: simulate them with the built-in engine (labelled)")
    ap.add_argument("--no-geant4", action="store_true", help="do not time Geant4")
    ap.add_argument("--geant4-n", type=int, default=20, help="Geant4 showers timed per particle")
    ap.add_argument("--quiet", action="store_true", help="no training progress bars")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.json"
    rows: list[dict[str, Any]] = json.loads(res_file.read_text()) if res_file.is_file() else []
    g4_cache: dict[str, float | None] = {}
    for particle in args.particles:
        sets = find_sets(Path(args.data), args.geometry, particle)
        engine = "Geant4"
        if sets is None:
            if not args.builtin_fallback:
                print(f"{particle}: no Geant4 set in {args.data} (benchmarks/geant4_sets.py makes them); skipped")
                continue
            sets, engine = builtin_sets(out, args.geometry, particle, 10_000, 5_000, "1:100"), "built-in"
        print(f"{particle}: train {sets[0].name}, test {sets[1].name} ({engine})", flush=True)
        for model in args.models:
            print(f" {model}", flush=True)
            new = one_model(model, particle, sets[0], sets[1], engine, out, args, g4_cache)
            names = {(r["particle"], r["model"]) for r in new}
            rows = [r for r in rows if (r["particle"], r["model"]) not in names] + new
            tmp = res_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            tmp.replace(res_file)
            (out / "table.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
