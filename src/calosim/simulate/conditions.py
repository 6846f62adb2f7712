"""Incident-particle specifications: particles and energy / angle / position ranges.

Spec strings are what the command line accepts, in command-line units:

==============  ==========  ===================================================
spec            unit        forms
==============  ==========  ===================================================
``energy``      GeV         ``"50"`` fixed, ``"1:100"`` uniform, ``"log:1:100"`` log-uniform,
                            ``"discrete:1,2,4"`` (equal shares of listed values) or a named
                            spectrum, ``"calochallenge-1"`` (the 15 powers of two 256 MeV ... 4.19 TeV)
``theta``       degrees     same forms; polar angle to the calorimeter normal, ``0 <= theta <= 80``
``phi``         degrees     same forms; azimuth of the incidence direction in the x-y plane
``position``    mm          one range for both x and y (``"0"``, ``"-20:20"``; x and y drawn
                            independently) or ``"X,Y"`` with one range each (``"5,-3"``,
                            ``"-20:20,0"``): the impact point on the front face
==============  ==========  ===================================================

Inside the library the samples are converted to MeV, radians and mm (:class:`ConditionSpec`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "RangeSpec", "PositionSpec", "ConditionSpec", "parse_range", "parse_position", "parse_conditions",
    "SPECTRA", "PARTICLES", "CANONICAL_PARTICLES", "KNOWN_PARTICLES", "MAX_THETA_DEG", "PARTICLE_MASS_MEV", "resolve_particle",
    "particle_name", "particle_pdg", "particle_label",
]

#: Largest accepted polar angle (degrees): beyond it the shower no longer fits the picture of
#: a profile along the axis spread in the layer plane that the ``mc`` engine uses.
MAX_THETA_DEG = 80.0

# ------------------------------------------------------------------------------------------
# particles
# ------------------------------------------------------------------------------------------
# The one particle table of calosim: every command (simulate, generate, train, info, bench)
# resolves names through it, so a name accepted by one is accepted by all.

#: Canonical names of every known particle -> PDG id.
KNOWN_PARTICLES: dict[str, int] = {
    "e-": 11, "e+": -11, "gamma": 22, "pi+": 211, "pi-": -211, "proton": 2212,
    "mu-": 13, "mu+": -13, "pi0": 111, "neutron": 2112, "k+": 321, "k-": -321, "k0l": 130,
}

#: Canonical names of the particles the simulation engines can shoot -> PDG id.
CANONICAL_PARTICLES: dict[str, int] = {k: KNOWN_PARTICLES[k] for k in ("e-", "e+", "gamma", "pi+", "pi-", "proton")}

#: Every accepted name (canonical names and aliases, lower case) -> PDG id.
PARTICLES: dict[str, int] = {
    **KNOWN_PARTICLES,
    "electron": 11, "positron": -11, "photon": 22, "pion+": 211, "pion-": -211, "pion": 211, "p": 2212,
    "muon": 13, "muon-": 13, "muon+": -13, "antimuon": -13, "n": 2112, "kaon": 321, "kaon+": 321, "kaon-": -321,
}

#: Rest masses (MeV) by PDG id (PDG Review of Particle Physics).
PARTICLE_MASS_MEV: dict[int, float] = {
    11: 0.51099895, -11: 0.51099895, 22: 0.0, 211: 139.57039, -211: 139.57039, 2212: 938.27208816,
    13: 105.6583755, -13: 105.6583755, 111: 134.9768, 2112: 939.56542052, 321: 493.677, -321: 493.677,
    130: 497.611,
}


def _lookup(name: str | int | float) -> int | None:
    """PDG id of a name, alias or integer code (as int or text); None if it is none of these."""
    if isinstance(name, bool):
        return None
    if isinstance(name, (int, np.integer)):
        return int(name)
    if isinstance(name, (float, np.floating)):
        return int(name) if float(name).is_integer() else None
    key = str(name).strip().lower()
    if key in PARTICLES:
        return PARTICLES[key]
    try:  # "11", "-211" as text
        return int(key)
    except ValueError:
        return None


def particle_pdg(name: str | int) -> int:
    """PDG id of any known particle name or alias (case-insensitive), or of an integer PDG code.

    For labels and conditions (``generate --particle``, training data); what can be *simulated*
    is narrower, see :func:`resolve_particle`.

    >>> particle_pdg("pion+"), particle_pdg("muon"), particle_pdg("-11")
    (211, 13, -11)
    """
    pdg = _lookup(name)
    if pdg is None or pdg == 0:
        raise ValueError(f"unknown particle {name!r}; valid: {', '.join(KNOWN_PARTICLES)} "
                         f"(aliases: {', '.join(sorted(set(PARTICLES) - set(KNOWN_PARTICLES)))}) or an integer PDG code")
    return pdg


def resolve_particle(name: str | int) -> int:
    """PDG id for a particle the simulation engines support (name, alias, case-insensitive, or PDG id).

    >>> resolve_particle("photon"), resolve_particle("e+"), resolve_particle(-211)
    (22, -11, -211)
    """
    pdg = _lookup(name)
    if pdg is not None and pdg in CANONICAL_PARTICLES.values():
        return pdg
    aliases = sorted(k for k, v in PARTICLES.items() if v in CANONICAL_PARTICLES.values() and k not in CANONICAL_PARTICLES)
    what = "unknown particle" if pdg is None else "particle that cannot be simulated"
    raise ValueError(
        f"{what} {name!r}; valid: {', '.join(CANONICAL_PARTICLES)} "
        f"(aliases: {', '.join(aliases)}; or a PDG id: {', '.join(str(p) for p in CANONICAL_PARTICLES.values())})"
    )


def particle_name(pdg: int) -> str:
    """Canonical name of a known PDG id (``11 -> "e-"``)."""
    for k, v in KNOWN_PARTICLES.items():
        if v == pdg:
            return k
    raise ValueError(f"unknown PDG id {pdg}; known: {', '.join(map(str, KNOWN_PARTICLES.values()))}")


def particle_label(pdg: int) -> str:
    """Canonical name of a PDG id, or ``"pdg <id>"`` for a code outside the table (for summaries)."""
    try:
        return particle_name(int(pdg))
    except ValueError:
        return f"pdg {int(pdg)}"


# ------------------------------------------------------------------------------------------
# ranges
# ------------------------------------------------------------------------------------------
#: Named discrete spectra (values in GeV) accepted where a range is: the CaloChallenge dataset-1
#: energies are the 15 powers of two from 2^8 to 2^22 MeV (256 MeV ... 4.19 TeV).
SPECTRA: dict[str, tuple[float, ...]] = {
    "calochallenge-1": tuple(0.256 * 2.0 ** k for k in range(15)),
}


@dataclass(frozen=True)
class RangeSpec:
    """A fixed value, a uniform / log-uniform range or a discrete set, in the spec's own unit.

    ``sample(n, rng)`` returns ``(n,)`` float64 values multiplied by ``scale`` (the conversion
    to library units, e.g. 1000 for GeV -> MeV). ``discrete`` picks each of ``values`` with
    equal probability.
    """

    kind: Literal["fixed", "uniform", "log", "discrete"]
    low: float
    high: float
    text: str = ""
    what: str = "value"
    scale: float = 1.0
    values: tuple[float, ...] = ()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n,)`` samples in library units (value * scale)."""
        if self.kind == "discrete" and len(self.values) > 1:
            v = np.asarray(self.values, dtype=np.float64)[rng.integers(0, len(self.values), size=n)]
        elif self.kind in ("fixed", "discrete") or self.low == self.high:
            v = np.full(n, self.low, dtype=np.float64)
        elif self.kind == "uniform":
            v = rng.uniform(self.low, self.high, size=n)
        else:
            v = np.exp(rng.uniform(math.log(self.low), math.log(self.high), size=n))
        return v * self.scale

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed" or self.low == self.high

    def __str__(self) -> str:
        if self.kind == "discrete" and not self.text:
            return "discrete:" + ",".join(f"{v:g}" for v in self.values)
        return self.text or (f"{self.low:g}" if self.is_fixed else f"{'log:' if self.kind == 'log' else ''}{self.low:g}:{self.high:g}")


def _number(tok: str, text: str, what: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise ValueError(f"{what}: cannot read {text!r}: {tok.strip()!r} is not a number "
                         f"(expected '50', '1:100' or 'log:1:100')") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: {text!r} must be finite")
    return v


def parse_range(text: str | float | int, what: str, *, scale: float = 1.0, min_value: float | None = None,
                max_value: float | None = None, min_inclusive: bool = True, max_inclusive: bool = True) -> RangeSpec:
    """Parse ``"50"`` (fixed), ``"1:100"`` (uniform), ``"log:1:100"`` (log-uniform),
    ``"discrete:1,2,4"`` (equal shares of the listed values) or a name in :data:`SPECTRA`.

    ``what`` names the quantity in error messages (e.g. ``"--energy (GeV)"``); ``min_value`` /
    ``max_value`` bound the allowed values (in the spec's unit). Numbers are accepted as fixed
    values. Raises ``ValueError`` with a one-line message on malformed or out-of-range text.
    """
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a number or range text, got {text!r}")
    if isinstance(text, (int, float, np.integer, np.floating)):
        text = repr(float(text)) if isinstance(text, (float, np.floating)) else str(int(text))
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected a number or range text like '1:100', got {type(text).__name__}")
    raw = text
    s = text.strip().lower()
    if not s:
        raise ValueError(f"{what}: empty value (expected '50', '1:100' or 'log:1:100')")
    kind: Literal["fixed", "uniform", "log", "discrete"]
    if s in SPECTRA or s.startswith("discrete:"):
        toks = SPECTRA[s] if s in SPECTRA else [t for t in s[len("discrete:"):].split(",") if t.strip()]
        if not toks:
            raise ValueError(f"{what}: cannot read {raw!r}: a discrete spectrum is 'discrete:V1,V2,...', e.g. 'discrete:1,2,4'")
        vals = sorted({_number(str(t), raw, what) for t in toks})
        for v in vals:
            _check_bounds(v, raw, what, min_value, max_value, min_inclusive, max_inclusive)
        return RangeSpec("discrete", vals[0], vals[-1], raw.strip(), what, scale, tuple(vals))
    if s.startswith("log:"):
        parts = s[4:].split(":")
        if len(parts) != 2:
            raise ValueError(f"{what}: cannot read {raw!r}: a log range is 'log:LOW:HIGH', e.g. 'log:1:100'")
        kind = "log"
    else:
        parts = s.split(":")
        if len(parts) > 2:
            raise ValueError(f"{what}: cannot read {raw!r}: use 'LOW:HIGH' (uniform) or 'log:LOW:HIGH'")
        kind = "fixed" if len(parts) == 1 else "uniform"
    vals = [_number(p, raw, what) for p in parts]
    lo, hi = vals[0], vals[-1]
    if hi < lo:
        raise ValueError(f"{what}: {raw!r} has LOW > HIGH")
    if kind == "log" and lo <= 0:
        raise ValueError(f"{what}: {raw!r}: a log range needs 0 < LOW <= HIGH")
    for v in (lo, hi):
        _check_bounds(v, raw, what, min_value, max_value, min_inclusive, max_inclusive)
    return RangeSpec(kind, lo, hi, raw.strip(), what, scale)


def _check_bounds(v: float, raw: str, what: str, min_value: float | None, max_value: float | None,
                  min_inclusive: bool, max_inclusive: bool) -> None:
    if min_value is not None and (v < min_value or (not min_inclusive and v == min_value)):
        rel = ">=" if min_inclusive else ">"
        raise ValueError(f"{what}: {raw!r} is out of range: values must be {rel} {min_value:g}")
    if max_value is not None and (v > max_value or (not max_inclusive and v == max_value)):
        rel = "<=" if max_inclusive else "<"
        raise ValueError(f"{what}: {raw!r} is out of range: values must be {rel} {max_value:g}")


@dataclass(frozen=True)
class PositionSpec:
    """Impact point on the front face: one :class:`RangeSpec` (mm) for x and one for y."""

    x: RangeSpec
    y: RangeSpec
    text: str = ""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 2)`` impact points ``(x, y)`` in mm; x and y are drawn independently."""
        rx, ry = rng.spawn(2)
        return np.stack([self.x.sample(n, rx), self.y.sample(n, ry)], axis=1)

    def __str__(self) -> str:
        return self.text


def parse_position(text: str | float | int, what: str = "position (mm)") -> PositionSpec:
    """Parse ``"0"``, ``"-20:20"`` (same range for x and y) or ``"X,Y"`` (one range each)."""
    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected text like '0', '-20:20' or 'X,Y', got {type(text).__name__}")
    parts = text.split(",")
    if len(parts) == 1:
        r = parse_range(parts[0], what)
        return PositionSpec(r, r, text.strip())
    if len(parts) == 2:
        return PositionSpec(parse_range(parts[0], f"{what} x"), parse_range(parts[1], f"{what} y"), text.strip())
    raise ValueError(f"{what}: cannot read {text!r}: use one range for both x and y ('-20:20') or 'X,Y' ('5,-3')")


@dataclass(frozen=True)
class ConditionSpec:
    """All incident-particle specs of a run; :meth:`sample` gives library units."""

    energy: RangeSpec  # GeV text, scale 1000 -> MeV
    theta: RangeSpec  # degrees text, scale pi/180 -> rad
    phi: RangeSpec  # degrees text, scale pi/180 -> rad
    position: PositionSpec  # mm

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``{"energy" (n,) MeV, "theta" (n,) rad, "phi" (n,) rad, "position" (n, 2) mm}``.

        Each quantity uses its own child stream of ``rng``, so changing one spec (say
        ``theta``) does not change the values drawn for the others.
        """
        re, rt, rp, rx = rng.spawn(4)
        return {"energy": self.energy.sample(n, re), "theta": self.theta.sample(n, rt),
                "phi": self.phi.sample(n, rp), "position": self.position.sample(n, rx)}

    def as_attrs(self) -> dict[str, str]:
        """Spec strings for file provenance."""
        return {"energy_spec_gev": str(self.energy), "theta_spec_deg": str(self.theta),
                "phi_spec_deg": str(self.phi), "position_spec_mm": str(self.position)}


def parse_conditions(energy: str | float = "1:100", theta: str | float = "0", phi: str | float = "0",
                     position: str | float = "0") -> ConditionSpec:
    """Parse the four CLI specs (energy GeV, theta/phi degrees, position mm)."""
    deg = math.pi / 180.0
    return ConditionSpec(
        energy=parse_range(energy, "energy (GeV)", scale=1000.0, min_value=0.0, min_inclusive=False),
        theta=parse_range(theta, "theta (degrees)", scale=deg, min_value=0.0, max_value=MAX_THETA_DEG),
        phi=parse_range(phi, "phi (degrees)", scale=deg),
        position=parse_position(position),
    )
