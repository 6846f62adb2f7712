"""Condition encoding: raw per-shower conditions -> the ``(N, cond_dim)`` tensor models see.

Raw conditions follow the file conventions (see ``calosim.io``): ``incident_energies`` (N, 1)
MeV, ``pdg`` (N,), ``momentum`` (N, 3) MeV, ``position`` (N, 2) mm, ``theta``/``phi`` (N,) rad.

Encoding (fitted on the training split):

* ``energy`` -> 1 column, ``log E`` mapped linearly so the training range is [-1, 1]. Always
  column 0; :meth:`ConditionEncoder.incident_energy` is its exact inverse.
* ``pdg`` -> one-hot over the particle codes present in the training file.
* ``momentum``, ``position``, ``theta``, ``phi`` -> standardised per column.
* ``direction`` -> 2 columns, the transverse components of the unit incidence direction,
  ``(sin theta cos phi, sin theta sin phi)`` from the file's ``theta`` and ``phi``, standardised.
  For angle conditioning this is the better input than ``theta`` and ``phi``: it has no seam at
  ``phi = 0 / 2 pi`` and is what sets the shower axis' lateral shift per layer
  (``z tan theta (cos phi, sin phi)``), where ``phi`` alone is meaningless at ``theta = 0``.

For generation without a reference file, :func:`sample_conditions` builds raw conditions:
energies from a GeV spec (``"50"``, ``"1:100"``, ``"log:1:100"``, ``"10,20,50"``), the particle
from its name or code, and every other condition drawn from the *condition pool*, a random
sample of training condition rows stored in the run directory (``conditions_pool.safetensors``,
see :func:`save_pool`). When the energy is overridden, pooled momenta are rescaled to the new
energy so their direction is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import CONDITION_SHAPES, ShowerData
from ..simulate.conditions import particle_pdg  # the one name <-> PDG table

__all__ = [
    "ConditionEncoder", "CONDITIONS", "DERIVED", "raw_keys", "sample_conditions", "parse_energy_spec", "particle_pdg",
    "raw_conditions", "save_pool", "load_pool", "make_pool",
]

#: Known condition names, in column order.
CONDITIONS = ("energy", "pdg", "momentum", "position", "theta", "phi", "direction")
#: Conditions computed from other stored ones (the raw file keys they need).
DERIVED = {"direction": ("theta", "phi")}


def raw_keys(names: list[str] | tuple[str, ...]) -> list[str]:
    """The raw file keys (``calosim.io`` conditions) that encoding ``names`` reads, in order."""
    out: list[str] = []
    for n in names:
        for k in DERIVED.get(n, (n,)):
            if k != "energy" and k not in out:
                out.append(k)
    return out


def _raw_column(raw: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """The ``(n, width)`` float64 values of a non-pdg condition before standardising."""
    if name == "direction":
        t = np.asarray(raw["theta"], dtype=np.float64).reshape(n)
        p = np.asarray(raw["phi"], dtype=np.float64).reshape(n)
        return np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p)], axis=1)
    return np.asarray(raw[name], dtype=np.float64).reshape(n, -1)


def raw_conditions(data: ShowerData | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw conditions as a dict with ``incident_energies`` (N, 1) MeV plus any present conditions."""
    if isinstance(data, ShowerData):
        return {"incident_energies": data.incident_energies, **data.conditions}
    d = dict(data)
    e = d.get("incident_energies", d.get("energy"))
    if e is None:
        raise ValueError("conditions need 'incident_energies' (N, 1) in MeV")
    out = {k: np.asarray(v) for k, v in d.items() if k in CONDITION_SHAPES}
    out["incident_energies"] = np.asarray(e, dtype=np.float64).reshape(-1, 1)
    return out


class ConditionEncoder:
    """Encode raw conditions (see the module docstring) as a float32 ``(N, cond_dim)`` tensor.

    ``names``: the condition names in column order (``"energy"`` first); ``columns``: one label
    per column; ``slices``: ``{name: slice of columns}``; ``cond_dim``: number of columns.
    """

    def __init__(self, names: list[str] | tuple[str, ...] = ("energy",)) -> None:
        names = [n.strip().lower() for n in names]
        unknown = [n for n in names if n not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; valid: {', '.join(CONDITIONS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"conditions listed twice: {names}")
        self.names = ["energy"] + [n for n in names if n != "energy"]  # energy is always column 0
        self.log_e_center = 0.0
        self.log_e_half = 1.0
        self.pdgs: list[int] = []
        self.mean: dict[str, list[float]] = {}
        self.std: dict[str, list[float]] = {}
        self.fitted = False

    # ---- layout -------------------------------------------------------------------------
    def _width(self, name: str) -> int:
        if name == "energy":
            return 1
        if name == "pdg":
            return len(self.pdgs)
        if name == "direction":
            return 2
        return int(np.prod(CONDITION_SHAPES[name])) if CONDITION_SHAPES[name] else 1

    @property
    def slices(self) -> dict[str, slice]:
        out, at = {}, 0
        for n in self.names:
            w = self._width(n)
            out[n] = slice(at, at + w)
            at += w
        return out

    @property
    def cond_dim(self) -> int:
        return sum(self._width(n) for n in self.names)

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for n in self.names:
            if n == "energy":
                cols.append("log_energy")
            elif n == "pdg":
                cols += [f"pdg={p}" for p in self.pdgs]
            else:
                w = self._width(n)
                cols += [n] if w == 1 else [f"{n}_{'xyz'[i]}" for i in range(w)]
        return cols

    @property
    def energy_range_mev(self) -> tuple[float, float]:
        """(min, max) incident energy of the training data in MeV."""
        return (math.exp(self.log_e_center - self.log_e_half), math.exp(self.log_e_center + self.log_e_half))

    # ---- fit / encode -------------------------------------------------------------------
    def fit(self, data: ShowerData | Mapping[str, Any]) -> "ConditionEncoder":
        raw = raw_conditions(data)
        self._check_present(raw)
        loge = np.log(raw["incident_energies"].astype(np.float64).ravel())
        lo, hi = float(loge.min()), float(loge.max())
        self.log_e_center = 0.5 * (lo + hi)
        self.log_e_half = max(0.5 * (hi - lo), 1e-6)  # a single energy encodes as 0
        for n in self.names[1:]:
            if n == "pdg":
                self.pdgs = sorted(int(p) for p in np.unique(raw["pdg"]))
            else:
                a = _raw_column(raw, n, len(loge))
                sd = a.std(0)
                self.mean[n] = a.mean(0).tolist()
                self.std[n] = np.where(sd > 0, sd, 1.0).tolist()
        self.fitted = True
        return self

    def _check_present(self, raw: Mapping[str, Any]) -> None:
        missing = [n for n in self.names[1:] if any(k not in raw for k in DERIVED.get(n, (n,)))]
        if missing:
            need = {n: list(DERIVED[n]) for n in missing if n in DERIVED}
            hint = f" ({', '.join(f'{n} needs {k}' for n, k in need.items())})" if need else ""
            raise ValueError(f"conditions {missing} requested but not present in the data{hint} (have: {sorted(raw)})")

    def encode(self, data: ShowerData | Mapping[str, Any]) -> Tensor:
        """Encoded conditions ``(N, cond_dim)`` float32 of a :class:`ShowerData` or a dict of arrays."""
        if not self.fitted:
            raise RuntimeError("ConditionEncoder.encode before fit() / from_dict()")
        raw = raw_conditions(data)
        self._check_present(raw)
        e = raw["incident_energies"].astype(np.float64).reshape(-1, 1)
        n = len(e)
        cols = [(np.log(e) - self.log_e_center) / self.log_e_half]
        for name in self.names[1:]:
            if name == "pdg":
                pdg = np.asarray(raw["pdg"]).astype(np.int64).ravel()
                unknown = sorted(set(pdg.tolist()) - set(self.pdgs))
                if unknown:
                    raise ValueError(f"particle code(s) {unknown} were not in the training data (trained on {self.pdgs})")
                idx = np.searchsorted(np.asarray(self.pdgs), pdg)
                onehot = np.zeros((n, len(self.pdgs)))
                onehot[np.arange(n), idx] = 1.0
                cols.append(onehot)
            else:
                a = _raw_column(raw, name, n)
                cols.append((a - np.asarray(self.mean[name])) / np.asarray(self.std[name]))
        return torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float32))

    def incident_energy(self, cond: Tensor) -> Tensor:
        """Incident energy ``(B, 1)`` MeV from encoded conditions ``(B, cond_dim)`` (inverse of column 0)."""
        return torch.exp(cond[:, :1] * self.log_e_half + self.log_e_center)

    # ---- state --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "log_e_center": self.log_e_center, "log_e_half": self.log_e_half,
                "pdgs": self.pdgs, "mean": self.mean, "std": self.std, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConditionEncoder":
        try:
            enc = cls(d["names"])
            enc.log_e_center, enc.log_e_half = float(d["log_e_center"]), float(d["log_e_half"])
            enc.pdgs = [int(p) for p in d["pdgs"]]
            enc.mean = {k: list(map(float, v)) for k, v in d["mean"].items()}
            enc.std = {k: list(map(float, v)) for k, v in d["std"].items()}
            enc.fitted = bool(d.get("fitted", True))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"condition encoder state is malformed: {exc}") from None
        return enc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ConditionEncoder":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        return f"ConditionEncoder({self.columns})"


# ------------------------------------------------------------------------------------------
# raw conditions for generation
# ------------------------------------------------------------------------------------------
def parse_energy_spec(spec: str | float) -> Callable[[int, np.random.Generator], np.ndarray]:
    """Parse a GeV energy spec into ``f(n, rng) -> (n,) energies in GeV``.

    The simulator's syntax (:func:`calosim.simulate.conditions.parse_range`): ``"50"`` fixed,
    ``"1:100"`` uniform, ``"log:1:100"`` log-uniform; plus ``"10,20,50"``, a uniform choice
    among listed energies (e.g. the CaloChallenge dataset-1 energies).
    """
    from ..simulate.conditions import parse_range

    text = str(spec)
    if "," in text:
        vals = [parse_range(v, "energy spec (GeV)", min_value=0.0, min_inclusive=False) for v in text.split(",") if v.strip()]
        if not vals or any(v.kind != "fixed" for v in vals):
            raise ValueError(f"bad energy spec {spec!r}: a list must be fixed energies in GeV, e.g. '10,20,50'")
        choice = np.asarray([v.sample(1, np.random.default_rng(0))[0] for v in vals])
        return lambda n, rng: rng.choice(choice, n)
    rs = parse_range(text, "energy spec (GeV)", min_value=0.0, min_inclusive=False)
    return lambda n, rng: rs.sample(n, rng)


def sample_conditions(n: int, energy_spec: str | float | None = None, particle: str | int | None = None,
                      rng: np.random.Generator | int | None = None, *, encoder: ConditionEncoder | None = None,
                      pool: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Raw conditions for ``n`` showers to generate.

    ``incident_energies`` (n, 1) MeV come from ``energy_spec`` (GeV) or, if None, from the pool
    (the training distribution) or else log-uniform over the encoder's training range. ``pdg`` is
    ``particle`` if given, else drawn from the pool when the encoder uses it. Other conditions
    the encoder needs are drawn from the pool (rows drawn jointly).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    names = encoder.names if encoder is not None else ["energy"]
    pool = dict(pool or {})
    n_pool = len(pool["incident_energies"]) if "incident_energies" in pool else 0
    idx = rng.integers(0, n_pool, n) if n_pool else None
    out: dict[str, np.ndarray] = {}
    if energy_spec is not None:
        e = parse_energy_spec(energy_spec)(n, rng) * 1000.0  # GeV -> MeV
    elif idx is not None:
        e = np.asarray(pool["incident_energies"], dtype=np.float64).reshape(-1)[idx]
    elif encoder is not None and encoder.fitted:
        lo, hi = encoder.energy_range_mev
        e = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    else:
        raise ValueError("no energies: give an energy spec, a condition pool or a fitted encoder")
    out["incident_energies"] = e.reshape(-1, 1).astype(np.float32)
    if particle is not None:
        out["pdg"] = np.full(n, particle_pdg(particle), dtype=np.int32)
    for name in raw_keys(names):
        if name in out:
            continue
        if idx is None or name not in pool:
            raise ValueError(f"condition {name!r} is needed but there is no stored training sample of it; "
                             "pass a reference file (conditions_from=)")
        out[name] = np.asarray(pool[name])[idx]
    if "momentum" in out and energy_spec is not None and idx is not None:
        old = np.asarray(pool["incident_energies"], dtype=np.float64).reshape(-1)[idx]
        out["momentum"] = (out["momentum"] * (e / old)[:, None]).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------
# condition pool: a sample of training condition rows, stored in the run directory
# ------------------------------------------------------------------------------------------
def make_pool(data: ShowerData | Mapping[str, Any], size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random sample of at most ``size`` raw condition rows."""
    raw = raw_conditions(data)
    n = len(raw["incident_energies"])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, min(size, n), replace=False)) if n > size else np.arange(n)
    return {k: np.ascontiguousarray(v[idx]) for k, v in raw.items()}


def save_pool(path: str | Path, pool: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    from ..io import atomic_path

    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.int32 if k == "pdg" else np.float32)) for k, v in pool.items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(arrays, str(tmp), metadata={"format": "calosim-condition-pool"})


def load_pool(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
