"""Registry of detector presets. A new detector is one decorated function (in any module).

>>> from calosim.geometry import get_geometry, list_geometries
>>> get_geometry("calogan").n_cells
504
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib import resources

from .calochallenge import SIW_CALOCHALLENGE, load_calochallenge_xml
from .core import Geometry, GeometryError, Layer, Material, Sampling
from .materials import effective_material

__all__ = ["register_geometry", "get_geometry", "list_geometries"]

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
def get_geometry(name: str) -> Geometry:
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
SI_W = Material("W", "Si", x0_mm=3.9, lambda_mm=110.0, moliere_mm=9.5, critical_mev=8.0,
                sampling_fraction=0.015, stochastic=0.17, constant=0.01)
SCI_FE = Material("Fe", "scintillator", x0_mm=19.0, lambda_mm=190.0, moliere_mm=20.0, critical_mev=22.0,
                  sampling_fraction=0.05, stochastic=0.50, constant=0.03)
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


@register_geometry("cepc-ecal", "CEPC Si-W ECAL: 31x31 cells of 1x1 cm2, 29 layers")
def _cepc() -> Geometry:
    # 29 layers of 2.1 mm W + Si readout (~0.6 X0 each).
    return Geometry("cepc-ecal", _stack("layer_", 29, (31, 31), (10.0, 10.0), 2.8, 2.8, SI_W),
                    "CEPC silicon-tungsten ECAL", threshold_mev=0.0)


@register_geometry("ild-ecal", "ILD Si-W ECAL: 30x30 cells of 5x5 mm2, 30 layers")
def _ild_ecal() -> Geometry:
    return Geometry("ild-ecal", _stack("layer_", 30, (30, 30), (5.1, 5.1), 3.6, 3.6, SI_W),
                    "ILD silicon-tungsten ECAL (BIB-AE / WGAN / flow seed)", threshold_mev=0.0)


@register_geometry("ild-hcal", "ILD scintillator-Fe AHCAL: 25x25 cells of 30x30 mm2, 48 layers")
def _ild_hcal() -> Geometry:
    return Geometry("ild-hcal", _stack("layer_", 48, (25, 25), (30.0, 30.0), 26.5, 26.5, SCI_FE),
                    "ILD analogue hadronic calorimeter (Fe / scintillator tiles)", threshold_mev=0.0)


@register_geometry("cms-towers", "CMS-like eta-phi tower grid 72x72 (0.087 x 0.087) for event images")
def _cms_towers() -> Geometry:
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


def _ds23_place(lid: int) -> tuple[float, float, Material]:
    return 3.4 * lid, 3.4, SIW_CALOCHALLENGE


@register_geometry("calochallenge-1-photons", "CaloChallenge 2022 dataset 1 photons: ATLAS, 368 voxels in 5 layers")
def _cc1g() -> Geometry:
    return load_calochallenge_xml(_xml("binning_dataset_1_photons.xml"), "calochallenge-1-photons",
                                  layer_z_mm=_atlas_place, description="ATLAS LAr/Pb + Tile, 0.2<|eta|<0.25")


@register_geometry("calochallenge-1-pions", "CaloChallenge 2022 dataset 1 pions: ATLAS, 533 voxels in 7 layers")
def _cc1p() -> Geometry:
    return load_calochallenge_xml(_xml("binning_dataset_1_pions.xml"), "calochallenge-1-pions",
                                  layer_z_mm=_atlas_place, description="ATLAS LAr/Pb + Tile, 0.2<|eta|<0.25")


@register_geometry("calochallenge-2", "CaloChallenge 2022 dataset 2: Si-W, 45x16x9 = 6480 voxels")
def _cc2() -> Geometry:
    return load_calochallenge_xml(_xml("binning_dataset_2.xml"), "calochallenge-2", layer_z_mm=_ds23_place,
                                  description="45 layers of 3.4 mm W/Si, R_M/2 radial cells", threshold_mev=0.01515)


@register_geometry("calochallenge-3", "CaloChallenge 2022 dataset 3: Si-W, 45x50x18 = 40500 voxels")
def _cc3() -> Geometry:
    return load_calochallenge_xml(_xml("binning_dataset_3.xml"), "calochallenge-3", layer_z_mm=_ds23_place,
                                  description="45 layers of 3.4 mm W/Si, R_M/4 radial cells", threshold_mev=0.01515)
