"""Physics and API tests of the ``mc`` engine (small samples; tolerances stated per test)."""

import json
import math

import numpy as np
import pytest

from calosim.geometry import Geometry, Layer, Material, get_geometry, list_geometries
from calosim.io import ShowerData, read_showers
from calosim.simulate import ENGINES, get_engine, simulate, simulate_to_file
from calosim.simulate.mc import em_shower_max

PB_LAR = get_geometry("calogan").layers[0].material  # X0 22 mm, R_M 42 mm, E_c 11 MeV, a = 0.10
# Homogeneous PbWO4 (CMS ECAL crystals): effective Z ~ 70 from E_c.
PBWO4 = Material("PbWO4", "PbWO4", x0_mm=8.9, lambda_mm=200.0, moliere_mm=21.9, critical_mev=8.5,
                 sampling_fraction=1.0, stochastic=0.03, constant=0.005)


def polar_stack(name, mat, n, thick_x0, r_edges, overflow=True):
    t = thick_x0 * mat.x0_mm
    layers = tuple(Layer(f"l{i}", "polar", (1, len(r_edges) - 1), z_mm=i * t, thickness_mm=t, material=mat,
                         r_edges_mm=tuple(r_edges)) for i in range(n))
    return Geometry(name, layers, overflow=overflow)


# Fine longitudinal sampling (0.25 X0 layers, 30 X0) for the shower maximum.
FINE = polar_stack("fine", PB_LAR, 120, 0.25, (0.0, 5000.0))
# Deep (40 X0), laterally contained calorimeter for linearity / resolution.
DEEP = polar_stack("deep", PB_LAR, 20, 2.0, (0.0, 10000.0))


def shower_max(data, geo):
    """Depth (X0) of the maximum of the mean longitudinal profile: parabola through 9 layers
    around the maximum of the smoothed profile (statistical spread ~0.07 X0 for 600 showers)."""
    prof = geo.layer_energies(data.showers).mean(0)
    t = geo.layer_depth_centers_x0()
    i = int(np.argmax(np.convolve(prof, np.ones(5) / 5, "same")))
    c = np.polyfit(t[i - 4:i + 5], prof[i - 4:i + 5], 2)
    return -c[1] / (2 * c[0])


@pytest.mark.parametrize(("particle", "energy"), [("e-", 10), ("e-", 50), ("gamma", 10), ("gamma", 50)])
def test_shower_maximum_follows_pdg(particle, energy):
    # t_max = ln(E/E_c) + C, C = -0.5 (e) / +0.5 (gamma); tolerance 0.3 X0.
    d = simulate(FINE, particle, 600, energy=str(energy), seed=11)
    expected = em_shower_max(energy * 1000, PB_LAR.critical_mev, photon=particle == "gamma")
    assert abs(shower_max(d, FINE) - expected) < 0.3


def test_photons_start_deeper_than_electrons():
    # Shower centre of gravity: photons ~1 X0 deeper (9/7 X0 conversion, C_gamma - C_e = 1); [0.6, 1.4] X0.
    geo = get_geometry("calochallenge-2")
    t = geo.layer_depth_centers_x0()
    cog = {}
    for p in ("e-", "gamma"):
        le = geo.layer_energies(simulate(geo, p, 300, energy="20", seed=3).showers)
        cog[p] = float(((le * t).sum(1) / le.sum(1)).mean())
        first = le[:, :3].sum(1) / le.sum(1)
        cog[p + "_first"] = float(first.mean())
    assert 0.6 < cog["gamma"] - cog["e-"] < 1.4
    assert cog["gamma_first"] < 0.7 * cog["e-_first"]


def test_lateral_containment_in_moliere_radius():
    # PDG: ~90 % of the energy within one R_M (GFlash radial profile); tolerance +-0.04.
    geo = polar_stack("rm", PBWO4, 20, 2.0, (0.0, PBWO4.moliere_mm, 50 * PBWO4.moliere_mm))
    d = simulate(geo, "e-", 200, energy="20", seed=4)
    inner = d.showers.reshape(len(d), geo.n_layers, 2)[:, :, 0].sum()
    total = d.showers.sum() + d.overflow.sum()
    assert abs(inner / total - 0.90) < 0.04


def test_linearity_and_resolution():
    # Response E_dep/E constant within 2 % over 5-100 GeV (and within 2 % of 1 in a 40 X0 deep
    # contained calorimeter); sigma/E = a/sqrt(E) (+) b fits the material's a within 20 %.
    energies = np.array([5.0, 10.0, 20.0, 50.0, 100.0])
    resp, res = [], []
    for i, e in enumerate(energies):
        d = simulate(DEEP, "e-", 400, energy=str(e), seed=20 + i)
        r = d.showers.sum(1) / d.incident_energies[:, 0]
        resp.append(r.mean())
        res.append(r.std() / r.mean())
    resp = np.array(resp)
    assert np.all(np.abs(resp / resp.mean() - 1) < 0.02)
    assert abs(resp.mean() - 1) < 0.02
    # sigma^2/E^2 = a^2 / E + b^2: linear least squares in 1/E.
    A = np.stack([1 / energies, np.ones_like(energies)], axis=1)
    (a2, b2), *_ = np.linalg.lstsq(A, np.array(res) ** 2, rcond=None)
    a = math.sqrt(max(a2, 0))
    assert abs(a / PB_LAR.stochastic - 1) < 0.2
    assert b2 < 0.02 ** 2


def test_pions_deposit_less_and_fluctuate_more():
    # Non-compensation (e/h = 1.3) and f_em fluctuations: mean response < 0.9 x electrons, relative
    # spread > 2 x electrons, in a deep (~5 lambda) calorimeter.
    geo = polar_stack("hadron", PB_LAR, 25, 4.0, (0.0, 100.0, 3000.0))
    out = {}
    for p in ("e-", "pi+"):
        r = simulate(geo, p, 300, energy="20", seed=5).showers.sum(1) / 20000.0
        out[p] = (r.mean(), r.std() / r.mean())
    assert out["pi+"][0] < 0.9 * out["e-"][0]
    assert out["pi+"][1] > 2.0 * out["e-"][1]
    # ...and they are wider: larger fraction outside the inner 100 mm.
    d = simulate(geo, "pi-", 200, energy="20", seed=6)
    outer = d.showers.reshape(len(d), -1, 2)[:, :, 1].sum() / d.showers.sum()
    de = simulate(geo, "e-", 200, energy="20", seed=6)
    outer_e = de.showers.reshape(len(de), -1, 2)[:, :, 1].sum() / de.showers.sum()
    assert outer > 2 * outer_e


def test_pion_mip_in_thin_calorimeter():
    # 0.2 lambda: most pions do not interact and deposit ~ dE/dx * L with dE/dx ~ E_c / X0 (+-30 %).
    geo = polar_stack("thin", PB_LAR, 4, 1.0, (0.0, 500.0))
    d = simulate(geo, "pi+", 300, energy="10", seed=7)
    mip = PB_LAR.critical_mev / PB_LAR.x0_mm * geo.depth_mm
    assert abs(np.median(d.showers.sum(1)) / mip - 1) < 0.3


def test_thick_layers_get_the_profile_integral():
    # CaloGAN's 347 mm layer must hold what the same depth split into thin layers holds (2 %).
    cg = get_geometry("calogan")
    thin = []
    for lay in cg.layers:
        k = max(1, round(lay.thickness_mm / 11.0))
        t = lay.thickness_mm / k
        thin += [Layer(f"{lay.name}_{j}", "polar", (1, 1), z_mm=lay.z_mm + j * t, thickness_mm=t,
                       material=lay.material, r_edges_mm=(0.0, 5000.0)) for j in range(k)]
    split = Geometry("split", tuple(thin), meta={"mc_tuning": "calogan"})  # the same tuning as calogan
    a = cg.layer_energies(simulate(cg, "e-", 400, energy="50", seed=8).showers).mean(0)
    b = split.layer_energies(simulate(split, "e-", 400, energy="50", seed=9).showers).mean(0)
    names = [l.name.rsplit("_", 1)[0] for l in split.layers]
    b = np.array([b[[n == lay.name for n in names]].sum() for lay in cg.layers])
    np.testing.assert_allclose(a / 50000, b / 50000, atol=0.02)


def test_overflow_off_centre_and_geometry_without_overflow():
    cg = get_geometry("calogan")
    centred = simulate(cg, "e+", 50, energy="50", seed=1)
    off = simulate(cg, "e+", 50, energy="50", position="200,0", seed=1)
    assert off.overflow.shape == (50, 3)
    assert off.overflow.sum() > 5 * centred.overflow.sum() and off.overflow.sum(1).min() > 0
    # energy is conserved into cells + overflow (no longitudinal change): totals agree within 3 %
    assert abs((off.showers.sum() + off.overflow.sum()) / (centred.showers.sum() + centred.overflow.sum()) - 1) < 0.03
    assert simulate("calochallenge-2", "e-", 5, energy="10").overflow is None


def test_incident_angle_tilts_the_axis():
    # theta = 30 deg along +x: the layer centroid follows x = z tan(theta) (within 3 mm).
    lay = tuple(Layer(f"l{i}", "cartesian", (40, 120), z_mm=i * 22.0, thickness_mm=22.0, material=PB_LAR,
                      cell_mm=(5.0, 5.0)) for i in range(12))
    geo = Geometry("tilt", lay, overflow=True)
    d = simulate(geo, "e-", 100, energy="20", theta="30", phi="0", seed=2)
    x, _ = lay[0].cell_centers()
    z_mid = np.array([l.z_mm + l.thickness_mm / 2 for l in lay])
    for i in (3, 5, 8):
        img = d.showers[:, geo.layer_slices[i]]
        cx = (img * x).sum() / img.sum()
        assert abs(cx - z_mid[i] * math.tan(math.radians(30))) < 3.0
    np.testing.assert_allclose(d.conditions["theta"], math.radians(30), rtol=1e-6)


def test_conditions_and_attrs():
    d = simulate("calogan", "pi-", 40, energy="log:1:100", theta="0:20", phi="0:360", position="-10:10", seed=4)
    e = d.incident_energies[:, 0]
    assert e.min() >= 1000 and e.max() <= 100000
    assert np.all(d.conditions["pdg"] == -211)
    p = d.conditions["momentum"]
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), np.sqrt(e.astype(np.float64) ** 2 - 139.57 ** 2), rtol=1e-4)
    np.testing.assert_allclose(p[:, 2] / np.linalg.norm(p, axis=1), np.cos(d.conditions["theta"]), atol=1e-5)
    assert np.all(np.abs(d.conditions["position"]) <= 10)
    assert d.attrs["engine"] == "mc" and d.attrs["seed"] == 4 and d.attrs["particle"] == "pi-"
    assert d.attrs["energy_spec_gev"] == "log:1:100"


def test_every_geometry_and_particle():
    for name in list_geometries():
        geo = get_geometry(name)
        for p in ("e+", "gamma", "pi+"):
            d = simulate(geo, p, 8, energy="2:20", seed=1)
            s = d.showers
            assert s.shape == (8, geo.n_cells) and s.dtype == np.float32
            assert np.all(np.isfinite(s)) and s.min() >= 0
            assert np.all((s == 0) | (s >= geo.threshold_mev))
            if p == "e+":  # EM showers leave most of their energy in these EM-sized detectors
                assert s.sum() > 0.3 * d.incident_energies.sum(), name


def test_reproducibility_and_chunking():
    a = simulate("calogan", "e+", 700, energy="1:100", seed=42)
    b = simulate("calogan", "e+", 700, energy="1:100", seed=42, chunk=100)
    c = simulate("calogan", "e+", 700, energy="1:100", seed=43)
    np.testing.assert_array_equal(a.showers, b.showers)
    np.testing.assert_array_equal(a.overflow, b.overflow)
    np.testing.assert_array_equal(a.incident_energies, b.incident_energies)
    assert not np.array_equal(a.showers, c.showers)
    assert not np.array_equal(a.incident_energies, c.incident_energies)


def test_simulate_to_file_matches_simulate(tmp_path):
    path = simulate_to_file(tmp_path / "e.h5", "calogan", "gamma", 600, energy="5:50", position="-5:5", seed=9,
                            chunk=256, progress=False)
    mem = simulate("calogan", "gamma", 600, energy="5:50", position="-5:5", seed=9)
    f = read_showers(path)
    np.testing.assert_array_equal(f.showers, mem.showers)
    np.testing.assert_array_equal(f.overflow, mem.overflow)
    np.testing.assert_array_equal(f.incident_energies, mem.incident_energies)
    for k in ("pdg", "momentum", "position", "theta", "phi"):
        np.testing.assert_array_equal(f.conditions[k], mem.conditions[k])
    assert f.attrs["engine"] == "mc" and int(f.attrs["seed"]) == 9 and f.attrs["particle"] == "gamma"
    with pytest.raises(FileExistsError):
        simulate_to_file(path, "calogan", "gamma", 10, progress=False)
    simulate_to_file(path, "calogan", "e-", 10, progress=True, overwrite=True)
    assert len(read_showers(path)) == 10


def test_errors_are_clear():
    with pytest.raises(ValueError, match="energy"):
        simulate("calogan", "e-", 5, energy="ten")
    with pytest.raises(ValueError, match="theta"):
        simulate("calogan", "e-", 5, theta="100")
    with pytest.raises(ValueError, match="position"):
        simulate("calogan", "e-", 5, position="1,2,3")
    with pytest.raises(ValueError, match=r"e-, e\+, gamma, pi\+, pi- only .*2212.*geant4"):
        simulate("calogan", "proton", 5)
    with pytest.raises(ValueError, match=r"unknown particle 'graviton'.*proton"):
        simulate("calogan", "graviton", 5)
    with pytest.raises(ValueError, match=r"cannot be simulated 'kaon'.*proton"):  # known, not simulated
        simulate("calogan", "kaon", 5)
    with pytest.raises(ValueError, match="valid: .*mc"):
        get_engine("geant5")
    with pytest.raises(ValueError, match="seed"):
        simulate("calogan", "e-", 5, seed=-1)
    assert "mc" in ENGINES
    empty = simulate("calogan", "e-", 0)
    assert empty.showers.shape == (0, 504) and empty.overflow.shape == (0, 3)


def test_tuning_moves_the_shower_maximum_and_narrows_the_shower() -> None:
    from calosim.simulate.mc import MCEngine, MCTuning
    from calosim.simulate.validate import containment_radius, longitudinal_moments, probe_geometry

    geo = probe_geometry("calogan")
    n, e = 400, np.full(400, 8000.0)
    z = np.zeros(n)

    def run(t: MCTuning) -> ShowerData:
        cells, over = MCEngine(t).simulate_block(geo, 11, e, z, z, np.zeros((n, 2)), np.random.default_rng(3))
        return ShowerData(cells, e[:, None], geo, overflow=over)

    base, shifted = run(MCTuning()), run(MCTuning(c_electron=-1.5, radial_scale=0.8, response=1.05))
    # T = ln(E/E_c) + C: one X0 shallower (the profile shape changes a little with T, hence the tolerance)
    assert longitudinal_moments(base)[2] - longitudinal_moments(shifted)[2] == pytest.approx(1.0, abs=0.2)
    assert containment_radius(shifted) / containment_radius(base) == pytest.approx(0.8, abs=0.05)
    total = lambda d: (d.showers.sum(1) + d.overflow.sum(1)).mean() / 8000.0  # noqa: E731
    assert total(shifted) / total(base) == pytest.approx(1.05, abs=0.01)


def test_tuning_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    from calosim.simulate import mc

    monkeypatch.setattr(mc, "_stored_tunings", lambda: {"calogan": mc.MCTuning(c_electron=-1.0, source="test")})
    geo = get_geometry("calogan")
    assert mc.tuning_for(geo).c_electron == -1.0
    assert mc.tuning_for(geo.with_name("mine")) == mc.MCTuning()          # unknown names: textbook defaults
    mine = geo.with_name("mine")
    mine.meta["mc_tuning"] = "calogan"                                     # a derived geometry may borrow one
    assert mc.tuning_for(mine).source == "test"
    assert json.loads(mc.MCEngine().geometry_provenance(geo)["mc_tuning"])["c_electron"] == -1.0


def test_clumps_move_the_layer_centroid_by_the_known_amount() -> None:
    """Each (cascade, slice) cloud moves by sigma * sqrt(1 GeV / V_slice), so a layer's energy-weighted
    centroid moves by sigma * sqrt(1 GeV / V_layer) (read out in fine cells: coarse cells amplify a
    shift near a cell edge); ``cluster_core`` grows the shift with the core radius; ``tail_clumps`` moves only the tail spots: the centroid wanders, but
    the energy within a millimetre of the axis (the core) does not move."""
    from calosim.metrics.observables import compute_observables
    from calosim.simulate.mc import MCEngine, MCTuning
    from calosim.simulate.validate import probe_geometry

    geo = probe_geometry("calogan", periods_per_layer=20, cell_mm=2.0, half_width_mm=50.0)
    n, e = 500, np.full(500, 20000.0)
    z = np.zeros(n)

    def run(t: MCTuning) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x-centroid spread and mean energy of layers 0, 1; mean energy in the 4 central cells of layer 0."""
        cells, _ = MCEngine(t).simulate_block(geo, 11, e, z, z, np.zeros((n, 2)), np.random.default_rng(4))
        obs = compute_observables(cells, e[:, None], geo)
        side = geo.layers[0].shape[0]
        img0 = cells[:, geo.layer_slices[0]].reshape(n, side, side)
        mid = side // 2
        return (np.array([obs[f"x_center_{i}"].std() for i in range(2)]),
                np.array([obs[f"E_layer_{i}"].mean() for i in range(2)]),
                img0[:, mid - 1:mid + 1, mid - 1:mid + 1].sum(axis=(1, 2)).mean())

    base, layer_e, core_e = run(MCTuning())
    clumpy, _, clumpy_core = run(MCTuning(cluster_mm=6.0))
    assert np.sqrt(clumpy ** 2 - base ** 2) == pytest.approx(6.0 * np.sqrt(1000.0 / layer_e), rel=0.15)
    assert clumpy_core < 0.9 * core_e                 # a whole-cloud shift moves the core off the axis
    # cluster_core scales the shift with the core radius, which grows with depth: in units of
    # sqrt(1 GeV / V_layer) the first layer (the first 20 periods) wanders less than the next
    core, _, _ = run(MCTuning(cluster_core=1.0))
    scaled = np.sqrt(np.clip(core ** 2 - base ** 2, 0, None) * layer_e / 1000.0)
    assert scaled[0] < 0.7 * scaled[1]
    tail, _, tail_core = run(MCTuning(tail_clumps=0.3))
    assert tail[1] > 1.5 * base[1]                     # the centroid of layer 1 wanders (the first has little tail) ...
    assert tail_core == pytest.approx(core_e, rel=0.03)  # ... while the core stays where it was
