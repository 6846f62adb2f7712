"""Evaluate generated shower samples against a reference sample.

:func:`evaluate` streams each file once in chunks (bounded memory: per-shower scalar
observables plus a capped random subset of raw showers for the classifier and the
memorisation test), then computes per generated sample:

* every observable's distances (:func:`~calosim.metrics.distances.compare_observable`:
  separation power, chi2, W1, KS with bootstrap errors; binning from the reference);
* the classifier two-sample test on low-level inputs (cells / E_inc, log E_inc) and on the
  high-level observables (unless ``classifier=False``);
* FPD and KPD on the high-level observables (standardised with the reference mean/std);
* energy response and resolution per incident-energy bin (bins cover both samples; bins
  without reference showers are flagged);
* the memorisation test against ``train`` if given.

metrics.json schema (``schema_version`` 1; every float may be ``null`` when undefined)::

    {
      "schema_version": 1, "calosim_version": str, "geometry": str, "seed": int,
      "reference": {"name", "file", "n", "e_inc_min", "e_inc_max"},
      "samples": [{
        "name": str, "file": str | null, "n": int,
        "classifier": null | {"low": {"auc", "auc_err", "jsd", "jsd_err", "n_used"},
                              "high": {... same ...}},
        "fpd": {"value", "err"} | null, "kpd": {"value", "err"} | null,
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
        "memorization": null | {"median_gen", "median_heldout", "ratio", "ratio_err",
                                "threshold", "frac_close", "expected_frac", "frac_exact",
                                "flagged", "n_train", "n_gen", "n_heldout"}
                        (memorization_test without its distance arrays),
        "warnings": [str]
      }],
      "timings": {"reference_scan": s, ["train_scan": s,] "samples": {"<name>": {"scan", "distances",
                  "classifier", "fpd_kpd", "response", "memorization", "total"}},
                  "plots": s, "report": s, "total": s}
    }
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..geometry import Geometry
from ..io import (
    ShowerData,
    ShowerFile,
    ShowerFileError,
    open_showers,
    write_text_atomic,
)
from .observables import (
    ShowerSummary,
    compute_observables,
    energy_bins,
    highlevel_columns,
    highlevel_matrix,
    response_vs_energy,
)

__all__ = ["METRICS_SCHEMA_VERSION", "EvaluationContext", "SampleScan", "evaluate", "scan"]

METRICS_SCHEMA_VERSION = 1
_RESPONSE_KEYS = ("n", "mean", "mean_err", "std", "std_err", "resolution", "resolution_err")


# ------------------------------------------------------------------------------------------
# sources: files or in-memory samples behind one chunked interface
# ------------------------------------------------------------------------------------------
class _Source:
    """A shower file or :class:`ShowerData`, read in chunks of at most ``max_showers`` rows."""

    def __init__(self, obj: str | Path | ShowerData, label: str, max_showers: int | None,
                 geometry: Geometry | str | None = None, fallback_geometry: Geometry | None = None) -> None:
        self._file: ShowerFile | None = None
        self._data: ShowerData | None = None
        if isinstance(obj, ShowerData):
            self._data = obj
            self.file: str | None = None
            self.geometry = obj.geometry
            n = len(obj)
            self.name = label
        else:
            try:
                self._file = open_showers(obj, geometry)
            except ShowerFileError:
                # a CaloChallenge-layout file with a custom binning carries no geometry: read it
                # with the reference's (its cell count is still checked)
                if geometry is not None or fallback_geometry is None or not _is_bare_layout(obj):
                    raise
                self._file = open_showers(obj, fallback_geometry)
            self.file = str(Path(obj))
            self.geometry = self._file.geometry
            n = len(self._file)
            self.name = label
        self.n = n if max_showers is None else min(n, int(max_showers))

    def chunks(self, rows: int) -> Iterator[ShowerData]:
        for lo in range(0, self.n, rows):
            hi = min(lo + rows, self.n)
            if self._data is not None:
                yield self._data.subset(slice(lo, hi))
            else:
                assert self._file is not None
                yield self._file.read(lo, hi)

    @property
    def where(self) -> str:
        return self.file or f"<in-memory sample {self.name!r}>"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _is_bare_layout(path: str | Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("calosim_layout") != "native" and {"showers", "incident_energies"} <= set(f)
    except OSError:
        return False


def _readout_signature(g: Geometry) -> tuple[Any, ...]:
    """What must agree for two samples to be comparable: the cells, not names or materials."""
    sig = []
    for lay in g.layers:
        cells = tuple(round(c, 6) for c in lay.cell_mm) if lay.cell_mm else None
        redges = tuple(round(r, 6) for r in lay.r_edges_mm) if lay.r_edges_mm else None
        sig.append((lay.kind, tuple(lay.shape), cells, redges))
    return tuple(sig)


def _describe(g: Geometry) -> str:
    return f"{g.name!r} ({g.n_cells} cells in {g.n_layers} layers)"


def _check_same_geometry(ref: _Source, other: _Source, what: str) -> None:
    if _readout_signature(ref.geometry) != _readout_signature(other.geometry):
        raise ShowerFileError(
            f"{other.where}: {what} geometry {_describe(other.geometry)} does not match the reference "
            f"{ref.where} geometry {_describe(ref.geometry)}; all samples must use the same detector readout"
        )


# ------------------------------------------------------------------------------------------
# one pass over a sample
# ------------------------------------------------------------------------------------------
@dataclass
class SampleScan:
    """Everything kept from one pass over a sample (for the metrics and the plots).

    ``obs``: ``{name: (N,) float32}``; ``e_inc`` (N,) MeV; ``summary`` the accumulated
    profiles; ``sub_showers`` (M, n_cells) / ``sub_e_inc`` (M,) a random subset of raw
    showers (M <= the classifier cap) with ``sub_index`` (M,) their row numbers.
    """

    name: str
    file: str | None
    n: int
    obs: dict[str, np.ndarray]
    e_inc: np.ndarray
    summary: ShowerSummary
    sub_index: np.ndarray
    sub_showers: np.ndarray
    sub_e_inc: np.ndarray
    seconds: float = 0.0
    # filled later for the plots
    classifier_predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    nn_distances: dict[str, np.ndarray] = field(default_factory=dict)
    response: dict[str, Any] | None = None


@dataclass
class EvaluationContext:
    """Inputs of :func:`calosim.metrics.plots.make_plots`: the scans and the metrics dict."""

    geometry: Geometry
    reference: SampleScan
    samples: list[SampleScan]
    metrics: dict[str, Any]


def _chunk_rows(n_cells: int, chunk_mb: float) -> int:
    return int(max(256, min(200_000, chunk_mb * 2**20 // (4 * max(n_cells, 1)))))


def _scan(src: _Source, rng: np.random.Generator, sub_cap: int, chunk_mb: float, progress: Any) -> SampleScan:
    """Read ``src`` once: observables, summaries and a random raw-shower subset."""
    t0 = time.perf_counter()
    geo = src.geometry
    m = min(src.n, sub_cap)
    keep = np.sort(rng.choice(src.n, size=m, replace=False)) if m < src.n else np.arange(src.n)
    summary = ShowerSummary(geo)
    obs_parts: dict[str, list[np.ndarray]] = {}
    e_parts, sub_s, sub_e = [], [], []
    rows = _chunk_rows(geo.n_cells, chunk_mb)
    task = progress.add(f"scan {src.name}", src.n)
    lo = 0
    for chunk in src.chunks(rows):
        hi = lo + len(chunk)
        o = compute_observables(chunk.showers, chunk.incident_energies, geo, conditions=chunk.conditions)
        for k, v in o.items():
            obs_parts.setdefault(k, []).append(v.astype(np.float32))  # float32 halves the memory
        e_parts.append(chunk.incident_energies.reshape(-1).astype(np.float64))
        summary.update(chunk.showers)
        a, b = np.searchsorted(keep, [lo, hi])
        if b > a:
            sub_s.append(np.array(chunk.showers[keep[a:b] - lo], dtype=np.float32))
            sub_e.append(chunk.incident_energies.reshape(-1)[keep[a:b] - lo].astype(np.float64))
        lo = hi
        progress.advance(task, len(chunk))
    if src.n == 0:
        raise ShowerFileError(f"{src.where}: contains no showers")
    obs = {k: np.concatenate(v) for k, v in obs_parts.items()}
    return SampleScan(
        name=src.name, file=src.file, n=src.n, obs=obs, e_inc=np.concatenate(e_parts), summary=summary,
        sub_index=keep, sub_showers=np.concatenate(sub_s) if sub_s else np.zeros((0, geo.n_cells), np.float32),
        sub_e_inc=np.concatenate(sub_e) if sub_e else np.zeros(0), seconds=time.perf_counter() - t0,
    )


def scan(sample: str | Path | ShowerData, *, name: str = "sample", seed: int = 0, max_showers: int | None = None,
         max_subset: int = 0, geometry: Geometry | str | None = None, chunk_mb: float = 64.0) -> SampleScan:
    """One streaming pass over a sample: observables, summaries (for custom plots / metrics).

    ``max_subset`` raw showers are kept at random (``sub_showers``); 0 keeps none.
    """
    src = _Source(sample, name, max_showers, geometry)
    try:
        with _Progress(False) as prog:
            return _scan(src, np.random.default_rng(seed), max_subset, chunk_mb, prog)
    finally:
        src.close()


# ------------------------------------------------------------------------------------------
# the individual metric blocks
# ------------------------------------------------------------------------------------------
def _distances(ref: SampleScan, gen: SampleScan, n_boot: int, rng: np.random.Generator
               ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    from .distances import compare_observable

    out: dict[str, dict[str, float]] = {}
    informative = []
    for k, r in ref.obs.items():
        if k not in gen.obs:
            continue
        g = gen.obs[k]
        out[k] = compare_observable(r, g, n_boot=n_boot, rng=rng, name=k)
        # an observable constant (and equal) in both samples carries no information
        lo, hi = min(float(r.min()), float(g.min())), max(float(r.max()), float(g.max()))
        if hi > lo:
            informative.append(k)
    sp = np.array([out[k]["separation_power"] for k in informative])
    err = np.array([out[k].get("separation_power_err", np.nan) for k in informative])
    null = np.array([out[k].get("separation_power_null", np.nan) for k in informative])
    order = sorted(informative, key=lambda k: (-out[k]["separation_power"], k))
    summary = {
        "mean_separation_power": float(sp.mean()) if sp.size else None,
        "mean_separation_power_err": float(np.sqrt(np.sum(err**2)) / sp.size) if sp.size else None,
        "mean_separation_power_null": float(null.mean()) if sp.size else None,
        "worst_observables": order[:3],
    }
    return out, summary


def _classifier_block(ref: SampleScan, gen: SampleScan, columns: list[str], seed: int,
                      kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    from .classifier import classifier_two_sample_test, lowlevel_features

    res: dict[str, Any] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    inputs = {
        "low": (lowlevel_features(ref.sub_showers, ref.sub_e_inc), lowlevel_features(gen.sub_showers, gen.sub_e_inc)),
        "high": (highlevel_matrix({k: v[ref.sub_index] for k, v in ref.obs.items()}, columns),
                 highlevel_matrix({k: v[gen.sub_index] for k, v in gen.obs.items()}, columns)),
    }
    for level, (xr, xg) in inputs.items():
        if xr.shape[1] == 0:
            res[level] = None
            continue
        kw = {"seed": seed, **kwargs}
        try:
            r = classifier_two_sample_test(xr, xg, return_predictions=True, **kw)
        except TypeError:  # an implementation without return_predictions
            r = classifier_two_sample_test(xr, xg, **kw)
        if "prob" in r and "label" in r:
            preds[level] = {"prob": np.asarray(r["prob"]), "label": np.asarray(r["label"])}
        res[level] = {k: r.get(k) for k in ("auc", "auc_err", "jsd", "jsd_err", "n_used")}
    return res, preds


def _fpd_block(ref: SampleScan, gen: SampleScan, columns: list[str], seed: int) -> tuple[Any, Any]:
    from .fpd import frechet_physics_distance, kernel_physics_distance

    if not columns:
        return None, None
    # both standardise the features with the reference mean / std themselves
    xr, xg = highlevel_matrix(ref.obs, columns), highlevel_matrix(gen.obs, columns)
    fv, fe = frechet_physics_distance(xr, xg, seed=seed)
    kv, ke = kernel_physics_distance(xr, xg, seed=seed)
    return {"value": float(fv), "err": float(fe)}, {"value": float(kv), "err": float(ke)}


def _response_block(ref: SampleScan, gen: SampleScan) -> dict[str, Any]:
    edges, discrete = energy_bins(ref.e_inc, gen.e_inc)
    rr = response_vs_energy(ref.obs["E_tot"], ref.e_inc, edges)
    rg = response_vs_energy(gen.obs["E_tot"], gen.e_inc, edges)
    lo, hi = float(ref.e_inc.min()), float(ref.e_inc.max())
    in_range = (edges[1:] >= lo) & (edges[:-1] <= hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (rg["mean"] - rr["mean"]) / np.hypot(rg["mean_err"], rr["mean_err"])
        ratio = rg["resolution"] / rr["resolution"]
    finite = pull[np.isfinite(pull)]
    return {
        "edges": edges, "discrete": bool(discrete),
        "e_mean": np.where(rg["n"] > 0, rg["e_mean"], rr["e_mean"]),
        "has_reference": rr["n"] >= 2, "in_reference_range": in_range,
        "reference": {k: rr[k] for k in _RESPONSE_KEYS},
        "generated": {k: rg[k] for k in _RESPONSE_KEYS},
        "mean_pull": pull, "resolution_ratio": ratio,
        "max_abs_mean_pull": float(np.abs(finite).max()) if finite.size else None,
    }


def _memorization_block(train: SampleScan, gen: SampleScan, ref: SampleScan, cap: int,
                        rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from .memorization import memorization_test

    def pick(s: SampleScan) -> np.ndarray:
        idx = np.arange(len(s.sub_showers))
        if len(idx) > cap:
            idx = np.sort(rng.choice(len(idx), size=cap, replace=False))
        return s.sub_showers[idx]

    # raw cells; memorization_test normalises each shower to unit sum (shape only) by default
    res = memorization_test(pick(train), pick(gen), pick(ref), seed=rng)
    arrays = {k: np.asarray(v) for k, v in res.items() if isinstance(v, np.ndarray) and v.ndim >= 1}
    return {k: v for k, v in res.items() if k not in arrays}, arrays


# ------------------------------------------------------------------------------------------
# progress and JSON helpers
# ------------------------------------------------------------------------------------------
class _Progress:
    """Minimal progress reporting on stderr (rich bars when enabled, silent otherwise)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                               TimeElapsedColumn(), console=self.console, transient=True)

    def __enter__(self) -> Self:
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def add(self, what: str, total: int) -> Any:
        return self._p.add_task(what, total=total) if self._p is not None else None

    def advance(self, task: Any, n: int) -> None:
        if self._p is not None:
            self._p.advance(task, n)

    def log(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg, highlight=False)


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


# ------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------
def evaluate(
    reference: str | Path | ShowerData,
    generated: Sequence[str | Path | ShowerData] | str | Path | ShowerData,
    *,
    names: Sequence[str] | None = None,
    train: str | Path | ShowerData | None = None,
    out_dir: str | Path | None = None,
    classifier: bool = True,
    seed: int = 0,
    max_showers: int | None = None,
    progress: bool = True,
    classifier_kwargs: dict[str, Any] | None = None,
    n_boot: int = 100,
    max_classifier_showers: int = 50_000,
    max_memorization_showers: int = 5_000,
    fpd: bool = True,
    plots: bool | Sequence[str] = True,
    geometry: Geometry | str | None = None,
    chunk_mb: float = 64.0,
    blas_threads: int | None = 1,
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
        If given: writes ``metrics.json`` (atomically), the PNG plots and ``index.html`` there.
    plots
        ``True`` (all), ``False`` (none) or a list of kinds from
        :data:`calosim.metrics.plots.PLOT_KINDS` (e.g. ``["response", "images"]``).
    classifier
        Run the classifier two-sample tests (low-level and high-level inputs).
    seed
        Seeds the bootstrap, the subsets and the classifier / FPD / KPD.
    max_showers
        Use only the first ``max_showers`` showers of every sample.
    classifier_kwargs
        Extra arguments for :func:`~calosim.metrics.classifier.classifier_two_sample_test`.
    n_boot
        Bootstrap replicas of the per-observable distances.
    max_classifier_showers, max_memorization_showers
        Caps of the random raw-shower subsets (classifier: also capped at ~1 GB of float32
        cells for very fine geometries).
    geometry
        Geometry for files that do not carry one (CaloChallenge layout with a custom binning).
    chunk_mb
        Size of the chunks read from files (memory bound of the streaming pass).
    blas_threads
        Threads of numpy's BLAS during the evaluation (``None``: leave as is). The default 1
        is deliberate: the matrices here are small or thin, and multi-threaded OpenBLAS on a
        busy machine spin-waits (measured: FPD of 100k x 19 features 92 s with the default
        threads on a loaded 2-core machine, 6 s with one). The classifier runs with the
        threads found at the start (its torch threads: ``classifier_kwargs={"n_threads": k}``).

    Returns
    -------
    The metrics dict documented in this module's docstring (JSON types only).
    """
    clf_threads = _blas_threads_now() if blas_threads is not None else None
    with _limit_blas(blas_threads):
        return _evaluate(reference, generated, names=names, train=train, out_dir=out_dir, classifier=classifier,
                         seed=seed, max_showers=max_showers, progress=progress, classifier_kwargs=classifier_kwargs,
                         n_boot=n_boot, max_classifier_showers=max_classifier_showers,
                         max_memorization_showers=max_memorization_showers, fpd=fpd, plots=plots,
                         geometry=geometry, chunk_mb=chunk_mb, clf_threads=clf_threads)


def _blas_threads_now() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return None
    n = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(n) if n else None


def _limit_blas(n: int | None) -> Any:
    import contextlib

    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _evaluate(reference: Any, generated: Any, *, names: Any, train: Any, out_dir: Any, classifier: bool, seed: int,
              max_showers: int | None, progress: bool, classifier_kwargs: dict[str, Any] | None, n_boot: int,
              max_classifier_showers: int, max_memorization_showers: int, fpd: bool, plots: Any,
              geometry: Any, chunk_mb: float, clf_threads: int | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if isinstance(generated, (str, Path, ShowerData)):
        generated = [generated]
    generated = list(generated)
    if not generated:
        raise ValueError("evaluate: no generated samples given")
    labels = _labels(generated, names)
    rng = np.random.default_rng(seed)
    ckw = dict(classifier_kwargs or {})

    ref_src = _Source(reference, "reference", max_showers, geometry)
    sources: list[_Source] = []
    train_src: _Source | None = None
    try:
        for obj, lab in zip(generated, labels):
            src = _Source(obj, lab, max_showers, geometry, fallback_geometry=ref_src.geometry)
            sources.append(src)
            _check_same_geometry(ref_src, src, f"generated sample {lab!r}")
        if train is not None:
            train_src = _Source(train, "train", max_showers, geometry, fallback_geometry=ref_src.geometry)
            _check_same_geometry(ref_src, train_src, "training sample")
        geo = ref_src.geometry
        # raw showers are kept only for the tests that need them (bounded: ~1 GB of float32 cells)
        sub_cap = int(min(max_classifier_showers, max(1000, 2.5e8 // geo.n_cells))) if classifier else 0
        if train is not None:
            sub_cap = int(max(sub_cap, min(max_memorization_showers, max(1000, 2.5e8 // geo.n_cells))))

        timings: dict[str, Any] = {"samples": {}}
        with _Progress(progress) as prog:
            ref = _scan(ref_src, rng, sub_cap, chunk_mb, prog)
            timings["reference_scan"] = ref.seconds
            prog.log(f"reference: {ref.n} showers scanned in {ref.seconds:.1f} s")
            train_scan = None
            if train_src is not None:
                train_scan = _scan(train_src, rng, max_memorization_showers, chunk_mb, prog)
                timings["train_scan"] = train_scan.seconds
            samples, scans = [], []
            for src in sources:
                entry, scan, tm = _evaluate_one(ref, src, train_scan, classifier=classifier, fpd=fpd, seed=seed,
                                                rng=rng, n_boot=n_boot, ckw=ckw, sub_cap=sub_cap,
                                                mem_cap=max_memorization_showers, chunk_mb=chunk_mb, prog=prog,
                                                clf_threads=clf_threads)
                samples.append(entry)
                scans.append(scan)
                timings["samples"][src.name] = tm
                prog.log(_one_line(entry, tm))
    finally:
        for s in [ref_src, *sources, *([train_src] if train_src else [])]:
            s.close()

    from .. import __version__

    metrics: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "calosim_version": __version__,
        "geometry": geo.name,
        "seed": seed,
        "reference": {"name": "reference", "file": ref.file, "n": ref.n,
                      "e_inc_min": float(ref.e_inc.min()), "e_inc_max": float(ref.e_inc.max())},
        "samples": samples,
        "timings": timings,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_paths: list[Any] = []
        if plots:
            from .plots import make_plots

            t = time.perf_counter()
            only = None if plots is True else list(plots)
            plot_paths = make_plots(EvaluationContext(geo, ref, scans, _jsonable(metrics)), out, only=only)
            timings["plots"] = time.perf_counter() - t
        from .report import write_report

        t = time.perf_counter()
        timings["total"] = time.perf_counter() - t_start
        write_report(_jsonable(metrics), plot_paths, out)
        timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    metrics = _jsonable(metrics)
    if out_dir is not None:
        write_text_atomic(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    return metrics


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
    parts.append(f"{tm['total']:.1f} s")
    return ", ".join(parts)


def _evaluate_one(ref: SampleScan, src: _Source, train: SampleScan | None, *, classifier: bool, fpd: bool,
                  seed: int, rng: np.random.Generator, n_boot: int, ckw: dict[str, Any], sub_cap: int, mem_cap: int,
                  chunk_mb: float, prog: _Progress, clf_threads: int | None = None
                  ) -> tuple[dict[str, Any], SampleScan, dict[str, float]]:
    tm: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = _scan(src, rng, sub_cap, chunk_mb, prog)
    tm["scan"] = gen.seconds
    warnings: list[str] = []

    t = time.perf_counter()
    obs_metrics, summary = _distances(ref, gen, n_boot, rng)
    tm["distances"] = time.perf_counter() - t

    from .distances import ks_statistic
    cond = {"e_inc_ks": ks_statistic(ref.e_inc, gen.e_inc), "e_inc_min": float(gen.e_inc.min()),
            "e_inc_max": float(gen.e_inc.max())}
    if cond["e_inc_ks"] > 0.05 and min(ref.n, gen.n) > 1000:
        warnings.append(f"incident-energy distributions differ (KS = {cond['e_inc_ks']:.3f}): observables "
                        "integrated over energy are then not directly comparable; see the response per energy bin")

    columns = highlevel_columns(ref.obs, gen.obs)
    clf = None
    t = time.perf_counter()
    if classifier:
        n_clf = min(len(ref.sub_showers), len(gen.sub_showers))
        prog.log(f"{src.name}: classifier tests (low- and high-level) on {n_clf} vs {n_clf} showers ...")
        with _limit_blas(clf_threads):  # the network training uses the machine's usual threads
            clf, gen.classifier_predictions = _classifier_block(ref, gen, columns, seed, ckw)
    tm["classifier"] = time.perf_counter() - t

    t = time.perf_counter()
    fpd_res = kpd_res = None
    if fpd:
        try:
            fpd_res, kpd_res = _fpd_block(ref, gen, columns, seed)
        except (ImportError, ValueError) as exc:  # e.g. too few showers for the FPD extrapolation
            warnings.append(f"FPD/KPD not computed: {exc}")
    tm["fpd_kpd"] = time.perf_counter() - t

    t = time.perf_counter()
    response = _response_block(ref, gen)
    gen.response = response
    if not bool(np.all(response["has_reference"][response["generated"]["n"] > 0])):
        warnings.append("some incident-energy bins of the generated sample have no reference showers "
                        "(flagged in response.has_reference)")
    tm["response"] = time.perf_counter() - t

    t = time.perf_counter()
    mem = None
    if train is not None:
        mem, gen.nn_distances = _memorization_block(train, gen, ref, mem_cap, rng)
    tm["memorization"] = time.perf_counter() - t
    tm["total"] = time.perf_counter() - t0

    entry = {
        "name": src.name, "file": src.file, "n": gen.n,
        "classifier": clf, "fpd": fpd_res, "kpd": kpd_res,
        "observables": obs_metrics, **summary,
        "conditions": cond, "response": response, "memorization": mem, "warnings": warnings,
    }
    # the raw subset is only needed for the classifier / memorisation: free it before plotting
    gen.sub_showers = gen.sub_showers[:0]
    return entry, gen, tm
