"""Seed 003's angle check and ILD report: the principal-axis estimator on synthetic straight-line
showers (known axis), residuals of a sample against itself, the report sections that appear only
when the files carry angles, and the ILD report leading with the seed's plots."""

import dataclasses
import json
import re

import numpy as np
import pytest

from calosim.features import layer_table
from calosim.geometry import get_geometry
from calosim.io import ShowerData, write_showers
from calosim.metrics.angle import angle_observables, principal_axis, residual_summary, wrap_degrees
from calosim.metrics.evaluate import evaluate
from calosim.metrics.report import format_terminal_table

FAST = {"classifier": False, "fpd": False, "n_boot": 5, "progress": False}


def _line_showers(geo, thetas_deg, phis_deg, *, e_per_layer: float = 100.0) -> np.ndarray:
    """One shower per (theta, phi): energy deposited where a straight line crosses each layer.

    The line passes through the grid centre at mid-depth along (sin t cos p, sin t sin p, cos t);
    in each layer the energy goes to the cell containing the crossing point, the nearest-cell
    rounding being the estimator's only error (at most half a cell per layer).
    """
    tabs = layer_table(geo)
    z_c = 0.5 * (tabs[0].z_mid + tabs[-1].z_mid)
    out = np.zeros((len(thetas_deg), geo.n_cells), np.float32)
    for n, (t, p) in enumerate(zip(np.radians(thetas_deg), np.radians(phis_deg))):
        for tab in tabs:
            dz = tab.z_mid - z_c
            x, y = dz * np.tan(t) * np.cos(p), dz * np.tan(t) * np.sin(p)
            c = np.argmin((tab.x - x) ** 2 + (tab.y - y) ** 2)
            out[n, tab.sl.start + c] = e_per_layer
    return out


def _rounding_bound(geo) -> float:
    """Largest slope error (rad) of an axis fitted to points each off the line by at most half a
    cell diagonal ``h``: ``h sum|dz| / sum dz^2`` over the layer depths ``dz`` about their mean."""
    z = np.array([t.z_mid for t in layer_table(geo)])
    dz = z - z.mean()
    h = 0.5 * np.hypot(*geo.layers[0].cell_mm)
    return float(np.arctan(h * np.abs(dz).sum() / (dz * dz).sum()))


@pytest.mark.parametrize("theta,phi", [(0.0, 0.0), (8.0, 30.0), (15.0, 135.0), (25.0, 250.0), (30.0, 330.0)])
def test_principal_axis_recovers_straight_line_showers(theta, phi):
    geo = get_geometry("ild-ecal")  # 30 x 30 cells of 5.1 mm, 30 layers over 100 mm
    ax = principal_axis(_line_showers(geo, [theta], [phi]), geo)
    assert ax.valid.all() and ax.n_undefined == 0
    bound = _rounding_bound(geo)  # the cell-size resolution, ~6 deg for one cell over the 100 mm depth
    assert abs(np.degrees(ax.theta[0]) - theta) < np.degrees(bound)
    if theta > 0:  # azimuth: the same offset over the transverse lever arm, tan(theta) x the depth
        assert abs(wrap_degrees(np.degrees(ax.phi[0]) - phi)) < np.degrees(bound / np.tan(np.radians(theta)))
    u = ax.direction[0]
    assert u[2] >= 0 and np.isclose(np.linalg.norm(u), 1.0)


def test_principal_axis_on_many_lines_is_unbiased_to_a_fraction_of_a_cell():
    geo = get_geometry("ild-ecal")
    rng = np.random.default_rng(0)
    th, ph = rng.uniform(0, 30, 200), rng.uniform(0, 360, 200)
    ax = principal_axis(_line_showers(geo, th, ph), geo)
    dt = np.degrees(ax.theta) - th
    dp = wrap_degrees(np.degrees(ax.phi) - ph)[th > 15]
    # rounding errors average out; near theta = 0 they fold to positive theta (theta >= 0), a small bias
    assert abs(dt[th > 10].mean()) < 0.3 and abs(dt.mean()) < 1.0 and np.abs(dt).mean() < 1.5
    assert abs(dp.mean()) < 1.0 and np.abs(dp).mean() < 5.0


def test_too_few_hits_or_one_layer_give_nan_and_are_counted():
    geo = get_geometry("ild-ecal-10")
    s = np.zeros((4, geo.n_cells), np.float32)
    s[1, 5] = 1.0  # one hit
    s[2, [5, 7, 9]] = 1.0  # three hits, one layer: no depth extent
    s[3] = _line_showers(geo, [10.0], [0.0])[0]
    ax = principal_axis(s, geo)
    assert ax.valid.tolist() == [False, False, False, True]
    assert ax.n_undefined == 3
    assert np.isnan(ax.theta[:3]).all() and np.isnan(ax.phi[:3]).all() and np.isfinite(ax.theta[3])
    assert ax.n_hits.tolist() == [0, 1, 3, 30]


def test_angle_observables_residuals_and_phi_cut():
    geo = get_geometry("ild-ecal")
    th, ph = np.array([5.0, 20.0, 20.0]), np.array([90.0, 10.0, 350.0])
    o = angle_observables(_line_showers(geo, th, ph), geo, np.radians(th), np.radians(ph))
    assert np.allclose(o["theta"], th)
    assert np.allclose(o["theta_residual"], o["pca_theta"] - th)
    assert np.isnan(o["phi_residual"][0])  # conditioned theta below MIN_PHI_THETA_DEG: no azimuth residual
    assert np.all(np.abs(o["phi_residual"][1:]) < 3.0)  # 350 deg vs ~350 deg: wrapped, not ~360
    with pytest.raises(ValueError, match="theta: expected 3 conditioned angles"):
        angle_observables(_line_showers(geo, th, ph), geo, np.zeros(2))


def test_residual_summary_known_values():
    r = residual_summary([1.0, 2.0, 3.0, np.nan])
    assert r["n"] == 3 and r["mean"] == 2.0 and np.isclose(r["std"], 1.0)
    assert np.isclose(r["mean_err"], 1 / np.sqrt(3)) and np.isclose(r["std_err"], 1 / 2)
    assert np.isnan(residual_summary([np.nan])["mean"])


# ------------------------------------------------------------------------------------------
# evaluate: the angle section and the ILD report
# ------------------------------------------------------------------------------------------
def _mini_ild():
    """The first 8 layers of ild-ecal-10 (800 cells): an ``ild-*`` geometry small enough for fast tests."""
    g = get_geometry("ild-ecal-10")
    return dataclasses.replace(g, name="ild-mini", layers=g.layers[:8])


def _angled(n: int, seed: int, angles: bool = True) -> ShowerData:
    """Line showers at random theta 0-30 deg / phi 0-360 deg with Gamma-distributed energies, plus noise hits."""
    geo = _mini_ild()
    rng = np.random.default_rng(seed)
    th, ph = rng.uniform(0, 30, n), rng.uniform(0, 360, n)
    s = _line_showers(geo, th, ph) * rng.gamma(2.0, 1.0, (n, 1)).astype(np.float32)
    s += (rng.random((n, geo.n_cells)) < 0.02) * rng.exponential(1.0, (n, geo.n_cells)).astype(np.float32)
    e = rng.uniform(1e4, 1e5, (n, 1))
    cond = {"theta": np.radians(th).astype(np.float32), "phi": np.radians(ph).astype(np.float32)} if angles else {}
    return ShowerData(s.astype(np.float32), e, geo, cond)


def test_sample_against_itself_has_zero_residual_shift(tmp_path):
    ref = write_showers(tmp_path / "ref.h5", _angled(300, 0))
    m = evaluate(ref, [ref], names=["same"], **FAST)
    a, ra = m["samples"][0]["angles"], m["reference"]["angles"]
    assert a["residual_shift"] == 0.0 and a["width_ratio"] == 1.0
    assert a["theta_residual"] == ra["theta_residual"]
    assert a["observables"]["pca_theta"]["separation_power"] == 0.0
    assert a["observables"]["theta_residual"]["separation_power"] == 0.0
    assert ra["n"] == 300 and np.isfinite(ra["theta_residual"]["std"])
    assert "principal-axis theta - conditioned theta" in format_terminal_table(m)


def test_angle_section_only_when_files_carry_varying_angles(tmp_path):
    with_angles = write_showers(tmp_path / "a.h5", _angled(200, 1))
    other = write_showers(tmp_path / "b.h5", _angled(200, 2))
    no_angles = write_showers(tmp_path / "c.h5", _angled(200, 3, angles=False))
    fixed = _angled(200, 4)
    fixed.conditions["theta"][:] = 0.0  # a fixed gun: nothing to check
    fixed_path = write_showers(tmp_path / "d.h5", fixed)

    m = evaluate(with_angles, [other, no_angles], out_dir=tmp_path / "rep", plots=["angles"], **FAST)
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Incidence angle (principal axis)" in html and "angles.png" in html
    assert m["samples"][0]["angles"] is not None and m["samples"][1]["angles"] is None
    assert any("no incidence angles" in w for w in m["samples"][1]["warnings"])
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["reference"]["angles"]["n"] == 200

    for ref in (no_angles, fixed_path):  # reference without angles, or with a fixed angle: no section, no error
        out = tmp_path / f"rep_{ref.stem}"
        m = evaluate(ref, [other], out_dir=out, plots=["angles"], **FAST)
        assert m["reference"]["angles"] is None and m["samples"][0]["angles"] is None
        assert not m["samples"][0]["warnings"]
        html = (out / "index.html").read_text()
        assert "Incidence angle" not in html and not (out / "angles.png").exists()


def test_ild_report_leads_with_the_seed_plots(tmp_path):
    ref = write_showers(tmp_path / "ref.h5", _angled(200, 5))
    gen = write_showers(tmp_path / "gen.h5", _angled(200, 6))
    m = evaluate(ref, [gen], out_dir=tmp_path / "rep", plots=["seed", "angles", "response"], **FAST)
    html = (tmp_path / "rep" / "index.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert imgs[:3] == ["seed_distributions.png", "visible_energy.png", "angles.png"]
    assert imgs[3:] == ["response.png"]
    assert html.index("Seed observables (ILD)") < html.index("Incidence angle") < html.index("<h2>Plots</h2>")
    nums = [int(k) for k in re.findall(r"<b>Figure (\d+)\.</b>", html)]
    assert nums == list(range(1, len(imgs) + 1))  # numbered in page order
    ve = m["samples"][0]["visible_energy"]
    assert len(ve["edges"]) == len(ve["mean_ratio"]) + 1 and sum(ve["reference"]["n"]) == 200
    # a non-ILD geometry: no seed section, no visible-energy block
    cg = get_geometry("calogan")
    rng = np.random.default_rng(0)
    toy = ShowerData(rng.gamma(1.0, 1.0, (100, cg.n_cells)).astype(np.float32), rng.uniform(1e4, 5e4, (100, 1)), cg)
    p = write_showers(tmp_path / "cg.h5", toy)
    m = evaluate(p, [p], out_dir=tmp_path / "rep_cg", plots=["seed"], **FAST)
    assert m["samples"][0]["visible_energy"] is None
    assert "Seed observables" not in (tmp_path / "rep_cg" / "index.html").read_text()
    assert not (tmp_path / "rep_cg" / "seed_distributions.png").exists()
