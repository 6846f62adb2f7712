"""Input checks and thread budgeting shared by the metric modules (no heavy imports)."""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["finite_matrix", "free_cores"]


def finite_matrix(x: ArrayLike, which: str, dtype: DTypeLike = np.float64, *, allow_1d: bool = False) -> np.ndarray:
    """``x`` as a finite ``(N, D)`` array of ``dtype``, or a one-line ValueError naming ``which``
    and the first offending columns. ``allow_1d``: an ``(N,)`` vector is read as one column."""
    a = np.asarray(x, dtype=dtype)
    if allow_1d and a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{which} must have shape (N, D), got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        cols = np.unique(np.nonzero(bad)[1])[:10].tolist()
        raise ValueError(f"{which}: {int(bad.sum())} non-finite value(s) (NaN/inf) in column(s) {cols}")
    return a


def free_cores(max_threads: int) -> int:
    """Threads worth using: cores not already busy (1-min load average), at least 1, at most ``max_threads``.

    Oversubscribed OpenMP threads spin instead of working: with 2 threads on 2 cores that
    other processes also use, training was measured ~25x slower than with 1 thread.
    """
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return max_threads
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(max_threads, int(n_cpu - busy + 0.5)))
