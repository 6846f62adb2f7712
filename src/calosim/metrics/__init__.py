"""Evaluation of generated showers against a reference sample.

Public API (imported lazily, so ``import calosim.metrics`` stays cheap and does not pull in
torch or matplotlib until a name is used):

* observables: :func:`compute_observables`, :func:`highlevel_matrix`, :func:`highlevel_columns`
  (the CaloChallenge's high-level feature set), :func:`response_vs_energy`, :func:`energy_bins`,
  :class:`ShowerSummary`, profile functions, :func:`binned_stats` (mean / width per bin); the per-layer features themselves (and the
  readout threshold, :func:`calosim.features.apply_threshold`) live in :mod:`calosim.features`;
* incidence angle (seed 003's PCA check): :func:`principal_axis`, :func:`angle_observables`;
* distances: :func:`compare_observable`, :func:`separation_power`, :func:`chi2_distance`,
  :func:`wasserstein1`, :func:`ks_statistic`, :func:`reference_bins`;
* classifier test: :func:`classifier_two_sample_test`, :func:`lowlevel_features`;
* FPD/KPD: :func:`frechet_physics_distance`, :func:`kernel_physics_distance` (``convention=
  "calosim"``, the default, or ``"challenge"``: jetnet's numbers x 10^3 as the challenge quotes);
* memorisation: :func:`memorization_test`, :func:`nearest_neighbour_distances`, :func:`diversity`;
* the whole pipeline: :func:`evaluate` (metrics dict + ``metrics.json`` + plots + HTML report),
  :func:`write_report`, :func:`format_terminal_table`, :func:`make_plots`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS: dict[str, str] = {
    # observables
    "compute_observables": "observables", "highlevel_matrix": "observables", "highlevel_columns": "observables",
    "response_vs_energy": "observables", "energy_bins": "observables", "ShowerSummary": "observables",
    "longitudinal_profile": "observables", "radial_profile": "observables", "lateral_profiles": "observables",
    "cell_energy_spectrum": "observables", "mean_images": "observables", "observable_groups": "observables",
    "layer_labels": "observables", "binned_stats": "observables",
    "principal_axis": "angle", "angle_observables": "angle",
    # distances
    "compare_observable": "distances", "compare_observables": "distances", "separation_power": "distances",
    "chi2_distance": "distances", "wasserstein1": "distances", "ks_statistic": "distances",
    "reference_bins": "distances",
    # classifier, FPD/KPD, memorisation
    "classifier_two_sample_test": "classifier", "lowlevel_features": "classifier",
    "frechet_physics_distance": "fpd", "kernel_physics_distance": "fpd",
    "memorization_test": "memorization", "nearest_neighbour_distances": "memorization", "diversity": "memorization",
    # pipeline, plots, report
    "evaluate": "evaluate", "METRICS_SCHEMA_VERSION": "evaluate",
    "make_plots": "plots", "write_report": "report", "format_terminal_table": "report",
}

__all__ = ["METRICS_SCHEMA_VERSION", "ShowerSummary", "angle_observables", "binned_stats", "cell_energy_spectrum",
    "chi2_distance",
    "classifier_two_sample_test", "compare_observable", "compare_observables", "compute_observables",
    "diversity", "energy_bins", "evaluate", "format_terminal_table", "frechet_physics_distance",
    "highlevel_columns", "highlevel_matrix", "kernel_physics_distance", "ks_statistic", "lateral_profiles",
    "layer_labels", "longitudinal_profile", "lowlevel_features", "make_plots", "mean_images",
    "memorization_test", "nearest_neighbour_distances", "observable_groups", "principal_axis", "radial_profile",
    "reference_bins", "response_vs_energy", "separation_power", "wasserstein1", "write_report"]

# ``evaluate`` is both a submodule and a function: bind the function eagerly, so that the
# package attribute is the function whatever was imported first (importing the submodule
# later does not rebind it). evaluate.py itself imports neither torch nor matplotlib.
from .evaluate import evaluate


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'calosim.metrics' has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
