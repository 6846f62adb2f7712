"""The single definition of the per-layer shower features, for numpy and torch.

Every function takes showers ``x`` of shape ``(N, n_cells)`` (MeV) as a numpy array *or* a
torch tensor and returns the same kind: numpy results are float64 (so that
``<x^2> - <x>^2`` does not cancel), torch results keep the input's dtype and device and are
differentiable (no numpy round trip). Both front ends read one per-geometry moments table
(:func:`layer_table`), so the numbers agree up to the dtype.

Notation: ``I_{l,c}`` the energy of cell ``c`` of layer ``l``; ``E_l = sum_c I_{l,c}``;
``(x_c, y_c)`` the cell centres of :meth:`Layer.cell_centers` (for polar CaloChallenge voxels
``x = r cos(alpha)``, ``y = r sin(alpha)`` at the bin midpoints: the challenge's eta and phi);
``R_c`` the distance of the cell centre from the axis (the challenge's radial bin midpoint).
The CaloChallenge's ``HighLevelFeatures.py`` names, for reference:

* :func:`layer_energies` = ``E_layers``;
* :func:`centroids` = ``EC_etas`` / ``EC_phis``, :func:`widths` = ``width_etas`` / ``width_phis``
  (``sum x I / (E + 1e-16)`` and ``sqrt(max(<x^2> - <x>^2, 0))`` with the same guard);
* :func:`radial_centroids` = ``EC_r``, :func:`radial_widths` = ``width_r``;
* :func:`sparsity` = ``sparsity`` = 1 - :func:`occupancy` (the challenge's sparsity is the
  fraction of *empty* voxels);
* :func:`apply_threshold` = the voxel cut of its ``evaluate.py`` (cells below the readout
  threshold set to 0; 1 MeV on dataset 1, 0.5 keV / 0.033 on datasets 2 and 3).

Models add their own smoothing through ``eps`` (the denominator guard, a float or an array
broadcastable to ``(N, n_layers)``) and ``var_floor`` (added to the variance before the root).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # the geometry package imports this module lazily (Geometry.layer_energies)
    from .geometry import Geometry

__all__ = [
    "CHALLENGE_EPS",
    "MOMENT_COLUMNS",
    "LayerTable",
    "apply_threshold",
    "centroids",
    "centroids_from_moments",
    "hit_counts",
    "layer_energies",
    "layer_labels",
    "layer_moments",
    "layer_table",
    "occupancy",
    "radial_centroids",
    "radial_centroids_from_moments",
    "radial_widths",
    "radial_widths_from_moments",
    "sparsity",
    "widths",
    "widths_from_moments",
]

#: The CaloChallenge's guard against empty layers in the centre/width quotients.
CHALLENGE_EPS = 1e-16

#: Columns of the moments table: ``sum_c I_c w_c`` for the weights ``w`` =
#: 1, x, x^2, y, y^2, R, R^2, sign(x), sign(y).
MOMENT_COLUMNS = ("e", "ex", "exx", "ey", "eyy", "er", "err", "esx", "esy")
_COL = {k: i for i, k in enumerate(MOMENT_COLUMNS)}

A = TypeVar("A")  # np.ndarray or torch.Tensor: every function returns the kind it was given


@dataclass(frozen=True)
class LayerTable:
    """Look-up facts of one layer (numpy, float64)."""

    pos: int  # position in the geometry, 0..L-1
    label: int  # name suffix in observable names (CaloChallenge layer id or position)
    sl: slice  # the layer's cells in the flat shower vector
    x: np.ndarray  # (n_l,) cell centre x, mm
    y: np.ndarray  # (n_l,) cell centre y, mm
    r: np.ndarray  # (n_l,) distance of the cell centre from the axis, mm
    has_xy: bool  # cells resolve a 2-D position (Cartesian, or polar with >1 alpha bin)
    z_mid: float  # depth of the layer centre, mm
    moments: np.ndarray  # (n_l, len(MOMENT_COLUMNS)) the weights of MOMENT_COLUMNS


def layer_labels(geometry: Geometry) -> list[int]:
    """Integer label of each layer used in observable names, ``(n_layers,)`` list.

    CaloChallenge geometries carry the challenge's layer ids in ``geometry.meta["layer_ids"]``
    (dataset 1 skips inactive layers: photons have ids 0, 1, 2, 3, 12); otherwise the layer
    position 0..L-1.
    """
    ids = geometry.meta.get("layer_ids") if isinstance(geometry.meta, dict) else None
    if ids is not None and len(ids) == geometry.n_layers and len(set(ids)) == len(ids):
        return [int(i) for i in ids]
    return list(range(geometry.n_layers))


@lru_cache(maxsize=16)
def layer_table(geometry: Geometry) -> tuple[LayerTable, ...]:
    """The per-layer moments table of ``geometry`` (cached; Geometry is frozen and hashable)."""
    out = []
    for pos, (lay, sl, lab) in enumerate(zip(geometry.layers, geometry.layer_slices, layer_labels(geometry))):
        x, y = (np.asarray(c, dtype=np.float64) for c in lay.cell_centers())
        r = np.asarray(lay.cell_radius(), dtype=np.float64)
        has_xy = lay.kind == "cartesian" or lay.shape[0] > 1
        mom = np.stack([np.ones_like(x), x, x * x, y, y * y, r, r * r, np.sign(x), np.sign(y)], axis=1)
        out.append(LayerTable(pos, lab, sl, x, y, r, has_xy, lay.z_mm + 0.5 * lay.thickness_mm, mom))
    return tuple(out)


# ------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------
def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch here: the numpy side stays light
    return torch is not None and isinstance(x, torch.Tensor)


def _check(x: Any, geometry: Geometry) -> Any:
    """``x`` as (N, n_cells): a tensor is checked, anything else becomes a numpy array."""
    if _is_torch(x):
        if x.ndim != 2 or x.shape[1] != geometry.n_cells:
            raise ValueError(f"showers: expected shape (N, {geometry.n_cells}) for geometry {geometry.name!r}, "
                             f"got {tuple(x.shape)}")
        return x
    return geometry.check(x)


@lru_cache(maxsize=32)
def _torch_moments(geometry: Geometry, device: Any, dtype: Any) -> tuple[Any, ...]:
    """Per layer the moments table as a tensor on ``device``; regular geometries: one stacked ``(L, n, K)``."""
    import torch

    tabs = layer_table(geometry)
    if geometry.is_regular:
        return (torch.as_tensor(np.stack([t.moments for t in tabs]), dtype=dtype, device=device),)
    return tuple(torch.as_tensor(t.moments, dtype=dtype, device=device) for t in tabs)


def layer_moments(x: A, geometry: Geometry) -> A:
    """Energy moments per layer, ``(N, n_layers, len(MOMENT_COLUMNS))``: ``sum_c I_{l,c} w_c``.

    The columns are :data:`MOMENT_COLUMNS` (``e`` = E_l, ``ex`` = sum I x, ...). One matmul
    per layer (or one batched matmul for geometries whose layers share a shape).
    """
    x = _check(x, geometry)
    if _is_torch(x):
        import torch

        mats = _torch_moments(geometry, x.device, x.dtype)
        if len(mats) == 1 and geometry.is_regular:
            m = mats[0]  # (L, n, K)
            return torch.einsum("bln,lnk->blk", x.reshape(len(x), m.shape[0], m.shape[1]), m)
        return torch.stack([x[:, t.sl] @ m for t, m in zip(layer_table(geometry), mats)], 1)
    tabs = layer_table(geometry)
    out = np.empty((len(x), len(tabs), len(MOMENT_COLUMNS)))
    for t in tabs:  # per layer, so the float64 copy is one layer at a time
        out[:, t.pos] = np.asarray(x[:, t.sl], dtype=np.float64) @ t.moments
    return out


def _sqrt0(v: Any) -> Any:
    """``sqrt(max(v, 0))``; for tensors with a zero (not NaN) gradient where ``v <= 0``."""
    if _is_torch(v):
        import torch

        pos = v > 0
        return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v))
    return np.sqrt(np.clip(v, 0.0, None))


def _stack2(a: Any, b: Any) -> Any:
    if _is_torch(a):
        import torch

        return torch.stack([a, b], -1)
    return np.stack([a, b], -1)


# ------------------------------------------------------------------------------------------
# the features
# ------------------------------------------------------------------------------------------
def layer_energies(x: A, geometry: Geometry) -> A:
    """Energy per layer ``E_l = sum_c I_{l,c}``, ``(N, n_layers)`` (the challenge's ``E_layers``)."""
    x = _check(x, geometry)
    if _is_torch(x):
        import torch

        if geometry.is_regular:
            return x.reshape(len(x), geometry.n_layers, -1).sum(-1)
        return torch.stack([x[:, s].sum(1) for s in geometry.layer_slices], 1)
    if not len(x):
        return np.zeros((0, geometry.n_layers))
    return np.add.reduceat(x, geometry.layer_offsets[:-1], axis=1, dtype=np.float64)


def hit_counts(x: A, geometry: Geometry, threshold: float = 0.0) -> A:
    """Number of hit cells per layer ``n_l = sum_c [I_{l,c} > threshold]``, ``(N, n_layers)``.

    numpy: float64; torch: the input's dtype (a count, no gradient).
    """
    x = _check(x, geometry)
    return layer_energies(x > threshold if not _is_torch(x) else (x > threshold).to(x.dtype), geometry)


def occupancy(x: A, geometry: Geometry, threshold: float = 0.0) -> A:
    """Fraction of hit cells per layer ``n_l / n_cells_l`` (:func:`hit_counts`), ``(N, n_layers)``; 1 = all hit."""
    n = hit_counts(x, geometry, threshold)
    sizes = np.array([lay.n_cells for lay in geometry.layers], dtype=np.float64)
    if _is_torch(n):
        import torch

        return n / torch.as_tensor(sizes, dtype=n.dtype, device=n.device)
    return n / sizes


def sparsity(x: A, geometry: Geometry, threshold: float = 0.0) -> A:
    """The CaloChallenge's sparsity ``1 - occupancy``: the fraction of *empty* cells per layer, ``(N, n_layers)``."""
    return 1.0 - occupancy(x, geometry, threshold)


def centroids(x: A, geometry: Geometry, eps: Any = CHALLENGE_EPS) -> A:
    """Energy-weighted centre per layer ``(<x>, <y>)``, ``(N, n_layers, 2)`` mm.

    ``<x>_l = sum_c x_c I_{l,c} / (E_l + eps)``: 0 for an empty layer and for polar layers
    without angular bins (their cells are centred on the axis). ``eps`` default the
    challenge's 1e-16 (``EC_etas``, ``EC_phis``).
    """
    return centroids_from_moments(layer_moments(x, geometry), eps)


def widths(x: A, geometry: Geometry, eps: Any = CHALLENGE_EPS, var_floor: float = 0.0) -> A:
    """Energy-weighted RMS per layer ``sqrt(max(<x^2> - <x>^2, 0) + var_floor)`` in x and y, ``(N, n_layers, 2)`` mm.

    Moments as in :func:`centroids` (same ``eps``); the challenge's ``width_etas`` /
    ``width_phis`` at the defaults.
    """
    return widths_from_moments(layer_moments(x, geometry), eps, var_floor)


def radial_centroids(x: A, geometry: Geometry, eps: Any = CHALLENGE_EPS) -> A:
    """Energy-weighted mean distance from the axis per layer ``<R>_l``, ``(N, n_layers)`` mm (the challenge's ``EC_r``)."""
    return radial_centroids_from_moments(layer_moments(x, geometry), eps)


def radial_widths(x: A, geometry: Geometry, eps: Any = CHALLENGE_EPS, var_floor: float = 0.0) -> A:
    """Energy-weighted spread of ``R`` per layer ``sqrt(max(<R^2> - <R>^2, 0) + var_floor)``, ``(N, n_layers)`` mm.

    The challenge's ``width_r`` (a spread around ``<R>``, not the RMS distance from the axis).
    """
    return radial_widths_from_moments(layer_moments(x, geometry), eps, var_floor)


# the same from a precomputed :func:`layer_moments` ``m (N, L, K)``, so several features share one pass
def centroids_from_moments(m: A, eps: Any = CHALLENGE_EPS) -> A:
    """:func:`centroids` from ``m = layer_moments(x, geometry)``, ``(N, L, 2)``."""
    den = m[..., _COL["e"]] + eps
    return _stack2(m[..., _COL["ex"]] / den, m[..., _COL["ey"]] / den)


def widths_from_moments(m: A, eps: Any = CHALLENGE_EPS, var_floor: float = 0.0) -> A:
    """:func:`widths` from ``m = layer_moments(x, geometry)``, ``(N, L, 2)``."""
    den = m[..., _COL["e"]] + eps
    out = []
    for c1, c2 in (("ex", "exx"), ("ey", "eyy")):
        mu = m[..., _COL[c1]] / den
        out.append(_sqrt0(m[..., _COL[c2]] / den - mu * mu + var_floor))
    return _stack2(*out)


def radial_centroids_from_moments(m: A, eps: Any = CHALLENGE_EPS) -> A:
    """:func:`radial_centroids` from ``m = layer_moments(x, geometry)``, ``(N, L)``."""
    return m[..., _COL["er"]] / (m[..., _COL["e"]] + eps)


def radial_widths_from_moments(m: A, eps: Any = CHALLENGE_EPS, var_floor: float = 0.0) -> A:
    """:func:`radial_widths` from ``m = layer_moments(x, geometry)``, ``(N, L)``."""
    den = m[..., _COL["e"]] + eps
    mu = m[..., _COL["er"]] / den
    return _sqrt0(m[..., _COL["err"]] / den - mu * mu + var_floor)


def apply_threshold(x: A, geometry: Geometry, threshold: float | None = None) -> A:
    """Readout threshold: cells with ``I < threshold`` set to 0 (the challenge's voxel cut), ``(N, n_cells)``.

    ``threshold`` default ``geometry.readout_threshold_mev``; a threshold <= 0 returns ``x``
    itself. Returns a new array/tensor of the input's dtype (torch: differentiable where kept).
    """
    thr = float(geometry.readout_threshold_mev if threshold is None else threshold)
    if not np.isfinite(thr):
        raise ValueError(f"readout threshold must be a finite number of MeV, got {thr}")
    x = _check(x, geometry)
    if thr <= 0:
        return x
    if _is_torch(x):
        import torch

        return torch.where(x < thr, torch.zeros_like(x), x)
    return np.where(x < thr, np.zeros((), dtype=x.dtype), x)
