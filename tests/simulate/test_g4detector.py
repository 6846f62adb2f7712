"""Real Geant4 showers in the detectors built from the presets' sampling structures (g4detector).

Each test shoots a few 2 GeV electrons through calosim's Geant4 engine and checks what the
structure implies: the response on the EM scale (visible energy / the measured sampling
fraction), where the energy lands in depth (in the preset's effective radiation lengths), and
that cells are where the particle hits (calosim's cell order).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.simulate import simulate

# Never import geant4_pybind here: without GEANT4_DATA_DIR its import offers to download data.
if importlib.util.find_spec("geant4_pybind") is None:
    pytest.skip("needs the extra calosim[geant4]", allow_module_level=True)


def _centroid(geo, showers: np.ndarray, layers: range) -> tuple[float, float]:
    xs, ys = geo.cell_centers()
    sl = np.concatenate([np.arange(geo.layer_slices[i].start, geo.layer_slices[i].stop) for i in layers])
    e = showers[:, sl].sum(0)
    return float((xs[sl] * e).sum() / e.sum()), float((ys[sl] * e).sum() / e.sum())


# impact points on a cell centre of each grid (so the cell-binned centroid is unbiased)
@pytest.mark.parametrize("name, position", [
    ("cepc-ecal", (20.0, -10.0)),       # 31 x 31 cells of 10 mm: centres at multiples of 10 mm
    ("ild-ecal", (7.65, -12.75)),       # 30 x 30 cells of 5.1 mm: centres at (k + 1/2) 5.1 mm
    ("ild-hcal", (30.0, -30.0)),        # 25 x 25 tiles of 30 mm
])
def test_planar_stacks(standin: Path, name: str, position: tuple[float, float]) -> None:
    geo = get_geometry(name)
    data = simulate(geo, "e-", 4, energy="2", position=f"{position[0]},{position[1]}", engine="geant4", seed=7)
    e0 = data.incident_energies[:, 0]
    # the sampling fraction was measured with 2 GeV electrons: the mean response is 1 (EM scale)
    # up to sampling fluctuations (sigma/E ~ 10-15 % per shower) and ~1 % leakage
    response = data.showers.sum(1) / e0
    assert response.mean() == pytest.approx(1.0, abs=0.3), response
    # longitudinal: the energy-weighted mean depth of a 2 GeV EM shower is ~ t_max + 2 X0,
    # t_max = ln(E / E_c) - 0.5 ~ 5 X0 (in the preset's effective X0, so this checks them too)
    depth = geo.layer_depth_centers_x0()
    le = geo.layer_energies(data.showers).sum(0)
    mean_depth = (depth * le).sum() / le.sum()
    assert 4.0 < mean_depth < 10.0, mean_depth
    assert le[: int(np.searchsorted(depth, 20.0))].sum() > 0.9 * le.sum()   # contained in the first 20 X0
    # lateral: the centroid is at the impact point, in every part of the stack
    for layers in (range(0, geo.n_layers // 3), range(geo.n_layers // 3, geo.n_layers)):
        cx, cy = _centroid(geo, data.showers, layers)
        tol = 0.2 * geo.layers[0].cell_mm[1] + 1.0
        assert cx == pytest.approx(position[0], abs=tol) and cy == pytest.approx(position[1], abs=tol), (layers, cx, cy)


def test_par04_cylinder(standin: Path) -> None:
    """CaloChallenge dataset 2's detector: energy at small r and in the first layers, centred on the hit."""
    geo = get_geometry("calochallenge-2")
    data = simulate(geo, "e-", 4, energy="2", position="10,-5", engine="geant4", seed=7)
    e0 = data.incident_energies[:, 0]
    response = data.showers.sum(1) / e0
    assert response.mean() == pytest.approx(1.0, abs=0.3), response
    images = data.showers.reshape(len(e0), 45, 16, 9)     # the challenge's (layer, alpha, r) layout
    # the beam hits 11 mm from the readout's axis: most energy within 2.5 R_M of it,
    # i.e. the energy is at small r, and the beam-side alpha bins (around -0.46 rad) carry the most
    r_mid = 0.5 * (np.asarray(geo.layers[0].r_edges_mm[:-1]) + np.asarray(geo.layers[0].r_edges_mm[1:]))
    by_r = images.sum(axis=(0, 1, 2))
    assert by_r[r_mid < 28.0].sum() > 0.85 * by_r.sum()
    by_alpha = images[:, :, :, 2:].sum(axis=(0, 1, 3))      # away from the axis, where alpha means a side
    a_mid = 0.5 * (geo.layers[0].alpha_edges[:-1] + geo.layers[0].alpha_edges[1:])
    assert abs(a_mid[np.argmax(by_alpha)] - np.arctan2(-5, 10)) < 2 * np.pi / 16 + 1e-9
    cx, cy = _centroid(geo, data.showers, range(3, 12))
    assert cx == pytest.approx(10.0, abs=2.5) and cy == pytest.approx(-5.0, abs=2.5)
    # longitudinal: 3.4 mm layers of 0.8 X0: shower maximum (t_max ~ 5 X0) in layers 3-9,
    # and the first 20 layers (16 X0) hold almost all of it
    by_layer = images.sum(axis=(0, 2, 3))
    assert 3 <= int(np.argmax(by_layer)) <= 9, by_layer
    assert by_layer[:20].sum() > 0.9 * by_layer.sum()


def test_par04_fine_readout(standin: Path) -> None:
    """Dataset 3's finer binning (50 alpha x 18 r, 81000 cell volumes) on the same cylinder."""
    geo = get_geometry("calochallenge-3")
    data = simulate(geo, "e-", 2, energy="1", engine="geant4", seed=8)
    response = data.showers.sum(1) / data.incident_energies[:, 0]
    assert response.mean() == pytest.approx(1.0, abs=0.3), response
    images = data.showers.reshape(2, 45, 50, 18)
    by_r = images.sum(axis=(0, 1, 2))
    assert by_r[:4].sum() > 0.5 * by_r.sum()                # half the energy within 9.3 mm (~R_M)
    # on-axis beam: no alpha bin is special (each holds ~1/50, none more than 3x that)
    by_alpha = images.sum(axis=(0, 1, 3))
    assert by_alpha.max() < 3 * by_alpha.mean()
