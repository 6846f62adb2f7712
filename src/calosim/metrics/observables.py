"""Physics observables of calorimeter showers, vectorised over ``(N, n_cells)`` arrays.

Every function works for any :class:`~calosim.geometry.Geometry` (Cartesian and polar
layers). Energies are in MeV, lengths in mm. The per-layer features (energies, hit counts,
centroids, widths and their radial variants) are defined once in :mod:`calosim.features`;
this module names them, adds the shower-level observables and builds the high-level matrix.
Notation used in the docstrings:

* ``I_{l,c}``: energy of cell ``c`` of layer ``l`` (one shower); ``E_l = sum_c I_{l,c}``;
  ``E_tot = sum_l E_l``; ``E_inc`` the incident energy.
* ``(x_c, y_c)``: cell centres from :meth:`Layer.cell_centers` (for polar CaloChallenge
  voxels ``x = r cos(alpha)``, ``y = r sin(alpha)`` with ``r``/``alpha`` the bin midpoints,
  which the challenge calls eta and phi); ``R_c``: distance of the cell centre from the axis.
* ``l = 0 .. L-1`` the *position* of a layer in the geometry (used for depths);
  observable names carry the layer *label* (:func:`layer_labels`, the CaloChallenge layer id
  for ``calochallenge-*`` geometries, so ``E_layer_12`` is the challenge's layer 12).
* ``thr``: the hit threshold, by default ``geometry.threshold_mev`` (a cell is a hit if
  ``I > thr``). The readout threshold (the challenge's voxel cut,
  :func:`calosim.features.apply_threshold`) is applied to the showers *before* these
  functions, by the caller.

:func:`compute_observables` returns the scalar-per-shower observables with stable names;
:func:`highlevel_matrix` turns them into the feature matrix of the classifier and FPD tests
(the CaloChallenge's high-level set, :data:`HIGHLEVEL_FEATURES`); :class:`ShowerSummary`
accumulates the profiles, mean images and the cell spectrum chunk by chunk;
:func:`response_vs_energy` gives the energy response and resolution per energy bin
(:func:`binned_stats`: mean and width of any observable per bin, e.g. the ILD visible energy).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import features as feat
from ..features import LayerTable, layer_labels
from ..geometry import Geometry

__all__ = [
    "CALOCHALLENGE_NAMES",
    "HIGHLEVEL_FEATURES",
    "SPECTRUM_BINS",
    "ShowerSummary",
    "cell_energy_spectrum",
    "cluster_asymmetry",
    "compute_observables",
    "bin_index",
    "binned_stats",
    "e_ratio",
    "energy_bins",
    "highlevel_columns",
    "highlevel_matrix",
    "lateral_profiles",
    "layer_labels",
    "longitudinal_profile",
    "mean_images",
    "observable_groups",
    "observable_label",
    "radial_profile",
    "response_vs_energy",
    "shower_depth",
]

#: Log bins (MeV) of the cell-energy spectrum: 10 per decade from 0.1 keV to 10 TeV.
SPECTRUM_BINS = np.logspace(-4, 7, 111)

#: The high-level feature set of the classifier and FPD/KPD, in the order and with the
#: transforms of the CaloChallenge's ``prepare_high_data_for_classifier`` (evaluate.py):
#: ``(family, transform)``; per-layer families expand to every layer that has them (the
#: centres/widths only for layers that resolve x and y). For dataset 1 photons
#: (5 layers, 2 binned in alpha) that is 1 + 5 + 4 x 2 + 1 + 5 + 5 + 5 = 30 features.
#: ``sparsity`` is the challenge's, ``1 - occupancy``.
HIGHLEVEL_FEATURES: tuple[tuple[str, str], ...] = (
    ("E_inc", "log10"), ("E_layer", "log10"), ("x_center", "/100"), ("y_center", "/100"),
    ("x_width", "/100"), ("y_width", "/100"), ("E_tot", "log10"), ("sparsity", "1-occupancy"),
    ("r_center", "/100"), ("r_width", "/100"),
)

#: calosim name -> name of the same quantity in the CaloChallenge's HighLevelFeatures.py.
CALOCHALLENGE_NAMES = {
    "E_tot": "Etot (GetEtot)", "E_ratio_inc": "Etot / Einc", "E_layer_{i}": "E_layers[i] (GetElayers)",
    "x_center_{i}": "EC_etas[i] (GetECEtas)", "y_center_{i}": "EC_phis[i] (GetECPhis)",
    "x_width_{i}": "width_etas[i] (GetWidthEtas)", "y_width_{i}": "width_phis[i] (GetWidthPhis)",
    "r_center_{i}": "EC_r[i] (GetECR)", "r_width_{i}": "width_r[i] (GetWidthR)",
    "occupancy_{i}": "1 - sparsity[i] (GetSparsity: the challenge's sparsity is the fraction of empty voxels)",
}


# ------------------------------------------------------------------------------------------
# single-observable functions (each on one layer image or on per-layer energies)
# ------------------------------------------------------------------------------------------
def e_ratio(energy: ArrayLike) -> np.ndarray:
    """CaloGAN ``E_ratio = (I_(1) - I_(2)) / (I_(1) + I_(2))`` of one layer.

    ``I_(1)``, ``I_(2)``: highest and second-highest cell energy. ``energy`` (N, n) -> (N,);
    0 for an empty layer, 1 if a single cell has energy.
    """
    e = np.asarray(energy)
    if e.dtype.kind != "f":
        e = e.astype(np.float64)
    if e.shape[-1] < 2:
        top = e[..., -1]
        return np.where(top > 0, 1.0, 0.0)
    # selection is exact in any float dtype, so work on the (usually float32) input; argmax +
    # masked max is ~4x faster than np.partition and keeps ties (two equal maxima -> 0)
    e2 = e.reshape(-1, e.shape[-1])
    rows = np.arange(len(e2))
    i = e2.argmax(axis=-1)
    i1 = e2[rows, i].astype(np.float64)
    rest = e2.copy()
    rest[rows, i] = -np.inf
    i2 = rest.max(axis=-1).astype(np.float64) if len(e2) else np.zeros(0)
    i1, i2 = i1.reshape(e.shape[:-1]), i2.reshape(e.shape[:-1])
    den = i1 + i2
    return np.divide(i1 - i2, den, out=np.zeros_like(den), where=den > 0)


def shower_depth(layer_energies: ArrayLike, depths: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """CaloGAN longitudinal observables from per-layer energies ``E_l`` (N, L).

    With ``z_l`` = ``depths`` (L,) (default the layer position ``l``):

    * ``l_d = sum_l z_l E_l`` (depth-weighted total energy),
    * ``s_d = l_d / E_tot`` (shower depth; 0 for an empty shower),
    * ``sigma_sd = sqrt(max(sum_l z_l^2 E_l / E_tot - s_d^2, 0))`` (shower depth width),
    * ``d = max{l : E_l > 0}`` (deepest layer with energy, -1 for an empty shower; energies
      are non-negative so ``E_l > 0`` iff ``max_c I_{l,c} > 0``).

    Returns ``{"d", "l_d", "s_d", "sigma_sd"}``, each (N,).
    """
    e = np.asarray(layer_energies, dtype=np.float64)
    n_l = e.shape[1]
    z = np.arange(n_l, dtype=np.float64) if depths is None else np.asarray(depths, dtype=np.float64)
    tot = e.sum(axis=1)
    ok = tot > 0
    safe = np.where(ok, tot, 1.0)
    l_d = e @ z
    s_d = np.where(ok, l_d / safe, 0.0)
    m2 = np.where(ok, (e @ (z * z)) / safe, 0.0)
    sigma = np.sqrt(np.clip(m2 - s_d * s_d, 0.0, None))
    # clean rounding noise: a one-layer shower has exactly zero width
    sigma[sigma < 1e-7 * np.maximum(np.abs(z).max(initial=0.0), 1.0)] = 0.0
    d = np.where(e > 0, np.arange(n_l), -1).max(axis=1) if n_l else np.full(len(e), -1)
    return {"d": d.astype(np.float64), "l_d": l_d, "s_d": s_d, "sigma_sd": sigma}


def _axis(info: LayerTable, n: int, conditions: dict[str, np.ndarray] | None
          ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-shower axis ``(x0, y0)`` at the layer centre and transverse direction ``(ux, uy)``.

    The axis passes through ``position`` (N, 2) mm (if given) and is tilted along
    ``momentum`` (N, 3): ``x0 = pos_x + z_mid p_x / p_z``. The direction is the unit transverse
    momentum (``(1, 0)`` without momentum or for ``p_T = 0``). ``None`` means the nominal
    axis ``(0, 0)`` / direction ``(1, 0)`` for all showers.
    """
    if not conditions:
        return None, None
    pos = conditions.get("position")
    mom = conditions.get("momentum")
    x0 = np.zeros((n, 2))
    if pos is not None:
        x0 += np.asarray(pos, dtype=np.float64).reshape(n, 2)
    u = None
    if mom is not None:
        p = np.asarray(mom, dtype=np.float64).reshape(n, 3)
        pz = np.where(p[:, 2] > 0, p[:, 2], np.inf)  # backward/zero pz: no tilt
        x0 += info.z_mid * p[:, :2] / pz[:, None]
        pt = np.hypot(p[:, 0], p[:, 1])
        u = np.where(pt[:, None] > 0, p[:, :2] / np.where(pt > 0, pt, 1.0)[:, None], [1.0, 0.0])
    if pos is None and mom is None:
        return None, None
    return x0, u


def cluster_asymmetry(energy: ArrayLike, x: ArrayLike, y: ArrayLike, *, axis: ArrayLike | None = None,
                      direction: ArrayLike | None = None, orthogonal: bool = False) -> np.ndarray:
    """LHCb cluster asymmetry ``(E_+ - E_-) / (E_+ + E_- )`` of one layer.

    The layer is cut by the line through the shower axis ``(x0, y0)`` perpendicular to the
    transverse direction ``u`` (the particle's ``(p_x, p_y)``; LHCb seed, appendix):
    ``E_+ = sum_c I_c [((x_c - x0), (y_c - y0)) . u > 0]``, ``E_-`` likewise for ``< 0``
    (cells exactly on the line count on neither side). ``orthogonal=True`` uses
    ``u_perp = (-u_y, u_x)`` (the line along the momentum). ``energy`` (N, n); ``x``, ``y``
    (n,); ``axis`` (N, 2) mm, default (0, 0); ``direction`` (N, 2), default ``(1, 0)`` (the
    x axis). Returns (N,), 0 for an empty layer.
    """
    e = np.asarray(energy, dtype=np.float64)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    tot = e.sum(axis=-1)
    n = len(e)
    a = np.zeros((n, 2)) if axis is None else np.asarray(axis, dtype=np.float64).reshape(n, 2)
    u = np.tile([1.0, 0.0], (n, 1)) if direction is None else np.asarray(direction, dtype=np.float64).reshape(n, 2)
    if orthogonal:
        u = np.stack([-u[:, 1], u[:, 0]], axis=1)
    if n == 0 or (np.all(a == a[0]) and np.all(u == u[0])):
        # one axis and direction for all showers (fixed gun): one sign per cell, a matmul
        s = np.sign((xs - a[0, 0]) * u[0, 0] + (ys - a[0, 1]) * u[0, 1])
        num = e @ s
    else:
        proj = (xs[None, :] - a[:, :1]) * u[:, :1] + (ys[None, :] - a[:, 1:]) * u[:, 1:]
        num = np.einsum("ij,ij->i", e, np.sign(proj, out=proj))
    return np.divide(num, tot, out=np.zeros_like(tot), where=tot > 0)


# ------------------------------------------------------------------------------------------
# all scalar observables
# ------------------------------------------------------------------------------------------
_M = {k: i for i, k in enumerate(feat.MOMENT_COLUMNS)}


def compute_observables(
    showers: ArrayLike,
    incident_energies: ArrayLike,
    geometry: Geometry,
    *,
    conditions: dict[str, np.ndarray] | None = None,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """Scalar observables of each shower, ``{name: (N,) float64}`` with stable names.

    ``showers`` (N, n_cells) MeV, ``incident_energies`` (N,) or (N, 1) MeV. ``conditions``
    (optional ``position`` (N, 2), ``momentum`` (N, 3)) define the shower axis for
    ``asymmetry_*`` and ``r_rms*`` (nominal axis (0, 0) and the x direction without them).
    ``threshold`` (MeV, default ``geometry.threshold_mev``) defines hits (``I > thr``).

    Global observables:

    * ``E_inc`` (the condition, a member of the high-level set); ``E_tot = sum_l E_l``;
      ``E_ratio_inc = E_tot / E_inc`` (CaloChallenge "Etot/Einc");
    * ``n_hits = #{c : I_c > thr}``; ``E_vis = sum_{I_c > thr} I_c`` (ILD visible energy);
    * ``r_rms``: RMS distance of the energy from the shower axis over all layers,
      ``sqrt(sum I d^2 / E_tot)``;
    * only for geometries with more than one layer: ``d``, ``l_d``, ``s_d``, ``sigma_sd``
      (CaloGAN, in units of layer position, :func:`shower_depth`) and ``s_d_x0`` (energy-
      weighted depth of the layer centres in radiation lengths).

    Per layer, named ``<family>_<label>`` (label from :func:`layer_labels`):

    * ``E_layer`` = E_l (CaloChallenge ``E_layers``; only if L > 1), ``f_layer = E_l / E_tot``
      (only if L > 1), ``E_ratio`` (:func:`e_ratio`), ``occupancy`` = fraction of hit cells
      (:func:`calosim.features.occupancy`; the challenge's ``sparsity`` is ``1 - occupancy``);
    * ``r_center`` = ``<R>``, ``r_width`` = ``sqrt(<R^2> - <R>^2)`` (the challenge's ``EC_r``,
      ``width_r``) and ``r_rms`` = RMS distance of the energy from the shower axis;
    * if the layer resolves x and y (Cartesian, or polar with more than one alpha bin; the
      CaloChallenge's ``layersBinnedInAlpha``): ``x_center``, ``y_center`` (centres of energy,
      the challenge's ``EC_etas``/``EC_phis``), ``x_width``, ``y_width`` (the challenge's
      ``width_etas``/``width_phis``), ``asymmetry`` and ``asymmetry_perp`` (LHCb cluster
      asymmetry along / across the transverse momentum, :func:`cluster_asymmetry`).

    For ``calochallenge-*`` geometries ``E_layer_*``, ``E_ratio_inc``, ``x/y_center_*``,
    ``x/y_width_*`` and ``r_center/r_width_*`` are numerically the challenge's
    ``HighLevelFeatures`` (same voxel centres, same 1e-16 guard and clipping).
    """
    a = geometry.check(showers)
    n = len(a)
    e_inc = np.asarray(incident_energies, dtype=np.float64).reshape(-1)
    if e_inc.shape != (n,):
        raise ValueError(f"incident_energies: expected {n} values, got shape {np.shape(incident_energies)}")
    thr = float(geometry.threshold_mev if threshold is None else threshold)
    tabs = feat.layer_table(geometry)
    labels = [t.label for t in tabs]

    mom = feat.layer_moments(a, geometry)  # (N, L, K) float64: one pass for all the moments
    e_layers = mom[..., _M["e"]]
    hits = feat.hit_counts(a, geometry, thr)
    occ = feat.occupancy(a, geometry, thr)
    cen = feat.centroids_from_moments(mom)
    wid = feat.widths_from_moments(mom)
    r_cen = feat.radial_centroids_from_moments(mom)
    r_wid = feat.radial_widths_from_moments(mom)
    e_vis = e_layers.sum(axis=1)
    if thr > 0:  # per layer, so the masked copy is one layer at a time
        e_vis = sum(np.where(a[:, s] > thr, a[:, s], 0).sum(axis=1, dtype=np.float64) for s in geometry.layer_slices)

    per: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in (
        "E_ratio", "occupancy", "x_center", "y_center", "x_width", "y_width", "asymmetry", "asymmetry_perp",
        "r_center", "r_width", "r_rms")}
    r2_sum = np.zeros(n)
    for t in tabs:
        raw = a[:, t.sl]  # (N, n_l) view in the input dtype
        m = mom[:, t.pos]
        e = m[:, _M["e"]]
        per["E_ratio"].append((t.label, e_ratio(raw)))
        per["occupancy"].append((t.label, occ[:, t.pos]))
        per["r_center"].append((t.label, r_cen[:, t.pos]))
        per["r_width"].append((t.label, r_wid[:, t.pos]))
        ax, u = _axis(t, n, conditions)
        r2 = m[:, _M["err"]]  # sum I d^2 about the axis (x0, y0): R^2 - 2 (x0 x + y0 y) + |x0|^2
        if ax is not None:
            r2 = r2 - 2 * (ax[:, 0] * m[:, _M["ex"]] + ax[:, 1] * m[:, _M["ey"]]) + (ax * ax).sum(axis=1) * e
        r2_sum += r2
        per["r_rms"].append((t.label, np.sqrt(np.clip(np.divide(r2, e, out=np.zeros(n), where=e > 0), 0, None))))
        if t.has_xy:
            per["x_center"].append((t.label, cen[:, t.pos, 0]))
            per["y_center"].append((t.label, cen[:, t.pos, 1]))
            per["x_width"].append((t.label, wid[:, t.pos, 0]))
            per["y_width"].append((t.label, wid[:, t.pos, 1]))
            if ax is None:  # nominal axis and x direction: the signed sums are in the moments
                asym = np.divide(m[:, _M["esx"]], e, out=np.zeros(n), where=e > 0)
                asym_p = np.divide(m[:, _M["esy"]], e, out=np.zeros(n), where=e > 0)
            else:
                img = np.asarray(raw, dtype=np.float64)
                asym = cluster_asymmetry(img, t.x, t.y, axis=ax, direction=u)
                asym_p = cluster_asymmetry(img, t.x, t.y, axis=ax, direction=u, orthogonal=True)
            per["asymmetry"].append((t.label, asym))
            per["asymmetry_perp"].append((t.label, asym_p))

    e_tot = e_layers.sum(axis=1)
    ok = e_tot > 0
    out: dict[str, np.ndarray] = {
        "E_inc": e_inc,
        "E_tot": e_tot,
        "E_ratio_inc": e_tot / e_inc,
        "E_vis": e_vis,
        "n_hits": hits.sum(axis=1),
        "r_rms": np.sqrt(np.clip(np.divide(r2_sum, e_tot, out=np.zeros(n), where=ok), 0, None)),
    }
    if len(tabs) > 1:
        out.update(shower_depth(e_layers))
        x0_depth = geometry.layer_depth_centers_x0()
        out["s_d_x0"] = np.where(ok, (e_layers @ x0_depth) / np.where(ok, e_tot, 1.0), 0.0)
        for j, lab in enumerate(labels):
            out[f"E_layer_{lab}"] = e_layers[:, j]
        frac = np.divide(e_layers, e_tot[:, None], out=np.zeros_like(e_layers), where=ok[:, None])
        for j, lab in enumerate(labels):
            out[f"f_layer_{lab}"] = frac[:, j]
    for fam, items in per.items():
        for lab, v in items:
            out[f"{fam}_{lab}"] = v
    return out


# ------------------------------------------------------------------------------------------
# naming helpers and the high-level matrix
# ------------------------------------------------------------------------------------------
_PER_LAYER = re.compile(r"^(?P<fam>.+)_(?P<lab>\d+)$")

_LABELS = {
    "E_inc": (r"$E_\mathrm{inc}$", "MeV"),
    "E_tot": (r"$E_\mathrm{tot}$", "MeV"), "E_ratio_inc": (r"$E_\mathrm{tot}/E_\mathrm{inc}$", ""),
    "E_vis": (r"$E_\mathrm{vis}$", "MeV"), "n_hits": (r"$N_\mathrm{hits}$", ""),
    "d": (r"deepest layer $d$", ""), "l_d": (r"$l_d$", "MeV"),
    "s_d": (r"shower depth $s_d$", "layers"), "sigma_sd": (r"$\sigma_{s_d}$", "layers"),
    "s_d_x0": (r"shower depth", "$X_0$"), "E_layer": (r"$E_{%s}$", "MeV"), "f_layer": (r"$f_{%s}$", ""),
    "E_ratio": (r"$E_{\mathrm{ratio},%s}$", ""), "occupancy": (r"occupancy layer %s", ""),
    "sparsity": (r"sparsity (1 - occupancy) layer %s", ""),
    "x_center": (r"$\langle x\rangle_{%s}$", "mm"), "y_center": (r"$\langle y\rangle_{%s}$", "mm"),
    "x_width": (r"$\sigma_{x,%s}$", "mm"), "y_width": (r"$\sigma_{y,%s}$", "mm"),
    "r_center": (r"$\langle r\rangle_{%s}$", "mm"), "r_width": (r"$\sigma_{r,%s}$", "mm"),
    "r_rms": (r"RMS distance from the axis $\langle d^2\rangle^{1/2}_{%s}$", "mm"),
    "asymmetry": (r"asymmetry$_{%s}$", ""), "asymmetry_perp": (r"asymmetry$_{\perp,%s}$", ""),
}


def split_name(name: str) -> tuple[str, int | None]:
    """``"E_layer_12" -> ("E_layer", 12)``; global observables give ``(name, None)``."""
    m = _PER_LAYER.match(name)
    if m and m.group("fam") in _LABELS and m.group("fam") not in ("E_tot",):
        return m.group("fam"), int(m.group("lab"))
    return name, None


def observable_label(name: str) -> str:
    """Axis label (matplotlib mathtext) with unit for an observable name."""
    fam, lab = split_name(name)
    text, unit = _LABELS.get(fam, (name.replace("_", r"\_"), ""))
    if "%s" in text:  # a family shared by a global and per-layer observables (r_rms)
        text = text % lab if lab is not None else text.replace(",%s", "").replace("_{%s}", "")
    return f"{text} [{unit}]" if unit else text


def observable_groups(names: list[str]) -> dict[str, list[str]]:
    """Group names by family, keeping order: ``{"global": [...], "E_layer": [...], ...}``."""
    groups: dict[str, list[str]] = {"global": []}
    for nm in names:
        fam, lab = split_name(nm)
        groups.setdefault("global" if lab is None else fam, []).append(nm)
    return {k: v for k, v in groups.items() if v}


def _source(column: str) -> str:
    """The observable a high-level column is computed from (``sparsity_i`` from ``occupancy_i``)."""
    fam, lab = split_name(column)
    return f"occupancy_{lab}" if fam == "sparsity" else column


def highlevel_columns(*obs: dict[str, np.ndarray], rel_tol: float = 1e-9) -> list[str]:
    """Columns of the high-level matrix shared by all ``obs`` dicts and not constant in all.

    :data:`HIGHLEVEL_FEATURES` in its order: ``E_inc``, ``E_layer_*`` (L > 1), ``x/y_center_*``,
    ``x/y_width_*``, ``E_tot``, ``sparsity_*`` (= 1 - ``occupancy_*``), ``r_center_*``,
    ``r_width_*``; for the CaloChallenge's dataset 1 photons the challenge's 30. A column is
    dropped only if it is constant (within ``rel_tol``) in *every* sample and all constants
    agree (so a fixed-energy sample has no ``E_inc`` column, and a column constant in the
    reference but varying in a generated sample, a real difference, is kept).
    """
    if not obs:
        return []
    names = [k for k in obs[0] if all(k in o for o in obs[1:])]
    by_family: dict[str, list[str]] = {}
    for k in names:
        fam, lab = split_name(k)
        if fam == "occupancy" and lab is not None:
            fam, k = "sparsity", f"sparsity_{lab}"
        by_family.setdefault(fam, []).append(k)
    cand = [k for fam, _ in HIGHLEVEL_FEATURES for k in by_family.get(fam, [])]
    keep = []
    for k in cand:
        src = _source(k)
        vals = [np.asarray(o[src], dtype=np.float64) for o in obs if len(o[src])]
        if not vals:
            continue
        lo = min(float(v.min()) for v in vals)
        hi = max(float(v.max()) for v in vals)
        if hi - lo > rel_tol * max(abs(lo), abs(hi), 1e-12):
            keep.append(k)
    return keep


def highlevel_matrix(obs: dict[str, np.ndarray], columns: list[str] | None = None, *,
                     log_floor_mev: float = 1e-8) -> np.ndarray:
    """High-level feature matrix ``(N, D)`` float64 for the classifier and FPD/KPD.

    ``columns`` default :func:`highlevel_columns` of ``obs`` alone (pass the columns chosen
    from all compared samples so every matrix has the same D). The transforms of
    :data:`HIGHLEVEL_FEATURES`, as the CaloChallenge's evaluate.py: ``log10(E_inc)``,
    energies as ``log10(E + log_floor_mev)`` (its 1e-8: empty layers stay finite), lengths
    in units of 100 mm, ``sparsity = 1 - occupancy``; any other column as is.
    """
    cols = highlevel_columns(obs) if columns is None else list(columns)
    n = len(next(iter(obs.values()))) if obs else 0
    if not cols:
        return np.zeros((n, 0))
    how = dict(HIGHLEVEL_FEATURES)
    out = np.empty((n, len(cols)))
    for j, k in enumerate(cols):
        fam = split_name(k)[0]
        v = np.asarray(obs[_source(k)], dtype=np.float64)
        t = how.get(fam)
        if fam == "E_inc":
            v = np.log10(v)
        elif t == "log10":
            v = np.log10(v + log_floor_mev)
        elif t == "/100":
            v = v / 100.0
        elif t == "1-occupancy":
            v = 1.0 - v
        out[:, j] = v
    return out


# ------------------------------------------------------------------------------------------
# profiles, images, spectra (linear in the showers: computed from the summed shower)
# ------------------------------------------------------------------------------------------
def _radial_edges(geometry: Geometry) -> np.ndarray:
    """Radial bins (mm): the union of the polar r edges, or ~cell-sized rings for Cartesian."""
    if all(l.kind == "polar" for l in geometry.layers):
        edges = np.unique(np.concatenate([np.asarray(l.r_edges_mm) for l in geometry.layers]))
        return edges
    r_max = max(float(l.cell_radius().max()) for l in geometry.layers) if geometry.layers else 1.0
    pitch = min(min(l.cell_mm) if l.kind == "cartesian" else float(np.diff(l.r_edges_mm).min())  # type: ignore[arg-type]
                for l in geometry.layers)
    n = int(np.clip(np.ceil(r_max / pitch), 10, 60))
    return np.linspace(0.0, r_max * (1 + 1e-9) + 1e-9, n + 1)


def _radial_weights(geometry: Geometry, edges: np.ndarray, sub: int = 8) -> np.ndarray:
    """Fraction of each cell's area in each radial bin, ``(n_cells, n_bins)``.

    Polar voxels: exact ring-overlap fractions (rings without angular binning included).
    Cartesian cells: ``sub x sub`` sub-cell points, so a large cell spreads its energy over
    all the rings it covers instead of one spike at its centre radius.
    """
    parts = []
    nb = len(edges) - 1
    for lay in geometry.layers:
        if lay.kind == "polar":
            r = np.asarray(lay.r_edges_mm)
            r0, r1 = r[:-1, None], r[1:, None]
            lo, hi = np.maximum(r0, edges[None, :-1]), np.minimum(r1, edges[None, 1:])
            w = np.clip(hi * hi - lo * lo, 0.0, None) * (hi > lo) / (r1 * r1 - r0 * r0)  # (n_r, nb)
            parts.append(np.tile(w, (lay.shape[0], 1)))
        else:
            x, y = lay.cell_centers()
            dy, dx = lay.cell_mm  # type: ignore[misc]
            off = (np.arange(sub) + 0.5) / sub - 0.5
            px = x[:, None, None] + off[None, None, :] * dx
            py = y[:, None, None] + off[None, :, None] * dy
            rr = np.hypot(px, py).reshape(len(x), -1)  # (n_l, sub^2)
            idx = np.searchsorted(edges, rr, side="right") - 1
            ok = (idx >= 0) & (idx < nb)
            w = np.zeros((len(x), nb))
            rows = np.broadcast_to(np.arange(len(x))[:, None], idx.shape)
            np.add.at(w, (rows[ok], idx[ok]), 1.0 / (sub * sub))
            parts.append(w)
    return np.concatenate(parts, axis=0)


def _lateral_bins(lay: Any, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges along ``axis`` and the bin index of each cell of one layer."""
    x, y = lay.cell_centers()
    c = x if axis == "x" else y
    if lay.kind == "cartesian":
        ny, nx = lay.shape
        dy, dx = lay.cell_mm
        k, d = (nx, dx) if axis == "x" else (ny, dy)
        edges = (np.arange(k + 1) - k / 2) * d
    else:
        rmax = float(lay.r_edges_mm[-1])
        edges = np.linspace(-rmax, rmax, 2 * (len(lay.r_edges_mm) - 1) + 1)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, len(edges) - 2)
    return edges, idx


def longitudinal_profile(showers: ArrayLike, geometry: Geometry) -> np.ndarray:
    """Mean energy per layer ``<E_l>`` (MeV), ``(n_layers,)``."""
    a = geometry.check(showers)
    return geometry.layer_energies(a).mean(axis=0) if len(a) else np.zeros(geometry.n_layers)


def radial_profile(showers: ArrayLike, geometry: Geometry, bins: ArrayLike | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean energy per shower vs distance from the nominal shower axis (all layers).

    ``profile_k = (1/N) sum_n sum_c w_{c,k} I_{n,c}`` (MeV per bin) with ``w_{c,k}`` the
    fraction of cell ``c``'s area inside ring ``k`` (cell energy spread uniformly over the cell,
    so large cells do not produce spikes). Default bins: the union of the polar r edges, or
    rings of about one (smallest) cell pitch. Returns
    ``(edges (K+1,), profile (K,))``.
    """
    a = geometry.check(showers)
    s = ShowerSummary(geometry, radial_bins=bins)
    s.update(a, np.ones((len(a), 1)))
    return s.radial_edges, s.radial_profile()


def lateral_profiles(showers: ArrayLike, geometry: Geometry, axis: str = "x") -> list[tuple[np.ndarray, np.ndarray]]:
    """Mean energy per shower along ``axis`` ("x" or "y") for each layer.

    Cartesian layers: projection of the mean image on its columns (x) / rows (y); polar
    layers: the voxel energies binned at ``x = r cos(alpha)`` (``y = r sin(alpha)``) in
    ``2 n_r`` bins over ``[-r_max, r_max]``. Returns per layer ``(edges (K+1,), profile (K,))``.
    """
    a = geometry.check(showers)
    s = ShowerSummary(geometry)
    s.update(a, np.ones((len(a), 1)))
    return s.lateral_profiles(axis)


def cell_energy_spectrum(showers: ArrayLike, bins: ArrayLike | None = None, threshold: float = 0.0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of all cell energies ``I > threshold`` (MeV): ``(edges (K+1,), counts (K,))``.

    Default bins :data:`SPECTRUM_BINS` (log, 10 per decade, 1e-4 .. 1e7 MeV).
    """
    e = np.asarray(showers).ravel()
    edges = SPECTRUM_BINS if bins is None else np.asarray(bins, dtype=np.float64)
    counts, _ = np.histogram(e[e > threshold], bins=edges)
    return edges, counts.astype(np.float64)


def mean_images(showers: ArrayLike, geometry: Geometry) -> list[np.ndarray]:
    """Mean shower image of each layer, list of ``layers[l].shape`` arrays (MeV)."""
    a = geometry.check(showers)
    m = a.mean(axis=0, dtype=np.float64) if len(a) else np.zeros(geometry.n_cells)
    return [m[sl].reshape(lay.shape) for lay, sl in zip(geometry.layers, geometry.layer_slices)]


class ShowerSummary:
    """Streaming accumulator of the linear summaries of a sample.

    ``update(showers (n, n_cells), incident_energies (n, 1))`` chunk by chunk, then read
    :meth:`mean_images`, :meth:`longitudinal_profile`, :meth:`radial_profile`,
    :meth:`lateral_profiles` and the cell spectrum ``spectrum_counts`` (on
    :data:`SPECTRUM_BINS`, cells outside them in ``spectrum_under``/``spectrum_over``).
    Memory is O(n_cells).
    """

    def __init__(self, geometry: Geometry, *, radial_bins: ArrayLike | None = None, threshold: float = 0.0) -> None:
        self.geometry = geometry
        self.threshold = threshold
        self.n = 0
        self.cell_sum = np.zeros(geometry.n_cells)
        self.spectrum_edges = SPECTRUM_BINS
        self.spectrum_counts = np.zeros(len(SPECTRUM_BINS) - 1)
        self.spectrum_under = 0  # cells with threshold < I < SPECTRUM_BINS[0]
        self.spectrum_over = 0
        self.radial_edges = _radial_edges(geometry) if radial_bins is None else np.asarray(radial_bins, dtype=np.float64)
        self._r_weights = _radial_weights(geometry, self.radial_edges)

    def update(self, showers: ArrayLike, incident_energies: ArrayLike | None = None) -> None:
        a = self.geometry.check(showers)
        if not len(a):
            return
        self.n += len(a)
        self.cell_sum += a.sum(axis=0, dtype=np.float64)
        v = a[a > self.threshold]
        self.spectrum_counts += np.histogram(v, bins=self.spectrum_edges)[0]
        self.spectrum_under += int((v < self.spectrum_edges[0]).sum())
        self.spectrum_over += int((v > self.spectrum_edges[-1]).sum())

    # ---- results ------------------------------------------------------------------------
    def mean_cells(self) -> np.ndarray:
        """Mean shower ``(n_cells,)`` MeV."""
        return self.cell_sum / max(self.n, 1)

    def mean_images(self) -> list[np.ndarray]:
        m = self.mean_cells()
        return [m[sl].reshape(lay.shape) for lay, sl in zip(self.geometry.layers, self.geometry.layer_slices)]

    def longitudinal_profile(self) -> np.ndarray:
        m = self.mean_cells()
        return np.add.reduceat(m, self.geometry.layer_offsets[:-1])

    def radial_profile(self) -> np.ndarray:
        return self.mean_cells() @ self._r_weights

    def lateral_profiles(self, axis: str = "x") -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        m = self.mean_cells()
        for lay, sl in zip(self.geometry.layers, self.geometry.layer_slices):
            edges, idx = _lateral_bins(lay, axis)
            out.append((edges, np.bincount(idx, weights=m[sl], minlength=len(edges) - 1)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays for plotting / serialisation."""
        return {
            "n": self.n, "mean_images": self.mean_images(), "longitudinal": self.longitudinal_profile(),
            "radial_edges": self.radial_edges, "radial": self.radial_profile(),
            "x_profiles": self.lateral_profiles("x"), "y_profiles": self.lateral_profiles("y"),
            "spectrum_edges": self.spectrum_edges, "spectrum_counts": self.spectrum_counts,
        }


# ------------------------------------------------------------------------------------------
# response and resolution
# ------------------------------------------------------------------------------------------
def energy_bins(*e_inc: ArrayLike, n_bins: int = 10, max_discrete: int = 25) -> tuple[np.ndarray, bool]:
    """Incident-energy bin edges (MeV) covering all given samples; ``(edges, discrete)``.

    If the samples together have at most ``max_discrete`` distinct energies (e.g. the
    CaloChallenge dataset-1 powers of two) every energy gets its own bin (edges at the
    geometric midpoints); otherwise ``n_bins`` log-spaced bins if the range spans more than a
    factor 3, else linear bins.
    """
    vals = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in e_inc])
    if vals.size == 0:
        return np.array([0.0, 1.0]), False
    u = np.unique(np.round(vals, 6))
    # merge float32 round-off duplicates
    if u.size > 1:
        u = u[np.concatenate([[True], np.diff(u) > 1e-6 * u[1:]])]
    if u.size <= max_discrete:
        if u.size == 1:
            return np.array([u[0] * 0.99, u[0] * 1.01]), True
        pos = u > 0
        mids = np.sqrt(u[1:] * u[:-1]) if pos.all() else 0.5 * (u[1:] + u[:-1])
        lo = u[0] * u[0] / mids[0] if pos.all() else u[0] - (mids[0] - u[0])
        hi = u[-1] * u[-1] / mids[-1] if pos.all() else u[-1] + (u[-1] - mids[-1])
        return np.concatenate([[lo], mids, [hi]]), True
    lo, hi = float(vals.min()), float(vals.max())
    hi = np.nextafter(hi, np.inf)
    if lo > 0 and hi / lo > 3:
        return np.geomspace(lo, hi, n_bins + 1), False
    return np.linspace(lo, hi, n_bins + 1), False


def bin_index(x: ArrayLike, bins: ArrayLike) -> np.ndarray:
    """Bin of each ``x`` (N,) in edges ``bins`` (K+1,), the last bin's right edge included; -1 / K outside."""
    xs = np.asarray(x, dtype=np.float64).ravel()
    edges = np.asarray(bins, dtype=np.float64)
    idx = np.searchsorted(edges, xs, side="right") - 1
    idx[xs == edges[-1]] = len(edges) - 2
    return idx


def binned_stats(values: ArrayLike, x: ArrayLike, bins: ArrayLike) -> dict[str, np.ndarray]:
    """Mean and spread of ``values`` per bin of ``x`` (e.g. the visible energy per E_inc bin).

    ``values``, ``x`` (N,); ``bins`` (K+1,) edges (right edge of the last bin included); rows
    with a non-finite value are left out. Per bin: ``n``; ``x_mean`` (mean x in the bin, NaN if
    empty); ``mean`` with ``mean_err = std / sqrt(n)``; ``std`` (ddof=1) with
    ``std_err = std / sqrt(2 (n - 1))`` (Gaussian approximation). Bins with fewer than two
    entries give NaN. Returns arrays of shape (K,) plus ``edges``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    xs = np.asarray(x, dtype=np.float64).ravel()
    edges = np.asarray(bins, dtype=np.float64)
    k = len(edges) - 1
    idx = bin_index(xs, edges)
    ok = (idx >= 0) & (idx < k) & np.isfinite(v)
    r = v[ok]
    i = idx[ok]
    n = np.bincount(i, minlength=k).astype(np.float64)
    s1 = np.bincount(i, weights=r, minlength=k)
    sx = np.bincount(i, weights=xs[ok], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        dev = r - mean[i]  # two-pass variance: no cancellation for narrow distributions
        std = np.sqrt(np.bincount(i, weights=dev * dev, minlength=k) / (n - 1))
        mean_err = std / np.sqrt(n)
        std_err = std / np.sqrt(2 * (n - 1))
        x_mean = sx / n
    few = n < 2
    for arr in (mean, std, mean_err, std_err):
        arr[few] = np.nan
    x_mean[n < 1] = np.nan
    return {"edges": edges, "n": n, "x_mean": x_mean, "mean": mean, "mean_err": mean_err, "std": std,
            "std_err": std_err}


def response_vs_energy(e_dep: ArrayLike, e_inc: ArrayLike, bins: ArrayLike) -> dict[str, np.ndarray]:
    """Energy response ``R = E_dep / E_inc`` per incident-energy bin.

    ``e_dep``, ``e_inc`` (N,) MeV; ``bins`` (K+1,) edges (MeV, right edge of the last bin
    included). :func:`binned_stats` of ``R`` in ``e_inc`` (``e_mean`` its ``x_mean``: the mean
    E_inc in the bin), plus ``resolution = std / mean`` with
    ``resolution_err = resolution * sqrt((std_err/std)^2 + (mean_err/mean)^2)``.
    Bins with fewer than two showers give NaN. Returns arrays of shape (K,) plus ``edges``.
    """
    ed = np.asarray(e_dep, dtype=np.float64).ravel()
    ei = np.asarray(e_inc, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        st = binned_stats(ed / ei, ei, bins)
        mean, std, mean_err, std_err = st["mean"], st["std"], st["mean_err"], st["std_err"]
        res = std / mean
        res_err = np.abs(res) * np.sqrt((std_err / std) ** 2 + (mean_err / mean) ** 2)
    return {"edges": st["edges"], "n": st["n"], "e_mean": st["x_mean"], "mean": mean, "mean_err": mean_err,
            "std": std, "std_err": std_err, "resolution": res, "resolution_err": res_err}
