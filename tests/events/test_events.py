"""Known-answer tests of the events chain (issue 14): towers, jets, N-subjettiness, chi2, Pythia, CALPAGAN."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("fastjet")

from calosim.events import EventsError  # noqa: E402
from calosim.events.jets import chi2_uu, event_jets, leading_pair  # noqa: E402
from calosim.events.views import D_ETA, N_ETA, N_PHI, detailed_image, fast_image, tower_centers, tower_index  # noqa: E402


def _event(pdg, energy, eta, phi):
    e = np.asarray(energy, np.float32)
    eta, phi = np.asarray(eta, np.float64), np.asarray(phi, np.float64)
    th = 2 * np.arctan(np.exp(-eta))
    return {"pdg": np.asarray(pdg, np.int32), "E": e, "eta": eta.astype(np.float32), "phi": phi.astype(np.float32),
            "px": (e * np.sin(th) * np.cos(phi)).astype(np.float32), "py": (e * np.sin(th) * np.sin(phi)).astype(np.float32),
            "pz": (e * np.cos(th)).astype(np.float32), "vertex": np.zeros((len(e), 4), np.float32)}


def test_single_photon_lands_in_its_tower_with_its_energy():
    ev = _event([22], [50.0], [0.5], [1.0])
    ie, ip, inside = tower_index(ev["eta"], ev["phi"])
    assert inside[0] and (ie[0], ip[0]) == (int((0.5 + 3.132) / D_ETA), int((1.0 + math.pi) / (2 * math.pi / 72)))
    img = fast_image(ev, event_seed=7)
    assert img.shape == (2, N_ETA, N_PHI)
    assert np.argwhere(img[0] > 0).tolist() == [[ie[0], ip[0]]]  # no lateral spread
    assert img[1].sum() == 0  # photons: ECAL only
    assert img[0, ie[0], ip[0]] == pytest.approx(50.0, rel=0.05)  # Delphes sigma ~ 0.6 GeV at 50 GeV
    det = detailed_image(ev, event_seed=7)[0]
    assert np.unravel_index(det.argmax(), det.shape) == (ie[0], ip[0])
    assert det.sum() == pytest.approx(50.0, rel=0.1)
    assert (det > 0).sum() > 1  # the detailed view spreads into neighbours


def test_hadron_goes_to_hcal_and_invisible_particles_leave_nothing():
    imgs = np.stack([fast_image(_event([211], [80.0], [-1.0], [2.0]), s) for s in range(200)])
    assert imgs[:, 0].sum() == 0  # hadrons: HCAL only
    e = imgs[:, 1].sum((1, 2))
    assert e.mean() == pytest.approx(80.0, rel=0.03)  # log-normal smearing keeps the mean
    assert e.std() == pytest.approx(math.sqrt(80 ** 2 * 0.05 ** 2 + 80 * 1.5 ** 2), rel=0.2)  # Delphes CMS HCAL
    assert fast_image(_event([12, 13, -14], [30.0, 20.0, 10.0], [0.0, 0.2, 0.4], [0.0, 0.0, 0.0]), 1).sum() == 0
    mu = detailed_image(_event([13], [20.0], [0.2], [0.0]), 1)
    assert 0.5 < mu.sum() < 6.0  # a MIP deposit, not its 20 GeV
    assert fast_image(_event([22], [50.0], [3.5], [0.0]), 1).sum() == 0  # beyond the 72-tower grid


def test_images_are_reproducible_per_event():
    ev = _event([22, 211], [40.0, 60.0], [0.1, -0.3], [0.5, -2.0])
    assert np.array_equal(detailed_image(ev, 3), detailed_image(ev, 3))
    assert not np.array_equal(detailed_image(ev, 3), detailed_image(ev, 4))


def _image(towers):
    img = np.zeros((N_ETA, N_PHI))
    eta_c, _ = tower_centers()
    for ie, ip, pt in towers:
        img[ie, ip] = pt * np.cosh(eta_c[ie])  # tower energy of a massless pT
    return img


def test_two_particle_event_gives_known_jets():
    eta_c, phi_c = tower_centers()
    # back-to-back: two jets of pT 100 and 50, dphi = pi (towers 36 apart in phi)
    out = leading_pair(_image([(30, 10, 100.0), (40, 46, 50.0)])[None])
    assert out["pt1"][0] == pytest.approx(100.0) and out["pt2"][0] == pytest.approx(50.0)
    assert out["mass1"][0] == pytest.approx(0.0, abs=1e-3)
    assert out["dphi"][0] == pytest.approx(math.pi, abs=1e-9)
    assert out["deta"][0] == pytest.approx(eta_c[30] - eta_c[40])
    # both in one R = 1.0 jet: m^2 = 2 pT1 pT2 (cosh deta - cos dphi)
    jets = event_jets(_image([(36, 36, 100.0), (37, 38, 80.0)]), r=1.0, trim=False)
    de, dp = eta_c[37] - eta_c[36], phi_c[38] - phi_c[36]
    assert len(jets) == 1
    assert jets[0].m() == pytest.approx(math.sqrt(2 * 100 * 80 * (math.cosh(de) - math.cos(dp))), rel=1e-6)


def test_nsubjettiness_of_one_and_two_prong_toys():
    one = leading_pair(_image([(36, 36, 100.0)])[None], r=1.0)
    assert one["tau11"][0] == 0.0 and one["tau21"][0] == 0.0
    # two prongs of two adjacent towers each, 4 towers (~0.35) apart in eta
    two = leading_pair(_image([(34, 36, 60.0), (34, 37, 40.0), (38, 36, 60.0), (38, 37, 40.0)])[None], r=1.0,
                       trim=False)
    tau1, tau2 = two["tau11"][0], two["tau21"][0]
    # axes at the prongs' (and the jet's) pT-weighted centroids: phi offsets 0.4 and 0.6 tower widths
    dphi, deta = 2 * math.pi / N_PHI, 2 * D_ETA
    assert tau2 == pytest.approx(2 * (60 * 0.4 + 40 * 0.6) * dphi / 200.0, rel=1e-2)
    assert tau1 == pytest.approx(2 * (60 * math.hypot(deta, 0.4 * dphi) + 40 * math.hypot(deta, 0.6 * dphi)) / 200.0,
                                 rel=1e-2)
    assert tau2 / tau1 < 0.3  # two-prong

def test_chi2_of_identical_histograms_is_zero():
    x = np.random.default_rng(0).normal(size=2000)
    edges = np.linspace(-3, 3, 31)
    assert chi2_uu(x, x, edges) == 0.0
    y = np.random.default_rng(1).normal(0.5, 1.0, size=2000)
    assert chi2_uu(x, y, edges) > 50.0
    # ROOT's statistic on a hand-made pair: n1 = (1, 3), n2 = (3, 1): sum (4 n1 - 4 n2)^2 / (16 (n1 + n2)) = 2
    assert chi2_uu(np.array([0.2, 1.2, 1.5, 1.7]), np.array([0.1, 0.3, 0.5, 1.4]), np.array([0.0, 1.0, 2.0])) == 2.0


def test_pythia_events_reproduce_from_their_seed(tmp_path):
    pytest.importorskip("pythia8mc")
    from calosim.events.pythia import generate_events, read_events, to_awkward, write_events

    path = tmp_path / "ev.h5"
    n = write_events(path, generate_events("dijet", 3, seed=5, chunk=2), {"process": "dijet"})
    assert n == 3
    batch, attrs = read_events(path)
    assert attrs["format"] == "calosim-events" and len(batch) == 3
    again = next(generate_events("dijet", 1, seed=5, first=2))  # event 2 alone
    np.testing.assert_array_equal(again.particles["E"], batch.event(2)["E"])
    np.testing.assert_array_equal(again.particles["pdg"], batch.event(2)["pdg"])
    assert again.seed[0] == batch.seed[2]
    sub, _ = read_events(path, 1, 3)
    np.testing.assert_array_equal(sub.event(1)["px"], batch.event(2)["px"])
    arr = to_awkward(path)
    assert len(arr) == 3 and len(arr[2]) == len(batch.event(2)["E"])
    from calosim.events.views import read_images, write_images

    with pytest.raises(EventsError, match="not a calosim event-image file"):
        read_images(path)
    img = write_images(tmp_path / "img.h5", np.zeros((1, 1, 72, 72), np.float32), {"view": "detailed"})
    with pytest.raises(EventsError, match="not a calosim events file"):
        read_events(img)


def test_calpagan_unet_shapes_and_a_train_step_changes_weights():
    import torch

    from calosim.models.calpagan import CalpaganConfig, Discriminator, UNet, train_calpagan

    g = UNet()
    x = torch.rand(2, 2, 72, 72)
    assert g(x).shape == (2, 1, 72, 72)
    assert Discriminator()(x, g(x)).shape == (2, 1, 9, 9)
    rng = np.random.default_rng(0)
    fast = (rng.random((4, 2, 72, 72)) * (rng.random((4, 2, 72, 72)) > 0.95) * 20).astype(np.float32)
    summed = fast.sum(1, keepdims=True)
    det = np.where(summed > 10, 0.8 * summed, 0.0).astype(np.float32)  # sparser than fast, as zero suppression
    cfg = CalpaganConfig(epochs=1, batch_size=4, hidden=4)
    from calosim.models.calpagan import Calpagan

    before = {k: v.clone() for k, v in Calpagan(cfg).gen.state_dict().items()}
    model, hist = train_calpagan(fast, det, cfg)
    changed = [k for k, v in model.gen.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed and len(hist["loss_g"]) == 1 and len(hist["fd_detailed-fast_train"]) == 1
    out = model.generate(fast)
    assert out.shape == (4, 1, 72, 72) and (out >= 0).all()
    # zero suppression: the generated training images get the detailed ones' tower occupancy
    zs = model.generate(fast, zero_suppress=True)
    assert model.zero_threshold > 0
    assert abs(int((zs > 0).sum()) - int((det > 0).sum())) <= 2
    assert ((zs == 0) | (zs == out)).all() and (zs > 0).sum() <= max((out > 0).sum(), (det > 0).sum())


def test_calpagan_checkpoint_is_safetensors_and_reloads_identically(tmp_path):
    from calosim.models.calpagan import SIDE_FILE, WEIGHTS_FILE, Calpagan, CalpaganConfig

    model = Calpagan(CalpaganConfig(hidden=4, seed=3), peak_ratio=1.7)
    weights = model.save(tmp_path / "run", {"epoch": [1], "loss_g": [2.5]})
    assert weights.name == WEIGHTS_FILE and (tmp_path / "run" / SIDE_FILE).is_file()
    assert weights.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    again, hist = Calpagan.load(tmp_path / "run")
    assert hist == {"epoch": [1], "loss_g": [2.5]} and again.peak_ratio == 1.7 and again.config.hidden == 4
    x = (np.random.default_rng(0).random((3, 2, 72, 72)) * 10).astype(np.float32)
    np.testing.assert_array_equal(again.generate(x, seed=1), model.generate(x, seed=1))
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"bogus\.safetensors") as err:
        Calpagan.load(bogus)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="file not found"):
        Calpagan.load(tmp_path / "nothing")


def test_generate_writes_a_hepmc3_copy_of_the_same_events(tmp_path):
    pytest.importorskip("pythia8mc")
    pyhepmc = pytest.importorskip("pyhepmc")
    from click.testing import CliRunner

    from calosim.events.cli import events_group
    from calosim.events.pythia import read_events

    ev, hep = tmp_path / "ev.h5", tmp_path / "ev.hepmc3"
    res = CliRunner().invoke(events_group, ["generate", "-p", "dijet", "-n", "2", "--seed", "4", "-o", str(ev),
                                            "--hepmc", str(hep)])
    assert res.exit_code == 0, res.output
    batch, _ = read_events(ev)
    with pyhepmc.open(hep) as f:
        events = list(f)
    assert [e.event_number for e in events] == [0, 1]
    for i, e in enumerate(events):
        final = sorted(p.momentum.e for p in e.particles if p.status == 1)
        np.testing.assert_allclose(final, np.sort(batch.event(i)["E"]), rtol=1e-5)
        assert e.attributes["calosim_pythia_seed"].astype(int) == batch.seed[i]
        beams = [p for p in e.particles if p.status == 4]
        assert len(beams) == 2 and all(p.pid == 2212 for p in beams)


def test_geant4_detailed_view_detectors_are_buildable_and_engines_named():
    from calosim.events.views import TOWER_MM, geant4_geometries, make_images
    from calosim.simulate.g4detector import check_geometry

    for geo in geant4_geometries():
        check_geometry(geo)  # raises if Geant4 could not build it
        assert geo.layers[0].shape == (9, 9) and geo.layers[0].cell_mm == (TOWER_MM, TOWER_MM)
    assert geant4_geometries()[0].sampling.absorber == "G4_PbWO4"
    with pytest.raises(EventsError, match="detailed view only"):
        make_images("unused.h5", "fast", engine="geant4")
    with pytest.raises(EventsError, match="valid: mc, geant4"):
        detailed_image(_event([22], [5.0], [0.0], [0.0]), 1, engine="nope")


def test_jet_report_with_generated_sets_writes_tables_and_html(tmp_path):
    from calosim.events.report import jet_validation, markdown_table

    det = np.stack([_image([(30, 10, 100.0 + 10 * i), (40, 46, 50.0 + 5 * i)]) for i in range(4)])[:, None]
    fast = np.concatenate([det * 1.1, np.zeros_like(det)], axis=1)  # (4, 2, 72, 72): all in ECAL, 10 % high
    res = jet_validation({"fast": fast, "detailed": det, "calpagan": det.copy(), "calpagan_zs": det.copy()},
                         tmp_path, title="t")
    tab = res["table"]
    assert all(row["detailed-calpagan"] == 0.0 and row["detailed-calpagan_zs"] == 0.0 for row in tab.values())
    assert tab["pt1"]["fast-detailed"] > 0  # the 10 % shift moves the pT histogram
    assert res["closer_by_model"]["calpagan"][0] >= 1 and res["n_jets_ge2"]["calpagan_zs"] == 4
    md = markdown_table(tab).splitlines()
    assert len(md) == 2 + 10 and "detailed-calpagan_zs jet 1" in md[0]
    page = (tmp_path / "t.html").read_text()
    assert "calpagan_zs closer to detailed than fast" in page and "data:image/png;base64" in page
