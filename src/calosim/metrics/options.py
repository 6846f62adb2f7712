"""The options of :func:`calosim.metrics.evaluate.evaluate`: the one list of them.

Kept free of heavy imports: the command line builds its ``evaluate`` options from the fields
marked ``cli`` here (name, help and default come from this file), so the Python keyword
arguments, the CLI flags and the documentation cannot drift apart.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

__all__ = ["EvaluateOptions", "cli_fields"]


def _opt(default: Any, help: str, cli: bool = False, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help, "cli": cli, "choices": choices}
    if callable(default) and not isinstance(default, (bool, int, float, str)):
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`~calosim.metrics.evaluate.evaluate` compares samples (all optional)."""

    classifier: bool = _opt(True, "Run the classifier two-sample tests (low- and high-level inputs; the slow part).",
                            cli=True)
    fpd: bool = _opt(True, "Compute FPD and KPD on the high-level observables.")
    fpd_convention: str = _opt(
        "calosim", "FPD/KPD convention: calosim (standardised features, as computed) or challenge (jetnet's "
                   "numbers x 10^3, as the CaloChallenge tables quote them).", cli=True,
        choices=("calosim", "challenge"))
    seed: int = _opt(0, "Seeds the bootstrap, the subsets and the classifier / FPD / KPD.", cli=True)
    max_showers: int | None = _opt(None, "Use at most this many showers of every file (the first ones).", cli=True)
    threshold: float | None = _opt(
        None, "Voxel cut in MeV applied to every sample before any metric (cells below it count as empty); "
              "default: the geometry's official readout threshold. 0 disables the cut.", cli=True)
    overwrite: bool = _opt(False, "Replace an existing report directory (its index.html, metrics.json and plots).",
                           cli=True)
    geometry: Any = _opt(None, "Geometry (preset name, .json or CaloChallenge binning .xml) for files that carry "
                               "none, e.g. CaloChallenge files with a custom binning.", cli=True)
    plots: Any = _opt(True, "Write the PNG plots (Python: True = all, False = none, or a list of kinds from "
                            "calosim.metrics.plots.PLOT_KINDS).", cli=True)
    progress: bool = _opt(True, "Progress bars and one line per sample on stderr.")
    n_boot: int = _opt(100, "Bootstrap replicas of the per-observable distances.")
    max_classifier_showers: int = _opt(50_000, "Cap of the raw-shower subset of the classifier test (also capped "
                                               "at ~1 GB of float32 cells for very fine geometries).")
    max_memorization_showers: int = _opt(5_000, "Cap of the raw-shower subsets of the memorisation test.")
    classifier_kwargs: dict[str, Any] = _opt(dict, "Extra arguments of classifier_two_sample_test.")
    chunk_mb: float = _opt(64.0, "Size of the chunks read from files (memory bound of the streaming pass).")
    blas_threads: int | None = _opt(
        1, "Threads of numpy's BLAS during the evaluation (None: leave as is). 1 is deliberate: the matrices are "
           "small or thin, and multi-threaded OpenBLAS on a busy machine spin-waits (measured: FPD of 100k x 19 "
           "features 92 s with the default threads on a loaded 2-core machine, 6 s with one). The classifier "
           "runs with the threads found at the start (torch threads: classifier_kwargs={'n_threads': k}).")

    def __post_init__(self) -> None:
        # the user-facing ranges: one line naming the option, never a numpy traceback later
        if self.max_showers is not None and (isinstance(self.max_showers, bool) or int(self.max_showers) < 1):
            raise ValueError(f"max_showers (--max-showers) must be a positive number of showers, got {self.max_showers}")
        if self.threshold is not None and not (float(self.threshold) >= 0.0 and float(self.threshold) < float("inf")):
            raise ValueError(f"threshold (--threshold) must be a finite voxel cut >= 0 MeV, got {self.threshold}")
        if int(self.n_boot) < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if float(self.chunk_mb) <= 0:
            raise ValueError(f"chunk_mb must be > 0, got {self.chunk_mb}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")

    @classmethod
    def build(cls, options: EvaluateOptions | None = None, **overrides: Any) -> EvaluateOptions:
        """``options`` (default: all defaults) with ``overrides`` replaced; unknown names are an error."""
        from dataclasses import replace

        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"evaluate: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return replace(options or cls(), **overrides)


def cli_fields() -> list[tuple[str, Any, str, tuple[str, ...] | None]]:
    """``(name, default, help, choices)`` of the options the command line exposes, in declaration order."""
    out = []
    for f in fields(EvaluateOptions):
        if f.metadata.get("cli"):
            default = f.default if f.default is not MISSING else None
            out.append((f.name, default, str(f.metadata["help"]), f.metadata.get("choices")))
    return out
