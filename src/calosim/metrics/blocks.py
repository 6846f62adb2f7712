"""The metric blocks of an evaluation: each takes scans and returns an immutable result record.

A record holds the JSON part of ``metrics.json`` (``.record``, plain or numpy values) and, where
a plot needs more, the arrays for it (classifier predictions, nearest-neighbour distances).
:class:`SampleResult` bundles everything known about one generated sample; the plots and the
report only read these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .angle import MIN_HITS, MIN_PHI_THETA_DEG, angles_vary, residual_summary
from .observables import bin_index, binned_stats, energy_bins, highlevel_matrix, response_vs_energy
from .scan import SampleScan

__all__ = ["ANGLE_PROFILE_BINS", "ClassifierResult", "DistancesResult", "MemorizationResult", "SampleResult",
           "angle_reference", "angles_block", "classifier_block", "conditions_block", "distances_block",
           "fpd_block", "is_ild", "memorization_block", "response_block", "response_warning",
           "visible_energy_block"]

_RESPONSE_KEYS = ("n", "mean", "mean_err", "std", "std_err", "resolution", "resolution_err")
#: A response mismatch is "gross" (warned about) above this relative difference of the mean
#: E_dep / E_inc in one incident-energy bin, if it is also statistically significant.
GROSS_RESPONSE_REL = 0.10
GROSS_RESPONSE_PULL = 5.0
#: Bins of the conditioned polar angle for the profile <principal-axis theta> vs theta.
ANGLE_PROFILE_BINS = 6
_STAT_KEYS = ("n", "mean", "mean_err", "std", "std_err")


def is_ild(geometry_name: str) -> bool:
    """The ILD detectors (``ild-ecal``, ``ild-ecal-10``, ``ild-hcal``): their report leads with seed 003's plots."""
    return str(geometry_name).startswith("ild-")


@dataclass(frozen=True)
class DistancesResult:
    """Per-observable distances ``{name: {metric: value}}`` and their summary over observables."""

    observables: dict[str, dict[str, float]]
    summary: dict[str, Any]  # mean_separation_power(+_err, _null), worst_observables


@dataclass(frozen=True)
class ClassifierResult:
    """``levels``: ``{"low"|"high": {auc, auc_err, jsd, jsd_err, n_used} | None}``; ``predictions``:
    ``{level: {"prob": (n,), "label": (n,)}}`` on the test folds (for the score histograms)."""

    levels: dict[str, dict[str, Any] | None]
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class MemorizationResult:
    """``record``: the scalars of :func:`~calosim.metrics.memorization.memorization_test`;
    ``distances``: its distance arrays (``gen_to_train``, ``heldout_to_train``, ...)."""

    record: dict[str, Any]
    distances: dict[str, np.ndarray]


@dataclass(frozen=True)
class SampleResult:
    """Everything the plots and the report know about one generated sample.

    ``entry`` is its ``samples[i]`` record of ``metrics.json`` (before JSON conversion);
    ``scan`` the scan without its raw-shower subset.
    """

    scan: SampleScan
    entry: dict[str, Any]
    classifier: ClassifierResult | None = None
    memorization: MemorizationResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.scan.name

    @property
    def response(self) -> dict[str, Any]:
        return self.entry["response"]


# ------------------------------------------------------------------------------------------
def distances_block(ref: SampleScan, gen: SampleScan, n_boot: int, rng: np.random.Generator) -> DistancesResult:
    """Every observable's distances (separation power, chi2, W1, KS with bootstrap errors)."""
    from .distances import compare_observable

    out: dict[str, dict[str, float]] = {}
    informative = []
    for k, r in ref.obs.items():
        if k not in gen.obs:
            continue
        g = gen.obs[k]
        out[k] = compare_observable(r, g, n_boot=n_boot, rng=rng, name=k)
        # an observable constant (and equal) in both samples carries no information
        lo, hi = min(float(r.min()), float(g.min())), max(float(r.max()), float(g.max()))
        if hi > lo:
            informative.append(k)
    sp = np.array([out[k]["separation_power"] for k in informative])
    err = np.array([out[k].get("separation_power_err", np.nan) for k in informative])
    null = np.array([out[k].get("separation_power_null", np.nan) for k in informative])
    order = sorted(informative, key=lambda k: (-out[k]["separation_power"], k))
    summary = {
        "mean_separation_power": float(sp.mean()) if sp.size else None,
        "mean_separation_power_err": float(np.sqrt(np.sum(err**2)) / sp.size) if sp.size else None,
        "mean_separation_power_null": float(null.mean()) if sp.size else None,
        "worst_observables": order[:3],
    }
    return DistancesResult(out, summary)


def conditions_block(ref: SampleScan, gen: SampleScan) -> tuple[dict[str, float], list[str]]:
    """KS distance and range of the incident energies, and a warning if they differ."""
    from .distances import ks_statistic

    cond = {"e_inc_ks": ks_statistic(ref.e_inc, gen.e_inc), "e_inc_min": float(gen.e_inc.min()),
            "e_inc_max": float(gen.e_inc.max())}
    warnings = []
    if cond["e_inc_ks"] > 0.05 and min(ref.n, gen.n) > 1000:
        warnings.append(f"incident-energy distributions differ (KS = {cond['e_inc_ks']:.3f}): observables "
                        "integrated over energy are then not directly comparable; see the response per energy bin")
    return cond, warnings


def classifier_block(ref: SampleScan, gen: SampleScan, columns: list[str], seed: int,
                     kwargs: dict[str, Any]) -> ClassifierResult:
    """Classifier two-sample tests on low-level (cells / E_inc, log E_inc) and high-level inputs."""
    from .classifier import classifier_two_sample_test, lowlevel_features

    levels: dict[str, dict[str, Any] | None] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    inputs = {
        "low": (lowlevel_features(ref.sub_showers, ref.sub_e_inc), lowlevel_features(gen.sub_showers, gen.sub_e_inc)),
        "high": (highlevel_matrix({k: v[ref.sub_index] for k, v in ref.obs.items()}, columns),
                 highlevel_matrix({k: v[gen.sub_index] for k, v in gen.obs.items()}, columns)),
    }
    for level, (xr, xg) in inputs.items():
        if xr.shape[1] == 0:
            levels[level] = None
            continue
        r = classifier_two_sample_test(xr, xg, return_predictions=True, **{"seed": seed, **kwargs})
        preds[level] = {"prob": np.asarray(r["prob"]), "label": np.asarray(r["label"])}
        levels[level] = {k: r.get(k) for k in ("auc", "auc_err", "jsd", "jsd_err", "n_used")}
    return ClassifierResult(levels, preds)


def fpd_block(ref: SampleScan, gen: SampleScan, columns: list[str], seed: int, convention: str = "calosim"
              ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """FPD and KPD ``{"value", "err", "convention"}`` on the high-level observables (None without columns)."""
    from .fpd import frechet_physics_distance, kernel_physics_distance

    if not columns:
        return None, None
    # both scale the features with reference statistics themselves (per the convention)
    xr, xg = highlevel_matrix(ref.obs, columns), highlevel_matrix(gen.obs, columns)
    fv, fe = frechet_physics_distance(xr, xg, seed=seed, convention=convention)
    kv, ke = kernel_physics_distance(xr, xg, seed=seed, convention=convention)
    return ({"value": float(fv), "err": float(fe), "convention": convention},
            {"value": float(kv), "err": float(ke), "convention": convention})


def response_block(ref: SampleScan, gen: SampleScan) -> dict[str, Any]:
    """Energy response and resolution per incident-energy bin (bins cover both samples)."""
    edges, discrete = energy_bins(ref.e_inc, gen.e_inc)
    rr = response_vs_energy(ref.obs["E_tot"], ref.e_inc, edges)
    rg = response_vs_energy(gen.obs["E_tot"], gen.e_inc, edges)
    lo, hi = float(ref.e_inc.min()), float(ref.e_inc.max())
    in_range = (edges[1:] >= lo) & (edges[:-1] <= hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (rg["mean"] - rr["mean"]) / np.hypot(rg["mean_err"], rr["mean_err"])
        ratio = rg["resolution"] / rr["resolution"]
    finite = pull[np.isfinite(pull)]
    return {
        "edges": edges, "discrete": bool(discrete),
        "e_mean": np.where(rg["n"] > 0, rg["e_mean"], rr["e_mean"]),
        "has_reference": rr["n"] >= 2, "in_reference_range": in_range,
        "reference": {k: rr[k] for k in _RESPONSE_KEYS},
        "generated": {k: rg[k] for k in _RESPONSE_KEYS},
        "mean_pull": pull, "resolution_ratio": ratio,
        "max_abs_mean_pull": float(np.abs(finite).max()) if finite.size else None,
    }


def response_warning(resp: dict[str, Any]) -> str | None:
    """One line if the mean response of some bin is grossly off (> 10 % and > 5 sigma), else None."""
    g, r = np.asarray(resp["generated"]["mean"], float), np.asarray(resp["reference"]["mean"], float)
    pull = np.asarray(resp["mean_pull"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = g / r
    bad = np.isfinite(rel) & np.isfinite(pull) & (np.abs(rel - 1) > GROSS_RESPONSE_REL) \
        & (np.abs(pull) > GROSS_RESPONSE_PULL) & np.asarray(resp["has_reference"], bool)
    if not bad.any():
        return None
    k = int(np.nanargmax(np.where(bad, np.abs(np.log(np.where(bad, rel, 1.0))), -np.inf)))
    e = np.asarray(resp["edges"], float) / 1000.0
    return (f"energy response grossly off: mean E_dep/E_inc is {rel[k]:.3g}x the reference's at "
            f"{e[k]:.3g}-{e[k + 1]:.3g} GeV (pull {pull[k]:.0f} sigma; {int(bad.sum())} of {len(bad)} bins off "
            f"by > {100 * GROSS_RESPONSE_REL:.0f} %)")


def memorization_block(train: SampleScan, gen: SampleScan, ref: SampleScan, cap: int,
                       rng: np.random.Generator) -> MemorizationResult:
    """Memorisation (copies) vs under-dispersion, from nearest-neighbour distances to ``train``."""
    from .memorization import memorization_test

    def pick(s: SampleScan) -> np.ndarray:
        idx = np.arange(len(s.sub_showers))
        if len(idx) > cap:
            idx = np.sort(rng.choice(len(idx), size=cap, replace=False))
        return s.sub_showers[idx]

    # raw cells; memorization_test normalises each shower to unit sum (shape only) by default
    res = memorization_test(pick(train), pick(gen), pick(ref), seed=rng)
    arrays = {k: np.asarray(v) for k, v in res.items() if isinstance(v, np.ndarray) and v.ndim >= 1}
    return MemorizationResult({k: v for k, v in res.items() if k not in arrays}, arrays)


# ------------------------------------------------------------------------------------------
# seed 003: visible energy per incident-energy bin, the principal-axis incidence angle
# ------------------------------------------------------------------------------------------
def visible_energy_block(ref: SampleScan, gen: SampleScan) -> dict[str, Any]:
    """Means and widths of the visible energy ``E_vis`` (MeV) per E_inc bin (seed 003 "Visible
    Energy Sum (Means / Widths)"): ``{"edges" (MeV, K+1), "discrete", "e_mean", "reference": {n,
    mean, mean_err, std, std_err}, "generated": {...}, "mean_ratio", "mean_ratio_err",
    "width_ratio", "width_ratio_err"}`` (ratios generated / reference; NaN where a bin has < 2
    showers).

    The seed's energies are discrete; for a continuous E_inc spectrum each shower's ``E_vis`` is
    scaled to the bin's mean energy, ``E_vis * e_mean / E_inc`` (``e_mean`` of the reference), so
    the width is the shower fluctuation and not the spread of E_inc inside the bin.
    """
    edges, discrete = energy_bins(ref.e_inc, gen.e_inc)
    e_ref = binned_stats(ref.e_inc, ref.e_inc, edges)["x_mean"]
    e_gen = binned_stats(gen.e_inc, gen.e_inc, edges)["x_mean"]
    e_mean = np.where(np.isfinite(e_ref), e_ref, e_gen)

    def scaled(s: SampleScan) -> np.ndarray:
        v = np.asarray(s.obs["E_vis"], dtype=np.float64)
        if discrete:
            return v
        i = np.clip(bin_index(s.e_inc, edges), 0, len(e_mean) - 1)
        return v * e_mean[i] / s.e_inc

    rr = binned_stats(scaled(ref), ref.e_inc, edges)
    rg = binned_stats(scaled(gen), gen.e_inc, edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        mr = rg["mean"] / rr["mean"]
        mr_err = np.abs(mr) * np.hypot(rg["mean_err"] / rg["mean"], rr["mean_err"] / rr["mean"])
        wr = rg["std"] / rr["std"]
        wr_err = np.abs(wr) * np.hypot(rg["std_err"] / rg["std"], rr["std_err"] / rr["std"])
    return {"edges": edges, "discrete": bool(discrete), "e_mean": e_mean,
            "reference": {k: rr[k] for k in _STAT_KEYS}, "generated": {k: rg[k] for k in _STAT_KEYS},
            "mean_ratio": mr, "mean_ratio_err": mr_err, "width_ratio": wr, "width_ratio_err": wr_err}


def _angle_summary(scan: SampleScan) -> dict[str, Any]:
    a = scan.angles
    return {"n": scan.n, "n_undefined": int(np.isnan(a["pca_theta"]).sum()),
            "theta_residual": residual_summary(a["theta_residual"]), "phi_residual": residual_summary(a["phi_residual"])}


def angle_reference(ref: SampleScan) -> dict[str, Any] | None:
    """The reference's principal-axis residuals (``metrics.json`` ``reference.angles``), or None
    if its file carries no varying ``theta`` (then no sample gets an angle check)."""
    if not ref.angles or not angles_vary(ref.angles["theta"]):
        return None
    return {"min_hits": MIN_HITS, "min_phi_theta_deg": MIN_PHI_THETA_DEG, **_angle_summary(ref)}


def angles_block(ref: SampleScan, gen: SampleScan, n_boot: int, rng: np.random.Generator) -> dict[str, Any] | None:
    """The principal-axis angle check of one sample against the reference (seed 003's PCA check).

    None unless both files carry ``theta`` and the reference's varies. Otherwise ``{"n",
    "n_undefined", "theta_residual": {n, mean, mean_err, std, std_err, width68}, "phi_residual":
    {...}`` (degrees, :func:`~calosim.metrics.angle.residual_summary`), ``"residual_shift"``
    (generated minus reference mean theta residual), ``"width_ratio"`` (generated / reference
    theta-residual std), ``"observables": {name: compare_observable(...)}`` for ``pca_theta``,
    ``theta_residual``, ``phi_residual`` (showers with an axis), and ``"profile"``: the mean
    principal-axis theta per conditioned-theta bin, ``{"edges" (deg), "reference": {n, mean,
    mean_err, std, std_err}, "generated": {...}}``}.
    """
    from .distances import compare_observable

    if not gen.angles or angle_reference(ref) is None:
        return None
    r, g = ref.angles, gen.angles
    out: dict[str, Any] = _angle_summary(gen)
    rs = residual_summary(r["theta_residual"])
    out["residual_shift"] = out["theta_residual"]["mean"] - rs["mean"]
    out["width_ratio"] = out["theta_residual"]["std"] / rs["std"] if rs["std"] else float("nan")
    obs = {}
    for k in ("pca_theta", "theta_residual", "phi_residual"):
        rv, gv = r[k][np.isfinite(r[k])], g[k][np.isfinite(g[k])]
        if rv.size >= 2 and gv.size >= 2:
            obs[k] = compare_observable(rv, gv, n_boot=n_boot, rng=rng, name=k)
    out["observables"] = obs
    lo = float(min(np.nanmin(r["theta"]), np.nanmin(g["theta"])))
    hi = float(np.nextafter(max(np.nanmax(r["theta"]), np.nanmax(g["theta"])), np.inf))
    edges = np.linspace(lo, hi, ANGLE_PROFILE_BINS + 1)
    out["profile"] = {"edges": edges,
                      "reference": {k: v for k, v in binned_stats(r["pca_theta"], r["theta"], edges).items()
                                    if k in _STAT_KEYS},
                      "generated": {k: v for k, v in binned_stats(g["pca_theta"], g["theta"], edges).items()
                                    if k in _STAT_KEYS}}
    return out
