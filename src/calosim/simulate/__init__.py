"""Reference shower simulators: ``simulate(...) -> ShowerData`` and streamed ``simulate_to_file``.

Engines are registered by name in :data:`ENGINES` (``mc`` is the built-in parameterised Monte
Carlo of :mod:`calosim.simulate.mc`; a Geant4 engine lives in its own module and registers itself
with :func:`register_engine`). An engine only has to implement :class:`Engine.simulate_block`;
this module owns condition sampling, seeding, chunking, progress and file writing.

Reproducibility: showers are simulated in blocks of :data:`BLOCK` showers; block ``b`` draws
all its random numbers from ``SeedSequence(seed, spawn_key=(b,))``. The ``chunk`` argument only
sets how many showers are held in memory / written at once, so ``simulate`` and
``simulate_to_file`` give identical showers for the same ``(seed, n)`` whatever the chunk size.
The same holds for ``workers`` (threads, one engine instance each, blocks written in order),
``dask`` (a Dask cluster) and ``shard`` (a contiguous block range; shards merge into the full
run): see :mod:`calosim.scaleout`.

>>> from calosim.simulate import simulate
>>> data = simulate("calogan", "e+", 100, energy="log:1:100", seed=1)   # doctest: +SKIP
>>> data.showers.shape, data.conditions["momentum"].shape                # doctest: +SKIP
((100, 504), (100, 3))
"""

from __future__ import annotations

import inspect

import functools
import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..geometry import Geometry, get_geometry
from ..io import ShowerData, ShowerWriter
from ..progress import progress_bar
from ..scaleout import EngineError, dask_client, ordered_map, parse_shard, shard_attrs, shard_blocks, shard_label
from .conditions import (
    CANONICAL_PARTICLES, PARTICLE_MASS_MEV, PARTICLES, ConditionSpec, PositionSpec, RangeSpec, parse_conditions,
    parse_position, parse_range, particle_name, resolve_particle,
)
from .mc import MCEngine

__all__ = [
    "simulate", "simulate_to_file", "iter_simulate", "Engine", "ENGINES", "register_engine", "get_engine",
    "PARTICLES", "CANONICAL_PARTICLES", "resolve_particle", "particle_name", "parse_range", "parse_position",
    "parse_conditions", "RangeSpec", "PositionSpec", "ConditionSpec", "BLOCK", "block_rngs", "EnginePool",
    "simulate_block", "shard_size", "EngineError", "readout",
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


def _geometry(geometry: Geometry | str | Path) -> Geometry:
    return get_geometry(geometry)  # the package resolver: preset name, .json or CaloChallenge .xml


def _momentum(pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``(n, 3)`` momentum (MeV) for total energy ``energy`` along (theta, phi)."""
    m = PARTICLE_MASS_MEV[pdg]
    p = np.sqrt(np.maximum(energy ** 2 - m ** 2, 0.0))
    st = np.sin(theta)
    return np.stack([p * st * np.cos(phi), p * st * np.sin(phi), p * np.cos(theta)], axis=1)


def _engine_provenance(eng: Any, pdg: int) -> dict[str, Any]:
    """The engine's own attributes; for the particle when it takes one (Geant4: its physics list)."""
    params = inspect.signature(eng.provenance).parameters
    return eng.provenance(pdg) if "pdg" in params else eng.provenance()


def _run_attrs(eng: Engine, pdg: int, seed: int, spec: ConditionSpec, geo: Geometry | None = None) -> dict[str, Any]:
    return {"engine": eng.name, "engine_version": getattr(eng, "version", ""), "seed": seed,
            "particle": particle_name(pdg), "pdg": pdg, "block_size": BLOCK, **spec.as_attrs(),
            "energy_definition": "total energy of the incident particle (MeV)",
            "cell_energy_scale": "electromagnetic scale (visible energy / sampling fraction), MeV",
            "energy_scale": "em-scale",
            # an engine may add its own provenance (Geant4: version, physics list, cut, data source)
            **(_engine_provenance(eng, pdg) if hasattr(eng, "provenance") else {}),
            # and per geometry (mc: the Geant4-fitted tuning it used)
            **(eng.geometry_provenance(geo) if geo is not None and hasattr(eng, "geometry_provenance") else {})}


class EnginePool:
    """Engine instances of one name, one per concurrently running block (thread-safe).

    ``acquire()`` hands out an idle instance (making a new one with :func:`get_engine` when all
    are busy), ``release()`` returns it, ``close()`` closes every instance that has ``close``.
    With N worker threads at most N instances exist, each used by one thread at a time.
    """

    def __init__(self, name: str, first: Engine | None = None) -> None:
        self.name = name
        self._idle: list[Engine] = [first] if first is not None else []
        self._all: list[Engine] = list(self._idle)
        self._lock = threading.Lock()

    def acquire(self) -> Engine:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        eng = get_engine(self.name)
        with self._lock:
            self._all.append(eng)
        return eng

    def release(self, eng: Engine) -> None:
        with self._lock:
            self._idle.append(eng)

    def close(self) -> None:
        with self._lock:
            engines, self._all, self._idle = self._all, [], []
        for eng in engines:
            if hasattr(eng, "close"):
                eng.close()


#: Per-process pools used by Dask tasks (live as long as the worker process).
_PROCESS_POOLS: dict[str, EnginePool] = {}
_PROCESS_LOCK = threading.Lock()


def _process_pool(name: str) -> EnginePool:
    with _PROCESS_LOCK:
        if name not in _PROCESS_POOLS:
            _PROCESS_POOLS[name] = EnginePool(name)
        return _PROCESS_POOLS[name]


def simulate_block(geometry: Geometry, pdg: int, spec: ConditionSpec, seed: int, block: int, n: int,
                   engine: str | EnginePool, label: str = "") -> tuple[np.ndarray, ...]:
    """Block ``block`` of a run of ``n`` showers: ``(showers (m, n_cells), overflow (m, n_layers),
    energy (m,) MeV, theta (m,), phi (m,) rad, position (m, 2) mm)`` with ``m <= BLOCK``.

    ``engine``: a pool (local workers) or an engine name (a Dask task: the worker process's own
    pool). An engine's ``RuntimeError`` is raised as :class:`~calosim.scaleout.EngineError`
    naming ``label`` (e.g. the shard), the block and its showers.
    """
    pool = engine if isinstance(engine, EnginePool) else _process_pool(engine)
    lo, hi = block * BLOCK, min(n, (block + 1) * BLOCK)
    rc, rp = block_rngs(seed, block)
    cond = spec.sample(hi - lo, rc)
    eng = pool.acquire()
    try:
        showers, overflow = eng.simulate_block(geometry, pdg, cond["energy"], cond["theta"], cond["phi"],
                                               cond["position"], rp)
    except EngineError:
        raise
    except RuntimeError as exc:
        raise EngineError(f"{label}block {block} (showers {lo}:{hi}) failed in engine {pool.name!r}: {exc}") from exc
    finally:
        pool.release(eng)
    return (readout(np.asarray(showers, np.float32), geometry), np.asarray(overflow, np.float32), cond["energy"],
            cond["theta"], cond["phi"], cond["position"])


#: Smallest cell energy any readout records (1 eV), applied when a geometry has no (or a lower)
#: readout threshold: the engines' exponential tails otherwise leave cells down to 1e-45 MeV.
READOUT_FLOOR_MEV = 1e-6


def readout(showers: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The detector's readout of true cell energies ``(n, n_cells)`` MeV: cells below
    ``geometry.readout_threshold_mev`` (:func:`calosim.features.apply_threshold`), and below
    :data:`READOUT_FLOOR_MEV`, read 0. Cells above are untouched, so is the random stream."""
    from ..features import apply_threshold

    return apply_threshold(showers, geometry, max(geometry.readout_threshold_mev, READOUT_FLOOR_MEV))


def _n_blocks(n: int) -> int:
    return -(-int(n) // BLOCK)


def iter_simulate(geometry: Geometry | str, particle: str | int, n: int, *, energy: str | float = "1:100",
                  theta: str | float = "0", phi: str | float = "0", position: str | float = "0", seed: int = 0,
                  chunk: int = 10000, engine: str = "mc", workers: int = 1,
                  shard: str | tuple[int, int] | None = None, dask: Any = None,
                  on_block: Callable[[int], None] | None = None) -> Iterator[ShowerData]:
    """Yield the showers of a run as :class:`ShowerData` chunks of about ``chunk`` showers.

    Chunks are whole :data:`BLOCK` blocks (``chunk`` is rounded up to a multiple of it), except
    the last. ``workers`` threads (one engine instance each) or a Dask cluster (``dask``: an
    address or a ``Client``) run the blocks; ``shard="K/N"`` yields only that shard's blocks
    (see :mod:`calosim.scaleout`); ``n`` is always the whole run's size. Chunks come in block
    order, and the showers do not depend on ``workers``, ``dask`` or ``chunk``. ``on_block(m)``
    is called as each block of ``m`` showers arrives (progress bars). Other arguments as for
    :func:`simulate`.
    """
    geo = _geometry(geometry)
    pdg = resolve_particle(particle)
    spec = parse_conditions(energy, theta, phi, position)
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of showers must be a non-negative integer, got {n!r}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers!r}")
    sh = parse_shard(shard)
    n = int(n)
    blocks = shard_blocks(sh, _n_blocks(n))
    eng0 = get_engine(engine)
    pool = EnginePool(engine, eng0)
    attrs = {**_run_attrs(eng0, pdg, seed, spec, geo), **shard_attrs(sh, blocks, n)}
    label = shard_label(sh)
    per = max(1, -(-int(chunk) // BLOCK))  # blocks per chunk
    client = None
    try:
        if dask is not None:
            client = dask_client(dask) if isinstance(dask, str) else dask
            run = functools.partial(simulate_block, geo, pdg, spec, seed, n=n, engine=engine, label=label)
        else:
            run = functools.partial(simulate_block, geo, pdg, spec, seed, n=n, engine=pool, label=label)
        results = ordered_map(run, blocks, workers=int(workers), dask=client,
                              describe=lambda b: f"{label}block {b} (showers {b * BLOCK}:{min(n, (b + 1) * BLOCK)})")
        parts: list[tuple[np.ndarray, ...]] = []
        for i, res in enumerate(results, 1):
            parts.append(res)
            if on_block is not None:
                on_block(len(res[0]))
            if len(parts) == per or i == len(blocks):
                yield _chunk(geo, pdg, parts, attrs)
                parts = []
    finally:
        pool.close()
        if client is not None and isinstance(dask, str):
            client.close()


def _chunk(geo: Geometry, pdg: int, parts: list[tuple[np.ndarray, ...]], attrs: dict[str, Any]) -> ShowerData:
    showers, overflow, e, th, ph, pos = (np.concatenate(p) for p in zip(*parts))
    conditions = {
        "pdg": np.full(len(e), pdg, dtype=np.int32),
        "momentum": _momentum(pdg, e, th, ph).astype(np.float32),
        "position": pos.astype(np.float32), "theta": th.astype(np.float32), "phi": ph.astype(np.float32),
    }
    return ShowerData(showers, e.reshape(-1, 1), geo, conditions, overflow if geo.overflow else None, dict(attrs))


def shard_size(n: int, shard: str | tuple[int, int] | None) -> int:
    """Number of showers shard ``K/N`` of a run of ``n`` showers holds (``n`` without a shard)."""
    blocks = shard_blocks(parse_shard(shard), _n_blocks(n))
    return max(0, min(int(n), blocks.stop * BLOCK) - blocks.start * BLOCK) if len(blocks) else 0


def simulate(geometry: Geometry | str, particle: str | int, n: int, *, energy: str | float = "1:100",
             theta: str | float = "0", phi: str | float = "0", position: str | float = "0", seed: int = 0,
             progress: bool = False, chunk: int = 10000, engine: str = "mc", workers: int = 1,
             shard: str | tuple[int, int] | None = None, dask: Any = None) -> ShowerData:
    """Simulate ``n`` showers of ``particle`` in ``geometry`` (a :class:`Geometry` or preset name).

    Specs use command-line units: ``energy`` GeV (``"50"``, ``"1:100"`` uniform,
    ``"log:1:100"`` log-uniform), ``theta``/``phi`` degrees, ``position`` mm (``"0"``,
    ``"-20:20"`` for x and y, or ``"X,Y"``). Returns :class:`~calosim.io.ShowerData` with
    ``showers`` (N, n_cells) MeV, ``incident_energies`` (N, 1) MeV, conditions ``pdg`` (N,),
    ``momentum`` (N, 3) MeV, ``position`` (N, 2) mm, ``theta``/``phi`` (N,) rad, ``overflow``
    (N, n_layers) MeV if ``geometry.overflow``, and provenance ``attrs``. ``chunk`` bounds the
    showers generated per step (progress granularity); it does not change the result, nor do
    ``workers`` (threads) or ``dask`` (a cluster address or Client). ``shard="K/N"`` returns
    only shard K's showers (N = :func:`shard_size`), see :mod:`calosim.scaleout`.
    """
    geo = _geometry(geometry)
    kw = dict(energy=energy, theta=theta, phi=phi, position=position, seed=seed, chunk=chunk, engine=engine,
              workers=workers, shard=shard, dask=dask)
    parts: list[ShowerData] = []
    if progress:
        with progress_bar(shard_size(n, shard), f"simulating {particle} in {geo.name}") as advance:
            parts = list(iter_simulate(geo, particle, n, on_block=advance, **kw))
    else:
        parts = list(iter_simulate(geo, particle, n, **kw))
    if not parts:  # n == 0 or an empty shard: an empty but well-formed result
        pdg = resolve_particle(particle)
        spec = parse_conditions(energy, theta, phi, position)
        sh = parse_shard(shard)
        empty = {"pdg": np.zeros(0, np.int32), "momentum": np.zeros((0, 3), np.float32),
                 "position": np.zeros((0, 2), np.float32), "theta": np.zeros(0, np.float32),
                 "phi": np.zeros(0, np.float32)}
        return ShowerData(np.zeros((0, geo.n_cells), np.float32), np.zeros((0, 1), np.float32), geo, empty,
                          np.zeros((0, geo.n_layers), np.float32) if geo.overflow else None,
                          {**_run_attrs(get_engine(engine), pdg, _check_seed(seed), spec, geo),
                           **shard_attrs(sh, shard_blocks(sh, _n_blocks(n)), n)})
    return parts[0] if len(parts) == 1 else ShowerData.concatenate(parts)


def simulate_to_file(path: str | Path, geometry: Geometry | str, particle: str | int, n: int, *,
                     energy: str | float = "1:100", theta: str | float = "0", phi: str | float = "0",
                     position: str | float = "0", seed: int = 0, chunk: int = 10000, overwrite: bool = False,
                     progress: bool = True, engine: str = "mc", attrs: dict[str, Any] | None = None,
                     workers: int = 1, shard: str | tuple[int, int] | None = None, dask: Any = None,
                     layout: str = "native") -> Path:
    """Simulate ``n`` showers straight into an HDF5 file with bounded memory (any ``layout``).

    Same arguments and same showers as :func:`simulate` (for equal ``seed`` and ``n``); chunks
    of about ``chunk`` showers are appended through :class:`~calosim.io.ShowerWriter`, so the
    file appears (atomically) only when the run completes; on any error (e.g. a failed block,
    :class:`~calosim.scaleout.EngineError`) the temporary file is removed. ``workers`` /
    ``dask`` run blocks in parallel (same file); ``shard="K/N"`` writes shard K with its shard
    attributes, for :func:`calosim.scaleout.merge`. ``attrs`` adds provenance attributes.
    ``layout``: ``native`` (default), ``calogan`` or ``calochallenge`` (these two carry no
    conditions or provenance; a shard must be native). Returns the path.
    """
    geo = _geometry(geometry)
    pdg = resolve_particle(particle)
    spec = parse_conditions(energy, theta, phi, position)
    sh = parse_shard(shard)
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of showers must be a non-negative integer, got {n!r}")
    run_attrs = {**_run_attrs(get_engine(engine), pdg, seed, spec, geo),
                 **shard_attrs(sh, shard_blocks(sh, _n_blocks(n)), int(n)), **(attrs or {})}
    if sh is not None and layout != "native":
        raise ValueError("--shard writes native files (they carry the shard attributes `calosim merge` needs); "
                         "drop --layout or convert the merged file")
    path = Path(path)
    kw = dict(energy=energy, theta=theta, phi=phi, position=position, seed=seed, chunk=chunk, engine=engine,
              workers=workers, shard=sh, dask=dask)
    with ShowerWriter(path, geo, conditions=list(CONDITIONS), overflow=geo.overflow, attrs=run_attrs,
                      overwrite=overwrite, layout=layout) as w:
        def write(part: ShowerData) -> None:
            w.append(part.showers, part.incident_energies, overflow=part.overflow, **part.conditions)

        if progress:
            where = f" ({shard_label(sh)[:-2]})" if sh else ""
            desc = f"simulating {particle_name(pdg)} in {geo.name}{where} -> {path.name}"
            with progress_bar(shard_size(n, sh), desc) as advance:
                for part in iter_simulate(geo, particle, n, on_block=advance, **kw):
                    write(part)
        else:
            for part in iter_simulate(geo, particle, n, **kw):
                write(part)
    return path
