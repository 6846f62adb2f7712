"""Sample showers from a trained run into a native HDF5 file, in bounded memory.

Conditions come from, in order of preference: a reference file (``conditions_from``: its
incident energies and conditions are copied, cycling when ``n`` exceeds its length), or the
``energy`` spec (GeV, ``"50"``, ``"1:100"``, ``"log:1:100"``) and ``particle``, with any other
condition the model needs drawn from the run's stored training-condition pool. With neither,
energies (and all conditions) are drawn from that pool, i.e. from the training distribution.

Showers are produced and written ``batch`` rows at a time through :class:`calosim.io.ShowerWriter`,
so memory does not grow with ``n``; the output appears atomically when generation completes.

Seeding (since the scale-out): rows come in fixed blocks of :data:`GEN_BLOCK` showers; block
``b`` draws its conditions and the model's noise from ``SeedSequence(seed, spawn_key=(b,))``
alone (a reference file's rows are addressed by global row index), so shard ``K/N`` of a run
(``shard=``) is bit-identical to the same rows of the full run and the shard files merge
(``calosim merge``) into it; ``dask=`` samples the blocks on a Dask cluster, same file. Files
written before this change with the same seed hold different (equally valid) showers.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .io import CONDITION_SHAPES, ShowerFile, ShowerWriter, open_showers
from .progress import progress_bar
from .scaleout import dask_client, ordered_map, parse_shard, shard_attrs, shard_blocks, shard_label
from .runs import Run, load_run
from .simulate import readout
from .simulate.conditions import particle_label, particle_pdg
from .train.conditions import raw_conditions, raw_keys, sample_conditions

__all__ = ["generate", "block_conditions", "block_seeds", "check_particle", "check_energy_range", "GEN_BLOCK"]

#: Relative slack on the training energy range before ``generate`` warns about extrapolation.
ENERGY_SLACK = 0.05


#: Showers per random-stream block of ``generate`` (fixed: changing it changes a seed's showers).
GEN_BLOCK = 1024


def block_seeds(seed: int, block: int) -> tuple[np.random.Generator, int]:
    """``(conditions generator, torch seed)`` of block ``block`` of a ``generate`` run with ``seed``."""
    c, p = np.random.SeedSequence(int(seed), spawn_key=(int(block),)).spawn(2)
    return np.random.default_rng(c), int(np.random.default_rng(p).integers(0, 2**63 - 1))


def block_conditions(run: Run, lo: int, hi: int, rng: np.random.Generator, *, energy: str | None = None,
                     particle: str | int | None = None, ref: ShowerFile | None = None) -> dict[str, np.ndarray]:
    """Raw conditions of rows ``[lo, hi)`` of a run (``incident_energies`` (m, 1) MeV, ...).

    With a reference file ``ref`` its rows ``lo..hi`` are copied (cycling: row ``i`` is
    ``ref[i % len(ref)]``); otherwise they are drawn with ``rng`` (see the module docstring).
    """
    m = hi - lo
    if ref is None:
        return sample_conditions(m, energy, particle, rng, encoder=run.conditions, pool=run.pool)
    parts: list[dict[str, np.ndarray]] = []
    i = lo
    while i < hi:
        a = i % len(ref)
        b = min(len(ref), a + (hi - i))
        parts.append(raw_conditions(ref.read(a, b)))
        i += b - a
    raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if particle is not None:
        raw["pdg"] = np.full(m, particle_pdg(particle), dtype=np.int32)
    return raw


_RUNS: dict[tuple[str, str, str], Run] = {}
_RUNS_LOCK = threading.Lock()


def _dask_sample(run_dir: str, device: str, which: str, batch: int,
                 item: tuple[int, dict[str, np.ndarray], int]) -> np.ndarray:
    """A Dask task: block ``item = (b, raw conditions, torch seed)`` -> showers (m, n_cells) MeV."""
    key = (run_dir, device, which)
    with _RUNS_LOCK:
        if key not in _RUNS:
            _RUNS[key] = load_run(run_dir, device=device, which=which)
        run = _RUNS[key]
    return run.sample(item[1], item[2], batch=batch)


def check_particle(run: Run, particle: str | int) -> int:
    """PDG id of ``particle`` after checking that ``run`` was trained on it (one-line ``ValueError``).

    A model that is not conditioned on the particle still only knows the particle(s) of its
    training data: asking it for another one would write showers of the training particle
    under a wrong label, so that is refused too.
    """
    pdg = particle_pdg(particle)
    trained = run.particle_pdgs
    names = ", ".join(particle_label(p) for p in trained)
    if trained and pdg not in trained:
        raise ValueError(f"--particle {particle!r} (PDG {pdg}) was not in the training data of {run.run_dir} "
                         f"(trained on {names} only); the model cannot generate other particles")
    if not trained:
        warnings.warn(f"the run {run.run_dir} records no training particle; --particle {particle!r} is written "
                      "as the label unchecked", UserWarning, stacklevel=3)
    return pdg


def check_energy_range(run: Run, lo_mev: float, hi_mev: float, what: str) -> None:
    """Warn when incident energies ``[lo_mev, hi_mev]`` leave the run's training range (extrapolation)."""
    enc = run.conditions
    if not getattr(enc, "fitted", False):
        return
    t_lo, t_hi = enc.energy_range_mev
    if lo_mev < t_lo * (1 - ENERGY_SLACK) or hi_mev > t_hi * (1 + ENERGY_SLACK):
        warnings.warn(f"{what}: incident energies {lo_mev / 1e3:.4g}-{hi_mev / 1e3:.4g} GeV leave the training range "
                      f"{t_lo / 1e3:.4g}-{t_hi / 1e3:.4g} GeV; the model extrapolates there and its showers are "
                      "not validated", UserWarning, stacklevel=3)


def generate(run_dir: str | Path, out_path: str | Path, n: int, *, energy: str | float | None = None,
             particle: str | int | None = None, conditions_from: str | Path | None = None, batch: int = 1024,
             device: str = "cpu", seed: int = 0, overwrite: bool = False, progress: bool = True,
             which: str = "final", shard: str | tuple[int, int] | None = None, dask: Any = None,
             threads: int | None = None) -> Path:
    """Generate ``n`` showers with the run in ``run_dir`` into ``out_path`` (native layout); return the path.

    ``energy``: GeV spec; ``particle``: name or PDG code (must be one the model was trained on
    if it is conditioned on the particle); ``conditions_from``: reference shower file whose
    conditions are copied. ``seed`` fixes both the conditions and the model's noise: rows come
    in blocks of :data:`GEN_BLOCK`, block ``b`` drawing from ``SeedSequence(seed,
    spawn_key=(b,))`` (the model is called on at most ``min(batch, GEN_BLOCK)`` rows at once,
    so a seed's showers depend on ``batch`` only below ``GEN_BLOCK``). ``shard="K/N"`` writes
    only shard K's blocks (see :mod:`calosim.scaleout`; :func:`calosim.scaleout.merge` of all
    shards equals the full run); ``dask`` (address or Client) samples the blocks on a Dask
    cluster whose workers can read ``run_dir`` (the conditions are drawn here). ``threads``:
    torch intra-op threads while sampling (default: the run's ``threads`` setting, else torch's).

    Warns (``UserWarning``) when the requested incident energies leave the training range, and
    refuses a ``particle`` the run was not trained on.
    """
    n, batch = int(n), int(batch)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if energy is not None and conditions_from is not None:
        raise ValueError("give either energy or conditions_from, not both")
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    sh = parse_shard(shard)
    out_path = Path(out_path)
    from .io import check_writable

    check_writable(out_path, overwrite=overwrite)  # before loading the model, not after the work
    if energy is not None:  # fail on a bad spec before any work
        from .train.conditions import parse_energy_spec
        parse_energy_spec(energy)
    run = load_run(run_dir, device=device, which=which)
    if particle is not None:
        particle = check_particle(run, particle)
    if energy is not None:
        e_lo, e_hi = _spec_bounds_mev(energy)
        check_energy_range(run, e_lo, e_hi, f"--energy {energy}")
    threads = threads if threads is not None else run.config.get("threads")

    out_conds = [c for c in raw_keys(run.conditions.names) if c in CONDITION_SHAPES]
    if conditions_from is not None:
        with open_showers(conditions_from) as ref:
            if len(ref) == 0:
                raise ValueError(f"{conditions_from}: reference file has no showers")
            e_ref = ref.incident_energies()
            check_energy_range(run, float(e_ref.min()), float(e_ref.max()), f"{conditions_from}")
            out_conds = sorted(set(out_conds) | set(ref.conditions), key=list(CONDITION_SHAPES).index)
    if particle is not None and "pdg" not in out_conds:
        out_conds.append("pdg")
    blocks = shard_blocks(sh, -(-n // GEN_BLOCK))
    attrs: dict[str, Any] = {
        "engine": "calosim-generate", "generator_run": str(Path(run_dir).resolve()), "model": run.model_name,
        "seed": int(seed), "n_requested": n, "batch": batch, "gen_block": GEN_BLOCK, "device": str(device),
        "weights": which, "run_step": run.info.get("step"), "train_data": run.info.get("data_path"),
        "energy": str(energy) if energy is not None else ("from reference" if conditions_from else "training distribution"),
        **shard_attrs(sh, blocks, n),
    }
    if particle is not None:
        attrs["particle"] = str(particle)
    if conditions_from is not None:
        attrs["conditions_from"] = str(Path(conditions_from).resolve())
    e_spec = None if energy is None else str(energy)
    mb = min(batch, GEN_BLOCK)
    # blocks is a contiguous range: its rows in closed form (a sum over 10^9 blocks would take minutes)
    n_rows = max(0, min(n, blocks.stop * GEN_BLOCK) - blocks.start * GEN_BLOCK) if len(blocks) else 0
    from .io import check_free_space, estimate_file_bytes

    check_free_space(out_path, estimate_file_bytes(n_rows, run.geometry.n_cells))
    label = shard_label(sh)

    with ExitStack() as stack:
        if threads:
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(int(threads))
        ref = stack.enter_context(open_showers(conditions_from)) if conditions_from is not None else None

        def items() -> Iterator[tuple[int, dict[str, np.ndarray], int]]:
            for b in blocks:
                rng, tseed = block_seeds(seed, b)
                yield b, block_conditions(run, b * GEN_BLOCK, min(n, (b + 1) * GEN_BLOCK), rng, energy=e_spec,
                                          particle=particle, ref=ref), tseed

        client = None
        if dask is not None:
            client = dask_client(dask) if isinstance(dask, str) else dask
            if isinstance(dask, str):
                stack.callback(client.close)
            fn: Any = functools.partial(_dask_sample, str(Path(run_dir).resolve()), str(device), which, mb)
        else:
            def fn(item: tuple[int, dict[str, np.ndarray], int]) -> np.ndarray:
                return run.sample(item[1], item[2], batch=mb)

        desc = f"generate {run.model_name}" + (f" ({label[:-2]})" if sh else "")
        update = stack.enter_context(progress_bar(n_rows, desc, enabled=progress))
        w = stack.enter_context(ShowerWriter(out_path, run.geometry, conditions=out_conds, attrs=attrs,
                                             overwrite=overwrite))
        conds_q: deque[dict[str, np.ndarray]] = deque()  # conditions of the blocks in flight, in order

        def tee() -> Iterator[tuple[int, dict[str, np.ndarray], int]]:
            for it in items():
                conds_q.append(it[1])
                yield it

        for showers in ordered_map(fn, tee(), dask=client,
                                   describe=lambda it: f"{label}block {it[0]} (showers {it[0] * GEN_BLOCK}:"
                                                       f"{min(n, (it[0] + 1) * GEN_BLOCK)})"):
            raw = conds_q.popleft()
            showers = readout(showers, run.geometry)  # the readout threshold, as for simulated showers
            for lo in range(0, len(showers), batch):
                hi = lo + batch
                w.append(showers[lo:hi], raw["incident_energies"][lo:hi], **{c: raw[c][lo:hi] for c in out_conds})
                update(len(showers[lo:hi]))
    return out_path


def _spec_bounds_mev(energy: str | float) -> tuple[float, float]:
    """(min, max) MeV an energy spec (GeV) can produce."""
    from .simulate.conditions import parse_range

    text = str(energy).strip()
    if "," in text and not text.lower().startswith("discrete:"):  # generate's list form "10,20,50"
        text = "discrete:" + text
    r = parse_range(text, "--energy (GeV)", scale=1000.0, min_value=0.0, min_inclusive=False)
    return r.low * 1000.0, r.high * 1000.0
