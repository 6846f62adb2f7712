"""Scale-out for any engine (and for ``generate``): worker threads, shards, a Dask cluster, merging.

A run is a fixed sequence of *blocks* (``calosim.simulate.BLOCK`` showers for ``simulate``,
``calosim.generate.GEN_BLOCK`` for ``generate``); block ``b`` draws all its random numbers from
``SeedSequence(seed, spawn_key=(b,))``. Hence:

* ``workers=N`` runs blocks on N threads (one engine instance per thread) and writes them in
  block order: the file does not depend on N.
* ``shard=(K, N)`` runs only the contiguous blocks ``[floor(K nb / N), floor((K+1) nb / N))``
  (``nb`` = blocks of the whole run); :func:`merge` of all N shard files equals the unsharded run
  exactly. Shard files record ``shard_index``, ``shard_count``, ``block_start``, ``block_stop``
  and ``n_total``.
* ``dask=ADDRESS`` sends the blocks to an existing Dask cluster; tasks return arrays and the
  client writes the file in order (extra ``calosim[dask]``).

A block that fails raises :class:`EngineError` naming the shard, the block and the engine's
message; the output's temporary file is removed.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["EngineError", "parse_shard", "shard_blocks", "shard_attrs", "ordered_map", "dask_client", "merge",
           "SHARD_ATTRS"]

T = TypeVar("T")
R = TypeVar("R")

#: Attributes that differ between the shards of one run (everything else must agree to merge).
SHARD_ATTRS = ("shard_index", "shard_count", "block_start", "block_stop")
#: Attributes ignored by :func:`merge`'s consistency check (they legitimately differ per shard).
_VOLATILE = ("shard_index", "block_start", "block_stop", "command")


class EngineError(RuntimeError):
    """A block (of a shard) failed in its engine or worker; the message names both."""


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``) -> ``(K, N)`` with ``0 <= K < N``; ``None`` stays ``None``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m:
            raise ValueError(f"--shard expects K/N (e.g. 0/4, K in 0..N-1), got {spec!r}")
        k, n = int(m.group(1)), int(m.group(2))
    else:
        k, n = (int(x) for x in spec)
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard K/N needs N >= 1 and 0 <= K < N, got {k}/{n}")
    return k, n


def shard_blocks(shard: tuple[int, int] | None, n_blocks: int) -> range:
    """Blocks of shard ``(K, N)`` of a run of ``n_blocks`` blocks: ``range(floor(K nb/N), floor((K+1) nb/N))``."""
    if shard is None:
        return range(n_blocks)
    k, n = shard
    return range(k * n_blocks // n, (k + 1) * n_blocks // n)


def shard_attrs(shard: tuple[int, int] | None, blocks: range, n_total: int) -> dict[str, int]:
    """File attributes of a shard (empty for an unsharded run)."""
    if shard is None:
        return {}
    return {"shard_index": shard[0], "shard_count": shard[1], "block_start": blocks.start, "block_stop": blocks.stop,
            "n_total": int(n_total)}


def shard_label(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f"shard {shard[0]}/{shard[1]}, "


# ---------------------------------------------------------------------------------------------
# executing blocks
# ---------------------------------------------------------------------------------------------
def dask_client(address: str) -> Any:
    """A ``dask.distributed.Client`` connected to ``address``; a one-line ImportError without the extra."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ImportError("--dask needs Dask: pip install 'calosim[dask]' (dask[distributed])") from None
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"could not connect to the Dask scheduler at {address!r}: {exc}") from None


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 1, dask: Any = None,
                window: int | None = None, describe: Callable[[T], str] = str) -> Iterator[R]:
    """``fn(item)`` for each item, yielded in item order, with at most ``window`` items in flight.

    ``workers`` threads run the items locally (``1``: in this thread); ``dask`` (a
    ``dask.distributed.Client``) runs them as cluster tasks instead (``fn`` and items must
    pickle). A failure cancels what is pending; a non-:class:`EngineError` failure of a Dask
    task (e.g. a killed worker) is raised as an :class:`EngineError` naming ``describe(item)``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers!r}")
    if dask is None and workers == 1:
        for item in items:
            yield fn(item)
        return
    if dask is not None:
        n_par = max(1, sum(dict(dask.nthreads()).values()) if hasattr(dask, "nthreads") else workers)
    else:
        n_par = workers
    window = window or 2 * n_par
    pending: deque[tuple[T, Any]] = deque()
    it = iter(items)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="calosim-worker") if dask is None else None

    def submit() -> bool:
        try:
            item = next(it)
        except StopIteration:
            return False
        fut = pool.submit(fn, item) if pool is not None else dask.submit(fn, item, pure=False)
        pending.append((item, fut))
        return True

    try:
        while len(pending) < window and submit():
            pass
        while pending:
            item, fut = pending.popleft()
            try:
                res = fut.result()
            except (EngineError, ValueError):
                raise
            except Exception as exc:  # noqa: BLE001 - a lost Dask worker, a serialisation error, ...
                if pool is not None:
                    raise
                raise EngineError(f"{describe(item)}: Dask task failed: {type(exc).__name__}: {exc}") from exc
            submit()
            yield res
    finally:
        for _, fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# merging shard files
# ---------------------------------------------------------------------------------------------
def merge(paths: Iterable[str | Path], out: str | Path, *, overwrite: bool = False, progress: bool = False,
          chunk: int = 65536) -> Path:
    """Merge the shard files of one run into ``out`` (native layout), in block order; return ``out``.

    Every file must carry the shard attributes (:data:`SHARD_ATTRS`); all run attributes other
    than the per-shard ones (geometry, conditions spec, engine and version, seed, particle,
    ``shard_count``, ``n_total``, ...) must agree; each shard ``0..N-1`` must appear exactly
    once. Rows are streamed ``chunk`` at a time (bounded memory) through
    :class:`~calosim.io.ShowerWriter`, so ``out`` appears atomically. The merged file keeps the
    run's attributes (without the shard ones) plus ``merged_shards``.
    """
    from .geometry import Geometry
    from .io import ShowerWriter, open_showers
    from .progress import progress_bar

    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("merge: no input files")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite (overwrite=True) to replace it")
    metas: list[tuple[Path, dict[str, Any], list[str], bool, int]] = []
    for p in files:
        with open_showers(p) as f:
            if f.layout != "native":
                raise ValueError(f"{p}: not a calosim native file (layout {f.layout}); only shard files merge")
            a = f.attrs
            for k in SHARD_ATTRS:
                if k not in a:
                    raise ValueError(f"{p}: attribute {k!r} missing: not a shard file (write it with --shard K/N)")
            metas.append((p, a, f.conditions, "overflow" in f._f, len(f)))
    p0, a0, c0, o0, _ = metas[0]
    keys = sorted((set(a0) | set().union(*(m[1] for m in metas[1:]))) - set(_VOLATILE))
    for p, a, conds, ov, n in metas[1:]:
        for k in keys:
            if _norm(a.get(k)) != _norm(a0.get(k)):
                raise ValueError(f"{p}: attribute {k!r} is {_show(a.get(k))}, but {p0} has {_show(a0.get(k))} "
                                 "(not a shard of the same run)")
        if conds != c0 or ov != o0:
            raise ValueError(f"{p}: datasets {conds + ['overflow'] * ov} differ from {p0}'s {c0 + ['overflow'] * o0}")
    count = int(a0["shard_count"])
    by_index: dict[int, tuple[Path, dict[str, Any], int]] = {}
    for p, a, _, _, n in metas:
        k = int(a["shard_index"])
        if k in by_index:
            raise ValueError(f"{p}: attribute 'shard_index' {k}/{count} duplicates {by_index[k][0]}")
        by_index[k] = (p, a, n)
    missing = [k for k in range(count) if k not in by_index]
    if missing:
        raise ValueError(f"merge: shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing "
                         f"(got {', '.join(str(p) for p in files)})")
    order = [by_index[k] for k in range(count)]
    for (pa, aa, _), (pb, ab, _) in zip(order, order[1:]):
        if int(aa["block_stop"]) != int(ab["block_start"]):
            raise ValueError(f"{pb}: attribute 'block_start' is {ab['block_start']}, but {pa} stops at block "
                             f"{aa['block_stop']}")
    total = sum(n for _, _, n in order)
    if "n_total" in a0 and total != int(a0["n_total"]):
        raise ValueError(f"merge: the shards hold {total} showers, attribute 'n_total' says {a0['n_total']}")
    attrs = {k: v for k, v in a0.items() if k not in (*SHARD_ATTRS, "command", "calosim_layout", "geometry",
                                                       "geometry_name", "calosim_version")}
    attrs["merged_shards"] = count
    geo = Geometry.from_json(a0["geometry"])
    bar = progress_bar(total, f"merging {count} shards -> {out.name}", enabled=progress)
    with bar as update, ShowerWriter(out, geo, conditions=c0, overflow=o0, attrs=attrs, overwrite=overwrite) as w:
        for p, _, _ in order:
            with open_showers(p) as f:
                for part in f.iter_chunks(chunk):
                    w.append(part.showers, part.incident_energies, overflow=part.overflow, **part.conditions)
                    update(len(part))
    return out


def _norm(v: Any) -> Any:
    """Attribute values comparable across files (numpy scalars -> Python)."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def _show(v: Any, width: int = 60) -> str:
    """A short printable form of an attribute value (long JSON, e.g. a geometry, is cut)."""
    text = "(absent)" if v is None else repr(_norm(v))
    return text if len(text) <= width else text[:width - 3] + "..."
