"""Memorisation, under-dispersion and mode-collapse checks based on nearest-neighbour distances.

* Memorisation: a model that copies its training showers produces samples much closer to
  a training shower than an independent shower is. The reference for "independent" is a
  held-out sample of the same simulation: compare NN distances generated->train with
  heldout->train (same train set, so the same density of training points). Samples that are
  merely under-dispersed (too close to the typical shower) are also close to training showers,
  but equally close to unseen ones: :func:`memorization_test` asks the mirrored question
  (generated->heldout vs train->heldout) to tell the two apart.
* Mode collapse: a collapsed model produces too similar showers. Compare distances *within*
  the generated sample with distances within a reference sample of the same size.

Distances are Euclidean after an optional per-event transform (see ``transform``):
``"sum"`` (default) divides each shower by its total energy (shape only, unit free),
``"log1p"`` uses log(1 + E) (E in the caller's unit, MeV in calosim), ``"none"`` uses the
inputs as they are (e.g. already standardised high-level features).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._common import finite_matrix, free_cores

__all__ = ["diversity", "memorization_test", "nearest_neighbour_distances", "transform_showers"]


def transform_showers(x: ArrayLike, transform: str = "sum", *, which: str = "input") -> np.ndarray:
    """Per-event transform before distances: ``(N, D)`` -> ``(N, D)`` float64.

    ``"sum"``: ``x / sum(x)`` per row (rows with zero sum stay zero); ``"log1p"``: ``log(1 + x)``
    (x >= 0); ``"none"``: unchanged.
    """
    a = finite_matrix(x, which)
    if a.shape[0] == 0:
        raise ValueError(f"{which} is empty")
    if transform == "sum":
        s = a.sum(axis=1, keepdims=True)
        return np.divide(a, s, out=np.zeros_like(a), where=s != 0)
    if transform == "log1p":
        if (a < 0).any():
            raise ValueError(f"{which}: transform 'log1p' needs non-negative values")
        return np.log1p(a)
    if transform == "none":
        return a
    raise ValueError(f"unknown transform {transform!r}; use 'sum', 'log1p' or 'none'")


def _nn(q: np.ndarray, t: np.ndarray, chunk: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """NN distance and index of each row of q among rows of t (already transformed)."""
    import torch

    tt = torch.from_numpy(t.astype(np.float32))
    t_sq = (tt * tt).sum(1)
    idx = np.empty(len(q), dtype=np.int64)
    old_threads = torch.get_num_threads()
    # threads only for large products and only on cores not already busy: oversubscribed
    # OpenMP threads spin and can be >10x slower than one thread
    big = min(chunk, len(q)) * len(t) * t.shape[1] > 5e7
    torch.set_num_threads(free_cores(old_threads) if big else 1)
    try:
        for i in range(0, len(q), chunk):
            qq = torch.from_numpy(q[i : i + chunk].astype(np.float32))
            # |q - t|^2 = |q|^2 + |t|^2 - 2 q.t in float32 (fast matmul), only to find the argmin
            d2 = t_sq[None, :] - 2.0 * (qq @ tt.T)
            if exclude_self:
                rows = torch.arange(len(qq))
                d2[rows, rows + i] = math.inf
            idx[i : i + chunk] = d2.argmin(1).numpy()
    finally:
        torch.set_num_threads(old_threads)
    # exact float64 distance to the chosen neighbour: copies come out exactly 0
    dist = np.sqrt(np.sum((q - t[idx]) ** 2, axis=1))
    return dist, idx


def nearest_neighbour_distances(
    query: ArrayLike,
    train: ArrayLike,
    *,
    transform: str = "sum",
    chunk: int = 1024,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of each query event to its nearest training event.

    ``query`` ``(N, D)``, ``train`` ``(M, D)`` -> distances ``(N,)`` (and indices into
    ``train`` ``(N,)`` with ``return_index``), after ``transform`` (module docstring).
    Brute force: float32 matrix products in chunks of ``chunk`` queries find the neighbour,
    the returned distance is recomputed exactly in float64. Cost ~ N * M * D.
    """
    q = transform_showers(query, transform, which="query")
    t = transform_showers(train, transform, which="train")
    if q.shape[1] != t.shape[1]:
        raise ValueError(f"feature dimension differs: query D={q.shape[1]}, train D={t.shape[1]}")
    dist, idx = _nn(q, t, chunk, exclude_self=False)
    return (dist, idx) if return_index else dist


def _median_ratio_err(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 200) -> float:
    """Bootstrap std of median(a) / median(b)."""
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    ma = np.median(a[ia], axis=1)
    mb = np.median(b[ib], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rat = ma / mb
    rat = rat[np.isfinite(rat)]
    return float(np.std(rat, ddof=1)) if len(rat) > 1 else float("nan")


def _mean_pairwise(x: np.ndarray, rng: np.random.Generator, n_pairs: int = 20_000) -> float:
    """Mean distance of ``n_pairs`` random pairs of distinct rows (the sample's spread)."""
    n = len(x)
    if n < 2:
        return float("nan")
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # j != i
    return float(np.mean(np.sqrt(np.sum((x[i] - x[j]) ** 2, axis=1))))


def _excess(frac: float, base: float, n: int, factor: float) -> bool:
    """``frac`` (of ``n`` events) significantly (> 5 sigma binomial) and ``factor`` x above ``base``."""
    sigma = math.sqrt(max(base, 1.0 / n) * (1.0 - min(base, 0.5)) / n)
    return frac > max(factor * base, base + 5.0 * sigma)


def memorization_test(
    train: ArrayLike,
    generated: ArrayLike,
    heldout: ArrayLike,
    *,
    transform: str = "sum",
    quantile: float = 0.01,
    ratio_cut: float = 0.8,
    spread_cut: float = 0.9,
    max_events: int | None = 20_000,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, Any]:
    """Is the model copying its training set, or are its samples under-dispersed?

    ``train`` ``(M, D)``: showers the model was trained on; ``generated`` ``(N, D)``;
    ``heldout`` ``(K, D)``: showers from the same simulation *not* used for training.
    ``generated``, ``heldout`` and the training queries are randomly subsampled to at most
    ``max_events`` each (the cost is ~(N + K) * M * D + (M + N) * K * D).

    Two diagnoses that short nearest-neighbour (NN) distances alone would confuse:

    * **memorisation** (copies / near-copies): generated showers are closer to the *training*
      showers than to unseen ones. Compared: generated->train vs heldout->train (``ratio``) and
      generated->heldout vs train->heldout (``ratio_unseen``); ``copy_ratio = ratio /
      ratio_unseen`` is ~1 unless the model copies. Flagged if ``copy_ratio < ratio_cut``, or
      exact (distance < 1e-9) or close copies (closer than the ``quantile`` quantile of the
      heldout->train distances) are significantly (> 5 sigma binomial) and 3x more frequent
      than among held-out showers / than against unseen showers.
    * **under-dispersion**: generated showers sit too near the typical shower, so they are close
      to *any* real shower, seen or not (``ratio`` and ``ratio_unseen`` both < ``ratio_cut``), or
      the sample's spread (mean pairwise distance) is below ``spread_cut`` of the held-out's
      (``spread_ratio``).

    Returns a dict with the distance arrays ``gen_to_train`` ``(N,)``, ``heldout_to_train``
    ``(K,)``, ``gen_to_heldout`` ``(N,)``, ``train_to_heldout`` ``(min(M, max_events),)`` and the
    scalars ``median_gen``, ``median_heldout``, ``ratio`` (+ ``ratio_err``, bootstrap),
    ``ratio_unseen``, ``copy_ratio``, ``threshold``, ``frac_close`` (generated closer to a training
    shower than ``threshold``), ``frac_close_unseen`` (closer to a held-out shower than the same
    quantile of train->heldout), ``expected_frac`` (= ``quantile``), ``frac_exact``,
    ``frac_exact_heldout``, ``spread_ratio``, ``memorization``, ``under_dispersion``,
    ``diagnosis`` (``"memorisation"``, ``"under-dispersion"``, both joined by " and ", or
    ``"none"``), ``flagged`` (= ``memorization``), ``n_train``, ``n_gen``, ``n_heldout``.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    t = transform_showers(train, transform, which="train")
    gen = transform_showers(generated, transform, which="generated")
    held = transform_showers(heldout, transform, which="heldout")
    if not (t.shape[1] == gen.shape[1] == held.shape[1]):
        raise ValueError(
            f"feature dimension differs: train {t.shape[1]}, generated {gen.shape[1]}, heldout {held.shape[1]}"
        )
    t_query = t
    if max_events is not None:
        if len(gen) > max_events:
            gen = gen[rng.choice(len(gen), max_events, replace=False)]
        if len(held) > max_events:
            held = held[rng.choice(len(held), max_events, replace=False)]
        if len(t) > max_events:
            t_query = t[rng.choice(len(t), max_events, replace=False)]
    d_gen, _ = _nn(gen, t, 1024, exclude_self=False)
    d_held, _ = _nn(held, t, 1024, exclude_self=False)
    # the mirror image: the same questions asked against showers the model never saw
    d_gen_u, _ = _nn(gen, held, 1024, exclude_self=False)
    d_train_u, _ = _nn(t_query, held, 1024, exclude_self=False)

    def med_ratio(a: np.ndarray, b: np.ndarray) -> float:
        mb = float(np.median(b))
        return float(np.median(a)) / mb if mb > 0 else float("nan")

    med_g, med_h = float(np.median(d_gen)), float(np.median(d_held))
    ratio, ratio_u = med_ratio(d_gen, d_held), med_ratio(d_gen_u, d_train_u)
    copy_ratio = ratio / ratio_u if ratio_u > 0 else float("nan")
    thr = float(np.quantile(d_held, quantile))
    thr_u = float(np.quantile(d_train_u, quantile))
    frac = float(np.mean(d_gen < thr)) if thr > 0 else float(np.mean(d_gen <= thr))
    frac_u = float(np.mean(d_gen_u < thr_u)) if thr_u > 0 else float(np.mean(d_gen_u <= thr_u))
    exact, exact_h = float(np.mean(d_gen < 1e-9)), float(np.mean(d_held < 1e-9))
    n = len(d_gen)
    near_copies = _excess(frac, quantile, n, 3.0) and _excess(frac, frac_u, n, 3.0)
    copies = _excess(exact, exact_h, n, 3.0)
    memorized = bool((np.isfinite(copy_ratio) and copy_ratio < ratio_cut) or near_copies or copies)
    spread = _mean_pairwise(gen, rng) / _mean_pairwise(held, rng)
    under = bool((ratio < ratio_cut and ratio_u < ratio_cut) or (np.isfinite(spread) and spread < spread_cut))
    diagnosis = " and ".join(w for w, on in (("memorisation", memorized), ("under-dispersion", under)) if on)
    return {
        "gen_to_train": d_gen,
        "heldout_to_train": d_held,
        "gen_to_heldout": d_gen_u,
        "train_to_heldout": d_train_u,
        "median_gen": med_g,
        "median_heldout": med_h,
        "ratio": ratio,
        "ratio_err": _median_ratio_err(d_gen, d_held, rng),
        "ratio_unseen": ratio_u,
        "copy_ratio": copy_ratio,
        "threshold": thr,
        "frac_close": frac,
        "frac_close_unseen": frac_u,
        "expected_frac": float(quantile),
        "frac_exact": exact,
        "frac_exact_heldout": exact_h,
        "spread_ratio": float(spread),
        "memorization": memorized,
        "under_dispersion": under,
        "diagnosis": diagnosis or "none",
        "flagged": memorized,
        "n_train": len(t),
        "n_gen": len(gen),
        "n_heldout": len(held),
    }


def diversity(
    generated: ArrayLike,
    reference: ArrayLike,
    *,
    transform: str = "sum",
    max_events: int = 5_000,
    n_pairs: int = 20_000,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, Any]:
    """Diversity of the generated sample relative to a reference sample (mode collapse).

    ``generated`` ``(N, D)``, ``reference`` ``(K, D)`` (simulation; after ``transform``). Both
    are subsampled to the same size ``n = min(N, K, max_events)`` so distances are comparable.

    * ``ratio`` = mean pairwise distance gen / mean pairwise distance ref (``n_pairs`` random
      pairs of distinct events): ~1 healthy, << 1 if all showers look alike (global collapse).
    * ``nn_ratio`` = median within-sample NN distance gen / ref: ~1 healthy, << 1 if the
      sample collapsed onto a few modes or contains duplicates (the pairwise mean misses this
      when the few modes are far apart).
    * ``duplicate_fraction``: fraction of generated events with an exact duplicate (NN
      distance < 1e-9) in the generated subsample.
    * ``pairwise_gen``, ``pairwise_ref`` ``(n_pairs,)``, ``nn_gen``, ``nn_ref`` ``(n,)``:
      the distance arrays, for histograms; ``mean_gen``, ``mean_ref``, ``n``.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    g = transform_showers(generated, transform, which="generated")
    r = transform_showers(reference, transform, which="reference")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"feature dimension differs: generated {g.shape[1]}, reference {r.shape[1]}")
    n = min(len(g), len(r), max_events)
    if n < 2:
        raise ValueError("diversity needs at least 2 events in each sample")
    g = g[rng.choice(len(g), n, replace=False)]
    r = r[rng.choice(len(r), n, replace=False)]

    def pairwise(x: np.ndarray) -> np.ndarray:
        i = rng.integers(0, n, n_pairs)
        j = (i + rng.integers(1, n, n_pairs)) % n  # j != i
        return np.sqrt(np.sum((x[i] - x[j]) ** 2, axis=1))

    pg, pr = pairwise(g), pairwise(r)
    nn_g, _ = _nn(g, g, 1024, exclude_self=True)
    nn_r, _ = _nn(r, r, 1024, exclude_self=True)
    mean_g, mean_r = float(pg.mean()), float(pr.mean())
    med_nn_r = float(np.median(nn_r))
    return {
        "ratio": mean_g / mean_r if mean_r > 0 else float("nan"),
        "nn_ratio": float(np.median(nn_g)) / med_nn_r if med_nn_r > 0 else float("nan"),
        "duplicate_fraction": float(np.mean(nn_g < 1e-9)),
        "mean_gen": mean_g,
        "mean_ref": mean_r,
        "pairwise_gen": pg,
        "pairwise_ref": pr,
        "nn_gen": nn_g,
        "nn_ref": nn_r,
        "n": int(n),
    }
