"""Physics-aware summary of a shower file (``calosim info``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .features import layer_energies, occupancy
from .geometry import Geometry
from .io import open_showers
from .simulate.conditions import particle_label

__all__ = ["file_summary", "summarize"]



def summarize(path: str | Path, geometry: Geometry | str | None = None, chunk: int = 50000) -> dict:
    """Streamed summary numbers of a shower file (bounded memory).

    Returns ``n``, ``layout``, ``geometry``, ``particles`` (name -> count), incident-energy range
    and mean (MeV), mean response E_dep/E_inc and its relative width, and per layer the mean
    energy fraction and occupancy (fraction of cells above the threshold).
    """
    with open_showers(path, geometry) as f:
        geo = f.geometry
        thr = max(geo.threshold_mev, 0.0)
        n_layers = geo.n_layers
        e_min, e_max, e_sum = np.inf, -np.inf, 0.0
        r_sum = r_sq = 0.0
        lay_e = np.zeros(n_layers)
        occ = np.zeros(n_layers)
        tot = 0.0
        pdg: dict[int, int] = {}
        for d in f.iter_chunks(chunk):
            e = d.incident_energies[:, 0].astype(np.float64)
            e_min, e_max, e_sum = min(e_min, e.min()), max(e_max, e.max()), e_sum + e.sum()
            le = layer_energies(d.showers, geo)
            dep = le.sum(1)
            resp = dep / e
            r_sum += resp.sum()
            r_sq += (resp**2).sum()
            lay_e += le.sum(0)
            tot += dep.sum()
            occ += occupancy(d.showers, geo, thr).sum(0)
            if "pdg" in d.conditions:
                ids, counts = np.unique(d.conditions["pdg"], return_counts=True)
                for i, c in zip(ids, counts):
                    pdg[int(i)] = pdg.get(int(i), 0) + int(c)
        n = len(f)
        mean_r = r_sum / max(n, 1)
        return {
            "file": str(path), "n": n, "layout": f.layout, "geometry": geo.summary(),
            "particles": {particle_label(k): v for k, v in pdg.items()} or {"(not recorded)": n},
            "incident_energy_mev": {"min": float(e_min) if n else None, "max": float(e_max) if n else None,
                                    "mean": e_sum / max(n, 1)},
            "response_mean": mean_r,
            "response_rel_width": float(np.sqrt(max(r_sq / max(n, 1) - mean_r**2, 0.0)) / mean_r) if mean_r > 0 else None,
            "layers": [{"name": l.name, "shape": list(l.shape), "energy_fraction": float(lay_e[i] / tot) if tot else 0.0,
                        "occupancy": float(occ[i] / max(n, 1))} for i, l in enumerate(geo.layers)],
            "conditions": [k for k in f.conditions],
            "provenance": {k: v for k, v in f.attrs.items() if k in ("engine", "seed", "particle", "energy", "calosim_version", "command", "model", "run")},
        }


def file_summary(path: str | Path, geometry: Geometry | str | None = None) -> str:
    """Human-readable text of :func:`summarize`."""
    s = summarize(path, geometry)
    e = s["incident_energy_mev"]
    lines = [
        f"file        {s['file']}",
        f"layout      {s['layout']}    showers: {s['n']}",
        f"geometry    {s['geometry']}",
        f"particles   {', '.join(f'{k}: {v}' for k, v in s['particles'].items())}",
    ]
    if s["n"]:
        lines.append(f"E_inc       {e['min'] / 1e3:.3g} .. {e['max'] / 1e3:.3g} GeV (mean {e['mean'] / 1e3:.3g} GeV)")
        w = s["response_rel_width"]
        lines.append(f"response    E_dep/E_inc = {s['response_mean']:.4f}" + (f"  (rel. width {w:.3f})" if w is not None else ""))
    if s["conditions"]:
        lines.append(f"conditions  {', '.join(s['conditions'])}")
    lines.append("layer        shape        E fraction   occupancy")
    for l in s["layers"]:
        shape = "x".join(map(str, l["shape"]))
        lines.append(f"  {l['name']:<10} {shape:<12} {l['energy_fraction']:>10.4f}   {l['occupancy']:>9.4f}")
    for k, v in s["provenance"].items():
        lines.append(f"{k:<11} {v}")
    return "\n".join(lines)
