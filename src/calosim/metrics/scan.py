"""One streaming pass over a shower sample: the immutable input of every evaluation step.

The evaluation runs one way: :mod:`.scan` (read each file once) -> :mod:`.blocks` (metric
blocks, each returning a result record) -> :mod:`.plots` (figures as ``(path, caption)``
records) -> :mod:`.report` (HTML / terminal text from the records) -> :mod:`.evaluate`
(the orchestrator). Nothing later writes into an earlier step's objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from ..io import ShowerData, ShowerFile, ShowerFileError, open_showers
from ..progress import Progress
from .angle import angle_observables
from .observables import ShowerSummary, compute_observables

__all__ = ["SampleScan", "Source", "check_same_geometry", "scan", "scan_source"]


# ------------------------------------------------------------------------------------------
# sources: files or in-memory samples behind one chunked interface
# ------------------------------------------------------------------------------------------
class Source:
    """A shower file or :class:`ShowerData`, read in chunks of at most ``max_showers`` rows."""

    def __init__(self, obj: str | Path | ShowerData, label: str, max_showers: int | None,
                 geometry: Geometry | str | None = None, fallback_geometry: Geometry | None = None) -> None:
        self._file: ShowerFile | None = None
        self._data: ShowerData | None = None
        self.name = label
        if isinstance(obj, ShowerData):
            self._data = obj
            self.file: str | None = None
            self.geometry = obj.geometry
            n = len(obj)
        else:
            try:
                self._file = open_showers(obj, geometry)
            except ShowerFileError:
                # a CaloChallenge-layout file with a custom binning carries no geometry: read it
                # with the reference's (its cell count is still checked)
                if geometry is not None or fallback_geometry is None or not _is_bare_layout(obj):
                    raise
                self._file = open_showers(obj, fallback_geometry)
            self.file = str(Path(obj))
            self.geometry = self._file.geometry
            n = len(self._file)
        self.n = n if max_showers is None else min(n, int(max_showers))

    def chunks(self, rows: int) -> Iterator[ShowerData]:
        for lo in range(0, self.n, rows):
            hi = min(lo + rows, self.n)
            if self._data is not None:
                yield self._data.subset(slice(lo, hi))
            else:
                assert self._file is not None
                yield self._file.read(lo, hi)

    @property
    def where(self) -> str:
        return self.file or f"<in-memory sample {self.name!r}>"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _is_bare_layout(path: str | Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("calosim_layout") != "native" and {"showers", "incident_energies"} <= set(f)
    except OSError:
        return False


def _readout_signature(g: Geometry) -> tuple[Any, ...]:
    """What must agree for two samples to be comparable: the cells, not names or materials."""
    sig = []
    for lay in g.layers:
        cells = tuple(round(c, 6) for c in lay.cell_mm) if lay.cell_mm else None
        redges = tuple(round(r, 6) for r in lay.r_edges_mm) if lay.r_edges_mm else None
        sig.append((lay.kind, tuple(lay.shape), cells, redges))
    return tuple(sig)


def _describe(g: Geometry) -> str:
    return f"{g.name!r} ({g.n_cells} cells in {g.n_layers} layers)"


def check_same_geometry(ref: Source, other: Source, what: str) -> None:
    """Raise :class:`ShowerFileError` naming both files if the readout cells differ."""
    if _readout_signature(ref.geometry) != _readout_signature(other.geometry):
        raise ShowerFileError(
            f"{other.where}: {what} geometry {_describe(other.geometry)} does not match the reference "
            f"{ref.where} geometry {_describe(ref.geometry)}; all samples must use the same detector readout"
        )


# ------------------------------------------------------------------------------------------
# one pass over a sample
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleScan:
    """Everything kept from one pass over a sample (for the metric blocks and the plots).

    ``obs``: ``{name: (N,) float32}``; ``e_inc`` (N,) MeV; ``summary`` the accumulated
    profiles; ``sub_showers`` (M, n_cells) / ``sub_e_inc`` (M,) a random subset of raw
    showers (M <= the subset cap) with ``sub_index`` (M,) their row numbers;
    ``threshold_mev`` the voxel cut applied before everything else (None: none); ``angles``
    the principal-axis observables ``{name: (N,) float32}`` in degrees, NaN for showers without
    an axis (:func:`~calosim.metrics.angle.angle_observables`; empty if the file has no ``theta``).
    """

    name: str
    file: str | None
    n: int
    obs: dict[str, np.ndarray]
    e_inc: np.ndarray
    summary: ShowerSummary
    sub_index: np.ndarray
    sub_showers: np.ndarray
    sub_e_inc: np.ndarray
    threshold_mev: float | None = None
    seconds: float = 0.0
    angles: dict[str, np.ndarray] = field(default_factory=dict)

    def without_subset(self) -> SampleScan:
        """The same scan without the raw showers (they are large and only the tests need them)."""
        from dataclasses import replace

        return replace(self, sub_showers=self.sub_showers[:0], sub_e_inc=self.sub_e_inc[:0])


def _chunk_rows(n_cells: int, chunk_mb: float) -> int:
    return int(max(256, min(200_000, chunk_mb * 2**20 // (4 * max(n_cells, 1)))))


Cut = Callable[[np.ndarray], np.ndarray]


def scan_source(src: Source, rng: np.random.Generator, sub_cap: int, chunk_mb: float, progress: Progress,
                threshold_mev: float | None = None, cut: Cut | None = None) -> SampleScan:
    """Read ``src`` once: observables, summaries and a random raw-shower subset.

    ``cut`` maps a chunk's cells ``(n, n_cells)`` to the cells after the voxel cut (a copy);
    ``threshold_mev`` is only recorded.
    """
    t0 = time.perf_counter()
    geo = src.geometry
    if src.n == 0:
        raise ShowerFileError(f"{src.where}: contains no showers")
    m = min(src.n, sub_cap)
    keep = np.sort(rng.choice(src.n, size=m, replace=False)) if m < src.n else np.arange(src.n)
    summary = ShowerSummary(geo)
    obs_parts: dict[str, list[np.ndarray]] = {}
    ang_parts: dict[str, list[np.ndarray]] = {}
    e_parts, sub_s, sub_e = [], [], []
    task = progress.add_task(f"scan {src.name}", src.n)
    lo = 0
    for chunk in src.chunks(_chunk_rows(geo.n_cells, chunk_mb)):
        hi = lo + len(chunk)
        cells = cut(chunk.showers) if cut is not None else chunk.showers
        o = compute_observables(cells, chunk.incident_energies, geo, conditions=chunk.conditions)
        for k, v in o.items():
            obs_parts.setdefault(k, []).append(v.astype(np.float32))  # float32 halves the memory
        if "theta" in chunk.conditions:  # the incidence-angle check (seed 003 PCA)
            ang = angle_observables(cells, geo, chunk.conditions["theta"], chunk.conditions.get("phi"))
            for k, v in ang.items():
                ang_parts.setdefault(k, []).append(v.astype(np.float32))
        e_parts.append(chunk.incident_energies.reshape(-1).astype(np.float64))
        summary.update(cells)
        a, b = np.searchsorted(keep, [lo, hi])
        if b > a:
            sub_s.append(np.array(cells[keep[a:b] - lo], dtype=np.float32))
            sub_e.append(chunk.incident_energies.reshape(-1)[keep[a:b] - lo].astype(np.float64))
        lo = hi
        progress.advance(task, len(chunk))
    return SampleScan(
        name=src.name, file=src.file, n=src.n, obs={k: np.concatenate(v) for k, v in obs_parts.items()},
        e_inc=np.concatenate(e_parts), summary=summary, sub_index=keep,
        sub_showers=np.concatenate(sub_s) if sub_s else np.zeros((0, geo.n_cells), np.float32),
        sub_e_inc=np.concatenate(sub_e) if sub_e else np.zeros(0), threshold_mev=threshold_mev,
        seconds=time.perf_counter() - t0, angles={k: np.concatenate(v) for k, v in ang_parts.items()},
    )


def scan(sample: str | Path | ShowerData, *, name: str = "sample", seed: int = 0, max_showers: int | None = None,
         max_subset: int = 0, geometry: Geometry | str | None = None, chunk_mb: float = 64.0) -> SampleScan:
    """One streaming pass over a sample: observables, summaries (for custom plots / metrics).

    ``max_subset`` raw showers are kept at random (``sub_showers``); 0 keeps none. No voxel
    cut is applied (:func:`calosim.metrics.evaluate.evaluate` applies the geometry's).
    """
    src = Source(sample, name, max_showers, geometry)
    try:
        with Progress(False) as prog:
            return scan_source(src, np.random.default_rng(seed), max_subset, chunk_mb, prog)
    finally:
        src.close()
