"""Jet validation of event images: the seed's chi2 tables (terminal, JSON, HTML) and distributions."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .jets import JET_OBSERVABLES, LABELS, PAIR_OBSERVABLES, chi2_table, common_edges, format_table, leading_pair

__all__ = ["jet_validation", "closer_count", "markdown_table", "image_stats"]

#: The seed's three columns, then the same for calosim's zero-suppressed CALPAGAN images.
PAIRS = (("fast", "detailed"), ("detailed", "calpagan"), ("fast", "calpagan"),
         ("detailed", "calpagan_zs"), ("fast", "calpagan_zs"))
GENERATED = ("calpagan", "calpagan_zs")


def closer_count(table: dict[str, dict[str, float]], gen: str = "calpagan") -> tuple[int, int]:
    """``(k, n)``: on ``k`` of ``n`` observables chi2(detailed-``gen``) < chi2(fast-detailed) (the seed's claim)."""
    k = n = 0
    for row in table.values():
        a, b = row.get(f"detailed-{gen}"), row.get("fast-detailed")
        if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
            continue
        n += 1
        k += int(a < b)
    return k, n


def image_stats(fast: np.ndarray, detailed: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """Where generated images ``(N, 1, 72, 72)`` go wrong against the detailed ones of the same events.

    Means over events of: the total energy (GeV) of each set; the per-event response ratios
    generated / detailed and fast / detailed (medians); the non-zero towers; the floor, i.e. the
    generated energy per tower over the towers the detailed image leaves empty (GeV), and the
    fraction of the generated energy in such towers.
    """
    f, d, g = (a.reshape(len(a), -1) if a.shape[1] == 1 else a.sum(1).reshape(len(a), -1)
               for a in (fast, detailed, generated))
    ef, ed, eg = f.sum(1), d.sum(1), g.sum(1)
    ok = ed > 0
    empty = d <= 0
    g_empty = np.where(empty, g, 0.0).sum(1)
    return {"energy_fast": float(ef.mean()), "energy_detailed": float(ed.mean()), "energy_generated": float(eg.mean()),
            "response_generated": float(np.median(eg[ok] / ed[ok])) if ok.any() else float("nan"),
            "response_fast": float(np.median(ef[ok] / ed[ok])) if ok.any() else float("nan"),
            "towers_fast": float((f > 0).sum(1).mean()), "towers_detailed": float((d > 0).sum(1).mean()),
            "towers_generated": float((g > 0).sum(1).mean()),
            "floor_gev": float(g_empty.sum() / max(int(empty.sum()), 1)),
            "energy_fraction_in_empty": float(g_empty.sum() / max(float(eg.sum()), 1e-12))}


def _plots(obs: dict[str, dict[str, np.ndarray]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"{k}{j}" for k in JET_OBSERVABLES for j in (1, 2)] + list(PAIR_OBSERVABLES)
    cols = 6
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows))
    for ax, key in zip(axes.flat, keys):
        edges = common_edges([obs[s][key] for s in obs])
        styles = ({"color": "k", "lw": 1.5}, {"color": "C0"}, {"color": "C3", "ls": "--"}, {"color": "C2", "ls": ":"})
        for s, style in zip(obs, styles):
            v = obs[s][key]
            ax.hist(v[np.isfinite(v)], edges, histtype="step", label=s, **style)
        base = key[:-1] if key[-1] in "12" and key not in PAIR_OBSERVABLES else key
        ax.set_title(LABELS.get(base, key) + (f" (jet {key[-1]})" if base != key else ""), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html_table(table: dict[str, dict[str, float]], title: str) -> str:
    pairs = list(next(iter(table.values())).keys())
    h = [f"<h3>{html.escape(title)}</h3><table border=1 cellspacing=0 cellpadding=3>",
         "<tr><th rowspan=2>chi2</th>" + "".join(f"<th colspan=2>{html.escape(p)}</th>" for p in pairs) + "</tr>",
         "<tr>" + "<th>Jet 1</th><th>Jet 2</th>" * len(pairs) + "</tr>"]
    for k in JET_OBSERVABLES:
        h.append(f"<tr><td>{html.escape(LABELS[k])}</td>" +
                 "".join(f"<td>{table[k + '1'][p]:.1f}</td><td>{table[k + '2'][p]:.1f}</td>" for p in pairs) + "</tr>")
    for k in PAIR_OBSERVABLES:
        h.append(f"<tr><td>{html.escape(LABELS[k])}</td>" +
                 "".join(f"<td colspan=2>{table[k][p]:.1f}</td>" for p in pairs) + "</tr>")
    return "\n".join(h) + "</table>"


def jet_validation(images: dict[str, np.ndarray], out_dir: str | Path | None, *, title: str = "jets",
                   r: float = 0.4, trim: bool = True, ptmin: float = 20.0, n_bins: int = 40,
                   pairs: Sequence[tuple[str, str]] = PAIRS) -> dict[str, Any]:
    """Jets and chi2 tables of named image sets of the same events (``{"fast": (N, 2, 72, 72), ...}``).

    Writes ``<title>.json`` and ``<title>.html`` (table + distributions) into ``out_dir``.
    Returns ``{"table": ..., "text": ..., "closer": (k, n), "n_events": N}``.
    """
    obs = {name: leading_pair(img, r=r, ptmin=ptmin, trim=trim) for name, img in images.items()}
    use = [p for p in pairs if p[0] in obs and p[1] in obs]
    table = chi2_table(obs, use, n_bins)
    n = len(next(iter(images.values())))
    head = f"{title}: {n} events, anti-kT R = {r:g}{', trimmed' if trim else ''}, pT > {ptmin:g} GeV"
    text = format_table(table, head)
    closer = {g: closer_count(table, g) for g in GENERATED if g in obs}
    notes = [f"{g} closer to detailed than fast is on {k} of {m} observables" for g, (k, m) in closer.items()]
    text = "\n".join([text, *notes])
    res = {"table": table, "text": text, "closer": closer.get("calpagan", (0, 0)), "closer_by_model": closer,
           "n_events": n, "r": r, "trim": trim,
           "n_jets_ge2": {k: int(np.isfinite(v["deta"]).sum()) for k, v in obs.items()}}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _atomic(out / f"{title}.json", json.dumps(res, indent=1, default=float))
        page = (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
                f"<h2>{html.escape(head)}</h2>{_html_table(table, 'chi2 distances (ROOT UU statistic)')}"
                + "".join(f"<p>{html.escape(line)}</p>" for line in notes) +
                f"<img src='data:image/png;base64,{_plots(obs)}'></body></html>")
        _atomic(out / f"{title}.html", page)
    return res


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The chi2 table as Markdown: one row per observable, Jet 1 / Jet 2 per pair (pair rows span both)."""
    pairs = list(next(iter(table.values())).keys())
    lines = ["| chi2 | " + " | ".join(f"{p} jet 1 | {p} jet 2" for p in pairs) + " |",
             "|---|" + "---|---|" * len(pairs)]
    for k in JET_OBSERVABLES:
        lines.append(f"| {LABELS[k]} | " + " | ".join(f"{table[k + '1'][p]:.1f} | {table[k + '2'][p]:.1f}"
                                                    for p in pairs) + " |")
    for k in PAIR_OBSERVABLES:
        lines.append(f"| {LABELS[k]} | " + " | ".join(f"{table[k][p]:.1f} | " for p in pairs) + " |")
    return "\n".join(lines)
