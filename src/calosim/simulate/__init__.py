"""Reference shower simulators: ``simulate(...) -> ShowerData`` and streamed ``simulate_to_file``.

Engines are registered by name in :data:`ENGINES` (``mc`` is the built-in parameterised Monte
Carlo of :mod:`calosim.simulate.mc`; a Geant4 engine lives in its own module and registers itself
with :func:`register_engine`). An engine only has to implement :class:`Engine.simulate_block`;
this module owns condition sampling, seeding, chunking, progress and file writing.

Reproducibility: showers are simulated in blocks of :data:`BLOCK` showers; block ``b`` draws
all its random numbers from ``SeedSequence(seed, spawn_key=(b,))``. The ``chunk`` argument only
sets how many showers are held in memory / written at once, so ``simulate`` and
``simulate_to_file`` give identical showers for the same ``(seed, n)`` whatever the chunk size.

>>> from calosim.simulate import simulate
>>> data = simulate("calogan", "e+", 100, energy="log:1:100", seed=1)   # doctest: +SKIP
>>> data.showers.shape, data.conditions["momentum"].shape                # doctest: +SKIP
((100, 504), (100, 3))
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..geometry import Geometry, get_geometry
from ..io import ShowerData, ShowerWriter
from .conditions import (
    CANONICAL_PARTICLES, PARTICLE_MASS_MEV, PARTICLES, ConditionSpec, PositionSpec, RangeSpec, parse_conditions,
    parse_position, parse_range, particle_name, resolve_particle,
)
from .mc import MCEngine

__all__ = [
    "simulate", "simulate_to_file", "iter_simulate", "Engine", "ENGINES", "register_engine", "get_engine",
    "PARTICLES", "CANONICAL_PARTICLES", "resolve_particle", "particle_name", "parse_range", "parse_position",
    "parse_conditions", "RangeSpec", "PositionSpec", "ConditionSpec", "BLOCK", "block_rngs",
]

#: Showers per random-stream block (fixed: changing it changes the showers of a seed).
BLOCK = 512
CONDITIONS = ("pdg", "momentum", "position", "theta", "phi")


class Engine(Protocol):
    """What a simulation engine provides."""

    name: str
    version: str

    def simulate_block(self, geometry: Geometry, pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray,
                       position: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``energy`` (n,) MeV, ``theta``/``phi`` (n,) rad, ``position`` (n, 2) mm ->
        ``showers`` (n, n_cells) float32 MeV and ``overflow`` (n, n_layers) float32 MeV."""
        ...


#: Engine name -> zero-argument factory.
ENGINES: dict[str, Callable[[], Engine]] = {}


def register_engine(name: str) -> Callable[[Callable[[], Engine]], Callable[[], Engine]]:
    """Decorator registering an engine factory (a class or function) under ``name``."""

    def deco(factory: Callable[[], Engine]) -> Callable[[], Engine]:
        if name in ENGINES:
            raise ValueError(f"simulation engine {name!r} is registered twice")
        ENGINES[name] = factory
        return factory

    return deco


def get_engine(name: str) -> Engine:
    """Instantiate a registered engine; unknown names raise ``ValueError`` listing valid ones.

    An engine living in its own module ``calosim/simulate/<name>.py`` (e.g. ``geant4``) is
    imported on first use; the module registers itself with :func:`register_engine`.
    """
    if name not in ENGINES and name.isidentifier() and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:
            raise ValueError(f"simulation engine {name!r} is not available: {exc}") from None
    if name not in ENGINES:
        raise ValueError(f"unknown simulation engine {name!r}; valid: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]()


register_engine("mc")(MCEngine)


def block_rngs(seed: int, block: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent ``(conditions, physics)`` generators of block ``block`` of a run with ``seed``."""
    ss = np.random.SeedSequence(seed, spawn_key=(block,))
    c, p = ss.spawn(2)
    return np.random.default_rng(c), np.random.default_rng(p)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _geometry(geometry: Geometry | str) -> Geometry:
    return get_geometry(geometry) if isinstance(geometry, str) else geometry


def _momentum(pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``(n, 3)`` momentum (MeV) for total energy ``energy`` along (theta, phi)."""
    m = PARTICLE_MASS_MEV[pdg]
    p = np.sqrt(np.maximum(energy ** 2 - m ** 2, 0.0))
    st = np.sin(theta)
    return np.stack([p * st * np.cos(phi), p * st * np.sin(phi), p * np.cos(theta)], axis=1)


def _run_attrs(eng: Engine, pdg: int, seed: int, spec: ConditionSpec) -> dict[str, Any]:
    return {"engine": eng.name, "engine_version": getattr(eng, "version", ""), "seed": seed,
            "particle": particle_name(pdg), "pdg": pdg, "block_size": BLOCK, **spec.as_attrs(),
            "energy_definition": "total energy of the incident particle (MeV)",
            "cell_energy_scale": "electromagnetic scale (visible energy / sampling fraction), MeV",
            "energy_scale": "em-scale",
            # an engine may add its own provenance (Geant4: version, physics list, cut, data source)
            **(eng.provenance() if hasattr(eng, "provenance") else {})}


def iter_simulate(geometry: Geometry | str, particle: str | int, n: int, *, energy: str | float = "1:100",
                  theta: str | float = "0", phi: str | float = "0", position: str | float = "0", seed: int = 0,
                  chunk: int = 10000, engine: str = "mc") -> Iterator[ShowerData]:
    """Yield the showers of a run as :class:`ShowerData` chunks of about ``chunk`` showers.

    Chunks are whole :data:`BLOCK` blocks (``chunk`` is rounded up to a multiple of it), except
    the last. Arguments as for :func:`simulate`.
    """
    geo = _geometry(geometry)
    pdg = resolve_particle(particle)
    spec = parse_conditions(energy, theta, phi, position)
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of showers must be a non-negative integer, got {n!r}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    eng = get_engine(engine)
    attrs = _run_attrs(eng, pdg, seed, spec)
    per = max(1, -(-int(chunk) // BLOCK))  # blocks per chunk
    n_blocks = -(-int(n) // BLOCK)
    for b0 in range(0, n_blocks, per):
        parts: list[tuple[np.ndarray, ...]] = []
        for b in range(b0, min(b0 + per, n_blocks)):
            m = min(BLOCK, n - b * BLOCK)
            rc, rp = block_rngs(seed, b)
            cond = spec.sample(m, rc)
            showers, overflow = eng.simulate_block(geo, pdg, cond["energy"], cond["theta"], cond["phi"],
                                                   cond["position"], rp)
            parts.append((showers, overflow, cond["energy"], cond["theta"], cond["phi"], cond["position"]))
        showers, overflow, e, th, ph, pos = (np.concatenate(p) for p in zip(*parts))
        conditions = {
            "pdg": np.full(len(e), pdg, dtype=np.int32),
            "momentum": _momentum(pdg, e, th, ph).astype(np.float32),
            "position": pos.astype(np.float32), "theta": th.astype(np.float32), "phi": ph.astype(np.float32),
        }
        yield ShowerData(showers, e.reshape(-1, 1), geo, conditions, overflow if geo.overflow else None, dict(attrs))


def _progress(total: int, description: str):  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = prog.add_task(description, total=total, rate="")
    return prog, task


def _advance(prog: Any, task: Any, k: int) -> None:
    prog.advance(task, k)
    t = next(t for t in prog.tasks if t.id == task)
    if t.elapsed:
        prog.update(task, rate=f"{t.completed / t.elapsed:,.0f} showers/s")


def simulate(geometry: Geometry | str, particle: str | int, n: int, *, energy: str | float = "1:100",
             theta: str | float = "0", phi: str | float = "0", position: str | float = "0", seed: int = 0,
             progress: bool = False, chunk: int = 10000, engine: str = "mc") -> ShowerData:
    """Simulate ``n`` showers of ``particle`` in ``geometry`` (a :class:`Geometry` or preset name).

    Specs use command-line units: ``energy`` GeV (``"50"``, ``"1:100"`` uniform,
    ``"log:1:100"`` log-uniform), ``theta``/``phi`` degrees, ``position`` mm (``"0"``,
    ``"-20:20"`` for x and y, or ``"X,Y"``). Returns :class:`~calosim.io.ShowerData` with
    ``showers`` (N, n_cells) MeV, ``incident_energies`` (N, 1) MeV, conditions ``pdg`` (N,),
    ``momentum`` (N, 3) MeV, ``position`` (N, 2) mm, ``theta``/``phi`` (N,) rad, ``overflow``
    (N, n_layers) MeV if ``geometry.overflow``, and provenance ``attrs``. ``chunk`` bounds the
    showers generated per step (progress granularity); it does not change the result.
    """
    geo = _geometry(geometry)
    it = iter_simulate(geo, particle, n, energy=energy, theta=theta, phi=phi, position=position, seed=seed,
                       chunk=chunk, engine=engine)
    parts: list[ShowerData] = []
    if progress:
        prog, task = _progress(int(n), f"simulating {particle} in {geo.name}")
        with prog:
            for part in it:
                parts.append(part)
                _advance(prog, task, len(part))
    else:
        parts = list(it)
    if not parts:  # n == 0: an empty but well-formed result
        pdg = resolve_particle(particle)
        spec = parse_conditions(energy, theta, phi, position)
        empty = {"pdg": np.zeros(0, np.int32), "momentum": np.zeros((0, 3), np.float32),
                 "position": np.zeros((0, 2), np.float32), "theta": np.zeros(0, np.float32),
                 "phi": np.zeros(0, np.float32)}
        return ShowerData(np.zeros((0, geo.n_cells), np.float32), np.zeros((0, 1), np.float32), geo, empty,
                          np.zeros((0, geo.n_layers), np.float32) if geo.overflow else None,
                          _run_attrs(get_engine(engine), pdg, _check_seed(seed), spec))
    return parts[0] if len(parts) == 1 else ShowerData.concatenate(parts)


def simulate_to_file(path: str | Path, geometry: Geometry | str, particle: str | int, n: int, *,
                     energy: str | float = "1:100", theta: str | float = "0", phi: str | float = "0",
                     position: str | float = "0", seed: int = 0, chunk: int = 10000, overwrite: bool = False,
                     progress: bool = True, engine: str = "mc", attrs: dict[str, Any] | None = None) -> Path:
    """Simulate ``n`` showers straight into a native HDF5 file with bounded memory.

    Same arguments and same showers as :func:`simulate` (for equal ``seed`` and ``n``); chunks
    of about ``chunk`` showers are appended through :class:`~calosim.io.ShowerWriter`, so the
    file appears (atomically) only when the run completes. ``attrs`` adds provenance
    attributes. Returns the path.
    """
    geo = _geometry(geometry)
    pdg = resolve_particle(particle)
    spec = parse_conditions(energy, theta, phi, position)
    run_attrs = {**_run_attrs(get_engine(engine), pdg, _check_seed(seed), spec), **(attrs or {})}
    it = iter_simulate(geo, particle, n, energy=energy, theta=theta, phi=phi, position=position, seed=seed,
                       chunk=chunk, engine=engine)
    path = Path(path)
    with ShowerWriter(path, geo, conditions=list(CONDITIONS), overflow=geo.overflow, attrs=run_attrs,
                      overwrite=overwrite) as w:
        def write(part: ShowerData) -> None:
            w.append(part.showers, part.incident_energies, overflow=part.overflow, **part.conditions)

        if progress:
            prog, task = _progress(int(n), f"simulating {particle_name(pdg)} in {geo.name} -> {path.name}")
            with prog:
                for part in it:
                    write(part)
                    _advance(prog, task, len(part))
        else:
            for part in it:
                write(part)
    return path
