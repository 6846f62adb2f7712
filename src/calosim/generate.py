"""Sample showers from a trained run into a native HDF5 file, in bounded memory.

Conditions come from, in order of preference: a reference file (``conditions_from``: its
incident energies and conditions are copied, cycling when ``n`` exceeds its length), or the
``energy`` spec (GeV, ``"50"``, ``"1:100"``, ``"log:1:100"``) and ``particle``, with any other
condition the model needs drawn from the run's stored training-condition pool. With neither,
energies (and all conditions) are drawn from that pool, i.e. from the training distribution.

Showers are produced and written ``batch`` rows at a time through :class:`calosim.io.ShowerWriter`,
so memory does not grow with ``n``; the output appears atomically when generation completes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import CONDITION_SHAPES, ShowerWriter, open_showers
from .train.checkpoint import Run, load_run
from .train.conditions import particle_pdg, raw_conditions, sample_conditions

__all__ = ["generate", "condition_chunks"]


def condition_chunks(run: Run, n: int, batch: int, *, energy: str | None = None, particle: str | int | None = None,
                     conditions_from: str | Path | None = None, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Raw condition dicts of at most ``batch`` rows, ``n`` rows in total (see the module docstring)."""
    if conditions_from is not None:
        with open_showers(conditions_from) as ref:
            if len(ref) == 0:
                raise ValueError(f"{conditions_from}: reference file has no showers")
            done = 0
            while done < n:  # cycle through the reference
                for lo in range(0, len(ref), batch):
                    m = min(batch, len(ref) - lo, n - done)
                    if m <= 0:
                        break
                    raw = raw_conditions(ref.read(lo, lo + m))
                    if particle is not None:
                        raw["pdg"] = np.full(m, particle_pdg(particle), dtype=np.int32)
                    yield raw
                    done += m
        return
    done = 0
    while done < n:
        m = min(batch, n - done)
        yield sample_conditions(m, energy, particle, rng, encoder=run.conditions, pool=run.pool)
        done += m


def generate(run_dir: str | Path, out_path: str | Path, n: int, *, energy: str | float | None = None,
             particle: str | int | None = None, conditions_from: str | Path | None = None, batch: int = 1024,
             device: str = "cpu", seed: int = 0, overwrite: bool = False, progress: bool = True,
             which: str = "final") -> Path:
    """Generate ``n`` showers with the run in ``run_dir`` into ``out_path`` (native layout); return the path.

    ``energy``: GeV spec; ``particle``: name or PDG code (must be one the model was trained on
    if it is conditioned on the particle); ``conditions_from``: reference shower file whose
    conditions are copied. ``seed`` fixes both the conditions and the model's noise.
    """
    n, batch = int(n), int(batch)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if energy is not None and conditions_from is not None:
        raise ValueError("give either energy or conditions_from, not both")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path}: exists; pass --overwrite (overwrite=True) to replace it")
    run = load_run(run_dir, device=device, which=which)
    if particle is not None and run.conditions.pdgs and particle_pdg(particle) not in run.conditions.pdgs:
        raise ValueError(f"particle {particle!r} (PDG {particle_pdg(particle)}) was not in the training data "
                         f"(trained on {run.conditions.pdgs})")
    if energy is not None:  # fail on a bad spec before any work
        from .train.conditions import parse_energy_spec
        parse_energy_spec(energy)

    out_conds = [c for c in run.conditions.names if c in CONDITION_SHAPES]
    if conditions_from is not None:
        with open_showers(conditions_from) as ref:
            out_conds = sorted(set(out_conds) | set(ref.conditions), key=list(CONDITION_SHAPES).index)
    if particle is not None and "pdg" not in out_conds:
        out_conds.append("pdg")
    attrs: dict[str, Any] = {
        "engine": "calosim-generate", "generator_run": str(Path(run_dir).resolve()), "model": run.model_name,
        "seed": int(seed), "n_requested": n, "batch": batch, "device": str(device), "weights": which,
        "run_step": run.info.get("step"), "train_data": run.info.get("data_path"),
        "energy": str(energy) if energy is not None else ("from reference" if conditions_from else "training distribution"),
    }
    if particle is not None:
        attrs["particle"] = str(particle)
    if conditions_from is not None:
        attrs["conditions_from"] = str(Path(conditions_from).resolve())
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=run.device).manual_seed(int(seed))
    bar = _progress(progress, n, f"generate {run.model_name}")
    with bar as (update,), ShowerWriter(out_path, run.geometry, conditions=out_conds, attrs=attrs, overwrite=overwrite) as w:
        for raw in condition_chunks(run, n, batch, energy=None if energy is None else str(energy), particle=particle,
                                    conditions_from=conditions_from, rng=rng):
            showers = run.sample(raw, gen, batch=batch)
            w.append(showers, raw["incident_energies"], **{c: raw[c] for c in out_conds})
            update(len(showers))
    return out_path


class _progress:
    """A rich progress bar (or nothing) yielding an ``update(k)`` callable."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._p: Any = None

    def __enter__(self) -> tuple[Any]:
        if not self.enabled:
            return (lambda k: None,)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._p.__enter__()
        task = self._p.add_task(self.label, total=self.total)
        return (lambda k: self._p.update(task, advance=k),)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
