"""Registry of detector presets. A new detector is one decorated function (in any module).

>>> from calosim.geometry import get_geometry, list_geometries
>>> get_geometry("calogan").n_cells
504
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from importlib import resources

import numpy as np

from .calochallenge import load_calochallenge_xml
from .core import Geometry, GeometryError, Layer, Material, PeriodGroup, Sampling
from .materials import effective_material

__all__ = ["register_geometry", "preset_geometry", "list_geometries"]

_REGISTRY: dict[str, tuple[Callable[[], Geometry], str]] = {}


def register_geometry(name: str, description: str) -> Callable[[Callable[[], Geometry]], Callable[[], Geometry]]:
    """Decorator: register a zero-argument function building a :class:`Geometry`."""

    def deco(fn: Callable[[], Geometry]) -> Callable[[], Geometry]:
        if name in _REGISTRY:
            raise GeometryError(f"geometry preset {name!r} is registered twice")
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


@lru_cache(maxsize=None)
def preset_geometry(name: str) -> Geometry:
    """Build a preset by name; unknown names raise an error listing the valid ones."""
    if name not in _REGISTRY:
        raise GeometryError(f"unknown geometry {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][0]()


def list_geometries() -> dict[str, str]:
    """``{name: one-line description}`` for every preset."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def _stack(name: str, n: int, shape: tuple[int, int], cell: tuple[float, float], pitch: float,
           thick: float, mat: Material, z0: float = 0.0) -> tuple[Layer, ...]:
    return tuple(
        Layer(name=f"{name}{i}", kind="cartesian", shape=shape, cell_mm=cell,
              z_mm=z0 + i * pitch, thickness_mm=thick, material=mat)
        for i in range(n)
    )


# ---- materials (effective values of the absorber/active mix) ---------------------------
SHASHLIK = Material("Pb", "scintillator", x0_mm=17.5, lambda_mm=380.0, moliere_mm=36.0, critical_mev=10.3,
                    sampling_fraction=0.30, stochastic=0.10, constant=0.01)
CSI = Material("CsI(Tl)", "CsI(Tl)", x0_mm=18.6, lambda_mm=394.0, moliere_mm=35.7, critical_mev=11.2,
               sampling_fraction=1.0, stochastic=0.025, constant=0.01)
ATLAS_EM = Material("Pb", "LAr", x0_mm=19.0, lambda_mm=380.0, moliere_mm=40.0, critical_mev=10.5,
                    sampling_fraction=0.18, stochastic=0.10, constant=0.007)
ATLAS_TILE = Material("Fe", "scintillator", x0_mm=21.0, lambda_mm=207.0, moliere_mm=20.0, critical_mev=21.0,
                      sampling_fraction=0.03, stochastic=0.50, constant=0.03)


@register_geometry("calogan", "CaloGAN 3-layer Pb/LAr ECAL: 3x96, 12x12, 12x6 cells (504) + per-layer overflow")
def _calogan() -> Geometry:
    # The CaloGAN repository's Geant4 code (generation/): 80 x (2 mm Pb + 4 mm LAr) in
    # 1000 x 1000 mm plates, the 480 x 480 mm readout grid in the centre, overflow outside it.
    # CaloGAN's own files score all deposits (absorber and active); calosim scores the LAr and
    # puts it on the EM scale. The sampling fraction of electrons is Geant4's (issue: 0.1875).
    sampling = Sampling("G4_Pb", "G4_lAr", absorber_mm=2.0, active_mm=4.0, n_periods=80, width_mm=1000.0,
                        sampling_fraction=0.1875,
                        source="CaloGAN repository, generation/ (Geant4 detector construction); arXiv:1712.10321 Table I")
    # Effective parameters from that structure (X0 15.6 mm, R_M 35.5 mm, E_c 9.3 MeV).
    mat = effective_material(sampling, stochastic=0.10, constant=0.007, absorber_label="Pb", active_label="LAr")
    # Table I of the CaloGAN seed: 480 x 480 mm front face, layer depths 90, 347, 43 mm.
    layers = (
        Layer("layer_0", "cartesian", (3, 96), z_mm=0.0, thickness_mm=90.0, material=mat, cell_mm=(160.0, 5.0)),
        Layer("layer_1", "cartesian", (12, 12), z_mm=90.0, thickness_mm=347.0, material=mat, cell_mm=(40.0, 40.0)),
        Layer("layer_2", "cartesian", (12, 6), z_mm=437.0, thickness_mm=43.0, material=mat, cell_mm=(40.0, 80.0)),
    )
    return Geometry("calogan", layers, "CaloGAN 3-layer LAr calorimeter (Paganini et al.)", overflow=True,
                    sampling=sampling)


@register_geometry("lhcb-ecal", "LHCb Shashlik ECAL module region: 30x30 cells of 2 cm, one summed layer")
def _lhcb() -> Geometry:
    # 66 layers of 2 mm Pb / 4 mm scintillator, read out summed per cell: one layer of 396 mm.
    sampling = Sampling("G4_Pb", "G4_POLYSTYRENE", absorber_mm=2.0, active_mm=4.0, n_periods=66, width_mm=600.0,
                        sampling_fraction=SHASHLIK.sampling_fraction,
                        source="LHCb ECAL seed (66 x (2 mm Pb + 4 mm scintillator), 30 x 30 cells of 20 mm)")
    return Geometry("lhcb-ecal", _stack("ecal", 1, (30, 30), (20.0, 20.0), 396.0, 396.0, SHASHLIK),
                    "LHCb ECAL (Shashlik, 66 x (2 mm Pb + 4 mm Sc)), 30x30 cells of 20 mm", threshold_mev=0.0,
                    sampling=sampling)


@register_geometry("besiii-emc", "BESIII EMC: 11x11 CsI(Tl) crystals of ~5x5 cm2, one layer (28 cm = 15 X0)")
def _besiii() -> Geometry:
    sampling = Sampling("G4_CESIUM_IODIDE", "G4_CESIUM_IODIDE", absorber_mm=0.0, active_mm=280.0, n_periods=1,
                        width_mm=572.0, sampling_fraction=1.0,
                        source="BESIII seed: CsI(Tl) crystals of ~5 x 5 cm2, 28 cm deep (homogeneous)")
    return Geometry("besiii-emc", _stack("crystal", 1, (11, 11), (52.0, 52.0), 280.0, 280.0, CSI),
                    "BESIII CsI(Tl) electromagnetic calorimeter", threshold_mev=0.0, sampling=sampling)


def _stack_layers(prefix: str, s: Sampling, shape: tuple[int, int], cell: tuple[float, float],
                  mats: tuple[Material, ...]) -> tuple[Layer, ...]:
    """One readout layer per period of ``s`` (front to back), in the material of its period group."""
    start, absorber, active = s.periods()
    group = np.repeat(np.arange(len(s.period_groups)), [g.n_periods for g in s.period_groups])
    return tuple(
        Layer(name=f"{prefix}{i}", kind="cartesian", shape=shape, cell_mm=cell, z_mm=float(start[i]),
              thickness_mm=float(absorber[i] + active[i]), material=mats[group[i]])
        for i in range(len(start))
    )


# Sampling fractions of the structures below: visible (active) energy, in the cells and outside
# them, over the beam energy for 100 electrons of 2 GeV at normal incidence on the centre
# (simulate(..., "e-", 100, energy="2", engine="geant4", seed=11) on the geometry with
# overflow=True, times the fraction it was run with), Geant4 11.4.1 (G4EmStandardPhysics,
# 0.7 mm cut, stand-in data), mean +- standard error. Leakage out of the back and sides and
# backscatter are not subtracted (< ~1 % for these deep, wide stacks).
SF_CEPC_ECAL = (0.03228, 0.00041)
SF_ILD_ECAL = (0.03381, 0.00041)
SF_ILD_HCAL = (0.02333, 0.00036)
SF_PAR04 = (0.03211, 0.00030)


def _sf_note(sf: tuple[float, float]) -> str:
    return f"sampling fraction {sf[0]:.5f} +- {sf[1]:.5f} (calosim geant4 engine, 100 e- of 2 GeV, visible / beam energy)"


def _siw_ecal(name: str, title: str, *, n_thin: int, n_thick: int, active_mm: float, width_mm: float,
              shape: tuple[int, int], cell: tuple[float, float], sf: tuple[float, float], source: str) -> Geometry:
    """A W/Si sampling ECAL: ``n_thin`` periods of 2.1 mm tungsten then ``n_thick`` of 4.2 mm,
    each followed by ``active_mm`` of silicon read out as one layer of ``shape`` cells."""
    sampling = Sampling("G4_W", "G4_Si", absorber_mm=2.1, active_mm=active_mm, n_periods=n_thin, width_mm=width_mm,
                        sampling_fraction=sf[0], groups=(PeriodGroup(4.2, active_mm, n_thick),),
                        source=f"{source}; {_sf_note(sf)}")
    mats = tuple(effective_material(sampling, group=k, stochastic=0.17, constant=0.01) for k in range(2))
    return Geometry(name, _stack_layers("layer_", sampling, shape, cell, mats), title, threshold_mev=0.0,
                    sampling=sampling)


@register_geometry("cepc-ecal", "CEPC Si-W ECAL: 31x31 cells of 1x1 cm2, 29 layers (20 x 2.1 + 9 x 4.2 mm W)")
def _cepc() -> Geometry:
    # CEPC_v4 (the CEPC seed's full simulation, 31 x 31 x 29 cells of 1 x 1 cm2): 20 tungsten
    # radiators of 2.1 mm then 9 of 4.2 mm, 0.5 mm silicon sensors (CEPCSW
    # Detector/DetCEPCv4/compact/ecal_defs.xml). PCB, glue, carbon fibre and air of the slabs are
    # not modelled: W/Si only, each readout layer one W plate then its Si sensor.
    return _siw_ecal("cepc-ecal", "CEPC silicon-tungsten ECAL (CEPC_v4)", n_thin=20, n_thick=9, active_mm=0.5,
                     width_mm=500.0, shape=(31, 31), cell=(10.0, 10.0), sf=SF_CEPC_ECAL,
                     source="CEPC seed (IHEP, CEPC workshop 2019: 31 x 31 x 29 cells of 1 x 1 cm2, Si-W); "
                            "CEPCSW Detector/DetCEPCv4/compact/ecal_defs.xml (Ecal_nlayers1 20 x 2.1 mm, "
                            "Ecal_nlayers2 9 x 4.2 mm W, Ecal_Si_thickness 0.5 mm, Ecal_cells_size 10 mm)")


@register_geometry("ild-ecal", "ILD Si-W ECAL: 30x30 cells of 5x5 mm2, 30 layers (20 x 2.1 + 10 x 4.2 mm W)")
def _ild_ecal() -> Geometry:
    # ILD seed (BIB-AE / WGAN / flows: "active silicon, passive tungsten, 30 layers, 5 mm x 5 mm
    # cells"); ILD's SiW ECAL model (k4geo ILD/compact/ILD_common_v02: SEcal05, ecal_defs.xml):
    # 20 sensitive layers behind 2.1 mm tungsten radiators and 10 behind 4.2 mm, 0.525 mm Si.
    # W/Si only (PCB, Cu, carbon fibre, air omitted); each readout layer is one W plate then its
    # Si sensor (in ILD the first sensor faces the front and plates alternate slab/structure).
    # The 30 x 30 grid keeps the seed dataset's projection (5.1 mm pitch, ILD cells are 5.0 mm).
    return _siw_ecal("ild-ecal", "ILD silicon-tungsten ECAL (BIB-AE / WGAN / flow seed)", n_thin=20, n_thick=10,
                     active_mm=0.525, width_mm=400.0, shape=(30, 30), cell=(5.1, 5.1), sf=SF_ILD_ECAL,
                     source="ILD seed (Diefenbacher et al., ML4Jets 2022, on the datasets of arXiv:2005.05334: 30 Si-W layers, 5 x 5 mm2 cells); "
                            "key4hep/k4geo ILD/compact/ILD_common_v02/ecal_defs.xml + SEcal05_siw_Barrel.xml "
                            "(2.1 mm W for the first 20 sensitive layers, 4.2 mm for the last 10, "
                            "Ecal_Si_thickness 0.525 mm)")


@register_geometry("ild-ecal-10", "ILD Si-W ECAL, central 10x10 cells of 5x5 mm2, 30 layers (the seed's 10x10x30 photon set)")
def _ild_ecal_10() -> Geometry:
    # The seed's multi-flow and small BIB-AE photon sets use the central 10 x 10 x 30 region of the
    # ILD ECAL; the same W/Si stack, with only that region read out (energy outside it is lost,
    # as in the seed's cut-out).
    return _siw_ecal("ild-ecal-10", "ILD silicon-tungsten ECAL, central 10x10 region (multi-flow seed)", n_thin=20,
                     n_thick=10, active_mm=0.525, width_mm=400.0, shape=(10, 10), cell=(5.1, 5.1), sf=SF_ILD_ECAL,
                     source="ILD seed (Diefenbacher et al., ML4Jets 2022: flows on the central 10 x 10 x 30 cells of "
                            "the ILD ECAL photon showers); stack as ild-ecal")


@register_geometry("ild-hcal", "ILD scintillator-Fe AHCAL: 25x25 cells of 30x30 mm2, 48 layers (20 mm Fe + 3 mm Sc)")
def _ild_hcal() -> Geometry:
    # ILD seed: "active scintillator, passive iron, 48 layers, 30 mm x 30 mm cells"; k4geo
    # ILD_common_v02/hcal_defs.xml: Hcal_radiator_thickness 20 mm, Hcal_scintillator_thickness
    # 3 mm, Hcal_nlayers 48, Hcal_cells_size 30 mm. The 3.5 mm of PCB, copper, fibre gap and the
    # 2 mm air gap of each ILD layer are not modelled: 23 mm periods of Fe + polystyrene.
    sampling = Sampling("G4_Fe", "G4_POLYSTYRENE", absorber_mm=20.0, active_mm=3.0, n_periods=48, width_mm=1000.0,
                        sampling_fraction=SF_ILD_HCAL[0],
                        source="ILD seed (Diefenbacher et al., ML4Jets 2022, on the datasets of arXiv:2112.09709: "
                               "48 layers Fe/scintillator, 30 x 30 mm2 tiles); key4hep/k4geo ILD/compact/ILD_common_v02/hcal_defs.xml (20 mm steel "
                               "radiator, 3 mm scintillator, 48 layers, 30 mm cells); " + _sf_note(SF_ILD_HCAL))
    mat = effective_material(sampling, stochastic=0.50, constant=0.03, absorber_label="Fe", active_label="scintillator")
    return Geometry("ild-hcal", _stack_layers("layer_", sampling, (25, 25), (30.0, 30.0), (mat,)),
                    "ILD analogue hadronic calorimeter (Fe / scintillator tiles)", threshold_mev=0.0, sampling=sampling)


@register_geometry("cms-towers", "CMS-like eta-phi tower grid 72x72 (0.087 x 0.087) for event images; no Geant4 description")
def _cms_towers() -> Geometry:
    # No sampling structure: CALPAGAN's event images are projective towers of a whole detector, not a stack.
    # One projective layer: cell size in mm at 1.29 m radius for Delta eta = Delta phi = 0.087.
    em = Material("PbWO4", "PbWO4", x0_mm=8.9, lambda_mm=200.0, moliere_mm=21.9, critical_mev=8.5,
                  sampling_fraction=1.0, stochastic=0.03, constant=0.005)
    return Geometry("cms-towers", _stack("towers", 1, (72, 72), (112.0, 112.0), 230.0, 230.0, em),
                    "CMS-like calorimeter towers (CALPAGAN event images)", threshold_mev=0.0)


def _xml(name: str) -> str:
    return str(resources.files("calosim") / "data" / name)


def _atlas_place(lid: int) -> tuple[float, float, Material]:
    # ATLAS barrel at |eta| ~ 0.2: presampler, EMB1-3 (4.3, 16, 2 X0 after ~2 X0 of
    # dead material), then the Tile calorimeter A, BC, D (1.5, 4.1, 1.8 lambda).
    em = {0: (38.0, 11.0), 1: (60.0, 82.0), 2: (142.0, 304.0), 3: (446.0, 38.0)}
    if lid in em:
        z, t = em[lid]
        return z, t, ATLAS_EM
    tile = {12: (700.0, 310.0), 13: (1010.0, 850.0), 14: (1860.0, 372.0)}
    if lid in tile:
        z, t = tile[lid]
        return z, t, ATLAS_TILE
    raise GeometryError(f"no ATLAS depth known for CaloChallenge layer id {lid}")


#: Geant4's Par04 example as configured for the CaloChallenge datasets 2 and 3
#: (examples/extended/parameterisations/Par04: examplePar04.mac and Par04DetectorConstruction):
#: a cylinder along its axis, 2 m long, 90 layers of 1.4 mm G4_W (passive) + 0.3 mm G4_Si
#: (sensitive) from 80 cm inner radius; the particle enters radially and the readout mesh is
#: cylindrical around its direction, 3.4 mm (two layers) deep bins along it.
PAR04 = Sampling("G4_W", "G4_Si", absorber_mm=1.4, active_mm=0.3, n_periods=90, width_mm=2000.0,
                 sampling_fraction=SF_PAR04[0], kind="cylinder", inner_radius_mm=800.0,
                 source="Geant4 examples/extended/parameterisations/Par04 (Par04DetectorConstruction.cc, "
                        "examplePar04.mac: setDetectorInnerRadius 80 cm, setDetectorLength 2 m, setNbOfLayers 90, "
                        "setAbsorber 0 G4_W 1.4 mm false, setAbsorber 1 G4_Si 0.3 mm true, mesh 3.4 mm in z); "
                        "CaloChallenge 2022 datasets 2/3 (binning_dataset_2.xml, binning_dataset_3.xml); "
                        + _sf_note(SF_PAR04))
#: Effective material of the Par04 mix (X0 4.22 mm, R_M 10.9 mm: the readout's "0.5 R_M" cells of
#: 4.65 mm are half of tungsten's own 9.3 mm Moliere radius).
SIW_PAR04 = effective_material(PAR04, stochastic=0.17, constant=0.01)


def _ds23_place(lid: int) -> tuple[float, float, Material]:
    # readout layer lid = Par04 mesh z bin lid: periods 2 lid and 2 lid + 1
    return 2 * PAR04.period_mm * lid, 2 * PAR04.period_mm, SIW_PAR04


def _par04(name: str, xml: str, description: str) -> Geometry:
    g = load_calochallenge_xml(_xml(xml), name, layer_z_mm=_ds23_place, description=description, threshold_mev=0.01515)
    return replace(g, sampling=PAR04)


@register_geometry("calochallenge-1-photons", "CaloChallenge 2022 dataset 1 photons: ATLAS, 368 voxels in 5 layers; no Geant4 description")
def _cc1g() -> Geometry:
    # No sampling structure: the challenge publishes the ATLAS voxel binning, not a detector description.
    return load_calochallenge_xml(_xml("binning_dataset_1_photons.xml"), "calochallenge-1-photons",
                                  layer_z_mm=_atlas_place, description="ATLAS LAr/Pb + Tile, 0.2<|eta|<0.25")


@register_geometry("calochallenge-1-pions", "CaloChallenge 2022 dataset 1 pions: ATLAS, 533 voxels in 7 layers; no Geant4 description")
def _cc1p() -> Geometry:
    return load_calochallenge_xml(_xml("binning_dataset_1_pions.xml"), "calochallenge-1-pions",
                                  layer_z_mm=_atlas_place, description="ATLAS LAr/Pb + Tile, 0.2<|eta|<0.25")


@register_geometry("calochallenge-2", "CaloChallenge 2022 dataset 2: Par04 Si-W cylinder, 45x16x9 = 6480 voxels")
def _cc2() -> Geometry:
    return _par04("calochallenge-2", "binning_dataset_2.xml",
                  "Par04 cylinder, 90 x (1.4 mm W + 0.3 mm Si) read out in pairs: 45 layers of 3.4 mm, 4.65 mm radial cells")


@register_geometry("calochallenge-3", "CaloChallenge 2022 dataset 3: Par04 Si-W cylinder, 45x50x18 = 40500 voxels")
def _cc3() -> Geometry:
    return _par04("calochallenge-3", "binning_dataset_3.xml",
                  "Par04 cylinder, 90 x (1.4 mm W + 0.3 mm Si) read out in pairs: 45 layers of 3.4 mm, 2.325 mm radial cells")
