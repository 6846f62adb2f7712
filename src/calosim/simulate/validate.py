"""Known-answer physics checks of an engine's electromagnetic showers (Geant4 or the built-in one).

The checks run on a *probe* copy of a preset (:func:`probe_geometry`): the same sampling
structure and effective material, read out in thin layers (a few sampling periods each) of
fine square cells, so that depth profiles and radial containment can be measured. Each check
compares a measurement with a textbook expectation and a stated tolerance:

``linearity``
    mean response (cells + overflow, EM scale) / E at each energy, within ``tol_linearity``
    of its mean over energies.
``sampling_fraction``
    visible energy / E (response x the structure's declared sampling fraction) is constant with
    energy and equal to the declared value within ``tol_sf``.
``stochastic_term``
    a = sigma(E)/E x sqrt(E/GeV), constant with energy and near the textbook sampling term
    a = 3.2 % sqrt(dE_mip / MeV) of Fabjan & Gianotti (Rev. Mod. Phys. 75 (2003) 1243,
    eq. 33), with dE_mip the minimum-ionising energy loss in one sampling period (PDG dE/dx).
``t_max``
    the shower maximum of electrons moves as T = ln(E/E_c) + C (PDG eq. 34.36): dT/d ln E = 1.
    T comes from the moments of the mean longitudinal profile of a Gamma distribution
    (T = <t> - var(t)/<t>). The offset C is reported, not checked: in fine sampling structures
    Geant4 gives C ~ -1.5 (1-4 GeV, calogan) against the homogeneous -0.5, the effective-medium
    shift that GFlash's sampling term t1 F_S describes (Grindhammer & Peters, hep-ex/0001020).
``photon_depth``
    photons reach their maximum ~1 X0 deeper than electrons (PDG: C_gamma - C_e = 1).
``containment``
    90 % of the energy within about one Molière radius (PDG), r90 / R_M.

>>> report = validate_em("geant4", "calogan", energies=(1, 4), n=40)   # doctest: +SKIP
>>> [c.name for c in report.failed]                                    # doctest: +SKIP
[]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..geometry import Geometry, Layer, get_geometry
from ..io import ShowerData

__all__ = ["MIP_DEDX_MEV_PER_MM", "Check", "ValidationReport", "probe_geometry", "longitudinal_moments",
           "containment_radius", "textbook_stochastic_term", "validate_em"]

#: Minimum-ionisation energy loss, MeV/mm (PDG "Atomic and nuclear properties": <dE/dx>_min x density).
MIP_DEDX_MEV_PER_MM: dict[str, float] = {
    "G4_Pb": 1.273, "G4_lAr": 0.2120, "G4_W": 2.210, "G4_Si": 0.3876, "G4_Fe": 1.143,
    "G4_POLYSTYRENE": 0.2175, "G4_CESIUM_IODIDE": 0.5606, "G4_PbWO4": 1.022,
}


@dataclass
class Check:
    """One comparison: ``value`` against ``expected`` within ``tolerance`` (absolute)."""

    name: str
    value: float
    expected: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(abs(self.value - self.expected) <= self.tolerance)


@dataclass
class ValidationReport:
    """The checks and the measurements behind them (``measurements`` keyed by name)."""

    engine: str
    geometry: str
    checks: list[Check] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "geometry": self.geometry, "measurements": self.measurements,
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}

    def table(self) -> str:
        rows = [f"{'check':<28}{'value':>10}{'expected':>10}{'tol':>8}  result"]
        for c in self.checks:
            rows.append(f"{c.name:<28}{c.value:>10.4g}{c.expected:>10.4g}{c.tolerance:>8.3g}  "
                        f"{'ok' if c.passed else 'FAIL'}  {c.detail}")
        return "\n".join(rows)


def probe_geometry(base: Geometry | str = "calogan", periods_per_layer: int = 4, cell_mm: float = 10.0,
                   half_width_mm: float = 240.0) -> Geometry:
    """``base``'s sampling structure read out every ``periods_per_layer`` periods in square cells.

    Layers are ``(2 h / cell, 2 h / cell)`` Cartesian grids of ``cell_mm`` (h = ``half_width_mm``),
    centred on the beam; deposits outside the grid are the layer's overflow. The effective
    material is ``base``'s first layer's.
    """
    geo = get_geometry(base) if isinstance(base, str) else base
    s = geo.sampling
    if s is None:
        raise ValueError(f"geometry {geo.name!r} has no sampling structure to probe")
    if s.kind != "planar" or s.groups:
        raise ValueError(f"geometry {geo.name!r}: the probe readout needs a planar stack of identical periods "
                         f"(this one is {s.kind}{' with several period groups' if s.groups else ''})")
    n_cells = int(round(2 * half_width_mm / cell_mm))
    per = max(1, min(periods_per_layer, s.n_periods))
    n_layers = math.ceil(s.n_periods / per)
    mat = geo.layers[0].material
    layers = []
    for i in range(n_layers):
        k = min(per, s.n_periods - i * per)
        layers.append(Layer(f"probe{i}", "cartesian", (n_cells, n_cells), z_mm=i * per * s.period_mm,
                            thickness_mm=k * s.period_mm, material=mat, cell_mm=(cell_mm, cell_mm)))
    # the built-in simulator uses the preset's Geant4-fitted tuning on its probe too
    return Geometry(f"{geo.name}-probe", tuple(layers), f"probe readout of {geo.name}", overflow=True,
                    sampling=s, meta={"mc_tuning": str(geo.meta.get("mc_tuning", geo.name))})


def _layer_totals(data: ShowerData) -> np.ndarray:
    """``(N, n_layers)`` MeV: cells plus overflow of each layer."""
    e = data.geometry.layer_energies(data.showers).astype(np.float64)
    return e + (0.0 if data.overflow is None else data.overflow.astype(np.float64))


def longitudinal_moments(data: ShowerData) -> tuple[float, float, float]:
    """Mean depth, variance and Gamma-profile maximum ``(<t>, var t, T)`` of the mean profile, in X0.

    Depths are layer centres in X0 of the layers' effective material; the variance is corrected
    for the layer width (Sheppard, w^2/12).
    """
    geo = data.geometry
    prof = _layer_totals(data).mean(0)
    prof = prof / prof.sum()
    t = np.asarray(geo.layer_depth_centers_x0(), float)
    w = np.array([l.thickness_mm / l.material.x0_mm for l in geo.layers])
    mean = float((prof * t).sum())
    var = float((prof * (t - mean) ** 2).sum() - (prof * w ** 2).sum() / 12)
    return mean, var, mean - var / mean


def containment_radius(data: ShowerData, fraction: float = 0.9) -> float:
    """Radius (mm, about the impact point) holding ``fraction`` of the summed energy of all showers.

    Cells are taken at their centres (all layers must share one Cartesian grid); overflow counts
    as outside every radius, so a radius is only returned when the grid holds ``fraction``.
    """
    geo = data.geometry
    shapes = {(l.shape, l.cell_mm) for l in geo.layers}
    if len(shapes) != 1 or not geo.is_cartesian:
        raise ValueError("containment_radius needs layers that share one Cartesian grid (see probe_geometry)")
    grid = sum(geo.layer(data.showers, i).astype(np.float64).sum(0).ravel() for i in range(geo.n_layers))
    x, y = geo.layers[0].cell_centers()
    pos = data.conditions.get("position")
    x0, y0 = (0.0, 0.0) if pos is None else (float(pos[:, 0].mean()), float(pos[:, 1].mean()))
    r = np.hypot(x - x0, y - y0)
    total = float(_layer_totals(data).sum())
    order = np.argsort(r)
    cum = np.cumsum(grid[order]) / total
    if cum[-1] < fraction:
        raise ValueError(f"the grid holds only {cum[-1]:.3f} of the energy, less than {fraction}")
    return float(np.interp(fraction, cum, r[order]))


def textbook_stochastic_term(geo: Geometry) -> float:
    """a = 3.2 % sqrt(dE_mip per sampling period / MeV) (Fabjan & Gianotti 2003), as a fraction."""
    s = geo.sampling
    if s is None:
        raise ValueError(f"geometry {geo.name!r} has no sampling structure")
    try:
        de = s.absorber_mm * MIP_DEDX_MEV_PER_MM[s.absorber] if s.absorber_mm > 0 else 0.0
        de += s.active_mm * MIP_DEDX_MEV_PER_MM[s.active]
    except KeyError as exc:
        raise ValueError(f"no minimum-ionisation dE/dx known for material {exc.args[0]!r}") from None
    return 0.032 * math.sqrt(de)


def validate_em(engine: str = "geant4", geometry: Geometry | str = "calogan", energies: tuple[float, ...] = (1, 4),
                n: int = 40, seed: int = 0, tmax_energy: float | None = None) -> ValidationReport:
    """Simulate ``n`` electrons per energy (GeV) and ``n`` photons at ``tmax_energy`` and run the checks.

    Tolerances combine a physics allowance with the statistical error of ``n`` showers, so the
    checks are meaningful at small ``n`` (tests) and sharp at large ``n`` (benchmarks).
    """
    from . import simulate

    base = get_geometry(geometry) if isinstance(geometry, str) else geometry
    geo = probe_geometry(base)
    s = geo.sampling
    assert s is not None
    mat = geo.layers[0].material
    rep = ValidationReport(engine, base.name)
    resp_mean, resp_sigma, tmax_e = [], [], []
    electrons: dict[float, ShowerData] = {}
    for k, e_gev in enumerate(energies):
        d = simulate(geo, "e-", n, energy=str(e_gev), engine=engine, seed=seed + k)
        electrons[e_gev] = d
        resp = _layer_totals(d).sum(1) / d.incident_energies[:, 0]
        resp_mean.append(float(resp.mean()))
        resp_sigma.append(float(resp.std(ddof=1)))
        tmax_e.append(longitudinal_moments(d)[2])
    resp_mean_a, sig_a = np.array(resp_mean), np.array(resp_sigma)
    err_mean = sig_a / math.sqrt(n)
    e_arr = np.asarray(energies, float)
    a_meas = sig_a * np.sqrt(e_arr)
    a_text = textbook_stochastic_term(base)
    y = np.log(e_arr * 1000.0 / mat.critical_mev)
    rep.measurements.update({
        "energies_gev": e_arr.tolist(), "response": resp_mean_a.tolist(), "sigma_over_e": sig_a.tolist(),
        "stochastic_term": a_meas.tolist(), "textbook_stochastic_term": a_text,
        "t_max_x0": tmax_e, "t_max_minus_ln_y": (np.array(tmax_e) - y).tolist(), "n": n,
        "x0_mm": mat.x0_mm, "moliere_mm": mat.moliere_mm, "critical_mev": mat.critical_mev,
    })
    avg = float(np.average(resp_mean_a, weights=1 / err_mean ** 2))
    worst = int(np.argmax(np.abs(resp_mean_a / avg - 1)))
    rep.checks.append(Check("linearity (max |R/<R>-1|)", float(resp_mean_a[worst] / avg - 1), 0.0,
                            0.01 + 3 * float(err_mean[worst]) / avg, f"R = {np.round(resp_mean_a, 4).tolist()}"))
    sf = resp_mean_a * s.sampling_fraction
    rep.checks.append(Check("sampling fraction", float(np.mean(sf)), s.sampling_fraction,
                            s.sampling_fraction * (0.03 + 3 * float(err_mean.max())),
                            f"per energy {np.round(sf, 4).tolist()}"))
    # the error of a standard deviation from n samples is ~ sigma / sqrt(2 (n - 1))
    rel_err = 1 / math.sqrt(2 * (n - 1))
    rep.checks.append(Check("stochastic term a", float(np.mean(a_meas)), a_text, a_text * (0.3 + 3 * rel_err),
                            f"a per energy {np.round(a_meas, 4).tolist()} (textbook {a_text:.4f})"))
    rep.checks.append(Check("stochastic term spread", float(a_meas.max() / a_meas.min() - 1), 0.0,
                            0.15 + 3 * math.sqrt(2) * rel_err, "max/min of a over energies - 1"))
    if len(energies) > 1:
        slope = float(np.polyfit(np.log(e_arr), tmax_e, 1)[0])
        # shower-to-shower spread of T is ~1 X0, so each T_max carries ~1/sqrt(n) X0
        span = float(np.log(e_arr.max() / e_arr.min()))
        rep.checks.append(Check("e- dT_max / d ln E", slope, 1.0, 0.3 + 3 * math.sqrt(2 / n) / span,
                                f"T_max {np.round(tmax_e, 2).tolist()} X0; T_max - ln(E/E_c) "
                                f"{np.round(np.array(tmax_e) - y, 2).tolist()} (PDG homogeneous: -0.5)"))

    e_top = float(tmax_energy or energies[-1])
    ref = electrons.get(e_top)
    if ref is None:
        ref = simulate(geo, "e-", n, energy=str(e_top), engine=engine, seed=seed + 100)
    gam = simulate(geo, "gamma", n, energy=str(e_top), engine=engine, seed=seed + 200)
    t_e, t_g = longitudinal_moments(ref)[2], longitudinal_moments(gam)[2]
    # photon conversion depth is exponential (mean = std = 9/7 X0): the statistical error of n
    rep.checks.append(Check(f"gamma - e- T_max at {e_top:g} GeV", t_g - t_e, 1.0,
                            0.5 + 3 * (9 / 7) / math.sqrt(n), f"T_max e- {t_e:.2f}, gamma {t_g:.2f} X0"))
    r90 = containment_radius(ref)
    rep.checks.append(Check("r90 / R_M", r90 / mat.moliere_mm, 1.0, 0.3, f"r90 {r90:.1f} mm, R_M {mat.moliere_mm:.1f} mm"))
    rep.measurements.update({"t_max_gamma_minus_e_x0": t_g - t_e, "r90_mm": r90, "r90_over_rm": r90 / mat.moliere_mm})
    return rep
