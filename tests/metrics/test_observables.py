"""Analytic checks of calosim.metrics.observables on hand-made showers."""

import math

import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.geometry.calochallenge import read_binning
from calosim.metrics.observables import (
    ShowerSummary,
    compute_observables,
    e_ratio,
    energy_bins,
    highlevel_columns,
    highlevel_matrix,
    lateral_profiles,
    layer_labels,
    longitudinal_profile,
    mean_images,
    observable_groups,
    radial_profile,
    response_vs_energy,
    shower_depth,
)


def _one(geo, layer, iy, ix, e=100.0, n=1):
    """``n`` showers with energy ``e`` in cell (iy, ix) of ``layer``."""
    s = np.zeros((n, geo.n_cells), np.float32)
    lay = geo.layers[layer]
    s[:, geo.layer_slices[layer].start + iy * lay.shape[1] + ix] = e
    return s


def _centre(lay, iy, ix):
    x, y = lay.cell_centers()
    k = iy * lay.shape[1] + ix
    return x[k], y[k]


def test_single_cell_calogan():
    g = get_geometry("calogan")
    s = _one(g, 1, 3, 7)
    o = compute_observables(s, [[1000.0]], g)
    x, y = _centre(g.layers[1], 3, 7)
    assert (x, y) == ((7 + 0.5 - 6) * 40.0, (3 + 0.5 - 6) * 40.0)
    assert o["x_center_1"][0] == pytest.approx(x) and o["y_center_1"][0] == pytest.approx(y)
    assert o["x_width_1"][0] == pytest.approx(0, abs=1e-6) and o["y_width_1"][0] == pytest.approx(0, abs=1e-6)
    assert o["E_ratio_1"][0] == 1.0 and o["E_ratio_0"][0] == 0.0  # single cell / empty layer
    assert o["s_d"][0] == 1.0 and o["sigma_sd"][0] == 0.0 and o["d"][0] == 1 and o["l_d"][0] == 100.0
    assert o["E_tot"][0] == 100.0 and o["E_ratio_inc"][0] == pytest.approx(0.1)
    assert o["f_layer_1"][0] == 1.0 and o["f_layer_0"][0] == 0.0
    assert o["occupancy_1"][0] == pytest.approx(1 / 144) and o["occupancy_0"][0] == 0.0
    assert o["n_hits"][0] == 1 and o["E_vis"][0] == 100.0
    assert o["r_rms_1"][0] == pytest.approx(math.hypot(x, y))
    assert o["r_center_1"][0] == pytest.approx(math.hypot(x, y)) and o["r_width_1"][0] == pytest.approx(0, abs=1e-6)
    assert o["E_inc"][0] == 1000.0
    assert o["asymmetry_1"][0] == 1.0 and o["asymmetry_perp_1"][0] == -1.0  # x > 0, y < 0
    for k, v in o.items():
        assert v.shape == (1,) and np.isfinite(v).all(), k


@pytest.mark.parametrize("k", [0, 1, 2])
def test_all_energy_in_layer_k_gives_depth_k(k):
    g = get_geometry("calogan")
    o = compute_observables(_one(g, k, 0, 0, n=3), np.full((3, 1), 1e3), g)
    np.testing.assert_allclose(o["s_d"], k)
    np.testing.assert_allclose(o["sigma_sd"], 0.0)
    np.testing.assert_allclose(o["d"], k)
    np.testing.assert_allclose(o["s_d_x0"], g.layer_depth_centers_x0()[k])


def test_two_layers_equal_energy_mean_and_width():
    g = get_geometry("calogan")
    s = _one(g, 0, 1, 10, e=50.0) + _one(g, 2, 5, 2, e=50.0)
    o = compute_observables(s, [[100.0]], g)
    assert o["s_d"][0] == pytest.approx(1.0) and o["sigma_sd"][0] == pytest.approx(1.0)
    assert o["l_d"][0] == pytest.approx(100.0) and o["d"][0] == 2
    # shower_depth on arbitrary per-layer energies: E = (1, 3) at depths 0, 1 -> mean 3/4, var 3/16
    sd = shower_depth(np.array([[1.0, 3.0]]))
    assert sd["s_d"][0] == pytest.approx(0.75) and sd["sigma_sd"][0] == pytest.approx(math.sqrt(3 / 16))
    empty = shower_depth(np.zeros((1, 3)))
    assert empty["d"][0] == -1 and empty["s_d"][0] == 0 and empty["sigma_sd"][0] == 0


def test_two_cells_centre_width_eratio():
    g = get_geometry("calogan")
    s = _one(g, 1, 4, 2, e=30.0) + _one(g, 1, 4, 9, e=10.0)
    o = compute_observables(s, [[100.0]], g)
    (x1, y1), (x2, _) = _centre(g.layers[1], 4, 2), _centre(g.layers[1], 4, 9)
    mean = (30 * x1 + 10 * x2) / 40
    assert o["x_center_1"][0] == pytest.approx(mean)
    assert o["x_width_1"][0] == pytest.approx(math.sqrt((30 * (x1 - mean) ** 2 + 10 * (x2 - mean) ** 2) / 40))
    assert o["y_center_1"][0] == pytest.approx(y1) and o["y_width_1"][0] == pytest.approx(0, abs=1e-6)
    assert o["E_ratio_1"][0] == pytest.approx((30 - 10) / 40)
    assert o["asymmetry_1"][0] == pytest.approx((10 - 30) / 40)  # x1 < 0 < x2
    assert o["n_hits"][0] == 2 and o["occupancy_1"][0] == pytest.approx(2 / 144)


def test_e_ratio_ties_and_shapes():
    assert e_ratio(np.array([[5.0, 5.0, 1.0]]))[0] == 0.0
    assert e_ratio(np.array([[0.0, 3.0, 1.0]]))[0] == pytest.approx(0.5)
    assert e_ratio(np.zeros((2, 4))).tolist() == [0.0, 0.0]
    assert e_ratio(np.array([[2.0]]))[0] == 1.0


def test_threshold_defines_hits():
    g = get_geometry("ild-ecal")
    s = np.zeros((2, g.n_cells), np.float32)
    s[0, :5] = [0.1, 0.2, 1.0, 2.0, 0.0]
    s[1, 100:103] = 0.6
    o = compute_observables(s, np.ones((2, 1)), g, threshold=0.5)
    assert o["n_hits"].tolist() == [2, 3]
    np.testing.assert_allclose(o["E_vis"], [3.0, 1.8], rtol=1e-6)
    np.testing.assert_allclose(o["E_tot"], [3.3, 1.8], rtol=1e-6)
    assert o["occupancy_0"][0] == pytest.approx(2 / 900)


def test_asymmetry_follows_momentum_direction():
    g = get_geometry("lhcb-ecal")
    lay = g.layers[0]
    s = _one(g, 0, 20, 15, e=10.0)  # above the axis: x = +10 mm, y = +110 mm
    x, y = _centre(lay, 20, 15)
    assert x > 0 and y > 0
    # momentum along +y, no tilt at the layer centre (pz huge): cut line is y = 0
    cond = {"momentum": np.array([[0.0, 1.0, 1e12]]), "position": np.array([[0.0, 0.0]])}
    o = compute_observables(s, [[1e3]], g, conditions=cond)
    assert o["asymmetry_0"][0] == 1.0
    cond["momentum"] = np.array([[0.0, -1.0, 1e12]])
    assert compute_observables(s, [[1e3]], g, conditions=cond)["asymmetry_0"][0] == -1.0
    # position shifts the axis: the cell is now on the negative-x side
    cond = {"position": np.array([[x + 5.0, 0.0]])}
    o = compute_observables(s, [[1e3]], g, conditions=cond)
    assert o["asymmetry_0"][0] == -1.0
    assert o["r_rms_0"][0] == pytest.approx(math.hypot(5.0, y))


def _challenge_features(showers, path):
    """Independent re-implementation of the CaloChallenge HighLevelFeatures from the XML."""
    _, spec = read_binning(path)
    out, start = {}, 0
    for lid, edges, n_alpha in spec:
        if len(edges) < 2:
            continue
        n_r = len(edges) - 1
        r_mid = [edges[i] + (edges[i + 1] - edges[i]) / 2 for i in range(n_r)]
        a_edges = np.linspace(-math.pi, math.pi, n_alpha + 1)
        a_mid = [a_edges[j] + (a_edges[j + 1] - a_edges[j]) / 2 for j in range(n_alpha)]
        r_all = np.array([r_mid[i] for j in range(n_alpha) for i in range(n_r)])  # alpha outer, r inner
        a_all = np.array([a_mid[j] for j in range(n_alpha) for i in range(n_r)])
        eta, phi = r_all * np.cos(a_all), r_all * np.sin(a_all)
        d = showers[:, start:start + n_r * n_alpha].astype(np.float64)
        start += n_r * n_alpha
        out[f"E_layer_{lid}"] = d.sum(-1)
        if n_alpha > 1:
            ec_eta = (eta * d).sum(-1) / (d.sum(-1) + 1e-16)
            ec_phi = (phi * d).sum(-1) / (d.sum(-1) + 1e-16)
            w_eta = np.sqrt(((eta * eta * d).sum(-1) / (d.sum(-1) + 1e-16) - ec_eta**2).clip(min=0))
            w_phi = np.sqrt(((phi * phi * d).sum(-1) / (d.sum(-1) + 1e-16) - ec_phi**2).clip(min=0))
            out.update({f"x_center_{lid}": ec_eta, f"y_center_{lid}": ec_phi,
                        f"x_width_{lid}": w_eta, f"y_width_{lid}": w_phi})
    return out


@pytest.mark.parametrize("name,xml", [("calochallenge-1-photons", "binning_dataset_1_photons.xml"),
                                      ("calochallenge-1-pions", "binning_dataset_1_pions.xml"),
                                      ("calochallenge-2", "binning_dataset_2.xml")])
def test_calochallenge_features_match_challenge_definition(name, xml):
    from importlib import resources
    g = get_geometry(name)
    rng = np.random.default_rng(1)
    s = rng.gamma(0.2, 5.0, size=(50, g.n_cells)).astype(np.float32)
    s[s < 0.5] = 0
    s[0] = 0  # an empty shower
    o = compute_observables(s, np.full((50, 1), 1e4), g)
    ref = _challenge_features(s, resources.files("calosim") / "data" / xml)
    assert set(ref) <= set(o) or g.n_layers == 1
    for k, v in ref.items():
        np.testing.assert_allclose(o[k], v, rtol=1e-9, atol=1e-9, err_msg=k)
    assert layer_labels(g) == [int(l.name[6:]) for l in g.layers]
    unbinned = [lid for lid, l in zip(layer_labels(g), g.layers) if l.shape[0] == 1]
    assert all(f"x_center_{lid}" not in o for lid in unbinned)  # as the challenge: alpha-binned layers only
    np.testing.assert_allclose(o["E_ratio_inc"], s.sum(1, dtype=np.float64) / 1e4, rtol=1e-6)


def test_polar_centre_at_alpha_bin_angle():
    g = get_geometry("calochallenge-2")
    lay = g.layers[10]
    n_alpha = lay.shape[0]
    for j in (0, 3, 8, 15):
        s = _one(g, 10, j, 4)
        o = compute_observables(s, [[1e3]], g)
        angle = -math.pi + (j + 0.5) * 2 * math.pi / n_alpha
        r_mid = 0.5 * (lay.r_edges_mm[4] + lay.r_edges_mm[5])
        assert math.atan2(o["y_center_10"][0], o["x_center_10"][0]) == pytest.approx(angle)
        assert math.hypot(o["x_center_10"][0], o["y_center_10"][0]) == pytest.approx(r_mid)
        assert o["r_rms_10"][0] == pytest.approx(r_mid) and o["r_center_10"][0] == pytest.approx(r_mid)
    # a ring of equal energy in all alpha bins at one radius: centred on the axis
    s = sum(_one(g, 10, j, 4) for j in range(n_alpha))
    o = compute_observables(s, [[1e3]], g)
    assert abs(o["x_center_10"][0]) < 1e-9 and abs(o["y_center_10"][0]) < 1e-9
    assert o["x_width_10"][0] == pytest.approx(r_mid / math.sqrt(2))


def test_radial_profile_and_summaries():
    g = get_geometry("calochallenge-2")
    s = np.concatenate([_one(g, 0, 0, 2, e=10.0), _one(g, 5, 7, 6, e=30.0)])
    edges, prof = radial_profile(s, g)
    np.testing.assert_allclose(edges, g.layers[0].r_edges_mm)
    expect = np.zeros(len(edges) - 1)
    expect[2], expect[6] = 5.0, 15.0  # mean over the two showers
    np.testing.assert_allclose(prof, expect)
    np.testing.assert_allclose(longitudinal_profile(s, g)[[0, 5]], [5.0, 15.0])
    assert mean_images(s, g)[5][7, 6] == pytest.approx(15.0)
    # Cartesian: energy at cell centre distance sqrt(20^2 + 20^2) from the axis
    gc = get_geometry("calogan")
    e, p = radial_profile(_one(gc, 1, 6, 6, e=8.0), gc)  # the 40 x 40 mm cell [0, 40] x [0, 40]
    assert p.sum() == pytest.approx(8.0)
    mid = 0.5 * (e[1:] + e[:-1])
    assert p[mid > 40 * math.sqrt(2) + 5].sum() == 0 and p[mid < 40].sum() > 0.5 * 8.0
    # mean distance of a uniform square [0, a]^2 from its corner is 0.7652 a
    assert (p * mid).sum() / p.sum() == pytest.approx(0.7652 * 40, rel=0.03)
    prof_x = lateral_profiles(_one(gc, 1, 6, 9, e=8.0), gc, "x")[1]
    assert prof_x[1][9] == 8.0 and prof_x[0][9] == pytest.approx(120.0)
    # chunked accumulation equals one pass
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 2.0, (40, gc.n_cells))
    a, b = ShowerSummary(gc), ShowerSummary(gc)
    a.update(x)
    for lo in range(0, 40, 7):
        b.update(x[lo:lo + 7])
    np.testing.assert_allclose(a.radial_profile(), b.radial_profile())
    np.testing.assert_allclose(a.spectrum_counts, b.spectrum_counts)
    assert a.spectrum_counts.sum() + a.spectrum_under + a.spectrum_over == (x > 0).sum()


def test_response_vs_energy_gaussian():
    rng = np.random.default_rng(3)
    n = 40000
    e_inc = np.exp(rng.uniform(np.log(1e3), np.log(1e5), n))
    sigma = 0.1 / np.sqrt(e_inc / 1e3)  # 10 % / sqrt(E/GeV)
    e_dep = e_inc * rng.normal(0.9, sigma)
    bins = np.geomspace(1e3, 1e5, 5)
    r = response_vs_energy(e_dep, e_inc, bins)
    assert r["n"].sum() == n
    assert np.all(np.abs(r["mean"] - 0.9) < 4 * r["mean_err"])
    # expected resolution: bin average of sigma^2 under the log-uniform E distribution
    for k in range(4):
        sel = (e_inc >= bins[k]) & (e_inc < bins[k + 1])
        exp_res = np.sqrt(np.mean(sigma[sel] ** 2)) / 0.9
        assert abs(r["resolution"][k] - exp_res) < 4 * r["resolution_err"][k]
    assert np.all(r["resolution_err"] > 0) and np.all(r["resolution_err"] < 0.02 * r["resolution"])
    r2 = response_vs_energy(e_dep, e_inc, np.array([1e5, 2e5, 3e5]))  # empty bins
    assert r2["n"].tolist() == [1.0, 0.0] or r2["n"][1] == 0
    assert np.isnan(r2["mean"][1])


def test_energy_bins_discrete_and_continuous():
    e = 2.0 ** np.arange(8, 23)
    edges, discrete = energy_bins(np.repeat(e, 3).astype(np.float32))
    assert discrete and len(edges) == len(e) + 1
    assert np.all((edges[:-1] < e) & (e < edges[1:]))
    edges, discrete = energy_bins(np.geomspace(1e3, 1e6, 1000), n_bins=6)
    assert not discrete and len(edges) == 7 and edges[0] == 1e3 and edges[-1] >= 1e6


def test_highlevel_matrix_columns():
    g = get_geometry("calogan")
    rng = np.random.default_rng(0)
    x = rng.gamma(0.3, 10.0, (30, g.n_cells)).astype(np.float32)
    x[x < 1.0] = 0.0
    o = compute_observables(x, np.full((30, 1), 1e5), g)
    cols = highlevel_columns(o)
    assert "E_layer_0" in cols and "E_tot" in cols and "sparsity_2" in cols and "x_width_1" in cols
    assert "r_center_0" in cols and "r_width_2" in cols
    assert "d" not in cols and "asymmetry_0" not in cols and "E_ratio_inc" not in cols
    assert "E_inc" not in cols  # one incident energy: a constant column
    m = highlevel_matrix(o, cols)
    assert m.shape == (30, len(cols)) and np.isfinite(m).all()
    np.testing.assert_allclose(m[:, cols.index("E_layer_1")], np.log10(o["E_layer_1"] + 1e-8))
    np.testing.assert_allclose(m[:, cols.index("sparsity_2")], 1 - o["occupancy_2"])
    np.testing.assert_allclose(m[:, cols.index("r_width_1")], o["r_width_1"] / 100)
    # a constant column is dropped only if constant in every sample
    ref = {"E_layer_0": np.ones(5), "E_layer_1": np.arange(5.0)}
    gen = {"E_layer_0": np.arange(5.0), "E_layer_1": np.arange(5.0)}
    assert highlevel_columns(ref) == ["E_layer_1"]
    assert highlevel_columns(ref, gen) == ["E_layer_0", "E_layer_1"]
    groups = observable_groups(list(o))
    assert groups["E_layer"] == ["E_layer_0", "E_layer_1", "E_layer_2"] and "E_tot" in groups["global"]


def test_single_layer_geometry_has_no_depth_observables():
    g = get_geometry("besiii-emc")
    o = compute_observables(_one(g, 0, 5, 5, n=2), np.ones((2, 1)), g)
    assert "s_d" not in o and "E_layer_0" not in o and "f_layer_0" not in o
    assert o["x_center_0"][0] == pytest.approx(0.0) and o["E_ratio_0"][0] == 1.0
    assert highlevel_columns(o) == []  # all constant


def test_highlevel_matrix_is_the_challenges_30_features():
    """prepare_high_data_for_classifier of the challenge's evaluate.py, written out, after its voxel cut."""
    from calosim.features import apply_threshold

    g = get_geometry("calochallenge-1-photons")
    rng = np.random.default_rng(5)
    n = 40
    e_inc = np.exp(rng.uniform(np.log(256.0), np.log(4e6), n))
    raw = (rng.gamma(0.3, 20.0, (n, g.n_cells)) * (rng.random((n, g.n_cells)) < 0.5)).astype(np.float32)
    raw[0, g.layer_slices[0]] = 0.0  # an empty layer: log10(0 + 1e-8)
    data = np.where(raw < 1.0, 0.0, raw).astype(np.float64)  # args.min_energy = 1 MeV for dataset 1
    cols_ref = [np.log10(e_inc)[:, None]]
    layers = [data[:, s] for s in g.layer_slices]
    e_layer = np.stack([l.sum(1) for l in layers], 1)
    cols_ref.append(np.log10(e_layer + 1e-8))
    binned = [i for i, l in enumerate(g.layers) if l.shape[0] > 1]
    ec, wd = {}, {}
    for i in binned:
        xs, ys = g.layers[i].cell_centers()
        den = layers[i].sum(1) + 1e-16
        for key, c in (("eta", xs), ("phi", ys)):
            m1 = (layers[i] * c).sum(1) / den
            ec[key, i] = m1
            wd[key, i] = np.sqrt(((layers[i] * c * c).sum(1) / den - m1**2).clip(min=0))
    for d in (ec, wd):
        for key in ("eta", "phi"):
            cols_ref.append(np.stack([d[key, i] for i in binned], 1) / 1e2)
    cols_ref.append(np.log10(data.sum(1) + 1e-8)[:, None])
    cols_ref.append(np.stack([1.0 - (l > 0).mean(1) for l in layers], 1))
    r_ec, r_wd = [], []
    for i, l in enumerate(layers):
        r = g.layers[i].cell_radius()
        den = l.sum(1) + 1e-16
        m1 = (l * r).sum(1) / den
        r_ec.append(m1)
        r_wd.append(np.sqrt(((l * r * r).sum(1) / den - m1**2).clip(min=0)))
    cols_ref += [np.stack(r_ec, 1) / 1e2, np.stack(r_wd, 1) / 1e2]
    ref = np.concatenate(cols_ref, 1)
    assert ref.shape == (n, 30)

    o = compute_observables(apply_threshold(raw, g), e_inc, g)
    cols = highlevel_columns(o)
    assert len(cols) == 30 and cols[0] == "E_inc" and cols[-1] == "r_width_12"
    np.testing.assert_allclose(highlevel_matrix(o, cols), ref, rtol=1e-9, atol=1e-12)
