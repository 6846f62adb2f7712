"""Detector geometry: an ordered list of layers, each a regular cell grid.

A shower is a flat vector of ``n_cells`` energies (MeV). Cells are ordered layer by layer;
inside a layer they follow the layer's image shape in row-major order:

* Cartesian layers: image shape ``(ny, nx)``; cell ``(iy, ix)`` has its centre at
  ``x = (ix + 0.5 - nx/2) * dx``, ``y = (iy + 0.5 - ny/2) * dy`` (mm, relative to the
  nominal impact point).
* Polar layers (CaloChallenge binning): image shape ``(n_alpha, n_r)``, voxels ordered
  (alpha bin, radial bin) exactly as in the challenge's shower files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

__all__ = ["Material", "Layer", "PeriodGroup", "Sampling", "Geometry", "GeometryError"]


class GeometryError(ValueError):
    """A geometry description is inconsistent or a shower does not fit it."""


@dataclass(frozen=True)
class Material:
    """Effective material of a (sampling) calorimeter layer.

    Lengths are effective values of the absorber/active mix, in mm. ``stochastic`` and
    ``constant`` are the terms of the energy resolution sigma/E = a/sqrt(E/GeV) (+) b.
    """

    absorber: str
    active: str
    x0_mm: float  # radiation length X0
    lambda_mm: float  # nuclear interaction length lambda_int
    moliere_mm: float  # Moliere radius R_M
    critical_mev: float  # critical energy E_c
    sampling_fraction: float = 1.0
    stochastic: float = 0.1  # a, in sqrt(GeV)
    constant: float = 0.005  # b

    def __post_init__(self) -> None:
        for name in ("x0_mm", "lambda_mm", "moliere_mm", "critical_mev"):
            if not getattr(self, name) > 0:
                raise GeometryError(f"material {self.absorber}/{self.active}: {name} must be > 0")
        if not 0 < self.sampling_fraction <= 1:
            raise GeometryError("material sampling_fraction must be in (0, 1]")


@dataclass(frozen=True)
class PeriodGroup:
    """``n_periods`` repetitions of ``absorber_mm`` absorber followed by ``active_mm`` active material."""

    absorber_mm: float
    active_mm: float
    n_periods: int

    def __post_init__(self) -> None:
        if self.absorber_mm < 0 or self.active_mm <= 0 or self.n_periods < 1:
            raise GeometryError("sampling period group needs absorber_mm >= 0, active_mm > 0, n_periods >= 1")

    @property
    def period_mm(self) -> float:
        return self.absorber_mm + self.active_mm


@dataclass(frozen=True)
class Sampling:
    """The real sampling structure behind a geometry's effective materials, for Geant4.

    Front to back: ``n_periods`` repetitions of ``absorber_mm`` of ``absorber`` followed by
    ``active_mm`` of ``active`` (Geant4 NIST material names), then the further period ``groups``
    in order (non-uniform stacks, e.g. ILD's 20 thin then 10 thick tungsten plates; same
    materials, other thicknesses). A homogeneous calorimeter (crystals) has ``absorber_mm = 0``.

    ``kind="planar"``: plates of ``width_mm`` x ``width_mm``, the beam along +z onto the centre
    of the front face. ``kind="cylinder"`` (Geant4's Par04 example, the CaloChallenge datasets
    2 and 3): concentric cylindrical shells of length ``width_mm`` along the cylinder axis, the
    first starting at ``inner_radius_mm``; the beam enters radially, so depth is the radius minus
    ``inner_radius_mm`` on the beam line (the shells curve away from the beam sideways).

    Each active slab is read out by the readout layer whose depth range holds the slab's centre;
    energy in an active slab outside the layer's cell grid is that layer's overflow.
    ``sampling_fraction`` is the visible (active) share of the deposited energy measured with
    Geant4 for electrons; the engine divides visible energy by it, so cells are on the
    electromagnetic scale like the built-in simulator's. ``source`` cites where the structure
    comes from (and how the sampling fraction was measured).
    """

    absorber: str
    active: str
    absorber_mm: float
    active_mm: float
    n_periods: int
    width_mm: float
    sampling_fraction: float
    source: str = ""
    #: Further period groups behind the first ``n_periods`` (empty: a uniform stack).
    groups: tuple[PeriodGroup, ...] = ()
    kind: Literal["planar", "cylinder"] = "planar"
    #: Cylinder only: radius of the front face (the innermost shell's inner surface), mm.
    inner_radius_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.absorber_mm < 0 or self.active_mm <= 0 or self.n_periods < 1 or self.width_mm <= 0:
            raise GeometryError("sampling structure needs absorber_mm >= 0, active_mm > 0, n_periods >= 1, width_mm > 0")
        if not 0 < self.sampling_fraction <= 1:
            raise GeometryError("sampling structure: sampling_fraction must be in (0, 1]")
        # JSON gives the groups back as lists of dicts / lists: rebuild them
        groups = tuple(g if isinstance(g, PeriodGroup) else
                       PeriodGroup(**g) if isinstance(g, dict) else PeriodGroup(*g) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        if self.kind not in ("planar", "cylinder"):
            raise GeometryError(f"sampling structure: kind must be 'planar' or 'cylinder', got {self.kind!r}")
        if self.kind == "cylinder" and not self.inner_radius_mm > 0:
            raise GeometryError("a cylindrical sampling structure needs inner_radius_mm > 0")
        if self.kind == "planar" and self.inner_radius_mm != 0:
            raise GeometryError("inner_radius_mm is for cylindrical structures only")

    @property
    def period_groups(self) -> tuple[PeriodGroup, ...]:
        """All period groups, front to back (the first from the top-level fields)."""
        return (PeriodGroup(self.absorber_mm, self.active_mm, self.n_periods), *self.groups)

    @property
    def is_uniform(self) -> bool:
        return not self.groups

    @property
    def n_sampling_layers(self) -> int:
        """Total number of periods (absorber + active pairs) over all groups."""
        return sum(g.n_periods for g in self.period_groups)

    @property
    def period_mm(self) -> float:
        """Thickness of one period of the first group (of every period for a uniform stack), mm."""
        return self.absorber_mm + self.active_mm

    @property
    def depth_mm(self) -> float:
        """Total thickness of the stack along the beam (all groups), mm."""
        return sum(g.n_periods * g.period_mm for g in self.period_groups)

    def periods(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per period, front to back: ``(start_mm, absorber_mm, active_mm)``, each ``(n_sampling_layers,)``.

        ``start_mm`` is the depth of the period's absorber face from the front face; its active
        slab spans ``[start + absorber, start + absorber + active)``.
        """
        absorber = np.concatenate([np.full(g.n_periods, g.absorber_mm) for g in self.period_groups])
        active = np.concatenate([np.full(g.n_periods, g.active_mm) for g in self.period_groups])
        start = np.concatenate([[0.0], np.cumsum(absorber + active)[:-1]])
        return start, absorber, active

    def active_centres_mm(self) -> np.ndarray:
        """Depth of each active slab's centre from the front face, ``(n_sampling_layers,)`` mm."""
        start, absorber, active = self.periods()
        return start + absorber + 0.5 * active


@dataclass(frozen=True)
class Layer:
    """One readout layer: a cell grid at a depth ``[z_mm, z_mm + thickness_mm)``.

    ``shape`` is the per-layer image shape: ``(ny, nx)`` for ``kind="cartesian"`` with
    ``cell_mm=(dy, dx)``; ``(n_alpha, n_r)`` for ``kind="polar"`` with ``r_edges_mm``.
    """

    name: str
    kind: Literal["cartesian", "polar"]
    shape: tuple[int, int]
    z_mm: float
    thickness_mm: float
    material: Material
    cell_mm: tuple[float, float] | None = None
    r_edges_mm: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise GeometryError(f"layer {self.name!r}: shape must be two positive ints, got {self.shape}")
        if self.thickness_mm <= 0:
            raise GeometryError(f"layer {self.name!r}: thickness_mm must be > 0")
        if self.kind == "cartesian":
            if self.cell_mm is None or len(self.cell_mm) != 2 or min(self.cell_mm) <= 0:
                raise GeometryError(f"layer {self.name!r}: cartesian layers need cell_mm=(dy, dx) > 0")
            object.__setattr__(self, "cell_mm", tuple(float(c) for c in self.cell_mm))
        elif self.kind == "polar":
            r = self.r_edges_mm
            if r is None or len(r) < 2 or any(b <= a for a, b in zip(r, r[1:])):
                raise GeometryError(f"layer {self.name!r}: polar layers need increasing r_edges_mm")
            object.__setattr__(self, "r_edges_mm", tuple(float(v) for v in r))
            if self.shape[1] != len(r) - 1:
                raise GeometryError(f"layer {self.name!r}: shape[1] must equal len(r_edges_mm) - 1")
        else:
            raise GeometryError(f"layer {self.name!r}: kind must be 'cartesian' or 'polar', got {self.kind!r}")

    @property
    def n_cells(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def thickness_x0(self) -> float:
        return self.thickness_mm / self.material.x0_mm

    @property
    def thickness_lambda(self) -> float:
        return self.thickness_mm / self.material.lambda_mm

    @property
    def alpha_edges(self) -> np.ndarray:
        """Angular bin edges (rad) of a polar layer, ``(n_alpha + 1,)`` from -pi to pi."""
        return np.linspace(-math.pi, math.pi, self.shape[0] + 1)

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres ``(x, y)`` in mm, each ``(n_cells,)`` in the layer's flat order."""
        if self.kind == "cartesian":
            ny, nx = self.shape
            dy, dx = self.cell_mm  # type: ignore[misc]
            xs = (np.arange(nx) + 0.5 - nx / 2) * dx
            ys = (np.arange(ny) + 0.5 - ny / 2) * dy
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            return xx.ravel(), yy.ravel()
        r_edges = np.asarray(self.r_edges_mm)
        r_mid = 0.5 * (r_edges[:-1] + r_edges[1:])
        a_edges = self.alpha_edges
        a_mid = 0.5 * (a_edges[:-1] + a_edges[1:])
        aa, rr = np.meshgrid(a_mid, r_mid, indexing="ij")
        if self.shape[0] == 1:  # no angular binning: the voxel is centred on the axis in x/y
            return (rr * 0.0).ravel(), (rr * 0.0).ravel()
        return (rr * np.cos(aa)).ravel(), (rr * np.sin(aa)).ravel()

    def cell_radius(self) -> np.ndarray:
        """Distance of each cell centre from the shower axis (mm), ``(n_cells,)``."""
        if self.kind == "polar":
            r_edges = np.asarray(self.r_edges_mm)
            r_mid = 0.5 * (r_edges[:-1] + r_edges[1:])
            return np.tile(r_mid, self.shape[0])
        x, y = self.cell_centers()
        return np.hypot(x, y)

    def cell_areas(self) -> np.ndarray:
        """Cell areas in mm^2, ``(n_cells,)``."""
        if self.kind == "cartesian":
            dy, dx = self.cell_mm  # type: ignore[misc]
            return np.full(self.n_cells, dx * dy)
        r = np.asarray(self.r_edges_mm)
        ring = math.pi * (r[1:] ** 2 - r[:-1] ** 2) / self.shape[0]
        return np.tile(ring, self.shape[0])

    @property
    def extent_mm(self) -> float:
        """Half-size of the grid: max |x| (cartesian) or outer radius (polar)."""
        if self.kind == "cartesian":
            dy, dx = self.cell_mm  # type: ignore[misc]
            return max(self.shape[1] * dx, self.shape[0] * dy) / 2
        return float(self.r_edges_mm[-1])  # type: ignore[index]


@dataclass(frozen=True)
class Geometry:
    """An ordered list of layers plus readout facts.

    ``readout_threshold_mev``: the readout's zero suppression (the CaloChallenge's voxel cut):
    cells below it read 0 (:func:`calosim.features.apply_threshold`; 1 MeV on the challenge's
    dataset 1, 0.5 keV / 0.033 on datasets 2 and 3, 0 = no cut). ``threshold_mev``: the hit
    threshold, a cell is a hit if ``I > threshold_mev`` (hit counts, occupancy, visible
    energy). ``overflow``: the detector records the energy that falls outside each layer's
    grid (CaloGAN's per-layer overflow).
    """

    name: str
    layers: tuple[Layer, ...]
    description: str = ""
    threshold_mev: float = 0.0
    overflow: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    #: The real absorber/active structure, for the Geant4 engine (None: no Geant4 description).
    sampling: Sampling | None = None
    readout_threshold_mev: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        thr = self.readout_threshold_mev
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr) or thr < 0:
            raise GeometryError(f"geometry {self.name!r}: readout_threshold_mev must be a finite number >= 0 MeV, "
                                f"got {thr!r}")
        object.__setattr__(self, "readout_threshold_mev", float(thr))
        if not self.layers:
            raise GeometryError(f"geometry {self.name!r} has no layers")
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise GeometryError(f"geometry {self.name!r}: layer names must be unique")

    # ---- sizes and slices -------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_cells(self) -> int:
        return sum(l.n_cells for l in self.layers)

    @property
    def layer_offsets(self) -> np.ndarray:
        """Start index of each layer in the flat vector plus the end, ``(n_layers + 1,)``."""
        return np.concatenate([[0], np.cumsum([l.n_cells for l in self.layers])]).astype(int)

    @property
    def layer_slices(self) -> list[slice]:
        o = self.layer_offsets
        return [slice(int(o[i]), int(o[i + 1])) for i in range(self.n_layers)]

    @property
    def cell_layer(self) -> np.ndarray:
        """Layer index of each cell, ``(n_cells,)``."""
        return np.repeat(np.arange(self.n_layers), [l.n_cells for l in self.layers])

    @property
    def depth_mm(self) -> float:
        last = self.layers[-1]
        return last.z_mm + last.thickness_mm

    def layer_depth_centers_x0(self) -> np.ndarray:
        """Depth of each layer centre in radiation lengths from the front face, ``(n_layers,)``."""
        return _cumulative_depth(self.layers, "x0")

    def layer_depth_centers_lambda(self) -> np.ndarray:
        """Depth of each layer centre in interaction lengths from the front face, ``(n_layers,)``."""
        return _cumulative_depth(self.layers, "lambda")

    # ---- shower helpers -----------------------------------------------------------------
    def check(self, showers: np.ndarray, what: str = "showers") -> np.ndarray:
        """Return ``showers`` as a 2-D array, or raise if the cell count does not match."""
        a = np.asarray(showers)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.n_cells:
            raise GeometryError(
                f"{what}: expected shape (N, {self.n_cells}) for geometry {self.name!r}, got {tuple(np.shape(showers))}"
            )
        return a

    def layer(self, showers: np.ndarray, i: int) -> np.ndarray:
        """Layer ``i`` as images, ``(N, *layers[i].shape)``."""
        a = self.check(showers)
        return a[:, self.layer_slices[i]].reshape(len(a), *self.layers[i].shape)

    def images(self, showers: np.ndarray) -> list[np.ndarray]:
        """All layers as images: list of ``(N, *shape)``."""
        return [self.layer(showers, i) for i in range(self.n_layers)]

    def from_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`images`: list of ``(N, *shape)`` to ``(N, n_cells)``."""
        if len(images) != self.n_layers:
            raise GeometryError(f"expected {self.n_layers} layer images, got {len(images)}")
        n = len(images[0])
        parts = []
        for lay, img in zip(self.layers, images):
            img = np.asarray(img)
            if img.shape[1:] != lay.shape or len(img) != n:
                raise GeometryError(f"layer {lay.name!r}: expected (N, {lay.shape[0]}, {lay.shape[1]}), got {img.shape}")
            parts.append(img.reshape(n, -1))
        return np.concatenate(parts, axis=1)

    def layer_energies(self, showers: np.ndarray) -> np.ndarray:
        """Energy per layer, ``(N, n_layers)`` float64 (:func:`calosim.features.layer_energies`)."""
        from ..features import layer_energies  # features imports nothing of geometry at runtime

        return layer_energies(self.check(showers), self)

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres ``(x, y)`` of all cells in mm, each ``(n_cells,)``."""
        xs, ys = zip(*(l.cell_centers() for l in self.layers))
        return np.concatenate(xs), np.concatenate(ys)

    @property
    def is_cartesian(self) -> bool:
        return all(l.kind == "cartesian" for l in self.layers)

    @property
    def is_regular(self) -> bool:
        """All layers share one image shape (so showers reshape to ``(N, L, a, b)``)."""
        return len({l.shape for l in self.layers}) == 1

    def summary(self) -> str:
        kinds = {l.kind for l in self.layers}
        mats = {f"{l.material.absorber}/{l.material.active}" for l in self.layers}
        x0 = sum(l.thickness_x0 for l in self.layers)
        lam = sum(l.thickness_lambda for l in self.layers)
        return (
            f"{self.name}: {self.n_layers} {'/'.join(sorted(kinds))} layers, {self.n_cells} cells, "
            f"{'/'.join(sorted(mats))}, {x0:.1f} X0 / {lam:.2f} lambda_int"
        )

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        try:
            layers = []
            for ld in d["layers"]:
                ld = dict(ld)
                ld["material"] = Material(**ld["material"])
                for key in ("shape", "cell_mm", "r_edges_mm"):
                    if ld.get(key) is not None:
                        ld[key] = tuple(ld[key])
                layers.append(Layer(**ld))
            rest = {k: v for k, v in d.items() if k not in ("layers", "sampling")}
            sampling = Sampling(**d["sampling"]) if d.get("sampling") is not None else None
            return cls(layers=tuple(layers), sampling=sampling, **rest)
        except (KeyError, TypeError) as exc:
            raise GeometryError(f"geometry description is malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "Geometry":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GeometryError(f"geometry JSON is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def with_name(self, name: str) -> "Geometry":
        return replace(self, name=name)


def _cumulative_depth(layers: tuple[Layer, ...], unit: str) -> np.ndarray:
    """Depth of each layer centre, integrating over layers of different materials.

    Dead material in front of a layer (its ``z_mm`` beyond the previous layer's end) is
    counted in that layer's material.
    """
    out, depth, end_mm = [], 0.0, 0.0
    for lay in layers:
        length = lay.material.x0_mm if unit == "x0" else lay.material.lambda_mm
        depth += max(lay.z_mm - end_mm, 0.0) / length
        out.append(depth + 0.5 * lay.thickness_mm / length)
        depth += lay.thickness_mm / length
        end_mm = lay.z_mm + lay.thickness_mm
    return np.asarray(out)
