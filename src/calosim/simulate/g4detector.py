"""Geant4 detector descriptions built from a :class:`~calosim.geometry.Geometry`'s sampling structure.

Runs only inside the Geant4 worker process (``g4`` is the imported ``geant4_pybind`` module);
:func:`check_geometry` and :func:`slab_layers` are pure and run anywhere.

Planar stacks (``Sampling.kind == "planar"``): the periods of every period group, front to back
(absorber plate + active plate, ``width_mm`` square), the beam along +z onto the centre of the
front face. Each active plate belongs to the readout layer that holds its centre; inside it, the
layer's Cartesian cell grid is a box replicated in rows (y) and cells (x), so cell energies are
scored by Geant4's primitive scorers in C++ (Python runs once per event, never per step).
Deposits in the plate outside the grid are the overflow.

Cylinders (``kind == "cylinder"``, Geant4's example Par04 that made the CaloChallenge datasets 2
and 3): concentric ``G4Tubs`` shells (absorber, active, absorber, ...) around an axis along x,
the first from ``inner_radius_mm``, ``width_mm`` long, as in ``Par04DetectorConstruction``. The
beam enters radially (Par04 shoots from the axis along +y; here the cylinder is placed so that
calosim's beam along +z is that radial direction), and the readout is Par04's: polar bins
(alpha, r) around the beam line through the entrance point, alpha measured from the cylinder
axis (x) as in Par04's mesh frame, energy in the sensitive (active) shells only. A readout
layer's cell ``(a, r)`` in active shell k is a ``G4IntersectionSolid`` of that shell with the
ring sector ``r_edges[r] <= rho < r_edges[r+1]``, ``alpha`` in bin ``a``, placed as a daughter of
the shell with copy number ``a * n_r + r`` (calosim's flat order): the cells follow the shell's
curvature exactly, and scoring stays in C++ (``G4PSEnergyDeposit`` indexes by copy number).
Par04 bins depth in flat planes along the particle (3.4 mm = two periods); within the readout
radius the curvature moves a shell by at most ``r_max^2 / (2 R)`` (1.1 mm at 41.85 mm), so
every active shell stays in the depth bin of its beam-line position, which is the readout
layer it is assigned to here. Shell deposits outside the readout radius are the overflow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..geometry import Geometry

__all__ = ["check_geometry", "slab_layers", "make_detector"]


def _described_presets() -> str:
    from ..geometry import get_geometry, list_geometries

    return ", ".join(n for n in list_geometries() if get_geometry(n).sampling is not None)


def check_geometry(geo: Geometry) -> None:
    """Raise ``ValueError`` naming the geometry when Geant4 cannot build it."""
    if geo.sampling is None:
        raise ValueError(f"geometry {geo.name!r} has no Geant4 description (no sampling structure); "
                         f"presets with one: {_described_presets()}")
    s = geo.sampling
    if abs(geo.depth_mm - s.depth_mm) > 1e-6 * s.depth_mm:
        raise ValueError(f"geometry {geo.name!r}: readout depth {geo.depth_mm} mm differs from the sampling "
                         f"structure's {s.depth_mm} mm")
    if s.kind == "planar":
        if not geo.is_cartesian:
            raise ValueError(f"geometry {geo.name!r}: a planar Geant4 stack scores Cartesian cell grids only")
        for lay in geo.layers:
            if 2 * lay.extent_mm > s.width_mm:
                raise ValueError(f"geometry {geo.name!r}: layer {lay.name!r} grid is wider than the "
                                 f"{s.width_mm} mm plates")
        return
    if any(l.kind != "polar" for l in geo.layers):
        raise ValueError(f"geometry {geo.name!r}: a cylindrical Geant4 detector scores polar (alpha, r) bins only")
    r_max = max(l.extent_mm for l in geo.layers)
    if r_max >= 0.5 * s.inner_radius_mm or 2 * r_max > s.width_mm:
        raise ValueError(f"geometry {geo.name!r}: readout radius {r_max} mm does not fit the cylinder "
                         f"(inner radius {s.inner_radius_mm} mm, length {s.width_mm} mm)")
    # Par04 bins depth in flat planes along the particle, the shells curve towards the beam's
    # start sideways: within the readout radius each active shell must stay inside the depth
    # range of the layer it is read out by, or the layer assignment here would differ from Par04's
    start, absorber, active = s.periods()
    front = start + absorber                                 # active shell's inner face on the beam line
    radius = s.inner_radius_mm + front
    sagitta = radius - np.sqrt(radius**2 - r_max**2)
    lay = slab_layers(geo)
    z0 = np.array([l.z_mm for l in geo.layers])[lay]
    z1 = z0 + np.array([l.thickness_mm for l in geo.layers])[lay]
    bad = np.flatnonzero((front - sagitta < z0 - 1e-9) | (front + active > z1 + 1e-9))
    if len(bad):
        raise ValueError(f"geometry {geo.name!r}: active shell {int(bad[0])} leaves the depth range of readout "
                         f"layer {int(lay[bad[0]])} within the readout radius {r_max} mm (it curves by "
                         f"{sagitta[bad[0]]:.2f} mm there)")


def slab_layers(geo: Geometry) -> np.ndarray:
    """Readout layer of each active slab, ``(n_sampling_layers,)``: the layer whose depth range holds its centre."""
    s = geo.sampling
    assert s is not None
    centre = s.active_centres_mm()
    starts = np.array([l.z_mm for l in geo.layers])
    return np.clip(np.searchsorted(starts, centre, side="right") - 1, 0, geo.n_layers - 1)


def make_detector(g4: Any, geo: Geometry) -> Any:
    """A ``G4VUserDetectorConstruction`` for ``geo`` (``g4`` is the imported ``geant4_pybind``).

    The contract with :class:`~calosim.simulate.geant4.Geant4Engine`: for every readout layer i
    a multi-functional detector ``cells{i}`` with primitive ``edep`` whose index is the cell's flat
    index within the layer (calosim's order: row * nx + column for Cartesian layers, alpha bin *
    n_r + radial bin for polar ones), and ``slab{i}`` with ``edep`` (any index; the engine sums
    them) collecting the layer's active deposits outside its cells (the overflow). Energies are
    visible (active material only), MeV. The front face is at ``z = -depth_mm / 2`` on the beam
    line (x = y = 0), where the engine's gun aims.
    """
    s = geo.sampling
    assert s is not None
    layer_of_slab = slab_layers(geo)
    builder = _build_cylinder if s.kind == "cylinder" else _build_planar

    class Detector(g4.G4VUserDetectorConstruction):
        def Construct(self) -> Any:  # noqa: N802 - Geant4 API
            # keep every Geant4 object referenced from Python: pybind would free them otherwise
            self.keep: list[Any] = []
            # per readout layer: logical volumes of its cells and of its slabs (the overflow)
            self.cell_lvs: list[list[Any]] = [[] for _ in geo.layers]
            self.slab_lvs: list[list[Any]] = [[] for _ in geo.layers]
            return builder(g4, geo, layer_of_slab, self.keep, self.cell_lvs, self.slab_lvs)

        def ConstructSDandField(self) -> None:  # noqa: N802 - Geant4 API
            sdm = g4.G4SDManager.GetSDMpointer()
            self.sds = []
            for i, lay in enumerate(geo.layers):
                cells = g4.G4MultiFunctionalDetector(f"cells{i}")
                if lay.kind == "cartesian":
                    ny, nx = lay.shape
                    # index = row * nx + cell: copy numbers at touchable depth 1 (row replica) and 0
                    # (cell replica); the third index reads the grid placement (depth 2, always copy 0)
                    cells.RegisterPrimitive(g4.G4PSEnergyDeposit3D("edep", ny, nx, 1, 1, 0, 2))
                else:
                    # polar cells are placements whose copy number is the flat index
                    cells.RegisterPrimitive(g4.G4PSEnergyDeposit("edep"))
                slab = g4.G4MultiFunctionalDetector(f"slab{i}")
                slab.RegisterPrimitive(g4.G4PSEnergyDeposit("edep"))
                for sd, lvs in ((cells, self.cell_lvs[i]), (slab, self.slab_lvs[i])):
                    sdm.AddNewDetector(sd)
                    for lv in lvs:
                        lv.SetSensitiveDetector(sd)
                    self.sds.append(sd)

    return Detector()


def _materials_and_world(g4: Any, geo: Geometry, keep: list[Any],
                         half_mm: tuple[float, float, float]) -> tuple[Any, Any, Any, Any, Any]:
    """Vacuum, the sampling's absorber and active materials, and a vacuum world box of
    half-lengths ``half_mm`` (x, y, z in mm): ``(vacuum, absorber, active, world_lv, world_pv)``."""
    s = geo.sampling
    assert s is not None
    nist = g4.G4NistManager.Instance()
    vacuum, absorber, active = (nist.FindOrBuildMaterial(m) for m in ("G4_Galactic", s.absorber, s.active))
    world_s = g4.G4Box("world", *(h * g4.mm for h in half_mm))
    world_lv = g4.G4LogicalVolume(world_s, vacuum, "world")
    world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "world", None, False, 0)
    keep += [world_s, world_lv, world_pv]
    return vacuum, absorber, active, world_lv, world_pv


def _build_planar(g4: Any, geo: Geometry, layer_of_slab: np.ndarray, keep: list[Any],
                  cell_lvs: list[list[Any]], slab_lvs: list[list[Any]]) -> Any:
    """World with the plates of a planar stack; fills ``cell_lvs``/``slab_lvs`` per readout layer."""
    s = geo.sampling
    assert s is not None
    mm = g4.mm
    half = 0.5 * s.width_mm * mm
    depth = s.depth_mm * mm
    vacuum, absorber, active, world_lv, world_pv = _materials_and_world(
        g4, geo, keep, (0.6 * s.width_mm, 0.6 * s.width_mm, 0.5 * s.depth_mm + 100))

    # one slab / grid / row / cell logical-volume set per (readout layer, active thickness):
    # segmentations differ between layers, thicknesses between period groups
    slab_sets: dict[tuple[int, float], Any] = {}

    def slab_lv(i: int, t_mm: float) -> Any:
        if (i, t_mm) not in slab_sets:
            lay = geo.layers[i]
            ny, nx = lay.shape
            dy, dx = lay.cell_mm  # type: ignore[misc]
            t = 0.5 * t_mm * mm
            tag = f"{i}_{len(slab_sets)}"
            slab_s = g4.G4Box(f"slab{tag}", half, half, t)
            lv = g4.G4LogicalVolume(slab_s, active, f"slab{tag}")
            grid_s = g4.G4Box(f"grid{tag}", 0.5 * nx * dx * mm, 0.5 * ny * dy * mm, t)
            grid_lv = g4.G4LogicalVolume(grid_s, active, f"grid{tag}")
            row_s = g4.G4Box(f"row{tag}", 0.5 * nx * dx * mm, 0.5 * dy * mm, t)
            row_lv = g4.G4LogicalVolume(row_s, active, f"row{tag}")
            cell_s = g4.G4Box(f"cell{tag}", 0.5 * dx * mm, 0.5 * dy * mm, t)
            cell_lv = g4.G4LogicalVolume(cell_s, active, f"cell{tag}")
            keep.extend([slab_s, grid_s, row_s, cell_s, grid_lv, row_lv, lv, cell_lv,
                         g4.G4PVPlacement(None, g4.G4ThreeVector(), grid_lv, f"grid{tag}", lv, False, 0),
                         g4.G4PVReplica(f"row{tag}", row_lv, grid_lv, g4.kYAxis, ny, dy * mm),
                         g4.G4PVReplica(f"cell{tag}", cell_lv, row_lv, g4.kXAxis, nx, dx * mm)])
            slab_lvs[i].append(lv)
            cell_lvs[i].append(cell_lv)
            slab_sets[(i, t_mm)] = lv
        return slab_sets[(i, t_mm)]

    absorber_lvs: dict[float, Any] = {}

    def absorber_lv(t_mm: float) -> Any:
        if t_mm not in absorber_lvs:
            abs_s = g4.G4Box(f"absorber{len(absorber_lvs)}", half, half, 0.5 * t_mm * mm)
            absorber_lvs[t_mm] = g4.G4LogicalVolume(abs_s, absorber, f"absorber{len(absorber_lvs)}")
            keep.extend([abs_s, absorber_lvs[t_mm]])
        return absorber_lvs[t_mm]

    start, absorber_t, active_t = s.periods()
    z0 = -0.5 * depth
    for p in range(len(start)):
        zp = z0 + start[p] * mm
        if absorber_t[p] > 0:
            keep.append(g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, zp + 0.5 * absorber_t[p] * mm),
                                         absorber_lv(float(absorber_t[p])), "absorber", world_lv, False, p))
        zc = zp + (absorber_t[p] + 0.5 * active_t[p]) * mm
        lid = int(layer_of_slab[p])
        keep.append(g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, zc), slab_lv(lid, float(active_t[p])),
                                     f"slab{lid}", world_lv, False, p))
    return world_pv


def _build_cylinder(g4: Any, geo: Geometry, layer_of_slab: np.ndarray, keep: list[Any],
                    cell_lvs: list[list[Any]], slab_lvs: list[list[Any]]) -> Any:
    """World with Par04's concentric shells and the polar readout cells; see the module docstring."""
    s = geo.sampling
    assert s is not None
    mm = g4.mm
    r0 = s.inner_radius_mm
    depth = s.depth_mm
    half_len = 0.5 * s.width_mm
    # the front face (inner surface) crosses the beam line at z = -depth/2: the axis sits R0 below
    z_axis = -0.5 * depth - r0
    vacuum, absorber, active, world_lv, world_pv = _materials_and_world(
        g4, geo, keep, (half_len + 10, r0 + depth + 10, abs(z_axis) + r0 + depth + 10))

    # tube frame -> world: the tube's own z axis along world x, its centre on the axis line
    to_world = g4.G4RotationMatrix()
    to_world.rotateY(90 * g4.deg)
    # ring sectors are built around the beam (world z, through the origin); in the tube frame
    # that is the inverse rotation and the origin's position there, R_T^-1 (0 - C) = (z_axis, 0, 0)
    to_tube = g4.G4RotationMatrix()
    to_tube.rotateY(-90 * g4.deg)
    sector_in_tube = g4.G4Transform3D(to_tube, g4.G4ThreeVector(z_axis * mm, 0, 0))
    keep += [to_world, to_tube, sector_in_tube]
    r_max = max(l.extent_mm for l in geo.layers)
    # the sectors reach past the shells' sideways curvature (sagitta at the readout edge) both ways
    sagitta = r0 - math.sqrt(r0 * r0 - r_max * r_max)
    sector_half = (0.5 * depth + sagitta + 1.0) * mm
    sectors: dict[tuple[float, float, int, int], Any] = {}

    def sector(r_lo: float, r_hi: float, n_alpha: int, a: int) -> Any:
        key = (r_lo, r_hi, n_alpha, a)
        if key not in sectors:
            if n_alpha == 1:
                phi0, dphi = 0.0, 2 * math.pi
            else:  # calosim's alpha bins: [-pi + a d, -pi + (a + 1) d), from the x (cylinder) axis
                dphi = 2 * math.pi / n_alpha
                phi0 = -math.pi + a * dphi
            sectors[key] = g4.G4Tubs(f"sector{len(sectors)}", r_lo * mm, r_hi * mm, sector_half, phi0, dphi)
            keep.append(sectors[key])
        return sectors[key]

    start, absorber_t, active_t = s.periods()
    for i, lay in enumerate(geo.layers):
        mine = np.flatnonzero(layer_of_slab == i)
        if not len(mine):
            continue
        p0, p1 = int(mine[0]), int(mine[-1]) + 1        # slabs of a layer are contiguous in depth
        r_in = r0 + start[p0]
        r_out = r0 + start[p1 - 1] + absorber_t[p1 - 1] + active_t[p1 - 1]
        # one mother tube per readout layer: 2-level nesting keeps the concentric shells a
        # navigator must consider when crossing a boundary to a few instead of all of them
        env_s = g4.G4Tubs(f"layer{i}", r_in * mm, r_out * mm, half_len * mm, 0, 2 * math.pi)
        env_lv = g4.G4LogicalVolume(env_s, vacuum, f"layer{i}")
        keep += [env_s, env_lv, g4.G4PVPlacement(g4.G4Transform3D(to_world, g4.G4ThreeVector(0, 0, z_axis * mm)),
                                                 env_lv, f"layer{i}", world_lv, False, i)]
        n_alpha, n_r = lay.shape
        edges = lay.r_edges_mm
        assert edges is not None
        for p in range(p0, p1):
            r = r0 + start[p]
            if absorber_t[p] > 0:
                abs_s = g4.G4Tubs(f"absorber{p}", r * mm, (r + absorber_t[p]) * mm, half_len * mm, 0, 2 * math.pi)
                abs_lv = g4.G4LogicalVolume(abs_s, absorber, f"absorber{p}")
                keep += [abs_s, abs_lv, g4.G4PVPlacement(None, g4.G4ThreeVector(), abs_lv, f"absorber{p}", env_lv,
                                                         False, p)]
                r += absorber_t[p]
            shell_s = g4.G4Tubs(f"shell{p}", r * mm, (r + active_t[p]) * mm, half_len * mm, 0, 2 * math.pi)
            shell_lv = g4.G4LogicalVolume(shell_s, active, f"shell{p}")
            keep += [shell_s, shell_lv, g4.G4PVPlacement(None, g4.G4ThreeVector(), shell_lv, f"shell{p}", env_lv,
                                                         False, p)]
            slab_lvs[i].append(shell_lv)
            for a in range(n_alpha):
                for k in range(n_r):
                    idx = a * n_r + k
                    cell_s = g4.G4IntersectionSolid(f"cell{p}_{idx}", shell_s, sector(edges[k], edges[k + 1], n_alpha, a),
                                                    sector_in_tube)
                    cell_lv = g4.G4LogicalVolume(cell_s, active, f"cell{p}_{idx}")
                    keep += [cell_s, cell_lv, g4.G4PVPlacement(None, g4.G4ThreeVector(), cell_lv, f"cell{p}_{idx}",
                                                               shell_lv, False, idx)]
                    cell_lvs[i].append(cell_lv)
    return world_pv
