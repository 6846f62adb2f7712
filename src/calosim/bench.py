"""Sampling speed of trained runs versus the reference simulator.

:func:`bench` times :meth:`calosim.train.Run.sample` (conditions encoding, model sampling,
inverse transform and post-processing: everything a user pays per shower) for several batch
sizes, after warm-up, under ``torch.inference_mode``, and reports the median time per call
divided by the batch size. The reference simulator (``calosim.simulate.simulate``) is timed
once per geometry/particle/energy range for comparison; if it is not available that column is
``None``. With the extra ``calosim[geant4]`` installed, Geant4 (engine ``geant4``, one worker
process = one core, after its start-up) is timed the same way for geometries with a Geant4
description, so speed-ups are quoted against Geant4 too (``geant4_ms_per_shower``,
``speedup_vs_geant4``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_path
from .runs import Run, load_run
from .train.conditions import sample_conditions

__all__ = ["bench", "format_table", "write_json", "DEFAULT_BATCHES"]

DEFAULT_BATCHES = (1, 4, 10, 128, 512, 1024)
ROW_KEYS = ("model", "device", "batch", "ms_per_shower", "reference_ms_per_shower", "speedup",
            "geant4_ms_per_shower", "speedup_vs_geant4")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], device: torch.device, *, min_reps: int, min_time: float, max_time: float,
                target_reps: int) -> list[float]:
    """Durations (s) of repeated ``fn()`` calls: at least ``min_reps`` calls and ``min_time`` s, and
    ``target_reps`` calls unless that takes longer than ``max_time`` s."""
    times: list[float] = []
    t_all = time.perf_counter()
    while True:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_all
        if len(times) >= min_reps and spent >= min_time and (len(times) >= target_reps or spent >= max_time):
            return times


def time_run(run: Run, batch: int, *, n_showers: int = 4096, seed: int = 0, min_time: float = 0.5,
             max_time: float = 20.0) -> tuple[float, int]:
    """Median ms per shower of ``run.sample`` at ``batch`` and the number of showers timed."""
    rng = np.random.default_rng(seed)
    raw = sample_conditions(batch, None, None, rng, encoder=run.conditions, pool=run.pool)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN replacement warnings of untrained models

        def call() -> None:
            run.sample(raw, gen, batch=batch)

        for _ in range(2):  # warm-up: allocator, lazy init, cudnn autotune
            call()
        reps = max(3, math.ceil(n_showers / batch))
        times = _time_calls(call, run.device, min_reps=3, min_time=min_time, max_time=max_time, target_reps=reps)
    return 1000.0 * statistics.median(times) / batch, len(times) * batch


def _reference_particle(run: Run) -> str | int:
    if run.particle_pdgs:
        return run.particle_pdgs[0]
    return run.info.get("particle") or "photon"


def reference_ms(run: Run, *, n: int = 200, seed: int = 0, engine: str = "mc") -> float | None:
    """ms per shower of ``engine`` for the run's geometry, particle and energy range (None if unavailable).

    The energies are log-uniform over the run's range. For ``engine="geant4"`` the worker's
    start-up is excluded (a first call warms it up) and ``n`` showers are timed on one process.
    """
    try:
        from .simulate import get_engine, simulate
    except ImportError:
        return None
    lo, hi = run.conditions.energy_range_mev
    spec = f"{lo / 1000:.6g}" if hi / lo < 1.0001 else f"log:{lo / 1000:.6g}:{hi / 1000:.6g}"
    particle = _reference_particle(run)
    try:
        if engine == "mc":
            simulate(run.geometry, particle, 4, energy=spec, seed=seed)  # warm-up (tables, caches)
            t0 = time.perf_counter()
            simulate(run.geometry, particle, n, energy=spec, seed=seed)
            return 1000.0 * (time.perf_counter() - t0) / n
        from .simulate.conditions import parse_conditions, resolve_particle

        eng = get_engine(engine)  # one instance: the warm-up starts its worker, the timed call reuses it
        pdg = resolve_particle(particle)
        rng = np.random.default_rng(seed)
        cond = parse_conditions(spec, "0", "0", "0").sample(n + 1, rng)
        one = {k: v[:1] for k, v in cond.items()}
        rest = {k: v[1:] for k, v in cond.items()}
        try:
            eng.simulate_block(run.geometry, pdg, one["energy"], one["theta"], one["phi"], one["position"], rng)
            t0 = time.perf_counter()
            eng.simulate_block(run.geometry, pdg, rest["energy"], rest["theta"], rest["phi"], rest["position"], rng)
            return 1000.0 * (time.perf_counter() - t0) / n
        finally:
            if hasattr(eng, "close"):
                eng.close()
    except Exception as exc:  # the engine may not support this geometry/particle: report, do not fail
        warnings.warn(f"{engine} engine failed for {run.geometry.name!r}/{particle}: {exc}", RuntimeWarning, stacklevel=2)
        return None


def geant4_available() -> bool:
    """True when the extra ``calosim[geant4]`` is installed (geant4_pybind is not imported here)."""
    return importlib.util.find_spec("geant4_pybind") is not None


def bench(run_dirs: str | Path | Iterable[str | Path], *, device: str = "cpu",
          batches: Sequence[int] = DEFAULT_BATCHES, n_showers: int = 4096, reference: bool = True, seed: int = 0,
          min_time: float = 0.5, reference_n: int = 200, which: str = "final", geant4: bool | None = None,
          geant4_n: int = 20) -> list[dict[str, Any]]:
    """Time sampling of each run for each batch size; return one row per (run, batch).

    Rows: ``{model, device, batch, ms_per_shower, reference_ms_per_shower, speedup,
    geant4_ms_per_shower, speedup_vs_geant4}`` plus ``run`` (directory) and ``n_showers``
    (showers timed). Each batch size is timed over about ``n_showers`` showers (at least 3
    calls and ``min_time`` seconds); batch 1 uses at most ``n_showers // 16`` showers.
    ``speedup`` = reference / model time per shower. ``geant4`` (default: when the extra is
    installed) times ``geant4_n`` Geant4 showers per geometry/particle/energy range.
    """
    if geant4 is None:
        geant4 = geant4_available()
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    rows: list[dict[str, Any]] = []
    ref_cache: dict[tuple[str, str, str, str], float | None] = {}
    for rd in run_dirs:
        run = load_run(rd, device=device, which=which)
        key = (run.geometry.to_json(), str(_reference_particle(run)), repr(run.conditions.energy_range_mev))
        ref = g4 = None
        if reference:
            if ("mc", *key) not in ref_cache:
                ref_cache[("mc", *key)] = reference_ms(run, n=reference_n, seed=seed)
            ref = ref_cache[("mc", *key)]
        if geant4 and run.geometry.sampling is not None:
            if ("geant4", *key) not in ref_cache:
                ref_cache[("geant4", *key)] = reference_ms(run, n=geant4_n, seed=seed, engine="geant4")
            g4 = ref_cache[("geant4", *key)]
        for b in batches:
            b = int(b)
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1, got {b}")
            target = max(b, n_showers // 16) if b == 1 else max(b, n_showers)
            ms, n_timed = time_run(run, b, n_showers=target, seed=seed, min_time=min_time)
            rows.append({
                "model": run.model_name, "device": str(run.device), "batch": b, "ms_per_shower": ms,
                "reference_ms_per_shower": ref, "speedup": (ref / ms) if ref is not None and ms > 0 else None,
                "geant4_ms_per_shower": g4, "speedup_vs_geant4": (g4 / ms) if g4 is not None and ms > 0 else None,
                "run": str(rd), "n_showers": n_timed,
            })
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of bench rows (one line per row, aligned columns)."""
    headers = ["model", "device", "batch", "ms/shower", "reference ms/shower", "speedup", "Geant4 ms/shower",
               "speedup vs Geant4"]
    body = [[_fmt(r.get(k)) for k in ROW_KEYS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    right = {2, 3, 4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def write_json(rows: Sequence[dict[str, Any]], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``{"rows": rows, "environment": {...}}`` atomically to ``path`` (an existing file only
    with ``overwrite``: ``--json data.h5`` must not turn a shower file into JSON)."""
    from . import __version__

    env = {"calosim": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps({"rows": list(rows), "environment": env}, indent=2, default=str) + "\n")
    return path
