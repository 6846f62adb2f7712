"""Sampling structures of the presets: what they are, their effective materials, old files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calosim.geometry import Geometry, GeometryError, Sampling, get_geometry, list_geometries
from calosim.geometry.core import PeriodGroup
from calosim.geometry.materials import PURE_MATERIALS, effective_material
from calosim.simulate.g4detector import check_geometry, slab_layers

WITH_G4 = {"calogan", "lhcb-ecal", "besiii-emc", "cepc-ecal", "ild-ecal", "ild-ecal-10", "ild-hcal", "calochallenge-2",
           "calochallenge-3"}


def test_which_presets_have_a_geant4_description():
    have = {n for n in list_geometries() if get_geometry(n).sampling is not None}
    assert have == WITH_G4
    for name in set(list_geometries()) - WITH_G4:       # e.g. ATLAS (dataset 1), CMS towers
        with pytest.raises(ValueError, match=f"{name!r} has no Geant4 description.*ild-ecal"):
            check_geometry(get_geometry(name))
    for name in WITH_G4:
        check_geometry(get_geometry(name))
        assert get_geometry(name).sampling.source     # every structure cites where it comes from


@pytest.mark.parametrize("name, absorber, active, groups, cell", [
    ("cepc-ecal", "G4_W", "G4_Si", [(2.1, 0.5, 20), (4.2, 0.5, 9)], (10.0, 10.0)),
    ("ild-ecal", "G4_W", "G4_Si", [(2.1, 0.525, 20), (4.2, 0.525, 10)], (5.1, 5.1)),
    ("ild-hcal", "G4_Fe", "G4_POLYSTYRENE", [(20.0, 3.0, 48)], (30.0, 30.0)),
])
def test_planar_structures(name, absorber, active, groups, cell):
    g = get_geometry(name)
    s = g.sampling
    assert (s.kind, s.absorber, s.active) == ("planar", absorber, active)
    assert [(p.absorber_mm, p.active_mm, p.n_periods) for p in s.period_groups] == groups
    assert s.n_sampling_layers == g.n_layers == sum(n for *_, n in groups)
    assert s.depth_mm == pytest.approx(g.depth_mm)
    # one readout layer per period, each holding exactly its own active slab
    np.testing.assert_array_equal(slab_layers(g), np.arange(g.n_layers))
    start, ab, ac = s.periods()
    np.testing.assert_allclose([l.z_mm for l in g.layers], start)
    np.testing.assert_allclose([l.thickness_mm for l in g.layers], ab + ac)
    assert {l.cell_mm for l in g.layers} == {cell}
    assert s.is_uniform == (len(groups) == 1)


def test_ild_thick_section_has_its_own_material():
    g = get_geometry("ild-ecal")
    front, back = g.layers[0].material, g.layers[-1].material
    assert back.x0_mm < front.x0_mm                      # more tungsten per mm behind
    # 20 x 0.605 X0 + 10 x 1.20 X0: ILD's ~24 X0 ECAL
    assert sum(l.thickness_x0 for l in g.layers) == pytest.approx(24.0, rel=0.03)


@pytest.mark.parametrize("name, n_alpha, n_r", [("calochallenge-2", 16, 9), ("calochallenge-3", 50, 18)])
def test_par04_cylinder(name, n_alpha, n_r):
    g = get_geometry(name)
    s = g.sampling
    assert (s.kind, s.absorber, s.active, s.absorber_mm, s.active_mm, s.n_periods) == \
        ("cylinder", "G4_W", "G4_Si", 1.4, 0.3, 90)
    assert s.inner_radius_mm == 800.0 and s.width_mm == 2000.0          # Par04: 80 cm, 2 m long
    assert g.n_layers == 45 and {l.shape for l in g.layers} == {(n_alpha, n_r)}
    # Par04's 3.4 mm mesh bins: readout layer i holds the Si shells of periods 2i and 2i + 1
    np.testing.assert_array_equal(slab_layers(g), np.repeat(np.arange(45), 2))
    assert s.depth_mm == pytest.approx(g.depth_mm) == pytest.approx(153.0)
    assert max(l.extent_mm for l in g.layers) == pytest.approx(41.85)


def test_effective_materials_of_tungsten_silicon():
    # The CaloChallenge's "3.4 mm ~ 0.8 X0" for 2 x (1.4 mm W + 0.3 mm Si)
    par04 = get_geometry("calochallenge-2").layers[0].material
    assert 3.4 / par04.x0_mm == pytest.approx(0.8, abs=0.01)
    assert par04.x0_mm == pytest.approx(4.22, rel=0.01)
    # R_M of the mix: between tungsten's 9.33 mm (PDG; Par04's "2.325 mm = R_M / 4") and silicon's,
    # weighted by volume in 1 / R_M: 10.9 mm
    w, si = PURE_MATERIALS["G4_W"], PURE_MATERIALS["G4_Si"]
    assert w.moliere_mm == pytest.approx(9.327, rel=1e-3)
    assert par04.moliere_mm == pytest.approx(1 / (1.4 / 1.7 / w.moliere_mm + 0.3 / 1.7 / si.moliere_mm), rel=1e-9)
    assert par04.moliere_mm == pytest.approx(10.9, abs=0.05)
    # E_c = E_s X0 / R_M stays near tungsten's 7.97 MeV
    assert par04.critical_mev == pytest.approx(8.2, abs=0.1)
    # whole-stack average of a grouped stack = thickness-weighted mix of its groups
    s = get_geometry("ild-ecal").sampling
    whole = effective_material(s)
    parts = [effective_material(s, group=k) for k in range(2)]
    th = [g.n_periods * g.period_mm for g in s.period_groups]
    assert 1 / whole.x0_mm == pytest.approx(sum(t / p.x0_mm for t, p in zip(th, parts)) / sum(th))


def test_sampling_validation():
    with pytest.raises(GeometryError, match="inner_radius_mm > 0"):
        Sampling("G4_W", "G4_Si", 1.4, 0.3, 90, 2000.0, 0.03, kind="cylinder")
    with pytest.raises(GeometryError, match="kind"):
        Sampling("G4_W", "G4_Si", 1.4, 0.3, 90, 2000.0, 0.03, kind="sphere")  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match="period group"):
        PeriodGroup(4.2, 0.0, 10)
    s = Sampling("G4_W", "G4_Si", 2.1, 0.5, 2, 100.0, 0.03, groups=[[4.2, 0.5, 1]])   # lists, as JSON gives
    assert s.groups == (PeriodGroup(4.2, 0.5, 1),)
    assert s.depth_mm == pytest.approx(2 * 2.6 + 4.7) and s.period_mm == pytest.approx(2.6)
    np.testing.assert_allclose(s.active_centres_mm(), [2.1 + 0.25, 2.6 + 2.35, 5.2 + 4.45])


def test_files_written_before_the_extension_still_load():
    # A geometry JSON as today's calogan writes it without the new Sampling fields
    d = json.loads(get_geometry("calogan").to_json())
    for key in ("groups", "kind", "inner_radius_mm"):
        d["sampling"].pop(key)
    g = Geometry.from_dict(d)
    assert g == get_geometry("calogan")
    assert g.sampling.period_groups == (PeriodGroup(2.0, 4.0, 80),) and g.sampling.kind == "planar"
    # and the new structures round-trip
    for name in ("ild-ecal", "calochallenge-2"):
        g = get_geometry(name)
        assert Geometry.from_json(g.to_json()) == g


def test_published_presets_keep_their_numbers():
    # calogan / lhcb-ecal / besiii-emc numbers are measured and published in the README
    g = get_geometry("calogan")
    m = g.layers[0].material
    assert (round(m.x0_mm, 1), round(m.moliere_mm, 1), round(m.critical_mev, 1)) == (15.6, 35.5, 9.3)
    assert g.sampling.sampling_fraction == 0.1875
    assert get_geometry("lhcb-ecal").layers[0].material.x0_mm == 17.5
    assert get_geometry("besiii-emc").layers[0].material.x0_mm == 18.6


def test_check_geometry_errors():
    g = get_geometry("calochallenge-2")
    from dataclasses import replace
    with pytest.raises(ValueError, match="readout depth"):
        check_geometry(replace(g, sampling=replace(g.sampling, n_periods=80)))
    ild = get_geometry("ild-ecal")
    tube = Sampling("G4_W", "G4_Si", ild.depth_mm - 0.5, 0.5, 1, 2000.0, 0.03, kind="cylinder", inner_radius_mm=800.0)
    with pytest.raises(ValueError, match="polar"):
        check_geometry(replace(ild, sampling=tube))
    with pytest.raises(ValueError, match="Cartesian"):
        check_geometry(replace(g, sampling=replace(g.sampling, kind="planar", inner_radius_mm=0.0)))
    small = replace(g.sampling, inner_radius_mm=60.0)
    with pytest.raises(ValueError, match="does not fit"):
        check_geometry(replace(g, sampling=small))
    # a tighter cylinder curves the shells out of their depth bins within the readout radius
    with pytest.raises(ValueError, match="active shell 0 leaves the depth range.*curves by 1.75 mm"):
        check_geometry(replace(g, sampling=replace(g.sampling, inner_radius_mm=500.0)))
    assert math.isfinite(g.layers[0].material.lambda_mm)
