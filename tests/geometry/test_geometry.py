import json
from pathlib import Path

import numpy as np
import pytest

from calosim.geometry import (Geometry, GeometryError, Layer, Material, get_geometry, list_geometries,
                              load_calochallenge_xml)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "calochallenge"
EXPECTED_CELLS = {
    "calogan": 504, "lhcb-ecal": 900, "besiii-emc": 121, "cepc-ecal": 31 * 31 * 29, "ild-ecal": 27000,
    "ild-hcal": 25 * 25 * 48, "cms-towers": 72 * 72, "calochallenge-1-photons": 368,
    "calochallenge-1-pions": 533, "calochallenge-2": 6480, "calochallenge-3": 40500,
}


def test_all_presets_present_with_expected_cell_counts():
    names = list_geometries()
    assert set(EXPECTED_CELLS) <= set(names)
    for name, n in EXPECTED_CELLS.items():
        assert get_geometry(name).n_cells == n, name
        assert names[name]  # one-line description


def test_calogan_table_one():
    g = get_geometry("calogan")
    assert [l.shape for l in g.layers] == [(3, 96), (12, 12), (12, 6)]
    assert [l.thickness_mm for l in g.layers] == [90.0, 347.0, 43.0]
    # every layer covers the same 480 x 480 mm front face
    for lay in g.layers:
        dy, dx = lay.cell_mm
        assert lay.shape[0] * dy == pytest.approx(480) and lay.shape[1] * dx == pytest.approx(480)
    assert g.overflow


def test_unknown_geometry_lists_valid_names():
    with pytest.raises(GeometryError, match="calogan"):
        get_geometry("nope")


@pytest.mark.parametrize("name", list(EXPECTED_CELLS))
def test_json_round_trip(name):
    g = get_geometry(name)
    g2 = Geometry.from_json(g.to_json())
    assert g2 == g
    assert g2.n_cells == g.n_cells


def test_images_round_trip_and_layer_energies():
    g = get_geometry("calogan")
    rng = np.random.default_rng(0)
    x = rng.random((7, g.n_cells)).astype(np.float32)
    imgs = g.images(x)
    assert [i.shape for i in imgs] == [(7, 3, 96), (7, 12, 12), (7, 12, 6)]
    np.testing.assert_array_equal(g.from_images(imgs), x)
    np.testing.assert_allclose(g.layer_energies(x), np.stack([i.sum(axis=(1, 2)) for i in imgs], 1), rtol=1e-5)
    with pytest.raises(GeometryError, match=r"\(N, 504\)"):
        g.check(np.zeros((2, 10)))


def test_cartesian_cell_centres_are_symmetric_and_on_grid():
    lay = get_geometry("calogan").layers[2]  # 12 rows x 6 columns of 40 x 80 mm
    x, y = lay.cell_centers()
    assert x.shape == (72,)
    assert x.reshape(12, 6)[0].tolist() == [-200.0, -120.0, -40.0, 40.0, 120.0, 200.0]
    assert y.reshape(12, 6)[:, 0][0] == pytest.approx(-220.0)
    assert np.mean(x) == pytest.approx(0) and np.mean(y) == pytest.approx(0)


def test_calochallenge_xml_matches_shared_files_and_voxel_counts():
    for fname, n in [("binning_dataset_1_photons.xml", 368), ("binning_dataset_1_pions.xml", 533),
                     ("binning_dataset_2.xml", 6480), ("binning_dataset_3.xml", 40500)]:
        path = SHARED / fname
        if not path.exists():
            pytest.skip("../shared/calochallenge not beside the checkout")
        g = load_calochallenge_xml(path)
        assert g.n_cells == n
    g2 = get_geometry("calochallenge-2")
    assert g2.n_layers == 45 and g2.is_regular and g2.layers[0].shape == (16, 9)
    # the challenge's layout: showers.reshape(N, 45, 16, 9)
    x = np.arange(g2.n_cells, dtype=np.float32)[None]
    np.testing.assert_array_equal(g2.layer(x, 3)[0], x.reshape(45, 16, 9)[3])
    # datasets 2/3: 3.4 mm layers of ~0.8 X0
    assert g2.layers[0].thickness_x0 == pytest.approx(0.8, abs=0.02)
    assert g2.threshold_mev == pytest.approx(0.01515)


def test_polar_cell_centres():
    g = get_geometry("calochallenge-2")
    lay = g.layers[0]
    x, y = lay.cell_centers()
    r = np.hypot(x, y).reshape(16, 9)
    np.testing.assert_allclose(r[0], 0.5 * (np.array(lay.r_edges_mm[:-1]) + np.array(lay.r_edges_mm[1:])))
    # alpha bins go round once: the mean of the centres of one ring is the axis
    assert abs(x.reshape(16, 9)[:, 4].mean()) < 1e-9
    np.testing.assert_allclose(lay.cell_areas().sum(), np.pi * lay.r_edges_mm[-1] ** 2)


def test_depth_in_radiation_lengths_integrates_over_materials():
    g = get_geometry("calochallenge-1-pions")
    d = g.layer_depth_centers_lambda()
    assert np.all(np.diff(d) > 0)
    assert d[-1] > 3  # the Tile calorimeter reaches several interaction lengths


def test_bad_xml_and_bad_layers_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Bin><Layer id='x' r_edges='0,1'/></Bin></Bins>")
    with pytest.raises(GeometryError, match="bad.xml"):
        load_calochallenge_xml(bad)
    (tmp_path / "junk.xml").write_text("not xml")
    with pytest.raises(GeometryError, match="junk.xml"):
        load_calochallenge_xml(tmp_path / "junk.xml")
    mat = get_geometry("calogan").layers[0].material
    with pytest.raises(GeometryError, match="cell_mm"):
        Layer("l", "cartesian", (2, 2), 0.0, 1.0, mat)
    with pytest.raises(GeometryError, match="r_edges"):
        Layer("l", "polar", (1, 2), 0.0, 1.0, mat, r_edges_mm=(0.0, 2.0, 1.0))
    with pytest.raises(GeometryError, match="malformed"):
        Geometry.from_dict(json.loads('{"name": "x"}'))
    with pytest.raises(GeometryError, match="x0_mm"):
        Material("Pb", "LAr", 0.0, 1.0, 1.0, 1.0)
