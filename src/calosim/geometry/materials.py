"""Effective material of a sampling structure, from the properties of its pure materials.

For a stack of plates with volume fractions ``f_i``, the per-length inverse radiation length,
interaction length and Molière radius add: ``1/X0 = sum f_i / X0_i`` (and the same for
``lambda_int`` and ``R_M``, since ``R_M,i = E_s X0_i / E_c,i``); the effective critical energy
is then ``E_c = E_s X0 / R_M`` with ``E_s = 21.2 MeV``. This is how the presets get their
effective parameters from their real structure instead of by hand.

>>> m = effective_material(Sampling("G4_Pb", "G4_lAr", 2.0, 4.0, 80, 1000.0, 0.1875))
>>> round(m.x0_mm, 1), round(m.moliere_mm, 1), round(m.critical_mev, 1)
(15.6, 35.5, 9.3)
"""

from __future__ import annotations

from dataclasses import dataclass

from .core import GeometryError, Material, Sampling

__all__ = ["PureMaterial", "PURE_MATERIALS", "effective_material", "E_S_MEV"]

#: Multiple-scattering energy scale E_s = m_e sqrt(4 pi / alpha), MeV.
E_S_MEV = 21.2


@dataclass(frozen=True)
class PureMaterial:
    """Properties of one material (PDG "Atomic and nuclear properties of materials")."""

    x0_mm: float
    lambda_mm: float  # nuclear interaction length
    moliere_mm: float
    critical_mev: float  # for electrons


#: Geant4 NIST names -> properties (PDG tables: X0, lambda_I, R_M, E_c for e-).
PURE_MATERIALS: dict[str, PureMaterial] = {
    "G4_Pb": PureMaterial(5.612, 175.9, 16.02, 7.43),
    "G4_lAr": PureMaterial(140.0, 857.7, 90.43, 32.84),
    "G4_W": PureMaterial(3.504, 99.46, 9.327, 7.97),
    "G4_Si": PureMaterial(93.70, 465.2, 48.82, 40.19),
    "G4_Fe": PureMaterial(17.57, 167.7, 17.19, 21.68),
    "G4_POLYSTYRENE": PureMaterial(413.1, 770.7, 94.11, 93.11),
    "G4_CESIUM_IODIDE": PureMaterial(18.60, 393.7, 35.66, 11.17),
    "G4_PbWO4": PureMaterial(8.903, 207.7, 19.59, 9.64),
}


def _pure(name: str) -> PureMaterial:
    if name not in PURE_MATERIALS:
        raise GeometryError(f"no properties known for material {name!r}; known: {', '.join(PURE_MATERIALS)}")
    return PURE_MATERIALS[name]


def effective_material(s: Sampling, *, stochastic: float = 0.10, constant: float = 0.007,
                       absorber_label: str | None = None, active_label: str | None = None,
                       group: int | None = None) -> Material:
    """Effective :class:`Material` of the structure ``s`` (lengths in mm, E_c in MeV).

    ``group=None`` averages over the whole stack (all period groups, by thickness); ``group=k``
    gives the mix of one period of group ``k`` (``s.period_groups[k]``), for the readout layers
    of a non-uniform stack (ILD's thin and thick tungsten sections differ in X0 and R_M).
    """
    groups = s.period_groups if group is None else (s.period_groups[group],)
    absorber = sum(g.n_periods * g.absorber_mm for g in groups)
    active = sum(g.n_periods * g.active_mm for g in groups)
    parts = [(_pure(s.absorber), absorber), (_pure(s.active), active)]
    total = absorber + active
    inv = [sum(t / total / getattr(p, key) for p, t in parts if t > 0) for key in ("x0_mm", "lambda_mm", "moliere_mm")]
    x0, lam, rm = (1.0 / v for v in inv)
    return Material(absorber_label or s.absorber.removeprefix("G4_"), active_label or s.active.removeprefix("G4_"),
                    x0_mm=x0, lambda_mm=lam, moliere_mm=rm, critical_mev=E_S_MEV * x0 / rm,
                    sampling_fraction=s.sampling_fraction, stochastic=stochastic, constant=constant)
