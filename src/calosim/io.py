"""Shower files: the native HDF5 layout, the CaloGAN and CaloChallenge layouts, atomic writes.

Native layout (the CaloChallenge convention plus conditions and provenance):

* ``showers`` (N, n_cells) float32, deposited energy per cell in MeV
* ``incident_energies`` (N, 1) float32, MeV
* optional conditions: ``pdg`` (N,), ``momentum`` (N, 3) MeV, ``position`` (N, 2) mm,
  ``theta`` (N,) rad, ``phi`` (N,) rad; optional ``overflow`` (N, n_layers) MeV
* attributes: ``calosim_layout="native"``, ``geometry`` (JSON), provenance (engine, version,
  seed, command line, ...)

CaloGAN layout: ``energy`` (N,) or (N, 1) incident energy in GeV, ``layer_0`` (N, 3, 96),
``layer_1`` (N, 12, 12), ``layer_2`` (N, 12, 6) and ``overflow`` (N, 3) cell energies in MeV.
CaloChallenge layout: ``incident_energies``
(N, 1) MeV and ``showers`` (N, n_voxels) MeV, with the geometry given by the binning XML or a preset.

Writes go to a temporary file beside the target and are renamed at the end, so an interrupted
run never leaves a half-written output. Output safety (:func:`check_writable`, :class:`atomic_path`):
the target directory is checked before any work; a lock file (``.NAME.lock``, ``flock``)
stops two processes writing one output; without ``overwrite`` the final step is an exclusive
link, so an output that appeared meanwhile is never replaced; outputs get the umask's mode;
SIGINT/SIGTERM (with :func:`install_interrupt_handlers`) remove the temporary files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .geometry import Geometry, GeometryError, get_geometry
from .interrupts import INTERRUPTED as _INTERRUPTED
from .interrupts import LIVE_LOCK as _LIVE_LOCK
from .interrupts import LIVE_TMP as _LIVE_TMP
from .interrupts import Interrupted, install_interrupt_handlers, interrupted_signal, remove_temp_files

__all__ = [
    "ShowerData", "ShowerFile", "ShowerWriter", "ShowerFileError", "open_showers", "read_showers",
    "write_showers", "CONDITION_SHAPES", "atomic_path", "check_writable", "OutputError", "Interrupted",
    "install_interrupt_handlers", "check_free_space", "estimate_file_bytes",
]

#: Optional per-shower condition datasets and their shape after the leading N.
CONDITION_SHAPES: dict[str, tuple[int, ...]] = {
    "pdg": (), "momentum": (3,), "position": (2,), "theta": (), "phi": (),
}
CALOGAN_LAYERS = ("layer_0", "layer_1", "layer_2")
#: Largest plausible energy (MeV) of a cell or an incident particle (10 PeV): larger values
#: (e.g. 3e38, the float32 limit) are a corrupt or mis-scaled file, and would overflow sums.
MAX_ENERGY_MEV = 1e10


def _check_dtype(dtype: np.dtype, source: str, name: str) -> None:
    """Energies must be real numbers: refuse boolean, complex, string and compound data."""
    if np.dtype(dtype).kind not in "fiu":
        raise ShowerFileError(f"{source}: field {name!r} has data type {np.dtype(dtype)}, expected real numbers (float)")


class ShowerFileError(ValueError):
    """A shower file is missing, malformed or does not match what was expected."""


@dataclass
class ShowerData:
    """Showers in memory.

    ``showers`` (N, n_cells) MeV; ``incident_energies`` (N, 1) MeV; ``conditions`` maps the
    names in :data:`CONDITION_SHAPES` to (N, ...) arrays; ``overflow`` (N, n_layers) or None.
    """

    showers: np.ndarray
    incident_energies: np.ndarray
    geometry: Geometry
    conditions: dict[str, np.ndarray] = field(default_factory=dict)
    overflow: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ie = np.asarray(self.incident_energies)
        _check_dtype(np.asarray(self.showers).dtype, "<memory>", "showers")
        _check_dtype(ie.dtype, "<memory>", "incident_energies")
        if ie.ndim not in (1, 2) or (ie.ndim == 2 and ie.shape[1] != 1):
            raise ShowerFileError(f"<memory>: field 'incident_energies' has shape {ie.shape}, expected (N,) or (N, 1)")
        self.showers = np.asarray(self.showers, dtype=np.float32)
        self.incident_energies = ie.astype(np.float32).reshape(-1, 1)
        validate(self, "<memory>")

    def __len__(self) -> int:
        return len(self.showers)

    def subset(self, idx: slice | np.ndarray) -> "ShowerData":
        return ShowerData(
            self.showers[idx], self.incident_energies[idx], self.geometry,
            {k: v[idx] for k, v in self.conditions.items()},
            None if self.overflow is None else self.overflow[idx], dict(self.attrs),
        )

    @staticmethod
    def concatenate(parts: list["ShowerData"]) -> "ShowerData":
        if not parts:
            raise ValueError("nothing to concatenate")
        keys = set(parts[0].conditions)
        return ShowerData(
            np.concatenate([p.showers for p in parts]),
            np.concatenate([p.incident_energies for p in parts]),
            parts[0].geometry,
            {k: np.concatenate([p.conditions[k] for p in parts]) for k in keys},
            None if parts[0].overflow is None else np.concatenate([p.overflow for p in parts]),  # type: ignore[misc]
            dict(parts[0].attrs),
        )


def validate(data: ShowerData, source: str) -> None:
    """Raise :class:`ShowerFileError` naming ``source`` and the field for any bad content."""
    n_cells = data.geometry.n_cells
    s = data.showers
    if s.ndim != 2 or s.shape[1] != n_cells:
        raise ShowerFileError(f"{source}: field 'showers' has shape {s.shape}, expected (N, {n_cells}) for geometry {data.geometry.name!r}")
    n = len(s)
    if data.incident_energies.shape != (n, 1):
        raise ShowerFileError(f"{source}: field 'incident_energies' has shape {data.incident_energies.shape}, expected ({n}, 1)")
    _finite_nonneg(s, source, "showers")
    _finite_nonneg(data.incident_energies, source, "incident_energies", strictly_positive=True)
    for key, arr in data.conditions.items():
        if key not in CONDITION_SHAPES:
            raise ShowerFileError(f"{source}: unknown condition {key!r}; known: {', '.join(CONDITION_SHAPES)}")
        want = (n, *CONDITION_SHAPES[key])
        if tuple(arr.shape) != want:
            raise ShowerFileError(f"{source}: field {key!r} has shape {tuple(arr.shape)}, expected {want}")
        if np.asarray(arr).dtype.kind not in "fiu":
            raise ShowerFileError(f"{source}: field {key!r} has data type {np.asarray(arr).dtype}, expected real numbers")
        if not np.all(np.isfinite(arr)):
            raise ShowerFileError(f"{source}: field {key!r} contains NaN or inf")
        if key == "pdg":
            codes = np.asarray(arr, dtype=np.float64).ravel()
            wrong = (codes != np.round(codes)) | (codes == 0)
            if wrong.any():
                raise ShowerFileError(f"{source}: field 'pdg' must hold non-zero integer PDG codes, "
                                      f"found {codes[wrong][0]:g} (row {int(np.argmax(wrong))})")
    if data.overflow is not None:
        want = (n, data.geometry.n_layers)
        if tuple(data.overflow.shape) != want:
            raise ShowerFileError(f"{source}: field 'overflow' has shape {tuple(data.overflow.shape)}, expected {want}")
        _finite_nonneg(data.overflow, source, "overflow")


def _finite_nonneg(a: np.ndarray, source: str, name: str, strictly_positive: bool = False) -> None:
    if a.size == 0:
        return
    if not np.all(np.isfinite(a)):
        bad = int(np.argwhere(~np.isfinite(a))[0][0])
        raise ShowerFileError(f"{source}: field {name!r} contains NaN or inf (first at row {bad})")
    hi = float(a.max())
    if hi > MAX_ENERGY_MEV:
        bad = int(np.argwhere(a > MAX_ENERGY_MEV)[0][0])
        raise ShowerFileError(f"{source}: field {name!r} holds {hi:g} MeV (row {bad}), above the plausible "
                              f"{MAX_ENERGY_MEV:g} MeV: corrupt or not in MeV?")
    lo = float(a.min())
    if lo < 0 or (strictly_positive and lo <= 0):
        bad = int(np.argwhere(a < 0 if not strictly_positive else a <= 0)[0][0])
        req = "> 0" if strictly_positive else ">= 0"
        raise ShowerFileError(f"{source}: field {name!r} must be {req} MeV, found {lo:g} (row {bad})")


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------
class OutputError(ValueError):
    """An output cannot be written (read-only or missing directory, a directory in the way, no space)."""


def _umask() -> int:
    with _LIVE_LOCK:  # os.umask can only be read by setting it
        old = os.umask(0o022)
        os.umask(old)
    return old


def check_writable(path: str | Path, *, overwrite: bool = False, directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; return it. Creates nothing.

    Raises ``FileExistsError`` (a file exists, no ``overwrite``) or :class:`OutputError` with
    one line naming the path: a directory (or file) in the way, or a directory where no file
    can be created (read-only, immutable, no permission; tested by creating and removing a probe
    file in the nearest existing directory). ``directory=True`` checks an output directory
    instead of a file (whether an existing one may be reused is the caller's business).
    """
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: exists and is not a directory")
        where = path
    else:
        if path.is_dir():
            raise OutputError(f"{path}: is a directory; give a file name")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
        where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise OutputError(f"{path}: cannot create it: {where} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".calosim-write-check.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {where}: {exc.strerror or exc}") from None
    return path


def estimate_file_bytes(n: int, n_cells: int) -> int:
    """Conservative size (bytes) of a gzip-compressed native file of ``n`` showers of ``n_cells`` cells.

    Measured gzip compression of ``mc`` showers (e+, log:1:1000 GeV): 2.5x on ``calogan``
    (796 bytes/shower), 5x on ``calochallenge-2``; a 2x estimate plus conditions errs on the
    safe side without refusing plausible runs.
    """
    return int(n) * (2 * int(n_cells) + 64)


def check_free_space(path: str | Path, need_bytes: int) -> None:
    """Raise :class:`OutputError` if the file system of ``path`` has less than ``need_bytes`` free."""
    where = Path(path).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if need_bytes > free:
        raise OutputError(f"{path}: needs about {need_bytes / 1e9:,.3g} GB, but only {free / 1e9:,.3g} GB are free "
                          f"in {where}; ask for fewer showers (-n)")


class atomic_path:
    """Context manager yielding a temporary path that becomes ``path`` on success.

    ``with atomic_path("out.h5", overwrite=False) as tmp: write(tmp)``. On an exception (or an
    interrupt, even one swallowed meanwhile) the temporary file is removed and ``path`` is left
    untouched. A lock file beside ``path`` (``flock``) makes a second writer of the same output
    fail at once; without ``overwrite`` the result is linked into place exclusively, so a file
    that appeared at ``path`` meanwhile is never replaced. The file gets mode ``0666 & ~umask``.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, suffix: str | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.suffix = suffix if suffix is not None else self.path.suffix
        self.tmp: Path | None = None
        self._lock_fd: int | None = None
        self._lock_path = self.path.parent / f".{self.path.name}.lock"

    def __enter__(self) -> Path:
        check_writable(self.path, overwrite=self.overwrite)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create {self.path.parent}: {exc.strerror or exc}") from None
        self._lock()
        try:
            if self.path.exists() and not self.overwrite:  # appeared while we waited for nothing: recheck
                raise FileExistsError(f"{self.path}: exists; pass --overwrite (overwrite=True) to replace it")
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.suffix + ".tmp", dir=self.path.parent)
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would ignore the umask
                os.close(fd)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create a file in {self.path.parent}: {exc.strerror or exc}") from None
        except BaseException:
            self._unlock()
            raise
        self.tmp = Path(tmp)
        with _LIVE_LOCK:
            _LIVE_TMP.add(self.tmp)
        return self.tmp

    def _lock(self) -> None:
        import fcntl

        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o666)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create the lock file {self._lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FileExistsError(f"{self.path}: another process is writing this output (lock {self._lock_path})") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                self._lock_path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        tmp = self.tmp
        try:
            if exc_type is None and _INTERRUPTED.is_set():  # an interrupt was swallowed on the way
                raise Interrupted(interrupted_signal())
            if exc_type is None:
                self._finalise(tmp)
        finally:
            tmp.unlink(missing_ok=True)
            with _LIVE_LOCK:
                _LIVE_TMP.discard(tmp)
            self._unlock()

    def _finalise(self, tmp: Path) -> None:
        try:
            # again at the end: writers that replace the file (safetensors) made it 0600 under any umask
            if tmp.is_file():
                os.chmod(tmp, 0o666 & ~_umask())
            if self.overwrite:
                os.replace(tmp, self.path)
                return
            try:
                os.link(tmp, self.path)  # fails if path exists: never replaces a file we did not own
            except FileExistsError:
                raise FileExistsError(f"{self.path}: appeared while this run was writing it; "
                                      "pass --overwrite to replace it (nothing was written)") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if self.path.exists():  # a file system without hard links: best effort
                    raise FileExistsError(f"{self.path}: appeared while this run was writing it; "
                                          "pass --overwrite to replace it") from None
                os.replace(tmp, self.path)
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            raise OutputError(f"{self.path}: could not move the finished output into place: {exc.strerror or exc}") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file atomically (always overwrites)."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
LAYOUTS = ("native", "calogan", "calochallenge")


class ShowerWriter:
    """Stream showers into an HDF5 file with bounded memory (any layout; native by default).

    >>> with ShowerWriter("out.h5", geometry, conditions=["pdg"], attrs={"engine": "mc"}) as w:
    ...     w.append(showers, incident_energies, pdg=pdg)

    Datasets are chunked and gzip-compressed and grow as chunks are appended. The file appears
    under its final name only when the ``with`` block ends without an error. The ``calogan`` and
    ``calochallenge`` layouts hold no conditions or provenance: those given are checked, not written.
    """

    def __init__(self, path: str | Path, geometry: Geometry, *, conditions: list[str] | tuple[str, ...] = (),
                 overflow: bool = False, attrs: dict[str, Any] | None = None, overwrite: bool = False,
                 chunk_rows: int = 1024, compression: int = 4, layout: str = "native") -> None:
        if layout not in LAYOUTS:
            raise ShowerFileError(f"{path}: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        if layout == "calogan" and [l.shape for l in geometry.layers] != [(3, 96), (12, 12), (12, 6)]:
            raise ShowerFileError(f"{path}: the CaloGAN layout needs the 'calogan' geometry, got {geometry.name!r}")
        self.layout = layout
        for c in conditions:
            if c not in CONDITION_SHAPES:
                raise ShowerFileError(f"{path}: unknown condition {c!r}; known: {', '.join(CONDITION_SHAPES)}")
        self.path = Path(path)
        self.geometry = geometry
        self.conditions = tuple(conditions)
        self.has_overflow = overflow
        self.attrs = dict(attrs or {})
        self._atomic = atomic_path(path, overwrite=overwrite)
        self.chunk_rows = chunk_rows
        self.compression = compression
        self.n = 0
        self._f: h5py.File | None = None

    def __enter__(self) -> "ShowerWriter":
        tmp = self._atomic.__enter__()
        try:
            f = self._f = h5py.File(tmp, "w")
            n_cells = self.geometry.n_cells
            cr = max(1, min(self.chunk_rows, (1 << 20) // max(n_cells, 1)))  # ~4 MB float32 chunks
            opts = {"compression": "gzip", "compression_opts": self.compression, "shuffle": True}
            if self.layout == "calogan":
                f.create_dataset("energy", (0, 1), maxshape=(None, 1), dtype="f4", chunks=(4096, 1), **opts)
                for i, lay in enumerate(self.geometry.layers):
                    shp = tuple(lay.shape)
                    f.create_dataset(f"layer_{i}", (0, *shp), maxshape=(None, *shp), dtype="f4",
                                     chunks=(max(1, cr), *shp), **opts)
                f.create_dataset("overflow", (0, 3), maxshape=(None, 3), dtype="f4", chunks=(4096, 3), **opts)
                return self
            f.create_dataset("showers", (0, n_cells), maxshape=(None, n_cells), dtype="f4", chunks=(cr, n_cells), **opts)
            f.create_dataset("incident_energies", (0, 1), maxshape=(None, 1), dtype="f4", chunks=(4096, 1), **opts)
            if self.layout == "calochallenge":
                return self
            for c in self.conditions:
                shp = CONDITION_SHAPES[c]
                dt = "i4" if c == "pdg" else "f4"
                f.create_dataset(c, (0, *shp), maxshape=(None, *shp), dtype=dt, chunks=(4096, *shp), **opts)
            if self.has_overflow:
                nl = self.geometry.n_layers
                f.create_dataset("overflow", (0, nl), maxshape=(None, nl), dtype="f4", chunks=(4096, nl), **opts)
            f.attrs["calosim_layout"] = "native"
            f.attrs["geometry"] = self.geometry.to_json()
            f.attrs["geometry_name"] = self.geometry.name
            prov = {"calosim_version": _version(), "command": " ".join(sys.argv)}
            prov.update(self.attrs)
            for k, v in prov.items():
                f.attrs[k] = v if isinstance(v, (str, int, float, bool, np.number)) else json.dumps(v)
        except BaseException:
            self._close()
            self._atomic.__exit__(RuntimeError, None, None)
            raise
        return self

    def append(self, showers: np.ndarray, incident_energies: np.ndarray, *, overflow: np.ndarray | None = None,
               **conditions: np.ndarray) -> None:
        """Append a chunk: ``showers`` (n, n_cells), ``incident_energies`` (n,) or (n, 1), conditions (n, ...)."""
        if self._f is None:
            raise RuntimeError("ShowerWriter.append outside of a 'with' block")
        data = ShowerData(showers, incident_energies, self.geometry,
                          {k: np.asarray(v) for k, v in conditions.items()},
                          None if overflow is None else np.asarray(overflow, dtype=np.float32))
        if set(conditions) != set(self.conditions):
            raise ShowerFileError(f"{self.path}: append got conditions {sorted(conditions)}, file declares {sorted(self.conditions)}")
        if (overflow is not None) != self.has_overflow:
            raise ShowerFileError(f"{self.path}: overflow {'missing' if self.has_overflow else 'not declared'} in append")
        m = len(data)
        lo, hi = self.n, self.n + m
        f = self._f
        if self.layout == "calogan":
            ov = data.overflow if data.overflow is not None else np.zeros((m, 3), np.float32)
            items = [("energy", data.incident_energies / 1000.0),  # GeV
                     *[(f"layer_{i}", img) for i, img in enumerate(self.geometry.images(data.showers))], ("overflow", ov)]
        elif self.layout == "calochallenge":
            items = [("showers", data.showers), ("incident_energies", data.incident_energies)]
        else:
            items = [("showers", data.showers), ("incident_energies", data.incident_energies),
                     *[(c, data.conditions[c]) for c in self.conditions],
                     *([("overflow", data.overflow)] if self.has_overflow else [])]
        for name, arr in items:
            ds = f[name]
            ds.resize(hi, axis=0)
            ds[lo:hi] = arr
        self.n = hi

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close()
        self._atomic.__exit__(exc_type, exc, tb)


def write_showers(path: str | Path, data: ShowerData, *, overwrite: bool = False, attrs: dict[str, Any] | None = None,
                  layout: str = "native", chunk: int = 65536) -> Path:
    """Write ``data`` to ``path`` in the ``native``, ``calogan`` or ``calochallenge`` layout."""
    path = Path(path)
    with ShowerWriter(path, data.geometry, conditions=list(data.conditions), overflow=data.overflow is not None,
                      attrs={**data.attrs, **(attrs or {})}, overwrite=overwrite, layout=layout) as w:
        for lo in range(0, max(len(data), 1), chunk):
            sub = data.subset(slice(lo, lo + chunk))
            if len(sub):
                w.append(sub.showers, sub.incident_energies, overflow=sub.overflow, **sub.conditions)
    return path


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def _version() -> str:
    from . import __version__
    return __version__


def detect_layout(f: h5py.File) -> str:
    keys = set(f.keys())
    if f.attrs.get("calosim_layout") == "native":
        return "native"
    if {"layer_0", "layer_1", "layer_2", "energy"} <= keys:
        return "calogan"
    if {"showers", "incident_energies"} <= keys:
        return "calochallenge"
    raise ShowerFileError(
        f"{f.filename}: unknown layout: found datasets {sorted(keys)}; expected 'showers' + 'incident_energies' "
        "(native/CaloChallenge) or 'energy' + 'layer_0..2' (CaloGAN)"
    )


def _guess_calochallenge_geometry(n_cells: int, source: str) -> Geometry:
    by_cells = {368: "calochallenge-1-photons", 533: "calochallenge-1-pions", 6480: "calochallenge-2", 40500: "calochallenge-3"}
    if n_cells not in by_cells:
        raise ShowerFileError(
            f"{source}: CaloChallenge-layout file with {n_cells} voxels matches no known binning "
            "(368, 533, 6480, 40500); give its binning: --geometry FILE.xml (or a preset / geometry .json; "
            "Python: geometry=)"
        )
    return get_geometry(by_cells[n_cells])


class ShowerFile:
    """A lazily read shower file of any supported layout.

    ``len(f)``, ``f.geometry``, ``f.layout``, ``f.read(start, stop) -> ShowerData`` and
    ``f.iter_chunks(size)`` read only what is asked for. Use as a context manager.
    """

    def __init__(self, path: str | Path, geometry: Geometry | str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ShowerFileError(f"{self.path}: file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise ShowerFileError(f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
        try:
            self._open(geometry)
        except BaseException:
            self._f.close()
            raise

    def _open(self, geometry: Geometry | str | None) -> None:
        f, src = self._f, str(self.path)
        self.layout = detect_layout(f)
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if isinstance(geometry, (str, Path)):
            geometry = get_geometry(geometry)
        required = (*CALOGAN_LAYERS, "energy") if self.layout == "calogan" else ("showers", "incident_energies")
        for key in required:
            if key not in f:
                raise ShowerFileError(f"{src}: {self.layout} file has no dataset {key!r} (found {sorted(f.keys())})")
        for key in (*required, *[k for k in (*CONDITION_SHAPES, "overflow") if k in f]):
            if not isinstance(f[key], h5py.Dataset):
                raise ShowerFileError(f"{src}: {key!r} is an HDF5 {type(f[key]).__name__.lower()}, expected a dataset")
            if f[key].ndim == 0:
                raise ShowerFileError(f"{src}: field {key!r} is a scalar, expected one row per shower")
        for key in ("showers", "incident_energies", "energy", *CALOGAN_LAYERS, "overflow"):
            if key in f:
                _check_dtype(f[key].dtype, src, key)
        if self.layout == "native":
            raw_geo = self.attrs.get("geometry")
            if not isinstance(raw_geo, str):
                got = "missing" if raw_geo is None else f"a {type(raw_geo).__name__}, not JSON text"
                raise ShowerFileError(f"{src}: attribute 'geometry' is {got}; expected the geometry's JSON description")
            try:
                file_geo = Geometry.from_json(raw_geo)
            except (KeyError, TypeError, AttributeError, GeometryError) as exc:
                raise ShowerFileError(f"{src}: attribute 'geometry' is malformed ({exc})") from None
            if geometry is not None and geometry.n_cells != file_geo.n_cells:
                raise ShowerFileError(f"{src}: file geometry {file_geo.name!r} ({file_geo.n_cells} cells) does not match requested {geometry.name!r} ({geometry.n_cells} cells)")
            self.geometry = geometry or file_geo
        elif self.layout == "calogan":
            self.geometry = geometry or get_geometry("calogan")
            for i, want in enumerate([(3, 96), (12, 12), (12, 6)]):
                got = f[f"layer_{i}"].shape[1:]
                if tuple(got) != want:
                    raise ShowerFileError(f"{src}: field 'layer_{i}' has per-shower shape {tuple(got)}, expected {want}")
        else:
            n_cells = f["showers"].shape[1] if f["showers"].ndim == 2 else -1
            self.geometry = geometry or _guess_calochallenge_geometry(n_cells, src)
        self.n = self._length()

    def _length(self) -> int:
        f, src = self._f, str(self.path)
        if self.layout == "calogan":
            n = f["energy"].shape[0]
            for k in (*CALOGAN_LAYERS, "overflow"):
                if k in f and f[k].shape[0] != n:
                    raise ShowerFileError(f"{src}: field {k!r} has {f[k].shape[0]} rows, 'energy' has {n}")
            return n
        s = f["showers"]
        if s.ndim != 2 or s.shape[1] != self.geometry.n_cells:
            raise ShowerFileError(f"{src}: field 'showers' has shape {s.shape}, expected (N, {self.geometry.n_cells}) for geometry {self.geometry.name!r}")
        n = s.shape[0]
        ie = f["incident_energies"]
        if ie.ndim > 2 or (ie.ndim == 2 and ie.shape[1] != 1):
            raise ShowerFileError(f"{src}: field 'incident_energies' has shape {ie.shape}, expected ({n},) or ({n}, 1)")
        if ie.shape[0] != n:
            raise ShowerFileError(f"{src}: field 'incident_energies' has {ie.shape[0]} rows, 'showers' has {n}")
        for k in (*CONDITION_SHAPES, "overflow"):
            if k in f and f[k].shape[0] != n:
                raise ShowerFileError(f"{src}: field {k!r} has {f[k].shape[0]} rows, 'showers' has {n}")
        return n

    @property
    def conditions(self) -> list[str]:
        return [k for k in CONDITION_SHAPES if k in self._f]

    def __len__(self) -> int:
        return self.n

    def __enter__(self) -> "ShowerFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def read(self, start: int = 0, stop: int | None = None) -> ShowerData:
        """Rows ``[start, stop)`` as :class:`ShowerData` (validated)."""
        stop = self.n if stop is None else min(stop, self.n)
        f, src, sl = self._f, str(self.path), slice(start, stop)
        try:
            if self.layout == "calogan":
                e = np.asarray(f["energy"][sl], dtype=np.float64).reshape(-1, 1) * 1000.0  # GeV -> MeV
                imgs = [np.asarray(f[k][sl], dtype=np.float32) for k in CALOGAN_LAYERS]
                showers = self.geometry.from_images(imgs)
                ov = np.asarray(f["overflow"][sl], dtype=np.float32) if "overflow" in f else None
                data = ShowerData.__new__(ShowerData)
                data.showers, data.incident_energies = showers.astype(np.float32), e.astype(np.float32)
                data.geometry, data.conditions, data.overflow, data.attrs = self.geometry, {}, ov, dict(self.attrs)
            else:
                conds = {k: np.asarray(f[k][sl]) for k in self.conditions}
                ov = np.asarray(f["overflow"][sl], dtype=np.float32) if "overflow" in f else None
                data = ShowerData.__new__(ShowerData)
                data.showers = np.asarray(f["showers"][sl], dtype=np.float32)
                data.incident_energies = np.asarray(f["incident_energies"][sl], dtype=np.float32).reshape(-1, 1)
                data.geometry, data.conditions, data.overflow, data.attrs = self.geometry, conds, ov, dict(self.attrs)
        except OSError as exc:
            raise ShowerFileError(f"{src}: could not read rows {start}:{stop} (truncated or corrupt file?): {exc}") from None
        validate(data, src)
        return data

    def incident_energies(self) -> np.ndarray:
        """All incident energies ``(N,)`` MeV, reading only that dataset."""
        if self.layout == "calogan":
            return np.asarray(self._f["energy"][:], dtype=np.float64).reshape(-1) * 1000.0
        return np.asarray(self._f["incident_energies"][:], dtype=np.float64).reshape(-1)

    def iter_chunks(self, size: int = 65536) -> Iterator[ShowerData]:
        for lo in range(0, self.n, size):
            yield self.read(lo, lo + size)


def open_showers(path: str | Path, geometry: Geometry | str | None = None) -> ShowerFile:
    """Open a shower file lazily (layout detected). See :class:`ShowerFile`."""
    return ShowerFile(path, geometry)


def read_showers(path: str | Path, geometry: Geometry | str | None = None, n: int | None = None) -> ShowerData:
    """Read (the first ``n``) showers of a file of any supported layout into memory."""
    with ShowerFile(path, geometry) as f:
        return f.read(0, n)
