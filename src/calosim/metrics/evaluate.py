"""Evaluate generated shower samples against a reference sample: the orchestrator.

The pipeline runs one way (module docstring of :mod:`calosim.metrics.scan`): :func:`evaluate`
checks that the report can be written, streams each file once in chunks (:mod:`.scan`: bounded
memory, per-shower scalar observables plus a capped random subset of raw showers for the
classifier and the memorisation test; the geometry's voxel cut applied first), runs the metric
blocks (:mod:`.blocks`), the plots (:mod:`.plots`) and the report (:mod:`.report`), and swaps
the finished report directory in whole. Its options are :class:`~.options.EvaluateOptions`.
Per generated sample:

* every observable's distances (:func:`~calosim.metrics.distances.compare_observable`:
  separation power, chi2, W1, KS with bootstrap errors; binning from the reference);
* the classifier two-sample test on low-level inputs (cells / E_inc, log E_inc) and on the
  high-level observables (unless ``classifier=False``);
* FPD and KPD on the high-level observables (standardised with the reference mean/std);
* energy response and resolution per incident-energy bin (bins cover both samples; bins
  without reference showers are flagged);
* the memorisation test against ``train`` if given: copies / near-copies (memorisation) and
  under-dispersion as separate diagnoses;
* if the files carry varying incidence angles ``theta``/``phi``: seed 003's PCA check, the
  principal-axis angle of each shower (:mod:`.angle`) and its residual against the conditioned
  angle, reference vs generated;
* for the ILD detectors (``ild-*``): the means and widths of the visible energy per E_inc bin
  (seed 003 "Visible Energy Sum (Means / Widths)"); their report leads with the seed's plots.

metrics.json schema (``schema_version`` 1; every float may be ``null`` when undefined)::

    {
      "schema_version": 1, "calosim_version": str, "geometry": str, "seed": int,
      "threshold_mev": float (the voxel cut applied to every sample; 0: none),
      "reference": {"name", "file", "n", "e_inc_min", "e_inc_max",
                    "angles": null | {"min_hits", "min_phi_theta_deg", "n", "n_undefined",
                                      "theta_residual": {"n", "mean", "mean_err", "std", "std_err", "width68"},
                                      "phi_residual": {... same ...}}   (degrees)},
      "samples": [{
        "name": str, "file": str | null, "n": int,
        "classifier": null | {"low": {"auc", "auc_err", "jsd", "jsd_err", "n_used"},
                              "high": {... same ...}},
        "fpd": {"value", "err", "convention"} | null, "kpd": {... same ...} | null,
               (convention "calosim", or "challenge": jetnet's numbers x 10^3 as the challenge quotes)
        "observables": {"<name>": {"separation_power", "chi2", "w1", "ks",
                                    "<metric>_err", "<metric>_null", "n_ref", "n_gen"}},
        "mean_separation_power": float, "mean_separation_power_err": float,
        "mean_separation_power_null": float,   (over observables not constant in both samples)
        "worst_observables": [3 names, largest separation power first],
        "conditions": {"e_inc_ks", "e_inc_min", "e_inc_max"},
        "response": {"edges" (MeV, K+1), "discrete", "e_mean", "has_reference", "in_reference_range",
                     "reference": {"n", "mean", "mean_err", "std", "std_err", "resolution",
                                   "resolution_err"},
                     "generated": {... same ...}, "mean_pull", "resolution_ratio",
                     "max_abs_mean_pull"},
        "memorization": null | {"median_gen", "median_heldout", "ratio", "ratio_err", "ratio_unseen",
                                "copy_ratio", "threshold", "frac_close", "frac_close_unseen",
                                "expected_frac", "frac_exact", "frac_exact_heldout", "spread_ratio",
                                "memorization", "under_dispersion", "diagnosis", "flagged",
                                "n_train", "n_gen", "n_heldout"}
                        (memorization_test without its distance arrays; flagged = memorization),
        "angles": null | {"n", "n_undefined", "theta_residual", "phi_residual" (as the reference's),
                          "residual_shift", "width_ratio",
                          "observables": {"pca_theta" | "theta_residual" | "phi_residual": {... as above}},
                          "profile": {"edges" (deg), "reference": {"n", "mean", "mean_err", "std", "std_err"},
                                      "generated": {... same ...}}}
                  (null unless both files carry theta and the reference's varies; blocks.angles_block),
        "visible_energy": null | {"edges" (MeV), "discrete", "e_mean",
                                  "reference": {"n", "mean", "mean_err", "std", "std_err"} (E_vis, MeV),
                                  "generated": {... same ...}, "mean_ratio", "mean_ratio_err",
                                  "width_ratio", "width_ratio_err"}   (ild-* geometries only),
        "warnings": [str]   (also printed: gross response mismatch, memorisation, under-dispersion, ...)
      }],
      "timings": {"reference_scan": s, ["train_scan": s,] "samples": {"<name>": {"scan", "distances",
                  "classifier", "fpd_kpd", "response", "angles", "memorization", "total"}},
                  "plots": s, "report": s, "total": s}
    }
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from ..io import ShowerData, write_text_atomic
from .blocks import (
    SampleResult,
    angle_reference,
    angles_block,
    classifier_block,
    conditions_block,
    distances_block,
    fpd_block,
    memorization_block,
    is_ild,
    response_block,
    response_warning,
    visible_energy_block,
)
from .observables import highlevel_columns
from .options import EvaluateOptions
from ..progress import Progress
from .scan import SampleScan, Source, check_same_geometry, scan, scan_source

__all__ = ["METRICS_SCHEMA_VERSION", "EvaluateOptions", "SampleScan", "evaluate", "scan"]

METRICS_SCHEMA_VERSION = 1


def evaluate(
    reference: str | Path | ShowerData,
    generated: Sequence[str | Path | ShowerData] | str | Path | ShowerData,
    *,
    names: Sequence[str] | None = None,
    train: str | Path | ShowerData | None = None,
    out_dir: str | Path | None = None,
    options: EvaluateOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Compare generated samples with a reference sample; return the metrics dict.

    Parameters
    ----------
    reference, generated
        Shower files (any layout :mod:`calosim.io` reads) or :class:`ShowerData`; one or a
        list of generated samples. All must share the reference's readout geometry
        (:class:`~calosim.io.ShowerFileError` otherwise).
    names
        Labels of the generated samples (default: file stems / ``generated_<i>``).
    train
        The model's training sample: enables the memorisation test (nearest neighbours of
        generated showers in ``train`` compared with those of the held-out reference).
    out_dir
        If given: the report directory, written as a whole (``metrics.json``, the PNG plots and
        ``index.html``; see :class:`~calosim.metrics.report.ReportDirectory`). Checked before
        any work: an existing report is replaced only with ``overwrite=True``.
    options, **overrides
        :class:`~calosim.metrics.options.EvaluateOptions` (its fields are documented there),
        and/or any of its fields as keywords, e.g. ``classifier=False, n_boot=20``.

    Returns
    -------
    The metrics dict documented in this module's docstring (JSON types only).
    """
    opts = EvaluateOptions.build(options, **overrides)
    gens = [generated] if isinstance(generated, (str, Path, ShowerData)) else list(generated)
    if not gens:
        raise ValueError("evaluate: no generated samples given")
    labels = _labels(gens, names)
    report_dir = None
    if out_dir is not None:
        from .report import ReportDirectory

        report_dir = ReportDirectory(out_dir, overwrite=opts.overwrite)
    clf_threads = _blas_threads_now() if opts.blas_threads is not None else None
    # the report directory is claimed first: an unwritable or occupied output fails before any work
    with report_dir if report_dir is not None else contextlib.nullcontext() as tmp, _limit_blas(opts.blas_threads):
        return _evaluate(reference, gens, labels, train, opts, clf_threads, tmp)


# ------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------
def _evaluate(reference: Any, generated: list[Any], labels: list[str], train: Any, opts: EvaluateOptions,
              clf_threads: int | None, out: Path | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    rng = np.random.default_rng(opts.seed)
    ref_src = Source(reference, "reference", opts.max_showers, opts.geometry)
    sources: list[Source] = []
    train_src: Source | None = None
    try:
        for obj, lab in zip(generated, labels):
            src = Source(obj, lab, opts.max_showers, opts.geometry, fallback_geometry=ref_src.geometry)
            sources.append(src)
            check_same_geometry(ref_src, src, f"generated sample {lab!r}")
        if train is not None:
            train_src = Source(train, "train", opts.max_showers, opts.geometry, fallback_geometry=ref_src.geometry)
            check_same_geometry(ref_src, train_src, "training sample")
        geo = ref_src.geometry
        threshold, cut = _voxel_cut(geo, opts.threshold)
        # raw showers are kept only for the tests that need them (bounded: ~1 GB of float32 cells)
        mem_cap = int(min(opts.max_memorization_showers, max(1000, 2.5e8 // geo.n_cells)))
        sub_cap = int(min(opts.max_classifier_showers, max(1000, 2.5e8 // geo.n_cells))) if opts.classifier else 0
        if train is not None:
            sub_cap = max(sub_cap, mem_cap)

        timings: dict[str, Any] = {"samples": {}}
        results: list[SampleResult] = []
        with Progress(opts.progress, unit="showers", transient=True) as prog:
            ref = scan_source(ref_src, rng, sub_cap, opts.chunk_mb, prog, threshold, cut)
            timings["reference_scan"] = ref.seconds
            prog.log(f"reference: {ref.n} showers scanned in {ref.seconds:.1f} s"
                     + (f" (voxel cut {threshold:g} MeV)" if threshold else ""))
            train_scan = None
            if train_src is not None:
                train_scan = scan_source(train_src, rng, opts.max_memorization_showers, opts.chunk_mb, prog,
                                         threshold, cut)
                timings["train_scan"] = train_scan.seconds
            for src in sources:
                gen = scan_source(src, rng, sub_cap, opts.chunk_mb, prog, threshold, cut)
                res = _evaluate_one(ref, gen, train_scan, opts, rng, mem_cap, prog, clf_threads, is_ild(geo.name))
                results.append(res)
                timings["samples"][src.name] = res.timings
                prog.log(_one_line(res.entry, res.timings))  # its warnings follow the summary table
    finally:
        for s in [ref_src, *sources, *([train_src] if train_src else [])]:
            s.close()

    from .. import __version__

    metrics: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "calosim_version": __version__,
        "geometry": geo.name,
        "seed": opts.seed,
        "threshold_mev": threshold,
        "reference": {"name": "reference", "file": ref.file, "n": ref.n,
                      "e_inc_min": float(ref.e_inc.min()), "e_inc_max": float(ref.e_inc.max()),
                      "angles": angle_reference(ref)},
        "samples": [r.entry for r in results],
        "timings": timings,
    }
    if out is not None:
        figures: list[Any] = []
        if opts.plots:
            from .plots import EvaluationContext, make_plots

            t = time.perf_counter()
            only = None if opts.plots is True else list(opts.plots)
            figures = make_plots(EvaluationContext(geo, ref.without_subset(), results), out, only=only)
            timings["plots"] = time.perf_counter() - t
        from .report import write_report

        t = time.perf_counter()
        timings["total"] = time.perf_counter() - t_start
        write_report(_jsonable(metrics), figures, out)
        timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    metrics = _jsonable(metrics)
    if out is not None:
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    return metrics


def _voxel_cut(geo: Geometry, threshold: float | None) -> tuple[float, Any]:
    """The voxel cut in MeV (``threshold``, default the geometry's readout threshold) and the function applying it."""
    from ..features import apply_threshold

    thr = float(geo.readout_threshold_mev if threshold is None else threshold)
    if thr <= 0.0:
        return 0.0, None
    return thr, lambda cells: apply_threshold(cells, geo, thr)


def _evaluate_one(ref: SampleScan, gen: SampleScan, train: SampleScan | None, opts: EvaluateOptions,
                  rng: np.random.Generator, mem_cap: int, prog: Progress, clf_threads: int | None,
                  ild: bool = False) -> SampleResult:
    tm: dict[str, float] = {"scan": gen.seconds}
    t0 = time.perf_counter() - gen.seconds

    def lap(key: str, t: float) -> None:
        tm[key] = time.perf_counter() - t

    t = time.perf_counter()
    dist = distances_block(ref, gen, opts.n_boot, rng)
    lap("distances", t)
    cond, warnings = conditions_block(ref, gen)

    columns = highlevel_columns(ref.obs, gen.obs)
    clf = None
    t = time.perf_counter()
    if opts.classifier:
        n_clf = min(len(ref.sub_showers), len(gen.sub_showers))
        prog.log(f"{gen.name}: classifier tests (low- and high-level) on {n_clf} vs {n_clf} showers ...")
        with _limit_blas(clf_threads):  # the network training uses the machine's usual threads
            clf = classifier_block(ref, gen, columns, opts.seed, dict(opts.classifier_kwargs))
    lap("classifier", t)

    t = time.perf_counter()
    fpd_res = kpd_res = None
    if opts.fpd:
        try:
            fpd_res, kpd_res = fpd_block(ref, gen, columns, opts.seed, opts.fpd_convention)
        except (ImportError, ValueError) as exc:  # e.g. too few showers for the FPD extrapolation
            warnings.append(f"FPD/KPD not computed: {exc}")
    lap("fpd_kpd", t)

    t = time.perf_counter()
    response = response_block(ref, gen)
    if not bool(np.all(response["has_reference"][response["generated"]["n"] > 0])):
        warnings.append("some incident-energy bins of the generated sample have no reference showers "
                        "(flagged in response.has_reference)")
    gross = response_warning(response)
    if gross is not None:
        warnings.append(gross)
    lap("response", t)

    t = time.perf_counter()
    angles = angles_block(ref, gen, opts.n_boot, rng)
    if angles is None and not gen.angles and angle_reference(ref) is not None:
        warnings.append("the file carries no incidence angles (theta/phi): the principal-axis angle check is "
                        "skipped (generate with --conditions-from the reference to copy them)")
    if angles is not None and angles["n_undefined"] > 0.05 * gen.n:
        warnings.append(f"{angles['n_undefined']} of {gen.n} showers have no principal axis (fewer than "
                        f"{angle_reference(ref)['min_hits']} hits, or hits in one layer): angle check on the rest")
    visible = visible_energy_block(ref, gen) if ild else None
    lap("angles", t)

    t = time.perf_counter()
    mem = None
    if train is not None:
        mem = memorization_block(train, gen, ref, mem_cap, rng)
        r = mem.record
        if r["memorization"]:
            warnings.append(f"memorisation: generated showers copy training showers (exact copies "
                            f"{100 * r['frac_exact']:.1f} %, copy ratio {r['copy_ratio']:.2f})")
        if r["under_dispersion"]:
            warnings.append(f"under-dispersion: generated showers are too close to the typical shower "
                            f"(NN distance ratio {r['ratio']:.2f} to training, {r['ratio_unseen']:.2f} to unseen "
                            f"showers; spread ratio {r['spread_ratio']:.2f}); this is not copying")
    lap("memorization", t)
    tm["total"] = time.perf_counter() - t0

    entry = {
        "name": gen.name, "file": gen.file, "n": gen.n,
        "classifier": clf.levels if clf is not None else None, "fpd": fpd_res, "kpd": kpd_res,
        "observables": dist.observables, **dist.summary,
        "conditions": cond, "response": response, "memorization": mem.record if mem is not None else None,
        "angles": angles, "visible_energy": visible,
        "warnings": warnings,
    }
    # the raw subset is only needed for the classifier / memorisation: drop it before plotting
    return SampleResult(scan=gen.without_subset(), entry=_jsonable(entry), classifier=clf, memorization=mem,
                        timings=tm)


def _one_line(entry: dict[str, Any], tm: dict[str, float]) -> str:
    msp = entry.get("mean_separation_power")
    parts = [f"{entry['name']}: {entry['n']} showers", f"mean SP {msp:.4f}" if msp is not None else "mean SP -"]
    c = entry.get("classifier")
    if c and c.get("low"):
        parts.append(f"AUC low {c['low']['auc']:.3f}")
    if c and c.get("high"):
        parts.append(f"AUC high {c['high']['auc']:.3f}")
    if entry.get("fpd"):
        parts.append(f"FPD {entry['fpd']['value']:.4g}")
    tr = (entry.get("angles") or {}).get("theta_residual") or {}
    if tr.get("mean") is not None and tr.get("std") is not None:
        parts.append(f"PCA theta residual {tr['mean']:+.2f} (width {tr['std']:.2f}) deg")
    parts.append(f"{tm['total']:.1f} s")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------
# threads, JSON and label helpers
# ------------------------------------------------------------------------------------------
def _blas_threads_now() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return None
    n = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(n) if n else None


def _limit_blas(n: int | None) -> Any:
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Path):
        return str(x)
    return x


def _labels(generated: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(generated):
            raise ValueError(f"names: got {len(names)} names for {len(generated)} generated samples")
        out = [str(n) for n in names]
    else:
        out = [Path(g).stem if not isinstance(g, ShowerData) else f"generated_{i}" for i, g in enumerate(generated)]
    seen: dict[str, int] = {}
    uniq = []
    for n in out:  # names label plots and JSON entries: keep them unique
        seen[n] = seen.get(n, 0) + 1
        uniq.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return uniq
