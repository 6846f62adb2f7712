"""Geant4 detector descriptions built from a :class:`~calosim.geometry.Geometry`'s sampling structure.

Runs only inside the Geant4 worker process (``g4`` is the imported ``geant4_pybind`` module);
:func:`check_geometry` and :func:`slab_layers` are pure and run anywhere.

Planar sampling stacks: ``n_periods`` x (absorber plate + active plate) of ``width_mm`` square,
the beam along +z onto the centre of the front face. Each active plate belongs to the readout
layer that holds its centre; inside it, the layer's cell grid is a box replicated in rows (y)
and cells (x), so cell energies are scored by Geant4's primitive scorers in C++ (Python runs
once per event, never per step). Deposits in the plate outside the grid are the overflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import Geometry

__all__ = ["check_geometry", "slab_layers", "make_detector"]


def check_geometry(geo: Geometry) -> None:
    """Raise ``ValueError`` naming the geometry when Geant4 cannot build it."""
    if geo.sampling is None:
        raise ValueError(f"geometry {geo.name!r} has no Geant4 description (no sampling structure); "
                         "presets with one: calogan, lhcb-ecal, besiii-emc")
    if not geo.is_cartesian:
        raise ValueError(f"geometry {geo.name!r}: the Geant4 engine scores Cartesian cell grids only")
    s = geo.sampling
    if abs(geo.depth_mm - s.depth_mm) > 1e-6 * s.depth_mm:
        raise ValueError(f"geometry {geo.name!r}: readout depth {geo.depth_mm} mm differs from the sampling "
                         f"structure's {s.depth_mm} mm")
    for lay in geo.layers:
        if 2 * lay.extent_mm > s.width_mm:
            raise ValueError(f"geometry {geo.name!r}: layer {lay.name!r} grid is wider than the {s.width_mm} mm plates")


def slab_layers(geo: Geometry) -> np.ndarray:
    """Readout layer of each active slab, ``(n_periods,)``: the layer whose depth range holds its centre."""
    s = geo.sampling
    assert s is not None
    centre = np.arange(s.n_periods) * s.period_mm + s.absorber_mm + 0.5 * s.active_mm
    starts = np.array([l.z_mm for l in geo.layers])
    return np.clip(np.searchsorted(starts, centre, side="right") - 1, 0, geo.n_layers - 1)


def make_detector(g4: Any, geo: Geometry) -> Any:
    """A ``G4VUserDetectorConstruction`` for ``geo`` (``g4`` is the imported ``geant4_pybind``).

    The contract with :class:`~calosim.simulate.geant4.Geant4Engine`: for every readout layer i
    a multi-functional detector ``cells{i}`` with primitive ``edep`` whose index is the cell's flat
    index within the layer (calosim's order), and ``slab{i}`` with ``edep`` (index 0) collecting
    the layer's active deposits outside its grid (the overflow). Energies are visible (active).
    """
    s = geo.sampling
    assert s is not None
    layer_of_slab = slab_layers(geo)

    class Detector(g4.G4VUserDetectorConstruction):
        def Construct(self) -> Any:  # noqa: N802 - Geant4 API
            nist = g4.G4NistManager.Instance()
            mm = g4.mm
            vacuum, absorber, active = (nist.FindOrBuildMaterial(m) for m in ("G4_Galactic", s.absorber, s.active))
            half = 0.5 * s.width_mm * mm
            depth = s.depth_mm * mm
            world_s = g4.G4Box("world", 1.2 * half, 1.2 * half, 0.5 * depth + 100 * mm)
            self.world_lv = g4.G4LogicalVolume(world_s, vacuum, "world")
            world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), self.world_lv, "world", None, False, 0)
            self.keep: list[Any] = [world_s]
            self.slab_lvs, self.cell_lvs = [], []
            # one slab / grid / row / cell logical-volume set per readout layer (segmentations differ)
            for i, lay in enumerate(geo.layers):
                ny, nx = lay.shape
                dy, dx = lay.cell_mm  # type: ignore[misc]
                t = 0.5 * s.active_mm * mm
                slab_s = g4.G4Box(f"slab{i}", half, half, t)
                slab_lv = g4.G4LogicalVolume(slab_s, active, f"slab{i}")
                grid_s = g4.G4Box(f"grid{i}", 0.5 * nx * dx * mm, 0.5 * ny * dy * mm, t)
                grid_lv = g4.G4LogicalVolume(grid_s, active, f"grid{i}")
                row_s = g4.G4Box(f"row{i}", 0.5 * nx * dx * mm, 0.5 * dy * mm, t)
                row_lv = g4.G4LogicalVolume(row_s, active, f"row{i}")
                cell_s = g4.G4Box(f"cell{i}", 0.5 * dx * mm, 0.5 * dy * mm, t)
                cell_lv = g4.G4LogicalVolume(cell_s, active, f"cell{i}")
                self.keep += [slab_s, grid_s, row_s, cell_s,
                              g4.G4PVPlacement(None, g4.G4ThreeVector(), grid_lv, f"grid{i}", slab_lv, False, 0),
                              g4.G4PVReplica(f"row{i}", row_lv, grid_lv, g4.kYAxis, ny, dy * mm),
                              g4.G4PVReplica(f"cell{i}", cell_lv, row_lv, g4.kXAxis, nx, dx * mm)]
                self.keep += [grid_lv, row_lv]
                self.slab_lvs.append(slab_lv)
                self.cell_lvs.append(cell_lv)
            z0 = -0.5 * depth
            if s.absorber_mm > 0:
                abs_s = g4.G4Box("absorber", half, half, 0.5 * s.absorber_mm * mm)
                abs_lv = g4.G4LogicalVolume(abs_s, absorber, "absorber")
                self.keep += [abs_s, abs_lv]
            for p in range(s.n_periods):
                zp = z0 + p * s.period_mm * mm
                if s.absorber_mm > 0:
                    self.keep.append(g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, zp + 0.5 * s.absorber_mm * mm),
                                                      abs_lv, "absorber", self.world_lv, False, p))
                zc = zp + (s.absorber_mm + 0.5 * s.active_mm) * mm
                lid = int(layer_of_slab[p])
                self.keep.append(g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, zc), self.slab_lvs[lid],
                                                  f"slab{lid}", self.world_lv, False, p))
            return world_pv

        def ConstructSDandField(self) -> None:  # noqa: N802 - Geant4 API
            sdm = g4.G4SDManager.GetSDMpointer()
            self.sds = []
            for i, lay in enumerate(geo.layers):
                ny, nx = lay.shape
                cells = g4.G4MultiFunctionalDetector(f"cells{i}")
                # index = row * nx + cell: copy numbers at touchable depth 1 (row replica) and 0
                # (cell replica); the third index reads the grid placement (depth 2, always copy 0)
                cells.RegisterPrimitive(g4.G4PSEnergyDeposit3D("edep", ny, nx, 1, 1, 0, 2))
                slab = g4.G4MultiFunctionalDetector(f"slab{i}")
                slab.RegisterPrimitive(g4.G4PSEnergyDeposit("edep"))
                for sd, lv in ((cells, self.cell_lvs[i]), (slab, self.slab_lvs[i])):
                    sdm.AddNewDetector(sd)
                    lv.SetSensitiveDetector(sd)
                    self.sds.append(sd)

    return Detector()
