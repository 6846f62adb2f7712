"""The training loop shared by every model (see ``models/base.py`` for the model contract).

:func:`train` reads a shower file into memory, splits off a seeded validation set, fits the
preprocessing transform and condition encoder on the training split, and runs
``model.train_step`` for the configured number of steps with EMA, periodic validation,
checkpoints and logging. The run directory layout is described in :mod:`calosim.train.checkpoint`.

Reproducibility: the data order of epoch ``e`` is ``randperm`` seeded by ``(seed, e)``, so a
batch is a pure function of ``(seed, step)``; checkpoints hold the torch/numpy/python RNG
states, the context generator, optimisers and EMA. Resuming from ``checkpoints/last`` therefore
ends (on CPU) with bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import random
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..progress import Progress
from .. import features
from ..geometry import Geometry, resolve_geometry
from ..io import read_showers
from ..metrics.distances import separation_power
from ..models import ShowerModel, build_model, get_model_class
from ..models.config import TrainConfig, config_dict, validate_config
from . import checkpoint as ck
from .conditions import ConditionEncoder, make_pool, raw_conditions, save_pool
from .config import RESUMABLE_KEYS, config_diff, load_config_file, resolve_config
from .distributed import (DistEnv, all_gather_objects, all_reduce_grads, barrier, broadcast_module,
                          init_distributed, shard, shutdown_distributed)
from .transforms import ShowerTransform, get_transform, postprocess

__all__ = ["train", "Trainer", "TrainLoopContext", "EMA", "validation_observables"]

log = logging.getLogger("calosim.train")


def train(model_name: str, data_path: str | Path, out_dir: str | Path, *, config: dict[str, Any] | None = None,
          config_file: str | Path | None = None, epochs: int | None = None, steps: int | None = None,
          device: str = "cpu", seed: int = 0, resume: bool = False, progress: bool = True,
          val_fraction: float = 0.1, overwrite: bool = False) -> Path:
    """Train model ``model_name`` on the shower file ``data_path``; return the run directory.

    ``config`` (dict) and ``config_file`` (TOML) override the model's ``default_config``;
    ``steps``/``epochs`` override both. ``resume=True`` continues from ``checkpoints/last``
    (or starts fresh if the directory holds no checkpoint); ``overwrite=True`` replaces a
    previous run. Under ``torchrun`` the run is data-parallel and only rank 0 writes files.
    """
    trainer = Trainer(model_name, data_path, out_dir, config=config, config_file=config_file, epochs=epochs,
                      steps=steps, device=device, seed=seed, resume=resume, progress=progress,
                      val_fraction=val_fraction, overwrite=overwrite)
    try:
        return trainer.run()
    except BaseException:
        trainer.discard()
        raise
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------
# context handed to models
# ------------------------------------------------------------------------------------------
class TrainLoopContext:
    """Implements :class:`calosim.models.base.TrainContext`."""

    def __init__(self, device: torch.device, transform: ShowerTransform, conditions: ConditionEncoder,
                 generator: torch.Generator, optimizers: dict[str, torch.optim.Optimizer], env: DistEnv,
                 clip_grad: float | None, scalers: dict[str, Any], amp_dtype: torch.dtype | None,
                 schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] | None = None) -> None:
        self.device = device
        self.step = 0
        self.transform = transform
        self.conditions = conditions
        self.generator = generator
        self.optimizers = optimizers
        self.env = env
        self.clip_grad = clip_grad
        self.scalers = scalers
        self.amp_dtype = amp_dtype
        self.schedulers = dict(schedulers or {})
        self.on_step: Any = None  # called with the optimiser name after each step (pretraining progress)
        self._params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in optimizers.items()}

    def backward_step(self, loss: Tensor, optimizer: str, *, retain_graph: bool = False) -> None:
        """zero_grad, backward (scaled under fp16 AMP), all-reduce grads over ranks, clip, step,
        then the optimiser's learning-rate schedule (if the model declared one)."""
        try:
            opt = self.optimizers[optimizer]
        except KeyError:
            raise KeyError(f"unknown optimizer {optimizer!r}; the model made {sorted(self.optimizers)}") from None
        params = self._params[optimizer]
        opt.zero_grad(set_to_none=True)
        scaler = self.scalers.get(optimizer)
        # backward outside autocast, as recommended; a no-op context on CPU
        with torch.autocast(self.device.type, enabled=False) if self.amp_dtype is not None else nullcontext():
            (scaler.scale(loss) if scaler is not None else loss).backward(retain_graph=retain_graph)
        all_reduce_grads(params, self.env)
        if self.clip_grad:
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], float(self.clip_grad))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched = self.schedulers.get(optimizer)
        if sched is not None:
            sched.step()
        if self.on_step is not None:
            self.on_step(optimizer)


# ------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the state of ``model.<name>`` for ``name in names``.

    Keys are the model's ``state_dict`` keys, so the EMA state can replace the live weights in a
    model ``state_dict``. Floating tensors are averaged, others (counters) copied.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], decay: float, warmup: bool = True) -> None:
        self.model = model
        self.names = tuple(names)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        for n in self.names:
            if not isinstance(getattr(model, n, None), nn.Module):
                raise ValueError(f"ema_modules names {n!r}, which is not a sub-module of {type(model).__name__}")
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in self._live().items()}

    def _live(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for n in self.names:
            for k, v in getattr(self.model, n).state_dict().items():
                out[f"{n}.{k}"] = v
        return out

    @torch.no_grad()
    def update(self, step: int) -> None:
        if not self.names:
            return
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        for k, v in self._live().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ck.RunError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the model (restored exactly afterwards)."""
        if not self.names:
            yield
            return
        with torch.no_grad():
            backup = {k: v.detach().clone() for k, v in self._live().items()}
            self._load(self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                self._load(backup)

    def _load(self, state: dict[str, Tensor]) -> None:
        for n in self.names:
            mod = getattr(self.model, n)
            mod.load_state_dict({k[len(n) + 1:]: v for k, v in state.items() if k.startswith(n + ".")})

    def model_state(self) -> dict[str, Tensor]:
        """The model's ``state_dict`` with the EMA weights in place of the live ones."""
        state = dict(self.model.state_dict())
        state.update(self.shadow)
        return state


# ------------------------------------------------------------------------------------------
# validation observables (cheap, numpy; the metrics package has the full set)
# ------------------------------------------------------------------------------------------
def validation_observables(showers: np.ndarray, e_inc: np.ndarray, geometry: Geometry) -> dict[str, np.ndarray]:
    """Cheap per-shower observables, each ``(N,)``: ``etot_ratio`` = E_tot / E_inc,
    ``frac_<i>`` = E_layer / E_tot, ``occupancy_<i>`` = fraction of the layer's cells above the
    threshold and ``width_<i>`` = energy-weighted RMS distance (mm) of the cells from the
    layer's centroid, for every layer ``i`` (shapes as well as energies, so the best
    checkpoint is not chosen on energies alone). Features from :mod:`calosim.features`."""
    layers = features.layer_energies(showers, geometry)
    etot = layers.sum(1)
    out = {"etot_ratio": etot / np.asarray(e_inc, dtype=np.float64).ravel()}
    frac = np.divide(layers, etot[:, None], out=np.zeros_like(layers), where=etot[:, None] > 0)
    occ = features.occupancy(showers, geometry, geometry.threshold_mev)
    width = np.sqrt((features.widths(showers, geometry) ** 2).sum(-1))  # (N, L): x and y in quadrature
    for i in range(geometry.n_layers):
        out[f"frac_{i}"] = frac[:, i]
        out[f"occupancy_{i}"] = occ[:, i]
        out[f"width_{i}"] = width[:, i]
    return out


# ------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------
def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, stream)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] % (2**63 - 1))


class Trainer:
    """One training run; :func:`train` is ``Trainer(...).run()``. After ``run()``, ``model``,
    ``ema``, ``optimizers`` and ``step`` hold the final state (used by the DDP tests)."""

    def __init__(self, model_name: str, data_path: str | Path, out_dir: str | Path, *,
                 config: dict[str, Any] | None = None, config_file: str | Path | None = None,
                 epochs: int | None = None, steps: int | None = None, device: str = "cpu", seed: int = 0,
                 resume: bool = False, progress: bool = True, val_fraction: float = 0.1,
                 overwrite: bool = False) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.env = init_distributed(device)
        self.out, self.resumed = Path(out_dir), False
        self._lock: ck.RunLock | None = None
        self._created_dir = False
        try:
            self._setup(model_name, Path(data_path), Path(out_dir), config, config_file, epochs, steps,
                        int(seed), resume, progress, float(val_fraction), overwrite)
        except BaseException:
            self.discard()
            self.close()
            raise

    # ---- setup ----------------------------------------------------------------------------
    def _prepare_dir(self, out: Path, resume: bool, overwrite: bool) -> str:
        """'fresh' or 'resume'; raises if ``out`` holds something we must not touch."""
        if out.exists() and not out.is_dir():
            raise ck.RunError(f"{out}: exists and is not a directory")
        entries = sorted(e for e in out.iterdir() if e.name != ck.LOCK_FILE) if out.is_dir() else []
        ours = {Path(f).parts[0] for f in ck.RUN_FILES}
        if resume and (out / ck.LAST_CKPT).is_file():
            return "resume"
        if not entries:
            return "fresh"
        if overwrite or (resume and all(e.name in ours for e in entries)):
            return "clear"
        hint = "pass resume=True (--resume) to continue it or overwrite=True (--overwrite) to replace it"
        raise ck.RunError(f"{out}: directory is not empty; {hint}")

    def _setup(self, model_name: str, data_path: Path, out: Path, config: dict[str, Any] | None,
               config_file: str | Path | None, epochs: int | None, steps: int | None, seed: int, resume: bool,
               progress: bool, val_fraction: float, overwrite: bool) -> None:
        env = self.env
        self.out, self.seed, self.device = out, seed, env.device
        self.progress = progress and env.is_main
        if env.is_main:  # one train per run directory: a second one would interleave its files
            self._lock, self._created_dir = ck.lock_run_dir(out)
        mode = self._prepare_dir(out, resume, overwrite)
        barrier(env)  # every rank has looked at the directory before rank 0 changes it
        if mode == "clear" and env.is_main:
            for f in ck.RUN_FILES:
                if f != ck.LOCK_FILE:
                    (out / f).unlink(missing_ok=True)
        self.resumed = mode == "resume"
        cls = get_model_class(model_name)
        self.model_name = model_name
        stored: dict[str, Any] | None = None
        if self.resumed:
            stored = ck.read_json(out / ck.CONFIG_FILE)
            cfg = self._resume_config(cls, stored, model_name, data_path, seed, val_fraction, config, config_file, epochs, steps)
            geometry: Geometry | str | None = Geometry.from_dict(stored["geometry"])
        else:
            cfg = resolve_config(cls.Config, config_file=config_file, config=config, epochs=epochs, steps=steps)
            geometry = cfg.geometry
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        # ---- data: read, split, fit preprocessing, pre-transform -----------------------------
        t0 = time.perf_counter()
        data = read_showers(data_path, geometry=resolve_geometry(geometry) if isinstance(geometry, str) else geometry)
        self.geometry = data.geometry
        n = len(data)
        if n < 2:
            raise ValueError(f"{data_path}: needs at least 2 showers to train, found {n}")
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(max(int(round(val_fraction * n)), 1 if val_fraction > 0 else 0), n - 1)
        val_idx = np.sort(perm[:n_val][: cfg.val_size])
        train_idx = np.sort(perm[n_val:])
        self.n_train, self.n_val = len(train_idx), n_val
        raw = raw_conditions(data)
        fingerprint = ck.data_fingerprint(data.showers, data.incident_energies, data.conditions)
        if self.resumed and stored is not None and stored.get("data_fingerprint") not in (None, fingerprint):
            raise ValueError(f"cannot resume {out}: the data at {data_path} changed since the run started "
                             f"(content fingerprint {stored['data_fingerprint']} -> {fingerprint})")
        train_raw = {k: v[train_idx] for k, v in raw.items()}
        showers_t = torch.from_numpy(data.showers[train_idx])
        e_t = torch.from_numpy(data.incident_energies[train_idx])
        if self.resumed:
            pt, pm = ck.load_tensors(out / ck.PREPROCESSING_FILE)
            self.transform, self.encoder = ck.build_preprocessing(self.geometry, pt, pm, str(out / ck.PREPROCESSING_FILE))
        else:
            self.transform = get_transform(cfg.transform, self.geometry, **cfg.transform_kw)
            self.transform.fit(showers_t, e_t)
            self.encoder = ConditionEncoder(cfg.conditions).fit(train_raw)
        with torch.no_grad():
            self.X = torch.empty(self.n_train, self.transform.out_dim)
            for a in range(0, self.n_train, 65536):
                self.X[a:a + 65536] = self.transform(showers_t[a:a + 65536], e_t[a:a + 65536])
        if not torch.isfinite(self.X).all():
            raise ValueError(f"transform {cfg.transform!r} produced non-finite values on {data_path}")
        self.C = self.encoder.encode(train_raw)
        del showers_t, e_t
        self.val_showers = data.showers[val_idx]
        self.val_e = data.incident_energies[val_idx]
        self.val_cond = self.encoder.encode({k: v[val_idx] for k, v in raw.items()})
        pool = make_pool(train_raw, cfg.pool_size, seed)
        particle = data.attrs.get("particle")
        del data, raw, train_raw
        self.load_time = time.perf_counter() - t0

        # ---- model, optimisers, EMA, context ---------------------------------------------------
        torch.manual_seed(seed)
        self.model: ShowerModel = build_model(cls, self.geometry, self.encoder.cond_dim, cfg,
                                              self.transform.out_dim).to(self.device)
        broadcast_module(self.model, env)
        self.optimizers = self.model.make_optimizers()
        self.transform.to(self.device)
        # total steps are known only below; schedules are built once they are (see _build_schedules)
        self.ema = EMA(self.model, tuple(cls.ema_modules), cfg.ema, cfg.ema_warmup)
        amp = cfg.amp
        amp_dtype = None
        if amp and self.device.type == "cuda":
            amp_dtype = torch.bfloat16 if str(amp).lower() in ("bf16", "bfloat16") else torch.float16
        elif amp:
            warnings.warn("config 'amp' is ignored on CPU (mixed precision needs CUDA)", stacklevel=3)
        self.amp_dtype = amp_dtype
        scalers = ({k: torch.amp.GradScaler("cuda") for k in self.optimizers} if amp_dtype == torch.float16 else {})
        self.ctx = TrainLoopContext(self.device, self.transform, self.encoder, torch.Generator(device=self.device),
                                    self.optimizers, env, cfg.clip_grad, scalers, amp_dtype)
        self._stat_hook = type(self.model).fit_statistics is not ShowerModel.fit_statistics
        # Per-rank training RNG streams (ranks must draw different noise; init weights were seeded above).
        torch.manual_seed(_mix(seed, env.rank, 1))
        np.random.seed(_mix(seed, env.rank, 2) % 2**32)
        random.seed(_mix(seed, env.rank, 3))
        self.ctx.generator.manual_seed(_mix(seed, env.rank, 4))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(_mix(seed, env.rank, 5))

        # ---- steps -------------------------------------------------------------------------------
        bs = cfg.batch_size // env.world_size
        if bs < 1:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the number of ranks {env.world_size}")
        shard_len = -(-self.n_train // env.world_size)
        if bs > shard_len:
            warnings.warn(f"batch size {bs} per rank exceeds the {shard_len} training showers per rank; using {shard_len}",
                          stacklevel=3)
            bs = shard_len
        self.batch = bs
        self.steps_per_epoch = shard_len // bs
        self.total_steps = cfg.steps if cfg.steps is not None else int(cfg.epochs or 0) * self.steps_per_epoch
        if self.total_steps < 1:
            raise ValueError("the run has no steps (steps/epochs must be >= 1)")
        self._build_schedules()
        self.step = 0
        self.statistics_done = not self._stat_hook
        self.pretrain_done = False
        self.pretrain_summary: dict[str, float] = {}
        self.best_score = math.inf
        self.best_step: int | None = None
        self.last_val: dict[str, float] = {}
        self._order_epoch = -1
        self._sums: dict[str, float] = {}  # running loss sums of the current log interval (checkpointed)
        self._n_interval = 0
        self._order = torch.empty(0, dtype=torch.long)

        # ---- files -------------------------------------------------------------------------------
        run_cfg = {
            "model": model_name, "config": config_dict(cfg), "geometry": self.geometry.to_dict(), "data_path": str(data_path.resolve()),
            "conditions": self.encoder.names, "condition_columns": self.encoder.columns,
            "transform": self.transform.config(), "seed": seed, "val_fraction": val_fraction,
            "n_train": self.n_train, "n_val": self.n_val, "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "world_size": env.world_size, "particle": particle,
            "n_parameters": self.model.n_parameters, "data_fingerprint": fingerprint,
        }
        if self.resumed:  # first the checkpoint: a resume that fails must leave the run's files as they were
            self._load_checkpoint(out / ck.LAST_CKPT)
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "checkpoints").mkdir(exist_ok=True)
            ck.write_json(out / ck.CONFIG_FILE, run_cfg)
            if not self.resumed:
                ck.write_json(out / ck.VERSIONS_FILE, provenance(seed, env, str(self.device)))
                pt, pm = ck.preprocessing_tensors(self.transform, self.encoder)
                ck.save_tensors(out / ck.PREPROCESSING_FILE, pt, pm)
                save_pool(out / ck.POOL_FILE, pool)
            else:
                prov = ck.read_json(out / ck.VERSIONS_FILE) if (out / ck.VERSIONS_FILE).is_file() else {}
                prov.setdefault("resumes", []).append(provenance(seed, env, str(self.device)))
                ck.write_json(out / ck.VERSIONS_FILE, prov)
        barrier(env)

    def _resume_config(self, cls: type[ShowerModel], stored: dict[str, Any], model_name: str, data_path: Path,
                       seed: int, val_fraction: float, config: dict[str, Any] | None, config_file: str | Path | None,
                       epochs: int | None, steps: int | None) -> TrainConfig:
        where = self.out / ck.CONFIG_FILE
        try:
            base = stored["config"]
            checks = [("model", stored["model"], model_name), ("seed", stored["seed"], seed),
                      ("val_fraction", stored["val_fraction"], val_fraction),
                      ("data_path", stored["data_path"], str(data_path.resolve()))]
        except (KeyError, TypeError) as exc:
            raise ck.RunError(f"{where}: malformed run config (missing {exc})") from None
        if not isinstance(base, dict):
            raise ck.RunError(f"{where}: 'config' must be a table of keys and values, got {json.dumps(base)[:60]}")
        for name, old, new in checks:
            if old != new:
                raise ValueError(f"cannot resume {self.out}: {name} was {old!r}, now {new!r}")
        overrides = {**(load_config_file(config_file) if config_file else {}), **(config or {})}
        validate_config(cls.Config, overrides, str(config_file) if config_file and not config else "config", check=False)
        changed = config_diff(base, {**base, **json.loads(json.dumps(overrides, default=str))})
        if changed:
            raise ValueError(f"cannot resume {self.out}: config keys {changed} differ from the stored run "
                             f"(only {sorted(RESUMABLE_KEYS)} may change)")
        cfg = {**base, **overrides}
        if steps is not None:
            cfg["steps"], cfg["epochs"] = int(steps), None
        elif epochs is not None:
            cfg["steps"], cfg["epochs"] = None, int(epochs)
        return validate_config(cls.Config, cfg, str(where))

    # ---- data order --------------------------------------------------------------------------
    def _epoch_order(self, epoch: int, stream: int) -> Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, stream))
        return shard(torch.randperm(self.n_train, generator=g), self.env)

    def _get(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return (self.X[idx].to(self.device, non_blocking=True), self.C[idx].to(self.device, non_blocking=True))

    def batch_at(self, step: int) -> tuple[Tensor, Tensor]:
        """This rank's batch ``(x (B, data_dim), cond (B, cond_dim))`` of global step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order, self._order_epoch = self._epoch_order(epoch, 0), epoch
        return self._get(self._order[within * self.batch:(within + 1) * self.batch])

    def _pretrain_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        k = 0
        while True:  # independent of the main stream so pretraining does not shift the main data order
            order = self._epoch_order(k, 1)
            for i in range(self.steps_per_epoch):
                yield self._get(order[i * self.batch:(i + 1) * self.batch])
            k += 1

    # ---- checkpoints -------------------------------------------------------------------------
    def _rng_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        t = {"torch": torch.get_rng_state(), "ctx": self.ctx.generator.get_state()}
        if self.device.type == "cuda":
            t["cuda"] = torch.cuda.get_rng_state(self.device)
        name, keys, pos, has_gauss, cached = np.random.get_state()
        t["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        pv, pstate, pgauss = random.getstate()
        meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [pv, list(pstate), pgauss]}
        return t, meta

    def _set_rng_state(self, t: dict[str, Tensor], meta: dict[str, Any]) -> None:
        torch.set_rng_state(t["torch"])
        self.ctx.generator.set_state(t["ctx"])
        if self.device.type == "cuda" and "cuda" in t:
            torch.cuda.set_rng_state(t["cuda"], self.device)
        name, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, t["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        pv, pstate, pgauss = meta["python"]
        random.setstate((pv, tuple(pstate), pgauss))

    def _state(self, all_ranks: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
        rngs = all_gather_objects(self._rng_state(), self.env) if all_ranks else [self._rng_state()]
        tensors: dict[str, Tensor] = {}
        tensors.update(ck.prefixed(self.model.state_dict(), "model"))
        tensors.update(ck.prefixed(self.ema.state_dict(), "ema"))
        optim = {k: ck.flatten_state(o.state_dict(), f"optim/{k}", tensors) for k, o in self.optimizers.items()}
        scalers = {k: ck.flatten_state(s.state_dict(), f"scaler/{k}", tensors) for k, s in self.ctx.scalers.items()}
        rng_meta = []
        for r, (rt, rm) in enumerate(rngs):
            tensors.update(ck.prefixed(rt, f"rng/{r}"))
            rng_meta.append(rm)
        sched = {k: ck.flatten_state(v.state_dict(), f"sched/{k}", tensors) for k, v in self.ctx.schedulers.items()}
        meta = {"step": self.step, "pretrain_done": self.pretrain_done, "statistics_done": self.statistics_done,
                "sched": sched, "pretrain_summary": self.pretrain_summary,
                "best_score": self.best_score if math.isfinite(self.best_score) else None, "best_step": self.best_step,
                "optim": optim, "scalers": scalers, "rng": rng_meta, "world_size": self.env.world_size,
                "model": self.model_name, "seed": self.seed, "val": self.last_val,
                "log_sums": self._sums, "log_count": self._n_interval}
        return tensors, meta

    def _save_checkpoint(self, which: str, all_ranks: bool = True) -> None:
        tensors, meta = self._state(all_ranks)
        if not self.env.is_main:
            return
        path = self.out / (ck.LAST_CKPT if which == "last" else ck.BEST_CKPT)
        ck.save_tensors(path, tensors, meta)
        ck.write_json(path.with_suffix(".json"), {"step": self.step, "best_score": meta["best_score"],
                                                  "best_step": self.best_step, "val": self.last_val,
                                                  "note": "informative copy; the state is in the .safetensors header"})

    def _load_checkpoint(self, path: Path) -> None:
        tensors, meta = ck.load_tensors(path)
        try:
            self.model.load_state_dict(ck.unprefixed(tensors, "model"))
            self.ema.load_state_dict(ck.unprefixed(tensors, "ema"))
            for k, o in self.optimizers.items():
                o.load_state_dict(ck.unflatten_state(meta["optim"][k], tensors))
            for k, s in self.ctx.scalers.items():
                if k in meta.get("scalers", {}):
                    s.load_state_dict(ck.unflatten_state(meta["scalers"][k], tensors))
            saved_world = int(meta["world_size"])
            if saved_world != self.env.world_size:
                warnings.warn(f"{path}: saved with {saved_world} ranks, resuming with {self.env.world_size}: "
                              "the continuation is valid but not bit-identical", stacklevel=3)
            r = self.env.rank % saved_world
            self._set_rng_state(ck.unprefixed(tensors, f"rng/{r}"), meta["rng"][r])
            self.step = int(meta["step"])
            for k, sc in self.ctx.schedulers.items():
                sc.load_state_dict(ck.unflatten_state(meta["sched"][k], tensors))
            self.pretrain_done = bool(meta["pretrain_done"])
            self.statistics_done = bool(meta.get("statistics_done", True))
            self.pretrain_summary = dict(meta.get("pretrain_summary") or {})
            self.best_score = math.inf if meta.get("best_score") is None else float(meta["best_score"])
            self.best_step = meta.get("best_step")
            self.last_val = dict(meta.get("val") or {})
            self._sums = {k: float(v) for k, v in (meta.get("log_sums") or {}).items()}
            self._n_interval = int(meta.get("log_count") or 0)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ck.RunError(f"{path}: checkpoint does not match this run ({type(exc).__name__}: {exc})") from None
        if self.env.is_main:  # drop log lines written after this checkpoint (they will be redone)
            mpath = self.out / ck.METRICS_FILE
            if mpath.is_file():
                keep = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
                ck.write_text_atomic(mpath, "".join(ln + "\n" for ln in keep))
        log.info("resuming %s from step %d", self.out, self.step)

    # ---- logging -----------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.out / ck.METRICS_FILE, "a") as f:
                f.write(json.dumps(record, sort_keys=True, default=float) + "\n")

    # ---- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Sample the validation conditions with EMA weights; separation powers of E_tot/E_inc and layer fractions."""
        if self.n_val == 0:
            return {}
        t0 = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        gen = torch.Generator(device=self.device).manual_seed(_mix(self.seed, 99))
        vb = self.cfg.val_batch
        outs, n_bad = [], 0
        # fork_rng: models that ignore `generator` must not shift the training RNG stream
        with torch.random.fork_rng(devices=devices), self.ema.swapped():
            self.model.eval()
            try:
                with torch.inference_mode():
                    for a in range(0, len(self.val_cond), vb):
                        c = self.val_cond[a:a + vb].to(self.device)
                        e = torch.from_numpy(self.val_e[a:a + vb]).to(self.device)
                        x = self.model.sample(c, gen)
                        mev, bad = postprocess(self.transform.inverse(x.float(), e), self.geometry.threshold_mev)
                        n_bad += bad
                        outs.append(mev.cpu().numpy())
            finally:
                self.model.train()
        gen_showers = np.concatenate(outs)
        ref_obs = validation_observables(self.val_showers, self.val_e, self.geometry)
        gen_obs = validation_observables(gen_showers, self.val_e, self.geometry)
        bins = self.cfg.val_bins
        res = {f"sp_{k}": separation_power(ref_obs[k], gen_obs[k], n_bins=bins, name=k) for k in ref_obs}
        res["score"] = float(np.mean(list(res.values())))
        res["etot_ratio_mean_gen"] = float(np.mean(gen_obs["etot_ratio"]))
        res["etot_ratio_mean_ref"] = float(np.mean(ref_obs["etot_ratio"]))
        res["nan_cells"] = n_bad
        res["time_s"] = time.perf_counter() - t0
        if n_bad:
            warnings.warn(f"validation at step {self.step}: {n_bad} non-finite generated cells set to 0", RuntimeWarning,
                          stacklevel=2)
        return res

    # ---- main loop -----------------------------------------------------------------------------
    def _build_schedules(self) -> None:
        """The model's declared learning-rate schedules, one scheduler per optimiser name."""
        declared = self.model.lr_schedules(self.total_steps)
        unknown = sorted(set(declared) - set(self.optimizers))
        if unknown:
            raise ValueError(f"{self.model_name}: lr_schedules names optimisers {unknown}; the model made "
                             f"{sorted(self.optimizers)}")
        self.ctx.schedulers = {k: sched.build(self.optimizers[k]) for k, sched in declared.items()}

    def _fit_statistics(self, batches: Iterator[tuple[Tensor, Tensor]]) -> None:
        """The model's data statistics from the first training batches, once per run; rank 0's
        are copied to every rank (each rank sees other batches)."""
        self.model.train()
        self.ctx.step = 0
        parts = [next(batches) for _ in range(max(int(self.model.n_statistics_batches()), 1))]
        self.model.fit_statistics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), self.ctx)
        broadcast_module(self.model, self.env)
        self.statistics_done = True

    def _pretrain(self, batches: Iterator[tuple[Tensor, Tensor]]) -> None:
        t0 = time.perf_counter()
        self.model.train()
        self.ctx.step = 0
        total = self.model.pretrain_steps()
        bar = Progress(self.progress, unit="steps")
        with bar:  # every optimiser step of the stage advances the bar: progress is visible
            task = bar.add_task(f"{self.model_name} pretraining", total=total, completed=0, info="")
            self.ctx.on_step = lambda name: bar.update(task, advance=1, info=name)
            try:
                summary = self.model.pretrain(batches, self.ctx) or {}
            finally:
                self.ctx.on_step = None
        # statistics refined during the stage (buffers) stay identical on all ranks; the weights
        # are already, as every step all-reduced its gradients
        broadcast_module(self.model, self.env, parameters=False)
        self.pretrain_summary = {k: float(v) for k, v in summary.items()}
        self.pretrain_done = True
        self._log({"step": 0, "pretrain": self.pretrain_summary, "time_s": time.perf_counter() - t0})
        self._save_checkpoint("last")

    def run(self) -> Path:
        """Run (or continue) training to ``total_steps``; write the final files; return the run dir."""
        cfg, env = self.cfg, self.env
        log_every, val_every, ck_every = cfg.log_every, cfg.val_every, cfg.checkpoint_every
        start_step = self.step
        t_start = time.perf_counter()
        batches = self._pretrain_batches()  # statistics, then pretraining, on one stream
        if not self.statistics_done:
            self._fit_statistics(batches)
        if type(self.model).pretrain is not ShowerModel.pretrain and not self.pretrain_done:
            self._pretrain(batches)
        self.model.train()
        t_interval, n_timed = time.perf_counter(), 0
        train_time = 0.0
        bar = Progress(self.progress, unit="steps")
        with bar:
            task = bar.add_task(f"{self.model_name}", total=self.total_steps, completed=self.step, info="")
            try:
                while self.step < self.total_steps:
                    t_step = time.perf_counter()
                    step = self.step
                    self.ctx.step = step
                    x, c = self.batch_at(step)
                    with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
                        losses = self.model.train_step(x, c, self.ctx)
                    self.ema.update(step)
                    self.step = step + 1
                    for k, v in (losses or {}).items():
                        self._sums[k] = self._sums.get(k, 0.0) + float(v)
                    self._n_interval += 1
                    n_timed += 1
                    train_time += time.perf_counter() - t_step
                    done = self.step == self.total_steps
                    record: dict[str, Any] | None = None
                    if self.step % log_every == 0 or done:
                        dt = max(time.perf_counter() - t_interval, 1e-9)
                        rate = n_timed * self.batch * env.world_size / dt
                        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                                  "loss": {k: v / self._n_interval for k, v in self._sums.items()},
                                  "showers_per_s": rate, "ms_per_step": 1000 * dt / n_timed}
                        bar.update(task, info=" ".join(f"{k}={v:.3g}" for k, v in record["loss"].items())
                                   + f" | {rate:,.0f} showers/s")
                        self._sums, self._n_interval = {}, 0
                    if (val_every and self.step % val_every == 0) or done:
                        val = self.validate() if env.is_main else {}
                        if val:
                            self.last_val = val
                            record = {**(record or {"step": self.step}), "val": val}
                            if val["score"] < self.best_score:
                                self.best_score, self.best_step = val["score"], self.step
                                self._save_checkpoint("best", all_ranks=False)
                    if record is not None:
                        self._log(record)
                        t_interval, n_timed = time.perf_counter(), 0  # validation/IO time is not throughput
                    if self.step % ck_every == 0 or done:
                        self._save_checkpoint("last")
                    bar.update(task, completed=self.step)
            except KeyboardInterrupt:
                # Ctrl-C: keep a resumable point (a complete step is a consistent state).
                if self.step > start_step:
                    self._save_checkpoint("last", all_ranks=False)
                raise
        total_time = time.perf_counter() - t_start
        self._finish(start_step, total_time, train_time)
        barrier(env)
        return self.out

    def _finish(self, start_step: int, total_time: float, train_time: float) -> None:
        if not self.env.is_main:
            return
        state, final_step = self.ema.model_state(), self.step
        best = self.out / ck.BEST_CKPT
        if self.cfg.final_weights == "best" and self.best_step is not None and best.is_file():
            state = ck.ema_model_weights(ck.load_tensors(best)[0])  # the best validation's EMA weights
            final_step = int(self.best_step)
        tensors = ck.prefixed(state, "model")
        pt, pm = ck.preprocessing_tensors(self.transform, self.encoder)
        tensors.update(pt)
        meta = {**pm, "model": self.model_name, "step": final_step, "config": config_dict(self.cfg),
                "ema_modules": list(self.ema.names), "data_dim": self.transform.out_dim}
        ck.save_tensors(self.out / ck.MODEL_FILE, tensors, meta)
        n_steps = self.step - start_step
        summary = {
            "model": self.model_name, "steps": self.step, "steps_this_session": n_steps,
            "epochs": self.step / self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.batch * self.env.world_size, "world_size": self.env.world_size,
            "n_train": self.n_train, "n_val": self.n_val, "n_parameters": self.model.n_parameters,
            "load_time_s": self.load_time, "time_s": total_time, "train_time_s": train_time,
            "ms_per_step": 1000 * train_time / n_steps if n_steps else None,
            "showers_per_s": n_steps * self.batch * self.env.world_size / train_time if train_time > 0 else None,
            "best_score": self.best_score if math.isfinite(self.best_score) else None, "best_step": self.best_step,
            "final_weights_step": final_step, "final_val": self.last_val, "pretrain": self.pretrain_summary,
            "resumed_from": start_step if self.resumed else None,
            "device": str(self.device),
        }
        ck.write_json(self.out / ck.SUMMARY_FILE, summary)

    def discard(self) -> None:
        """After a failure: remove what a fresh run wrote unless a checkpoint makes it resumable
        (a failed resume leaves the directory as it found it)."""
        if not self.env.is_main or self.resumed or self._lock is None or (self.out / ck.LAST_CKPT).is_file():
            return
        for f in ck.RUN_FILES:
            if f != ck.LOCK_FILE:
                (self.out / f).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.out / "checkpoints").rmdir()  # only if empty
        self._lock.release()
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.out.rmdir()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        shutdown_distributed(self.env)


# ------------------------------------------------------------------------------------------
def provenance(seed: int, env: DistEnv, device: str) -> dict[str, Any]:
    """Versions and origin of a run (no hostname or user name)."""
    import h5py
    import scipy

    from .. import __version__

    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "h5py": h5py.__version__, "calosim": __version__,
        "platform": f"{platform.system()}-{platform.machine()}", "command": " ".join(sys.argv), "seed": seed,
        "device": device, "world_size": env.world_size, "cuda": torch.version.cuda,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import safetensors
        out["safetensors"] = safetensors.__version__
    except (ImportError, AttributeError):
        pass
    out.update(_git_info())
    return out


def _git_info() -> dict[str, Any]:
    src = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"git_commit": None}
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=5)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
