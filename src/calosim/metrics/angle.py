"""Incidence angle of a shower from its principal axis: seed 003's PCA check of angle conditioning.

Per shower, the energy-weighted covariance of the hit-cell positions ``(x, y, z)`` (cell centres
from :meth:`Layer.cell_centers`, ``z`` the depth of the layer centre below the front face, mm) is
diagonalised; the eigenvector of the largest eigenvalue is the shower's principal axis ``u``,
oriented into the calorimeter (``u_z >= 0``). In the file's convention (the one of
``calosim simulate --theta/--phi``: direction ``(sin t cos p, sin t sin p, cos t)``, ``z`` along
the calorimeter normal):

* ``theta = arccos(u_z)`` in ``[0, pi/2]``, the polar angle to the normal;
* ``phi = atan2(u_y, u_x)`` in ``[0, 2 pi)``, the azimuth in the layer plane.

A shower with fewer than ``min_hits`` hit cells, or with all its hits in one layer (no depth
extent: the "axis" would lie in the layer plane), has no axis: its angles are NaN and it is
counted in :attr:`PrincipalAxis.n_undefined`.

The estimator is biased by the lateral spread of the shower (the axis of a normally incident
shower still scatters by a few degrees, and ``theta >= 0`` folds that scatter to positive
values) and by leakage out of the grid at large angles; the check compares the estimated angles
of generated showers with those of the reference for the same conditioned angles, so the bias is
common to both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..features import layer_table
from ..geometry import Geometry

__all__ = ["MIN_HITS", "MIN_PHI_THETA_DEG", "ANGLE_OBSERVABLES", "PrincipalAxis", "angle_observables",
           "angles_vary", "principal_axis", "residual_summary", "wrap_degrees"]

#: Fewest hit cells for which a principal axis is computed.
MIN_HITS = 3
#: The azimuth residual is only taken for showers conditioned at ``theta`` at least this large
#: (degrees): closer to the normal the azimuth of the axis is not defined by the shower.
MIN_PHI_THETA_DEG = 10.0
#: Names (and units: degrees) of :func:`angle_observables`, in display order.
ANGLE_OBSERVABLES = ("pca_theta", "theta_residual", "pca_phi", "phi_residual", "theta")


@dataclass(frozen=True)
class PrincipalAxis:
    """Principal axis of each shower: ``direction`` (N, 3) unit vectors with ``u_z >= 0``,
    ``theta``/``phi`` (N,) rad, ``n_hits`` (N,) hit cells; NaN rows where ``~valid`` (N,)."""

    direction: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    n_hits: np.ndarray
    valid: np.ndarray

    @property
    def n_undefined(self) -> int:
        """Showers without an axis (too few hits, or hits in one layer only)."""
        return int((~self.valid).sum())


@lru_cache(maxsize=16)
def _position_moments(geometry: Geometry) -> np.ndarray:
    """Per-cell weights of the 10 moments ``[1, x, y, z, xx, yy, zz, xy, xz, yz]``, ``(n_cells, 10)``."""
    x = np.concatenate([t.x for t in layer_table(geometry)])
    y = np.concatenate([t.y for t in layer_table(geometry)])
    z = np.concatenate([np.full(len(t.x), t.z_mid) for t in layer_table(geometry)])
    return np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)


def principal_axis(showers: ArrayLike, geometry: Geometry, *, threshold: float | None = None,
                   min_hits: int = MIN_HITS) -> PrincipalAxis:
    """Energy-weighted principal axis of each shower (see the module docstring).

    ``showers`` (N, n_cells) MeV; cells with ``I > threshold`` (MeV, default
    ``geometry.threshold_mev``) are the hits and carry weight ``I``; showers with fewer than
    ``min_hits`` hits or hits in a single layer get NaN angles.
    """
    a = geometry.check(showers)
    n = len(a)
    thr = float(geometry.threshold_mev if threshold is None else threshold)
    w = np.where(a > thr, a, 0).astype(np.float64, copy=False)  # (N, n_cells): hits only
    hit = w > 0
    n_hits = hit.sum(axis=1)
    layer_hit = np.stack([hit[:, s].any(axis=1) for s in geometry.layer_slices], axis=1) if n else np.zeros((0, 1))
    m = w @ _position_moments(geometry)  # (N, 10)
    valid = (n_hits >= max(int(min_hits), 2)) & (layer_hit.sum(axis=1) >= 2)
    e = np.where(valid, m[:, 0], 1.0)
    mean = m[:, 1:4] / e[:, None]  # (N, 3)
    # second moments about the centre of energy: sum I (r - <r>)(r - <r>)^T / E
    ii = {(0, 0): 4, (1, 1): 5, (2, 2): 6, (0, 1): 7, (0, 2): 8, (1, 2): 9}
    cov = np.empty((n, 3, 3))
    for (i, j), k in ii.items():
        c = m[:, k] / e - mean[:, i] * mean[:, j]
        cov[:, i, j] = cov[:, j, i] = c
    cov[~valid] = np.eye(3)  # placeholder rows: their results are replaced by NaN below
    _, vec = np.linalg.eigh(cov)  # ascending eigenvalues: the last column is the principal axis
    u = vec[:, :, 2]
    u = np.where(u[:, 2:3] < 0, -u, u)  # into the calorimeter
    theta = np.arccos(np.clip(u[:, 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2 * np.pi)
    u[~valid] = np.nan
    theta[~valid] = np.nan
    phi[~valid] = np.nan
    return PrincipalAxis(u, theta, phi, n_hits.astype(np.int64), valid)


def wrap_degrees(d: ArrayLike) -> np.ndarray:
    """Angle differences in degrees wrapped to ``[-180, 180)``."""
    return np.mod(np.asarray(d, dtype=np.float64) + 180.0, 360.0) - 180.0


def angle_observables(showers: ArrayLike, geometry: Geometry, theta: ArrayLike, phi: ArrayLike | None = None, *,
                      threshold: float | None = None, min_hits: int = MIN_HITS,
                      min_phi_theta_deg: float = MIN_PHI_THETA_DEG) -> dict[str, np.ndarray]:
    """Principal-axis angles and their residuals against the conditioned angles, in degrees.

    ``showers`` (N, n_cells) MeV; ``theta``/``phi`` (N,) rad, the conditioned incidence angles
    (the file's ``theta``/``phi``). Returns ``{name: (N,) float64}`` for :data:`ANGLE_OBSERVABLES`:
    ``pca_theta``, ``pca_phi`` (estimated), ``theta_residual = pca_theta - theta``,
    ``phi_residual = pca_phi - phi`` wrapped to [-180, 180) (NaN where the conditioned theta is
    below ``min_phi_theta_deg`` or without ``phi``) and ``theta`` (the conditioned angle).
    NaN rows: showers without an axis (:func:`principal_axis`).
    """
    ax = principal_axis(showers, geometry, threshold=threshold, min_hits=min_hits)
    n = len(ax.theta)
    th = np.degrees(np.asarray(theta, dtype=np.float64).reshape(-1))
    if th.shape != (n,):
        raise ValueError(f"theta: expected {n} conditioned angles, got shape {np.shape(theta)}")
    est_t, est_p = np.degrees(ax.theta), np.degrees(ax.phi)
    out = {"pca_theta": est_t, "theta_residual": est_t - th, "pca_phi": est_p,
           "phi_residual": np.full(n, np.nan), "theta": th}
    if phi is not None:
        ph = np.degrees(np.asarray(phi, dtype=np.float64).reshape(-1))
        if ph.shape != (n,):
            raise ValueError(f"phi: expected {n} conditioned angles, got shape {np.shape(phi)}")
        out["phi_residual"] = np.where(th >= min_phi_theta_deg, wrap_degrees(est_p - ph), np.nan)
    return out


def angles_vary(theta: ArrayLike, tol_rad: float = 1e-6) -> bool:
    """True if the conditioned polar angles (rad) are not all equal (a fixed gun is not checked)."""
    t = np.asarray(theta, dtype=np.float64)
    t = t[np.isfinite(t)]
    return bool(t.size) and float(t.max() - t.min()) > tol_rad


def residual_summary(v: ArrayLike) -> dict[str, Any]:
    """Mean, width and robust width of residuals (degrees; NaN entries are showers without an axis).

    ``{"n", "mean", "mean_err", "std", "std_err", "width68"}``: ``std`` with ddof=1,
    ``mean_err = std / sqrt(n)``, ``std_err = std / sqrt(2 (n - 1))``, ``width68`` half the
    16-84 % quantile range (insensitive to the tails of badly contained showers). NaN with
    fewer than two values.
    """
    x = np.asarray(v, dtype=np.float64)
    x = x[np.isfinite(x)]
    k = int(x.size)
    if k < 2:
        nan = float("nan")
        return {"n": k, "mean": float(x.mean()) if k else nan, "mean_err": nan, "std": nan, "std_err": nan,
                "width68": nan}
    sd = float(x.std(ddof=1))
    q16, q84 = np.quantile(x, [0.16, 0.84])
    return {"n": k, "mean": float(x.mean()), "mean_err": sd / np.sqrt(k), "std": sd,
            "std_err": sd / np.sqrt(2 * (k - 1)), "width68": float(0.5 * (q84 - q16))}
