"""Known-answer EM physics checks: the measurements on analytic showers, then both engines."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from calosim.io import ShowerData
from calosim.simulate.validate import (containment_radius, longitudinal_moments, probe_geometry,
                                       textbook_stochastic_term, validate_em)


def test_probe_geometry_keeps_the_structure() -> None:
    geo = probe_geometry("calogan")
    assert geo.n_layers == 20 and geo.depth_mm == pytest.approx(480.0)
    assert geo.layers[0].shape == (48, 48) and geo.sampling is not None and geo.overflow


def test_longitudinal_moments_of_a_gamma_profile() -> None:
    # A mean profile that is exactly a Gamma distribution in X0 with T = (alpha - 1) / beta = 6.
    geo = probe_geometry("calogan")
    x0 = geo.layers[0].material.x0_mm
    edges = np.array([l.z_mm for l in geo.layers] + [geo.depth_mm]) / x0
    alpha, beta = 4.0, 0.5
    frac = np.diff(stats.gamma.cdf(edges, alpha, scale=1 / beta))
    frac /= frac.sum()
    showers = np.zeros((1, geo.n_cells), np.float32)
    centre = geo.layers[0].n_cells // 2 + 24          # a cell near the axis
    for i, sl in enumerate(geo.layer_slices):
        showers[0, sl.start + centre] = 1000.0 * frac[i]
    data = ShowerData(showers, [[1000.0]], geo, overflow=np.zeros((1, geo.n_layers)))
    mean, var, t_max = longitudinal_moments(data)
    assert mean == pytest.approx(alpha / beta, abs=0.15)
    assert t_max == pytest.approx((alpha - 1) / beta, abs=0.25)


def test_containment_radius_of_an_analytic_radial_profile() -> None:
    # Energy per cell from the profile f(r) = 2 r R^2 / (r^2 + R^2)^2 (CDF r^2 / (r^2 + R^2)):
    # 90 % lies within r = 3 R.
    geo = probe_geometry("calogan", cell_mm=5.0)
    x, y = geo.layers[0].cell_centers()
    r = np.hypot(x, y)
    big_r = 12.0
    dens = big_r ** 2 / (np.pi * (r ** 2 + big_r ** 2) ** 2)     # per unit area
    cell = dens * 25.0
    showers = np.zeros((1, geo.n_cells), np.float32)
    showers[0, geo.layer_slices[3]] = 5000.0 * cell / cell.sum()
    data = ShowerData(showers, [[5000.0]], geo, overflow=np.zeros((1, geo.n_layers)))
    assert containment_radius(data) == pytest.approx(3 * big_r, rel=0.05)


def test_textbook_sampling_term_of_calogan() -> None:
    # 2 mm Pb + 4 mm LAr: dE_mip = 2 x 1.273 + 4 x 0.212 = 3.39 MeV -> a = 3.2 % x 1.84
    assert textbook_stochastic_term(probe_geometry("calogan")) == pytest.approx(0.0589, abs=5e-4)


def test_the_builtin_engine_passes() -> None:
    rep = validate_em("mc", "calogan", energies=(1, 4, 16), n=200, seed=1)
    assert not rep.failed, rep.table()


@pytest.mark.skipif(importlib.util.find_spec("geant4_pybind") is None, reason="needs the extra calosim[geant4]")
def test_geant4_passes(standin: Path) -> None:
    rep = validate_em("geant4", "calogan", energies=(1, 4), n=40, seed=1)
    assert not rep.failed, rep.table()
    # the two energies of the probe: shower maximum moves by ln(4) X0
    t = rep.measurements["t_max_x0"]
    assert t[1] - t[0] == pytest.approx(math.log(4), abs=0.5)


def test_probe_refuses_structures_it_cannot_read_out() -> None:
    with pytest.raises(ValueError, match="planar stack of identical periods"):
        probe_geometry("calochallenge-2")
    with pytest.raises(ValueError, match="several period groups"):
        probe_geometry("ild-ecal")
