"""Jets from tower images (fastjet) and the seed's jet observables and chi2 tables.

Every tower with energy is a massless four-vector at its (eta, phi) centre. Jets are anti-kT
(R = 0.4, or a large-R option), optionally trimmed (Krohn, Thaler, Wang 2010: kT subjets of
R_sub = 0.2 below f_cut = 5 % of the jet pT are dropped). For the two leading jets:

* ``pt``, ``mass``, ``eta``, ``phi``;
* ``tau1``, ``tau2``: N-subjettiness (Thaler, Van Tilburg 2011), beta = 1, axes = exclusive kT
  subjets, tau_N = sum_i pT_i min_k dR(i, k) / (sum_i pT_i R);
* ``girth``: the linear radial moment sum_i pT_i dR(i, jet) / pT_jet;
* ``two_point``: the two-point moment (energy correlation, beta = 1)
  sum_{i<j} pT_i pT_j dR_ij / pT_jet^2;

and for the pair ``deta`` = eta1 - eta2 and ``dphi`` = |phi1 - phi2| wrapped to [0, pi].
Events with fewer jets hold NaN, which the histograms skip.

The chi2 distance of two samples is ROOT's ``TH1::Chi2Test`` statistic for two unweighted
histograms (the seed's Tables 1 and 2): sum_i (N2 n1_i - N1 n2_i)^2 / (N1 N2 (n1_i + n2_i)),
over shared bins, so it grows with the sample size; identical samples give 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import EventsError, require
from .views import N_ETA, N_PHI, tower_centers

__all__ = ["JET_OBSERVABLES", "PAIR_OBSERVABLES", "jet_observables", "event_jets", "leading_pair", "chi2_uu", "chi2_table", "common_edges", "format_table",
           "nsubjettiness"]

_LAST_CS: Any = None
JET_OBSERVABLES = ("tau1", "tau2", "girth", "two_point", "pt", "mass", "eta", "phi")
PAIR_OBSERVABLES = ("deta", "dphi")
LABELS = {"tau1": "1-subjettiness", "tau2": "2-subjettiness", "girth": "Jet girth", "two_point": "2 point moment",
          "pt": "Jet pT", "mass": "Jet mass", "eta": "Jet eta", "phi": "Jet phi", "deta": "Delta eta",
          "dphi": "Delta phi"}


def _fj() -> Any:
    fj = require("fastjet")
    return fj


def _dr(eta1: np.ndarray, phi1: np.ndarray, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    dphi = np.mod(phi1 - phi2 + math.pi, 2 * math.pi) - math.pi
    return np.hypot(eta1 - eta2, dphi)


def _kin(pjs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([p.pt() for p in pjs]), np.array([p.eta() for p in pjs]), np.array([p.phi() for p in pjs]))


def nsubjettiness(constituents: Sequence[Any], n: int, r0: float) -> float:
    """tau_N of a jet's constituents (fastjet PseudoJets), beta = 1, exclusive-kT axes."""
    fj = _fj()
    pt, eta, phi = _kin(constituents)
    if len(constituents) <= n or pt.sum() <= 0:
        return 0.0
    cs = fj.ClusterSequence(list(constituents), fj.JetDefinition(fj.kt_algorithm, fj.JetDefinition.max_allowable_R))
    axes = cs.exclusive_jets(n)
    _, ae, ap = _kin(axes)
    d = _dr(eta[:, None], phi[:, None], ae[None], ap[None]).min(axis=1)
    return float((pt * d).sum() / (pt.sum() * r0))


def jet_observables(jet: Any, r0: float) -> dict[str, float]:
    """The seed's per-jet observables of one (trimmed) fastjet jet."""
    cons = jet.constituents()
    pt, eta, phi = _kin(cons)
    d_axis = _dr(eta, phi, jet.eta(), jet.phi())
    dij = _dr(eta[:, None], phi[:, None], eta[None], phi[None])
    two = 0.5 * float((pt[:, None] * pt[None] * dij).sum()) / jet.pt() ** 2
    return {"tau1": nsubjettiness(cons, 1, r0), "tau2": nsubjettiness(cons, 2, r0),
            "girth": float((pt * d_axis).sum() / jet.pt()), "two_point": two, "pt": jet.pt(),
            "mass": max(jet.m(), 0.0), "eta": jet.eta(), "phi": float(np.mod(jet.phi() + math.pi, 2 * math.pi) - math.pi)}


def _towers(image: np.ndarray) -> list[Any]:
    fj = _fj()
    e = np.asarray(image, dtype=np.float64)
    if e.ndim == 3:
        e = e.sum(0)  # ECAL + HCAL
    if e.shape != (N_ETA, N_PHI):
        raise EventsError(f"tower image must be ({N_ETA}, {N_PHI}) (or (C, {N_ETA}, {N_PHI})), got {e.shape}")
    eta_c, phi_c = tower_centers()
    ie, ip = np.nonzero(e > 0)
    en = e[ie, ip]
    pt = en / np.cosh(eta_c[ie])
    px, py, pz = pt * np.cos(phi_c[ip]), pt * np.sin(phi_c[ip]), pt * np.sinh(eta_c[ie])
    return [fj.PseudoJet(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(px, py, pz, en)]


def event_jets(image: np.ndarray, *, r: float = 0.4, ptmin: float = 20.0, trim: bool = True,
               r_sub: float = 0.2, f_cut: float = 0.05) -> list[Any]:
    """Anti-kT jets (pT-ordered fastjet PseudoJets, pT > ``ptmin`` GeV after trimming) of a tower image."""
    fj = _fj()
    towers = _towers(image)
    if not towers:
        return []
    cs = fj.ClusterSequence(towers, fj.JetDefinition(fj.antikt_algorithm, r))
    jets = fj.sorted_by_pt(cs.inclusive_jets(ptmin))
    if trim:
        trimmer = fj.Filter(fj.JetDefinition(fj.kt_algorithm, r_sub), fj.SelectorPtFractionMin(f_cut))
        jets = fj.sorted_by_pt([trimmer(j) for j in jets])
        jets = [j for j in jets if j.pt() > ptmin]
    # the ClusterSequence must outlive its jets' constituents(): keep a reference on the list
    out = list(jets)
    global _LAST_CS
    _LAST_CS = cs
    return out


def leading_pair(images: np.ndarray, *, r: float = 0.4, ptmin: float = 20.0, trim: bool = True
                 ) -> dict[str, np.ndarray]:
    """Observables of the two leading jets of every image ``(N, [C,] 72, 72)``: ``{"pt1": (N,), ..., "dphi": (N,)}``."""
    n = len(images)
    out = {f"{k}{j}": np.full(n, np.nan) for j in (1, 2) for k in JET_OBSERVABLES}
    out.update({k: np.full(n, np.nan) for k in PAIR_OBSERVABLES})
    for i in range(n):
        jets = event_jets(images[i], r=r, ptmin=ptmin, trim=trim)
        for j, jet in enumerate(jets[:2], start=1):
            for k, v in jet_observables(jet, r).items():
                out[f"{k}{j}"][i] = v
        if len(jets) >= 2:
            out["deta"][i] = jets[0].eta() - jets[1].eta()
            out["dphi"][i] = abs(float(np.mod(jets[0].phi() - jets[1].phi() + math.pi, 2 * math.pi) - math.pi))
    return out


def chi2_uu(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """ROOT's unweighted-unweighted chi2 statistic of the histograms of ``a`` and ``b`` on ``edges``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n1, _ = np.histogram(a[np.isfinite(a)], edges)
    n2, _ = np.histogram(b[np.isfinite(b)], edges)
    s1, s2 = n1.sum(), n2.sum()
    if s1 == 0 or s2 == 0:
        return float("nan")
    m = (n1 + n2) > 0
    return float(((s2 * n1[m] - s1 * n2[m]) ** 2 / (n1[m] + n2[m])).sum() / (s1 * s2))


def common_edges(samples: Sequence[np.ndarray], n_bins: int = 40) -> np.ndarray:
    """Equal-width bins over the 0.5-99.5 % range of all ``samples`` together."""
    x = np.concatenate([np.asarray(s, float)[np.isfinite(s)] for s in samples])
    if len(x) == 0:
        return np.linspace(0.0, 1.0, n_bins + 1)
    lo, hi = np.percentile(x, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def chi2_table(obs: dict[str, dict[str, np.ndarray]], pairs: Sequence[tuple[str, str]], n_bins: int = 40
               ) -> dict[str, dict[str, float]]:
    """``{"tau1_1": {"fast-detailed": chi2, ...}, ..., "dphi": {...}}`` for the named samples' observables."""
    keys = [f"{k}{j}" for k in JET_OBSERVABLES for j in (1, 2)] + list(PAIR_OBSERVABLES)
    table: dict[str, dict[str, float]] = {}
    for key in keys:
        edges = common_edges([obs[s][key] for s in obs], n_bins)
        table[key] = {f"{a}-{b}": chi2_uu(obs[a][key], obs[b][key], edges) for a, b in pairs}
    return table


def format_table(table: dict[str, dict[str, float]], title: str) -> str:
    """The seed's table layout: one row per observable, Jet 1 / Jet 2 columns per pair."""
    pairs = list(next(iter(table.values())).keys())
    head = f"{'chi2':16s}" + "".join(f"| {p:^20s}" for p in pairs)
    sub = f"{'':16s}" + "".join(f"| {'Jet 1':>9s}{'Jet 2':>11s}" for _ in pairs)
    lines = [title, head, sub, "-" * len(head)]
    for k in JET_OBSERVABLES:
        lines.append(f"{LABELS[k]:16s}" + "".join(f"| {table[k + '1'][p]:9.1f}{table[k + '2'][p]:11.1f}" for p in pairs))
    for k in PAIR_OBSERVABLES:
        lines.append(f"{LABELS[k]:16s}" + "".join(f"| {table[k][p]:14.1f}      " for p in pairs))
    return "\n".join(lines)
