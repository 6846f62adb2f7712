"""Plots of an evaluation: PNG files for the HTML report (matplotlib Agg, mplhep HEP style).

:func:`make_plots` writes every figure of an :class:`EvaluationContext` (the reference scan and
the :class:`~calosim.metrics.blocks.SampleResult` records) and returns :class:`Figure` records
``(path, caption)`` in report order: each plot function states its own caption. Each figure is
closed right after saving (long evaluations must not accumulate figures).

Files: ``sp_overview.png``, ``obs_<group>.png`` (one page per observable family, reference vs
generated histograms with ratio panels), ``images_<sample>.png`` (mean shower images),
``profiles.png`` (longitudinal / radial profiles and cell-energy spectrum), ``profiles_x.png``,
``profiles_y.png``, ``response.png``, ``nn_distances.png``, ``classifier_scores.png``; for the
ILD detectors first ``seed_distributions.png`` and ``visible_energy.png`` (seed 003's cell-energy
spectrum, number of hits, visible energy sum and its means / widths per E_inc bin); for files
with varying incidence angles ``angles.png`` (the principal-axis check).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, and safe in worker processes
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.ticker import FixedLocator, MaxNLocator

from ..geometry import Geometry
from .angle import MIN_HITS, MIN_PHI_THETA_DEG
from .blocks import SampleResult, is_ild
from .distances import reference_bins
from .observables import layer_labels, observable_groups, observable_label
from .scan import SampleScan

__all__ = [
    "PLOT_KINDS",
    "EvaluationContext",
    "Figure",
    "hep_style",
    "make_plots",
    "plot_angles",
    "plot_classifier_scores",
    "plot_lateral_profiles",
    "plot_mean_images",
    "plot_nn_distances",
    "plot_observable_page",
    "plot_profiles",
    "plot_response",
    "plot_seed_distributions",
    "plot_sp_overview",
    "plot_visible_energy",
    "slug",
]

REF_COLOR = "#555555"
COLORS = ["#e42536", "#5790fc", "#f89c20", "#964a8b", "#7a21dd", "#2ca02c", "#9c9ca1"]
MAX_PANELS = 12  # per observable page; families with more layers show an even subset
MAX_IMAGE_LAYERS = 8


class Figure(NamedTuple):
    """One written plot: its PNG file, the caption the report prints under it and the report
    section it belongs to (``"plots"``; ``"seed"``: the ILD seed plots the report leads with;
    ``"angles"``: the incidence-angle check)."""

    path: Path
    caption: str
    section: str = "plots"


@dataclass(frozen=True)
class EvaluationContext:
    """What the plots read: the geometry, the reference scan and one result per generated sample."""

    geometry: Geometry
    reference: SampleScan
    samples: Sequence[SampleResult]


def hep_style() -> dict[str, Any]:
    """mplhep's CMS style scaled down for multi-panel pages."""
    import mplhep

    st = dict(mplhep.style.CMS)
    st.update({
        "font.size": 11, "axes.labelsize": 11, "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
        "axes.linewidth": 1.0, "xtick.major.size": 5, "xtick.minor.size": 2.5, "ytick.major.size": 5,
        "ytick.minor.size": 2.5, "figure.dpi": 100, "savefig.dpi": 100, "axes.titlesize": 11,
        # minor ticks cost most of the rendering time of many-panel pages (tick objects)
        "xtick.minor.visible": False, "ytick.minor.visible": False,
    })
    return st


def slug(name: str) -> str:
    """File-name-safe version of a sample or group name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sample"


def _save(fig: Any, path: Path, caption: str, section: str = "plots") -> Figure:
    fig.savefig(path)
    plt.close(fig)  # always: a long evaluation must not accumulate open figures
    return Figure(Path(path), caption, section)


_GROUP_TEXT = {
    "global": "global observables (total, visible and deposited/incident energy, hits, depth, radial width)",
    "E_layer": "energy per layer", "f_layer": "fraction of the deposited energy per layer",
    "E_ratio": "CaloGAN E_ratio per layer (highest minus second-highest cell over their sum)",
    "sparsity": "CaloChallenge sparsity (1 - occupancy: the fraction of empty cells) per layer",
    "occupancy": "occupancy (fraction of cells above threshold) per layer",
    "x_center": "centre of energy in x (CaloChallenge eta) per layer",
    "y_center": "centre of energy in y (CaloChallenge phi) per layer",
    "x_width": "shower width in x (CaloChallenge eta) per layer", "y_width": "shower width in y (phi) per layer",
    "asymmetry": "LHCb cluster asymmetry along the transverse momentum (x without momentum) per layer",
    "asymmetry_perp": "cluster asymmetry across the transverse momentum (y without momentum) per layer",
    "r_center": "energy-weighted mean distance of the cells from the axis (CaloChallenge EC_r) per layer",
    "r_width": "energy-weighted spread of that distance around its mean (CaloChallenge width_r) per layer",
    "r_rms": "RMS distance of the energy from the shower axis per layer",
}


def _observable_caption(group: str) -> str:
    return (f"Distributions of the {_GROUP_TEXT.get(group, group)}: reference (grey, filled) vs generated (lines), "
            "normalised to unit area; lower panels: generated / reference with statistical errors. Each panel lists "
            "the separation power SP of every sample. Families with many layers show an evenly spaced subset of layers "
            "(all layers are in the metrics table and the separation-power overview).")


def _images_caption(name: str) -> str:
    return (f"Mean shower image per layer (log colour scale, MeV): reference (top), {name} (middle) and the "
            "relative difference (generated - reference) / reference (bottom, clipped to +-100 %; cells without "
            "reference energy blank). Polar (CaloChallenge) layers are drawn in polar coordinates.")


_CAPTIONS = {
    "sp_overview": ("Separation power of every observable per sample: global observables (bars, with bootstrap "
                    "errors and the same-distribution noise floor as an open diamond) and per-layer families (heat "
                    "map, rows = family, columns = layer). 0 = identical histograms, 1 = disjoint."),
    "profiles": ("Mean longitudinal profile (energy per layer), radial profile (mean energy per shower vs distance "
                 "of the cell centre from the nominal axis) and the spectrum of cell energies (all cells above "
                 "threshold); lower panels: generated / reference."),
    "profiles_x": "Mean energy profile along x (CaloChallenge eta) per layer, reference vs generated.",
    "profiles_y": "Mean energy profile along y (CaloChallenge phi) per layer, reference vs generated.",
    "response": ("Energy response <E_dep / E_inc> and resolution sigma/mu per incident-energy bin, with "
                 "statistical errors. Open markers / shaded bins: no reference showers in that bin "
                 "(extrapolation outside the reference energy range)."),
    "nn_distances": ("Memorisation and dispersion test: distance of each generated shower to its nearest neighbour "
                     "in the training sample, compared with the same distance for held-out reference showers. "
                     "Generated showers at distance ~0 (exact copies) or piled up below the held-out curve while "
                     "being no closer to unseen showers indicate copied training showers (memorisation); a shift to "
                     "smaller distances that is the same against unseen showers means under-dispersed samples "
                     "(too close to the typical shower), not copying."),
    "seed_distributions": ("Seed 003's ILD plots: the spectrum of cell energies (cells above threshold, per "
                           "shower), the number of hits and the visible energy sum (energy in hit cells), reference "
                           "(grey) vs generated (lines), over all incident energies; lower panels: generated / "
                           "reference. Each panel lists the separation power SP of every sample."),
    "visible_energy": ("Seed 003's \"Visible Energy Sum (Means / Widths)\": mean and standard deviation of the "
                       "visible energy per incident-energy bin, reference (grey band: value +- error) vs generated "
                       "(markers); lower panels: generated / reference with statistical errors. With a continuous "
                       "energy spectrum each shower's visible energy is scaled to the bin's mean incident energy "
                       "(E_vis x <E_inc> / E_inc), so the width is the shower fluctuation, not the bin width."),
    "angles": ("Seed 003's angle check: the incidence angle estimated from each shower's principal axis "
               "(energy-weighted PCA of the hit positions) against the conditioned angle of the file. Panels: "
               "estimated theta; residual estimated - conditioned theta; azimuth residual (showers conditioned at "
               "theta >= {min_phi:g} deg); mean estimated theta per conditioned-theta bin (the diagonal is a "
               "perfect estimator: leakage and lateral spread bend it, equally for reference and generated showers "
               "if the model reproduces the angle). Showers without an axis (fewer than {min_hits} hits or hits in "
               "one layer) are left out."),
    "classifier_scores": ("Classifier output (calibrated probability of being a reference shower) on the test "
                          "folds, for reference and generated showers; overlapping histograms mean the classifier "
                          "cannot tell the samples apart (AUC 0.5)."),
}


# ------------------------------------------------------------------------------------------
# observable histograms
# ------------------------------------------------------------------------------------------
def _is_log_binned(edges: np.ndarray) -> bool:
    pos = edges[edges > 0]
    if pos.size < 4 or (edges[0] < 0):
        return False
    r = np.diff(np.log(pos))
    return bool(np.allclose(r, r[-1], rtol=1e-6) and pos[-1] / pos[0] > 50)


def _hist(v: np.ndarray, edges: np.ndarray, logx: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Density ``1/N dN/dx`` (per unit log10 x if ``logx``), its error and the out-of-range fraction.

    Normalised to all N entries, so out-of-range entries lower the area; a density (not a
    fraction per bin) so that the wider outer bins of the reference binning show no spikes.
    """
    c = np.histogram(v, bins=edges)[0].astype(np.float64)
    n = max(len(v), 1)
    w = np.diff(np.log10(edges)) if logx else np.diff(edges)
    return c / n / w, np.sqrt(c) / n / w, 1.0 - c.sum() / n


def _degenerate(nm: str, ref: dict[str, np.ndarray], gens: Sequence[dict[str, np.ndarray]]) -> bool:
    """Constant and equal in all samples: nothing to show."""
    vals = [np.asarray(ref[nm])] + [np.asarray(g[nm]) for g in gens if nm in g]
    lo = min(float(v.min()) for v in vals if v.size)
    hi = max(float(v.max()) for v in vals if v.size)
    return hi <= lo


def _pick_layers(names: list[str], k: int) -> list[str]:
    if len(names) <= k:
        return names
    idx = np.unique(np.round(np.linspace(0, len(names) - 1, k)).astype(int))
    return [names[i] for i in idx]


def plot_observable_page(names: Sequence[str], ref: dict[str, np.ndarray], gens: Sequence[dict[str, np.ndarray]],
                         labels: Sequence[str], path: Path, metrics: Sequence[dict[str, Any]] | None = None,
                         title: str = "", caption: str = "") -> Figure | None:
    """Grid of reference-vs-generated histograms with ratio panels, one cell per observable.

    ``ref`` / ``gens[j]``: ``{name: (N,)}``; ``metrics[j]``: the sample's per-observable
    metrics (for the SP annotation). Bins: the reference binning of the distance metrics;
    values outside them are not drawn but their fraction is printed. Observables constant (and
    equal) in all samples are skipped; returns None if nothing is left.
    """
    names = [nm for nm in names if not _degenerate(nm, ref, gens)]
    if not names:
        return None
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    with plt.style.context(hep_style()):
        fig = plt.figure(figsize=(4.1 * ncol, 3.7 * nrow + 0.6))
        outer = fig.add_gridspec(nrow, ncol, hspace=0.42, wspace=0.33, left=0.06, right=0.98,
                                 top=1 - 0.55 / (3.7 * nrow + 0.6), bottom=0.45 / (3.7 * nrow + 0.6))
        for i, nm in enumerate(names):
            sub = outer[i // ncol, i % ncol].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
            ax, axr = fig.add_subplot(sub[0]), fig.add_subplot(sub[1])
            r = np.asarray(ref[nm], dtype=np.float64)
            edges = reference_bins(r, name=nm)
            logx = _is_log_binned(edges)
            e_plot = edges[1:] if logx and edges[0] == 0 else edges
            hr, er, _ = _hist(r, e_plot, logx)
            ax.stairs(hr, e_plot, fill=True, color=REF_COLOR, alpha=0.35, label="reference")
            notes = []
            for j, (g, lab) in enumerate(zip(gens, labels)):
                if nm not in g:
                    continue
                gv = np.asarray(g[nm], dtype=np.float64)
                hg, eg, out_frac = _hist(gv, e_plot, logx)
                col = COLORS[j % len(COLORS)]
                ax.stairs(hg, e_plot, color=col, lw=1.4, label=lab)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = hg / hr
                    rerr = ratio * np.sqrt((eg / np.where(hg > 0, hg, np.nan)) ** 2 + (er / hr) ** 2)
                mids = np.sqrt(e_plot[1:] * e_plot[:-1]) if logx else 0.5 * (e_plot[1:] + e_plot[:-1])
                axr.errorbar(mids, ratio, yerr=rerr, fmt="o", ms=2, color=col, elinewidth=0.8)
                if metrics is not None and nm in metrics[j]:
                    m = metrics[j][nm]
                    sp, spe = m.get("separation_power"), m.get("separation_power_err")
                    if sp is not None:
                        notes.append((f"SP {sp:.3f}" + (f"±{spe:.3f}" if spe is not None else ""), col))
                if out_frac > 0.0005:
                    notes.append((f"{100 * out_frac:.1f}% outside", col))
            if logx and edges[0] == 0:
                zr = float(np.mean(r < edges[1]))
                notes.append((f"zeros (ref): {100 * zr:.0f}%", REF_COLOR))
            for k, (txt, col) in enumerate(notes[:6]):
                ax.text(0.97, 0.95 - 0.1 * k, txt, transform=ax.transAxes, ha="right", va="top", fontsize=8, color=col)
            if logx:
                ax.set_xscale("log")
                axr.set_xscale("log")
            lo, hi = e_plot[0], e_plot[-1]
            ax.set_xlim(lo, hi)
            axr.set_xlim(lo, hi)
            # head room for the annotations in the upper right corner
            ax.set_ylim(0, None if not np.any(hr > 0) else (1.2 + 0.1 * min(len(notes), 6)) * max(hr.max(), 1e-12))
            ax.tick_params(labelbottom=False)
            ax.yaxis.set_major_locator(MaxNLocator(5, prune="lower"))  # no "0" clashing with the ratio panel
            axr.yaxis.set_major_locator(FixedLocator([0.6, 1.0, 1.4]))
            ax.set_ylabel(r"$1/N\,dN/d\log_{10}x$" if logx else r"$1/N\,dN/dx$", fontsize=9)
            axr.set_ylim(0.5, 1.5)
            axr.axhline(1.0, color=REF_COLOR, lw=0.8, ls="--")
            axr.set_ylabel("gen/ref", fontsize=8)
            axr.set_xlabel(observable_label(nm), fontsize=10)
            if i == 0:
                handles, leg_labels = ax.get_legend_handles_labels()
        fig.legend(handles, leg_labels, loc="upper right", ncol=len(leg_labels), fontsize=9,
                   bbox_to_anchor=(0.98, 1 - 0.05 / (3.7 * nrow + 0.6)))
        if title:
            fig.suptitle(title, fontsize=12, x=0.06, ha="left", y=1 - 0.12 / (3.7 * nrow + 0.6))
        return _save(fig, path, caption)


def plot_sp_overview(ctx: EvaluationContext, path: Path) -> Figure:
    """Separation power of all observables: bars for global ones, heat map for per-layer families."""
    samples = [s.entry for s in ctx.samples]
    names = list(samples[0]["observables"]) if samples else []
    groups = observable_groups(names)
    glob = groups.pop("global", [])
    fams = list(groups)
    labs = layer_labels(ctx.geometry)
    ns = len(samples)
    with plt.style.context(hep_style()):
        ncols = 1 + (1 if fams else 0)
        fig, axes = plt.subplots(ns, ncols, figsize=(6.5 + (8.5 if fams else 0), 0.6 + 3.6 * ns), squeeze=False,
                                 gridspec_kw={"width_ratios": [1, 1.4] if fams else [1]})
        for j, s in enumerate(samples):
            obs = s["observables"]
            ax = axes[j, 0]
            y = np.arange(len(glob))
            sp = np.array([obs[k]["separation_power"] or 0.0 for k in glob])
            err = np.array([obs[k].get("separation_power_err") or 0.0 for k in glob])
            null = np.array([obs[k].get("separation_power_null") or 0.0 for k in glob])
            ax.barh(y, sp, xerr=err, color=COLORS[j % len(COLORS)], alpha=0.8, error_kw={"ecolor": "#333333", "lw": 1})
            ax.scatter(null, y, marker="D", s=14, color="white", edgecolors="k", zorder=3,
                       label="noise floor (same-distribution mean)")
            ax.set_yticks(y, [observable_label(k) for k in glob], fontsize=8)
            ax.invert_yaxis()
            ax.set_xscale("symlog", linthresh=1e-3)
            ax.set_xlim(0, 1)
            ax.set_xlabel("separation power")
            ax.set_title(f"{s['name']}: global observables", loc="left")
            ax.tick_params(axis="y", which="minor", left=False, right=False)
            if j == 0:
                ax.legend(loc="lower right", fontsize=8)
            if fams:
                ax2 = axes[j, 1]
                mat = np.full((len(fams), len(labs)), np.nan)
                for a, f in enumerate(fams):
                    for b, lab in enumerate(labs):
                        m = obs.get(f"{f}_{lab}")
                        if m is not None and m.get("separation_power") is not None:
                            mat[a, b] = max(m["separation_power"], 1e-4)
                im = ax2.imshow(mat, aspect="auto", cmap="viridis", norm=LogNorm(1e-4, 1), interpolation="nearest")
                if len(labs) <= 10:  # few layers: print the values
                    for (a, b), v in np.ndenumerate(mat):
                        if np.isfinite(v):
                            ax2.text(b, a, f"{v:.3f}", ha="center", va="center", fontsize=7,
                                     color="white" if v < 0.05 else "black")
                ax2.set_yticks(np.arange(len(fams)), fams, fontsize=8)
                step = max(1, len(labs) // 15)
                ax2.set_xticks(np.arange(0, len(labs), step), [str(l) for l in labs[::step]], fontsize=8)
                ax2.tick_params(which="minor", bottom=False, top=False, left=False, right=False)
                ax2.set_xlabel("layer")
                ax2.set_title(f"{s['name']}: per-layer observables", loc="left")
                fig.colorbar(im, ax=ax2, label="separation power", pad=0.01)
        fig.tight_layout()
        return _save(fig, path, _CAPTIONS["sp_overview"])


# ------------------------------------------------------------------------------------------
# images and profiles
# ------------------------------------------------------------------------------------------
def _image_layers(ctx: EvaluationContext) -> list[int]:
    n = ctx.geometry.n_layers
    if n <= MAX_IMAGE_LAYERS:
        return list(range(n))
    # the layers that carry most energy, evenly spread around the shower maximum
    prof = ctx.reference.summary.longitudinal_profile()
    hot = np.nonzero(prof >= 0.01 * prof.max())[0] if prof.max() > 0 else np.arange(n)
    lo, hi = (int(hot[0]), int(hot[-1])) if hot.size else (0, n - 1)
    return sorted(set(np.round(np.linspace(lo, hi, MAX_IMAGE_LAYERS)).astype(int).tolist()))


def _draw_layer(fig: Any, spec: Any, lay: Any, img: np.ndarray, norm: Any, cmap: str) -> Any:
    if lay.kind == "polar":
        ax = fig.add_subplot(spec, projection="polar")
        a_edges = lay.alpha_edges
        r_edges = np.asarray(lay.r_edges_mm)
        m = ax.pcolormesh(a_edges, r_edges, img.T, norm=norm, cmap=cmap, shading="flat")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        return ax, m
    ax = fig.add_subplot(spec)
    ny, nx = lay.shape
    dy, dx = lay.cell_mm
    ext = [-nx * dx / 2, nx * dx / 2, -ny * dy / 2, ny * dy / 2]
    m = ax.imshow(img, origin="lower", extent=ext, norm=norm, cmap=cmap, aspect="equal", interpolation="nearest")
    ax.tick_params(labelsize=7, which="both", top=False, right=False)
    ax.minorticks_off()
    return ax, m


def plot_mean_images(ctx: EvaluationContext, scan: SampleScan, path: Path) -> Figure:
    """Mean image per layer: reference, generated and their relative difference."""
    geo = ctx.geometry
    layers = _image_layers(ctx)
    ref_imgs = ctx.reference.summary.mean_images()
    gen_imgs = scan.summary.mean_images()
    labs = layer_labels(geo)
    nc = len(layers)
    with plt.style.context(hep_style()):
        fig = plt.figure(figsize=(2.4 * nc + 1.4, 7.6))
        gs = fig.add_gridspec(3, nc + 1, width_ratios=[1] * nc + [0.06], hspace=0.32, wspace=0.25,
                              left=0.07, right=0.93, top=0.9, bottom=0.07)
        pos = np.concatenate([im[im > 0].ravel() for im in ref_imgs + gen_imgs])
        vmax = float(pos.max()) if pos.size else 1.0
        vmin = max(float(np.quantile(pos, 0.02)) if pos.size else 1e-3, vmax * 1e-6)
        norm = LogNorm(vmin, vmax)
        dnorm = TwoSlopeNorm(0.0, -1.0, 1.0)
        m1 = m3 = None
        for c, l in enumerate(layers):
            lay = geo.layers[l]
            r, g = ref_imgs[l], gen_imgs[l]
            with np.errstate(divide="ignore", invalid="ignore"):
                diff = np.where(r > 0, (g - r) / r, np.nan)
            a1, m1 = _draw_layer(fig, gs[0, c], lay, np.where(r > 0, r, np.nan), norm, "viridis")
            a1.set_title(f"layer {labs[l]}", fontsize=10)
            _draw_layer(fig, gs[1, c], lay, np.where(g > 0, g, np.nan), norm, "viridis")
            a3, m3 = _draw_layer(fig, gs[2, c], lay, np.clip(diff, -1, 1), dnorm, "RdBu_r")
            if lay.kind == "cartesian":
                a3.set_xlabel("x [mm]", fontsize=8)
        for row, txt in enumerate(["reference", scan.name, "(gen - ref) / ref"]):
            fig.text(0.01, 0.9 - row * 0.3 - 0.12, txt, rotation=90, va="center", ha="left", fontsize=10)
        fig.colorbar(m1, cax=fig.add_subplot(gs[0:2, nc]), label="mean energy [MeV]")
        fig.colorbar(m3, cax=fig.add_subplot(gs[2, nc]), label="rel. difference")
        fig.suptitle(f"Mean shower images: reference vs {scan.name}", x=0.07, ha="left", fontsize=12)
        return _save(fig, path, _images_caption(scan.name))


def _ratio_axes(fig: Any, spec: Any) -> tuple[Any, Any]:
    sub = spec.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    ax, axr = fig.add_subplot(sub[0]), fig.add_subplot(sub[1], sharex=None)
    ax.tick_params(labelbottom=False)
    axr.axhline(1.0, color=REF_COLOR, lw=0.8, ls="--")
    axr.set_ylabel("gen/ref", fontsize=8)
    axr.yaxis.set_major_locator(FixedLocator([0.6, 1.0, 1.4]))
    return ax, axr


def _profile_panel(ax: Any, axr: Any, x: np.ndarray, ref: np.ndarray, gens: list[np.ndarray], labels: list[str],
                   *, steps_edges: np.ndarray | None = None, logy: bool = True) -> None:
    if steps_edges is not None:
        ax.stairs(ref, steps_edges, fill=True, color=REF_COLOR, alpha=0.35, label="reference")
    else:
        ax.plot(x, ref, "o-", color=REF_COLOR, ms=3, label="reference")
    for j, (g, lab) in enumerate(zip(gens, labels)):
        col = COLORS[j % len(COLORS)]
        if steps_edges is not None:
            ax.stairs(g, steps_edges, color=col, lw=1.4, label=lab)
        else:
            ax.plot(x, g, "s--", color=col, ms=3, lw=1.2, label=lab)
        with np.errstate(divide="ignore", invalid="ignore"):
            axr.plot(x, np.where(ref > 0, g / ref, np.nan), "o", color=col, ms=2.5)
    if logy and np.any(ref > 0):
        ax.set_yscale("log")
        top = max(float(ref.max()), *(float(g.max()) for g in gens)) if gens else float(ref.max())
        ax.set_ylim(max(top * 1e-6, float(ref[ref > 0].min()) * 0.5), top * 3)
    axr.set_ylim(0.5, 1.5)


def plot_profiles(ctx: EvaluationContext, path: Path) -> Figure:
    """Longitudinal profile, radial profile and cell-energy spectrum (with ratio panels)."""
    geo = ctx.geometry
    ref = ctx.reference.summary
    gens = [s.scan.summary for s in ctx.samples]
    labels = [s.name for s in ctx.samples]
    with plt.style.context(hep_style()):
        fig = plt.figure(figsize=(15, 4.8))
        gs = fig.add_gridspec(1, 3, wspace=0.3, left=0.06, right=0.98, top=0.92, bottom=0.14)
        ax, axr = _ratio_axes(fig, gs[0])
        x = np.arange(geo.n_layers)
        _profile_panel(ax, axr, x, ref.longitudinal_profile(), [g.longitudinal_profile() for g in gens], labels,
                       logy=geo.n_layers > 1)
        labs = layer_labels(geo)
        step = max(1, len(labs) // 12)
        axr.set_xticks(x[::step], [str(v) for v in labs[::step]])
        ax.set_xticks(x[::step])
        axr.set_xlabel("layer")
        ax.set_ylabel("mean energy [MeV]")
        ax.legend(fontsize=8)
        ax.set_title("longitudinal profile", loc="left")

        ax, axr = _ratio_axes(fig, gs[1])
        e = ref.radial_edges
        mid = 0.5 * (e[1:] + e[:-1])
        _profile_panel(ax, axr, mid, ref.radial_profile(), [g.radial_profile() for g in gens], labels, steps_edges=e)
        axr.set_xlim(e[0], e[-1])
        ax.set_xlim(e[0], e[-1])
        axr.set_xlabel("distance from axis [mm]")
        ax.set_ylabel("mean energy per shower [MeV]")
        ax.set_title("radial profile", loc="left")

        ax, axr = _ratio_axes(fig, gs[2])
        _cell_spectrum_panel(ax, axr, ref, gens, labels)
        return _save(fig, path, _CAPTIONS["profiles"])


def plot_lateral_profiles(ctx: EvaluationContext, axis: str, path: Path) -> Figure:
    """Mean energy profile along ``axis`` ("x" or "y") for (a subset of) the layers."""
    geo = ctx.geometry
    layers = _image_layers(ctx)
    ref = ctx.reference.summary.lateral_profiles(axis)
    gens = [s.scan.summary.lateral_profiles(axis) for s in ctx.samples]
    labels = [s.name for s in ctx.samples]
    labs = layer_labels(geo)
    ncol = min(4, len(layers))
    nrow = math.ceil(len(layers) / ncol)
    with plt.style.context(hep_style()):
        h = 3.6 * nrow + 0.7
        fig = plt.figure(figsize=(4.1 * ncol, h))
        gs = fig.add_gridspec(nrow, ncol, hspace=0.45, wspace=0.33, left=0.07, right=0.98, top=1 - 0.75 / h,
                              bottom=0.5 / h)
        for i, l in enumerate(layers):
            ax, axr = _ratio_axes(fig, gs[i // ncol, i % ncol])
            e, pr = ref[l]
            mid = 0.5 * (e[1:] + e[:-1])
            _profile_panel(ax, axr, mid, pr, [g[l][1] for g in gens], labels, steps_edges=e)
            ax.set_xlim(e[0], e[-1])
            axr.set_xlim(e[0], e[-1])
            axr.set_xlabel(f"{axis} [mm]")
            ax.set_title(f"layer {labs[l]}", loc="left", fontsize=10)
            if i == 0:
                ax.set_ylabel("mean energy [MeV]")
                ax.legend(fontsize=8)
        fig.suptitle(f"Mean energy profile along {axis}", x=0.07, ha="left", fontsize=12, y=1 - 0.12 / h)
        return _save(fig, path, _CAPTIONS[f"profiles_{axis}"])


# ------------------------------------------------------------------------------------------
# response, memorisation, classifier
# ------------------------------------------------------------------------------------------
def plot_response(ctx: EvaluationContext, path: Path) -> Figure:
    """Mean response and resolution vs incident energy, reference vs each generated sample."""
    with plt.style.context(hep_style()):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
        ref_done = False
        for j, s in enumerate(ctx.samples):
            resp = s.response
            x = np.asarray(resp["e_mean"], dtype=float) / 1000.0  # GeV on the axis
            edges = np.asarray(resp["edges"], dtype=float) / 1000.0
            has = np.asarray(resp["has_reference"], bool)
            col = COLORS[j % len(COLORS)]
            rr, rg = resp["reference"], resp["generated"]
            if not ref_done:
                # reference as a grey band over each bin (value +- error), generated as markers
                for a, key in ((a1, "mean"), (a2, "resolution")):
                    y, ye = np.asarray(rr[key], float), np.asarray(rr[key + "_err"], float)
                    for k in np.nonzero(np.isfinite(y))[0]:
                        a.fill_between([edges[k], edges[k + 1]], y[k] - ye[k], y[k] + ye[k], color=REF_COLOR,
                                       alpha=0.3, lw=0, label="reference" if k == np.nonzero(np.isfinite(y))[0][0] else None)
                        a.plot([edges[k], edges[k + 1]], [y[k], y[k]], color=REF_COLOR, lw=1.2)
                for k in np.nonzero(~has)[0]:
                    for a in (a1, a2):
                        a.axvspan(edges[k], edges[k + 1], color="#f89c20", alpha=0.12, lw=0)
                ref_done = True
            for a, key in ((a1, "mean"), (a2, "resolution")):
                y, ye = np.asarray(rg[key], float), np.asarray(rg[key + "_err"], float)
                a.errorbar(x[has], y[has], yerr=ye[has], fmt="s", color=col, ms=4, mfc=col, label=s.name)
                if (~has).any():
                    a.errorbar(x[~has], y[~has], yerr=ye[~has], fmt="s", color=col, ms=4, mfc="none",
                               label=f"{s.name} (no reference)")
        e_all = np.concatenate([np.asarray(s.response["edges"], float) for s in ctx.samples]) / 1000.0 \
            if ctx.samples else np.array([1.0, 10.0])
        for a in (a1, a2):
            if e_all.min() > 0 and e_all.max() / e_all.min() > 20:  # log axis only for wide ranges
                a.set_xscale("log")
            a.set_xlim(e_all.min(), e_all.max())
            a.set_xlabel(r"$E_\mathrm{inc}$ [GeV]")
        a1.set_ylabel(r"$\langle E_\mathrm{dep}/E_\mathrm{inc}\rangle$")
        a2.set_ylabel(r"resolution $\sigma/\mu$")
        a2.set_yscale("log")
        a1.legend(fontsize=8)
        a1.set_title("energy response", loc="left")
        a2.set_title("energy resolution", loc="left")
        fig.tight_layout()
        return _save(fig, path, _CAPTIONS["response"])


def plot_nn_distances(ctx: EvaluationContext, path: Path) -> Figure | None:
    """Nearest-neighbour distance histograms (generated->train vs held-out->train).

    Fractions per log bin (of all entries); exact copies (distance 0) cannot sit on a log
    axis and are counted in the legend instead.
    """
    have = [s for s in ctx.samples if s.memorization is not None]
    if not have:
        return None

    def draw(ax: Any, v: np.ndarray, edges: Any, label: str, **kw: Any) -> None:
        v = np.ravel(v)
        zero = float(np.mean(v <= 1e-12)) if v.size else 0.0
        if zero > 0:
            label += f" ({100 * zero:.0f}% exact copies)"
        w = np.full(v.size, 1.0 / max(v.size, 1))
        ax.hist(v[v > 1e-12], bins=edges, weights=w[v > 1e-12], label=label, **kw)

    with plt.style.context(hep_style()):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        allv = np.concatenate([np.ravel(s.memorization.distances[k]) for s in have
                               for k in ("gen_to_train", "heldout_to_train")])
        allv = allv[np.isfinite(allv) & (allv > 1e-12)]
        log = bool(allv.size) and allv.max() > 1.01 * allv.min()
        edges: Any = np.geomspace(allv.min(), allv.max() * 1.001, 50) if log else 40
        ref_done = False
        for j, s in enumerate(have):
            d = s.memorization.distances
            if not ref_done:
                draw(ax, d["heldout_to_train"], edges, "held-out reference", histtype="stepfilled", color=REF_COLOR,
                     alpha=0.35)
                ref_done = True
            draw(ax, d["gen_to_train"], edges, s.name, histtype="step", color=COLORS[j % len(COLORS)], lw=1.5)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("distance to the nearest training shower")
        ax.set_ylabel("fraction of showers")
        ax.legend(fontsize=9)
        fig.tight_layout()
        return _save(fig, path, _CAPTIONS["nn_distances"])


def plot_classifier_scores(ctx: EvaluationContext, path: Path) -> Figure | None:
    """Histogram of the classifier output for reference and generated showers (test folds)."""
    have = [(s, lvl) for s in ctx.samples for lvl in ("low", "high")
            if s.classifier is not None and lvl in s.classifier.predictions]
    if not have:
        return None
    ncol = min(4, len(have))
    nrow = math.ceil(len(have) / ncol)
    with plt.style.context(hep_style()):
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.6 * nrow), squeeze=False)
        for i, (s, lvl) in enumerate(have):
            ax = axes[i // ncol, i % ncol]
            p = s.classifier.predictions[lvl]
            prob, lab = np.asarray(p["prob"], float), np.asarray(p["label"])
            bins = np.linspace(0, 1, 41)
            ax.hist(prob[lab == 1], bins=bins, histtype="stepfilled", color=REF_COLOR, alpha=0.35, density=True,
                    label="reference")
            ax.hist(prob[lab == 0], bins=bins, histtype="step", color=COLORS[i // 2 % len(COLORS)], lw=1.5,
                    density=True, label=s.name)
            auc = s.classifier.levels[lvl]["auc"]
            ax.set_title(f"{s.name}, {lvl}-level (AUC {auc:.3f})", loc="left", fontsize=10)
            ax.set_xlabel("classifier output p(reference)")
            ax.set_ylabel("density")
            ax.legend(fontsize=8)
        for k in range(len(have), nrow * ncol):
            axes[k // ncol, k % ncol].set_visible(False)
        fig.tight_layout()
        return _save(fig, path, _CAPTIONS["classifier_scores"])


# ------------------------------------------------------------------------------------------
# seed 003: the ILD plots and the principal-axis angle check
# ------------------------------------------------------------------------------------------
def _hist_panel(ax: Any, axr: Any, r: np.ndarray, gens: Sequence[np.ndarray], labels: Sequence[str], name: str,
                sps: Sequence[Any] = ()) -> None:
    """Reference-vs-generated density histograms of one observable on the reference binning, with ratio."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    edges = reference_bins(r, name=name)
    hr, er, _ = _hist(r, edges)
    ax.stairs(hr, edges, fill=True, color=REF_COLOR, alpha=0.35, label="reference")
    for j, (g, lab) in enumerate(zip(gens, labels)):
        g = np.asarray(g, dtype=np.float64)
        g = g[np.isfinite(g)]
        col = COLORS[j % len(COLORS)]
        hg, eg, _ = _hist(g, edges)
        ax.stairs(hg, edges, color=col, lw=1.4, label=lab)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = hg / hr
            rerr = ratio * np.sqrt((eg / np.where(hg > 0, hg, np.nan)) ** 2 + (er / hr) ** 2)
        axr.errorbar(0.5 * (edges[1:] + edges[:-1]), ratio, yerr=rerr, fmt="o", ms=2, color=col, elinewidth=0.8)
        sp = sps[j] if j < len(sps) else None
        if sp is not None:
            ax.text(0.97, 0.95 - 0.1 * j, f"SP {sp:.3f}", transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    color=col)
    ax.set_xlim(edges[0], edges[-1])
    axr.set_xlim(edges[0], edges[-1])
    if np.any(hr > 0):
        ax.set_ylim(0, (1.25 + 0.1 * len(gens)) * hr.max())
    ax.set_ylabel(r"$1/N\,dN/dx$", fontsize=9)
    axr.set_ylim(0.5, 1.5)


def _sp_of(s: SampleResult, name: str, where: str = "observables") -> Any:
    rec = s.entry.get(where) if where == "observables" else (s.entry.get("angles") or {}).get("observables")
    return ((rec or {}).get(name) or {}).get("separation_power")



def _cell_spectrum_panel(ax: Any, axr: Any, ref: Any, gens: Sequence[Any], labels: Sequence[str]) -> None:
    """Cells per shower against cell energy (log axis, ratio below), cropped to the filled bins;
    ``ref``/``gens`` are scan summaries (``spectrum_edges``, ``spectrum_counts``, ``n``)."""
    se = ref.spectrum_edges
    cr = ref.spectrum_counts / max(ref.n, 1)
    cg = [g.spectrum_counts / max(g.n, 1) for g in gens]
    nz = np.nonzero(cr + sum(cg))[0] if len(cr) else np.array([], int)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, len(cr))
    ee = se[lo:hi + 1]
    _profile_panel(ax, axr, np.sqrt(ee[1:] * ee[:-1]), cr[lo:hi], [c[lo:hi] for c in cg], labels, steps_edges=ee)
    for a in (ax, axr):
        a.set_xscale("log")
        a.set_xlim(ee[0], ee[-1])
    axr.set_xlabel("cell energy [MeV]")
    ax.set_ylabel("cells per shower")
    ax.set_title("cell-energy spectrum", loc="left")

def plot_seed_distributions(ctx: EvaluationContext, path: Path) -> Figure:
    """Seed 003's ILD plots: cell-energy spectrum, number of hits, visible energy sum (with ratios)."""
    ref = ctx.reference
    labels = [s.name for s in ctx.samples]
    with plt.style.context(hep_style()):
        fig = plt.figure(figsize=(15, 4.8))
        gs = fig.add_gridspec(1, 3, wspace=0.3, left=0.06, right=0.98, top=0.9, bottom=0.14)
        ax, axr = _ratio_axes(fig, gs[0])
        _cell_spectrum_panel(ax, axr, ref.summary, [s.scan.summary for s in ctx.samples], labels)
        ax.legend(fontsize=8, loc="lower left")
        for k, (name, title) in enumerate((("n_hits", "number of hits"), ("E_vis", "visible energy sum"))):
            ax, axr = _ratio_axes(fig, gs[k + 1])
            _hist_panel(ax, axr, ref.obs[name], [s.scan.obs[name] for s in ctx.samples], labels, name,
                        [_sp_of(s, name) for s in ctx.samples])
            axr.set_xlabel(observable_label(name))
            ax.set_title(title, loc="left")
        return _save(fig, path, _CAPTIONS["seed_distributions"], "seed")


def plot_visible_energy(ctx: EvaluationContext, path: Path) -> Figure | None:
    """Means and widths of the visible energy vs E_inc (seed 003), with generated / reference ratios."""
    have = [s for s in ctx.samples if s.entry.get("visible_energy")]
    if not have:
        return None
    with plt.style.context(hep_style()):
        fig = plt.figure(figsize=(13, 5.2))
        gs = fig.add_gridspec(1, 2, wspace=0.25, left=0.07, right=0.98, top=0.92, bottom=0.13)
        axes = [_ratio_axes(fig, gs[0]), _ratio_axes(fig, gs[1])]
        for j, s in enumerate(have):
            ve = s.entry["visible_energy"]
            edges = np.asarray(ve["edges"], float) / 1000.0  # GeV on the axis
            x = np.asarray(ve["e_mean"], float) / 1000.0
            col = COLORS[j % len(COLORS)]
            for (ax, axr), key, rkey in ((axes[0], "mean", "mean_ratio"), (axes[1], "std", "width_ratio")):
                rr, rg = ve["reference"], ve["generated"]
                y, ye = np.asarray(rr[key], float), np.asarray(rr[key + "_err"], float)
                if j == 0:
                    fin = np.nonzero(np.isfinite(y))[0]
                    for k in fin:
                        ax.fill_between([edges[k], edges[k + 1]], y[k] - ye[k], y[k] + ye[k], color=REF_COLOR, alpha=0.3,
                                        lw=0, label="reference" if k == fin[0] else None)
                        ax.plot([edges[k], edges[k + 1]], [y[k], y[k]], color=REF_COLOR, lw=1.2)
                ax.errorbar(x, np.asarray(rg[key], float), yerr=np.asarray(rg[key + "_err"], float), fmt="s",
                            color=col, ms=4, label=s.name)
                axr.errorbar(x, np.asarray(ve[rkey], float), yerr=np.asarray(ve[rkey + "_err"], float), fmt="o",
                             color=col, ms=3)
        for (ax, axr), title, ylab in ((axes[0], "visible energy sum: means", r"$\langle E_\mathrm{vis}\rangle$ [MeV]"),
                                       (axes[1], "visible energy sum: widths", r"$\sigma(E_\mathrm{vis})$ [MeV]")):
            e0 = np.asarray(have[0].entry["visible_energy"]["edges"], float) / 1000.0
            ax.set_xlim(e0[0], e0[-1])
            axr.set_xlim(e0[0], e0[-1])
            key = "mean_ratio" if ax is axes[0][0] else "width_ratio"
            rat = np.concatenate([np.asarray(s.entry["visible_energy"][key], float) for s in have])
            rat = rat[np.isfinite(rat)]
            lo, hi = (float(rat.min()), float(rat.max())) if rat.size else (1.0, 1.0)
            if lo >= 0.85 and hi <= 1.15:  # the usual case: a fixed +-20 % window
                axr.set_ylim(0.8, 1.2)
                axr.yaxis.set_major_locator(FixedLocator([0.9, 1.0, 1.1]))
            else:  # a gross mismatch stays visible
                axr.set_ylim(max(0.0, min(0.8, 0.9 * lo)), min(5.0, max(1.2, 1.1 * hi)))
                axr.yaxis.set_major_locator(MaxNLocator(4))
            axr.set_xlabel(r"$E_\mathrm{inc}$ [GeV]")
            ax.set_ylabel(ylab)
            ax.set_title(title, loc="left")
            ax.legend(fontsize=8)
        return _save(fig, path, _CAPTIONS["visible_energy"], "seed")


def plot_angles(ctx: EvaluationContext, path: Path) -> Figure | None:
    """Principal-axis theta, its residual, the azimuth residual and <theta_PCA> vs theta (seed 003)."""
    have = [s for s in ctx.samples if s.entry.get("angles") and s.scan.angles]
    ref = ctx.reference.angles
    if not have or not ref:
        return None
    labels = [s.name for s in have]
    panels = [("pca_theta", r"principal-axis $\theta_\mathrm{PCA}$ [deg]"),
              ("theta_residual", r"$\theta_\mathrm{PCA} - \theta$ [deg]"),
              ("phi_residual", r"$\phi_\mathrm{PCA} - \phi$ [deg]")]
    panels = [(k, lab) for k, lab in panels if np.isfinite(ref[k]).sum() >= 2]
    with plt.style.context(hep_style()):
        n = len(panels) + 1
        fig = plt.figure(figsize=(4.3 * n, 4.8))
        gs = fig.add_gridspec(1, n, wspace=0.32, left=0.05, right=0.98, top=0.9, bottom=0.14)
        for i, (k, lab) in enumerate(panels):
            ax, axr = _ratio_axes(fig, gs[i])
            _hist_panel(ax, axr, ref[k], [s.scan.angles[k] for s in have], labels, k,
                        [_sp_of(s, k, "angles") for s in have])
            axr.set_xlabel(lab)
            if i == 0:
                ax.legend(fontsize=8, loc="upper left")
        ax = fig.add_subplot(gs[n - 1])
        prof = have[0].entry["angles"]["profile"]
        edges = np.asarray(prof["edges"], float)
        mids = 0.5 * (edges[1:] + edges[:-1])
        y, ye = np.asarray(prof["reference"]["mean"], float), np.asarray(prof["reference"]["std"], float)
        ax.fill_between(mids, y - ye, y + ye, color=REF_COLOR, alpha=0.25, lw=0, label="reference (mean +- std)")
        ax.plot(mids, y, color=REF_COLOR, lw=1.4)
        for j, s in enumerate(have):
            pg = s.entry["angles"]["profile"]["generated"]
            ax.errorbar(mids + (j - (len(have) - 1) / 2) * 0.04 * (edges[-1] - edges[0]) / len(mids),
                        np.asarray(pg["mean"], float), yerr=np.asarray(pg["std"], float), fmt="s", ms=4,
                        color=COLORS[j % len(COLORS)], label=s.name, elinewidth=0.8)
        ax.plot([edges[0], edges[-1]], [edges[0], edges[-1]], ls="--", color="k", lw=0.8, label="estimate = condition")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(r"conditioned $\theta$ [deg]")
        ax.set_ylabel(r"$\langle\theta_\mathrm{PCA}\rangle$ [deg]")
        ax.set_title("estimated vs conditioned angle", loc="left", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        return _save(fig, path, _CAPTIONS["angles"].format(min_phi=MIN_PHI_THETA_DEG, min_hits=MIN_HITS), "angles")


# ------------------------------------------------------------------------------------------
#: Plot kinds accepted by ``make_plots(only=...)`` (and ``evaluate(plots=[...])``).
PLOT_KINDS = ("seed", "angles", "sp_overview", "observables", "profiles", "images", "response", "classifier",
              "nn_distances")


def make_plots(ctx: EvaluationContext, out_dir: str | Path, only: Sequence[str] | None = None) -> list[Figure]:
    """Write the plots of an evaluation into ``out_dir``; returns the figures in report order.

    ``only``: a subset of :data:`PLOT_KINDS` (default all). The observable pages dominate the
    cost (about one second per page).
    """
    kinds = set(PLOT_KINDS if only is None else only)
    unknown = kinds - set(PLOT_KINDS)
    if unknown:
        raise ValueError(f"unknown plot kinds {sorted(unknown)}; valid: {', '.join(PLOT_KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Figure | None] = []
    # the report leads with these: seed 003's ILD plots, then the incidence-angle check
    if ctx.samples and "seed" in kinds and is_ild(ctx.geometry.name):
        figs.append(plot_seed_distributions(ctx, out / "seed_distributions.png"))
        figs.append(plot_visible_energy(ctx, out / "visible_energy.png"))
    if ctx.samples and "angles" in kinds:
        figs.append(plot_angles(ctx, out / "angles.png"))
    if ctx.samples and "sp_overview" in kinds:
        figs.append(plot_sp_overview(ctx, out / "sp_overview.png"))
    groups = observable_groups(list(ctx.reference.obs)) if "observables" in kinds else {}
    gens = [s.scan.obs for s in ctx.samples]
    labels = [s.name for s in ctx.samples]
    mets = [s.entry["observables"] for s in ctx.samples]
    for g, names in groups.items():
        names = [nm for nm in names if not _degenerate(nm, ctx.reference.obs, gens)]
        if not names:
            continue
        shown = names if g == "global" else _pick_layers(names, MAX_PANELS)
        title = _GROUP_TEXT.get(g, g)
        if len(shown) < len(names):
            title += f" ({len(shown)} of {len(names)} layers)"
        figs.append(plot_observable_page(shown, ctx.reference.obs, gens, labels, out / f"obs_{slug(g)}.png", mets,
                                         title=title[0].upper() + title[1:], caption=_observable_caption(g)))
    if "profiles" in kinds:
        figs.append(plot_profiles(ctx, out / "profiles.png"))
        figs.append(plot_lateral_profiles(ctx, "x", out / "profiles_x.png"))
        figs.append(plot_lateral_profiles(ctx, "y", out / "profiles_y.png"))
    if "images" in kinds:
        for s in ctx.samples:
            figs.append(plot_mean_images(ctx, s.scan, out / f"images_{slug(s.name)}.png"))
    if "response" in kinds:
        figs.append(plot_response(ctx, out / "response.png"))
    if "classifier" in kinds:
        figs.append(plot_classifier_scores(ctx, out / "classifier_scores.png"))
    if "nn_distances" in kinds:
        figs.append(plot_nn_distances(ctx, out / "nn_distances.png"))
    return [f for f in figs if f is not None]
