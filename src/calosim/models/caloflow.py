"""CaloFlow: two normalising flows, a masked autoregressive teacher and a fast inverse-autoregressive
student (Krause & Shih, CaloFlow I arXiv:2106.05285 and II arXiv:2110.11377; seed 003 "flow based
generation").

A shower ``x (B, n_cells)`` (the ``scale`` transform's E_cell / E_inc) is factorised as

1. **flow I**, ``p(t | cond)``: the energy vector ``t`` (:func:`~calosim.models.energy.energy_vector`
   of the layer energies E_l / E_inc: log of the total, then the logits of CaloFlow's u-space
   stick-breaking fractions), standardised; zuko autoregressive blocks conditioned on the
   encoded conditions, used as an IAF trained by likelihood (L values: its density inverts
   them cheaply, and it samples in one pass per block);
2. **flow II**, ``p(y | cond, t)``: the cells in CaloFlow's preprocessed space, conditioned on
   ``(cond, t)``. The steps, all invertible and saved as buffers/config (:class:`Preprocessing`):
   each layer divided by its energy, uniform noise ``U(0, noise)`` (in units of the layer
   energy) against the zero cells, so they are a continuous band rather than a delta,
   ``logit(alpha + (1 - 2 alpha) w)`` and a per-cell standardisation fitted on the first batches.
   Generation inverts them, zeroes cells below ``cut`` of their layer energy (above the noise
   band, whose edge a flow blurs) and scales every layer to flow I's layer energy exactly.

Flow II exists twice. The **teacher** is a masked autoregressive flow (MAF, zuko's
``MaskedAutoregressiveTransform`` blocks, affine): the density is one pass per block, so it is
trained by likelihood, but sampling inverts each block one group of cells at a time
(``passes`` passes; ``passes = None`` is CaloFlow's fully autoregressive ``n_cells``). The **student** is an inverse-autoregressive flow (IAF: the same blocks used in the other
direction) with one block per teacher block: sampling is one pass per block. It is trained with
the teacher frozen by CaloFlow II's probability-density distillation: per block (student block
``k`` inverts teacher block ``k`` on the teacher's own intermediate states of real showers), in
x-space (teacher ``z`` of a real shower -> student -> the shower) and in z-space (student shower
of a normal ``z`` -> teacher -> ``z``); ``kl_weight`` adds the reverse KL ``E[log q_S - log p_T]``
of student samples (always logged as ``kl``, in nats per shower).

Training is one ``calosim train``: :meth:`CaloFlow.pretrain` fits flow I and the teacher by
likelihood (``teacher_steps`` steps), then the main loop distils the
student (``steps`` steps; its validations, EMA and best weights are the student's). ``sampler``
picks which flow II ``sample``/``export_module`` use (``student``, the default, or ``teacher``);
:func:`with_sampler` copies a run with the other one for ``calosim generate/bench/export``.
:func:`held_out_log_likelihood` gives the per-shower log-likelihood of held-out showers (nats, in the
preprocessed space above) for either.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear
from zuko.transforms import MonotonicAffineTransform

from . import register_model
from ._random import standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param
from .. import features
from .energy import energy_fractions, energy_vector

__all__ = ["CaloFlow", "Preprocessing", "AutoregressiveStack", "distillation_losses", "held_out_log_likelihood",
           "with_sampler"]

_LOG_2PI = math.log(2.0 * math.pi)
_MIN_SLOPE = 1e-3  # zuko's MonotonicAffineTransform default: log-scales soft-clipped to |log(1e-3)|


def _normal_log_prob(z: Tensor) -> Tensor:
    """Standard-normal log-density ``(B,)`` of ``z (B, D)``."""
    return -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * _LOG_2PI


# ------------------------------------------------------------------------------------------
# the autoregressive flows
# ------------------------------------------------------------------------------------------
class AutoregressiveStack(nn.Module):
    """``blocks`` zuko masked autoregressive blocks on ``features`` values given ``context`` values,
    the feature order reversed from one block to the next.

    Read as a MAF (x -> z = ``forward``): the log-density is one pass per block, ``inverse``
    (sampling) takes ``features`` passes per block. Read as an IAF (z -> x = ``forward`` too, the
    blocks applied last to first, ``reverse=True``): sampling is one pass per block. Each block is
    affine per feature, ``y_i = exp(a_i) x_i + b_i`` with ``(a_i, b_i)`` a masked MLP of the
    preceding features (in the block's order) and the context.
    """

    def __init__(self, features: int, context: int, blocks: int, hidden: int, depth: int,
                 reverse: bool = False, passes: int | None = None) -> None:
        super().__init__()
        self.reverse = bool(reverse)  # forward applies the blocks last to first (the IAF student)
        self.blocks = nn.ModuleList(
            MaskedAutoregressiveTransform(features, context, passes=passes,
                                          order=torch.arange(features).flip(0) if i % 2 else None,
                                          hidden_features=(hidden,) * depth)
            for i in range(blocks))

    def block(self, k: int, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One pass of block ``k``: ``(y (B, D), log|det| (B,))``."""
        return self.blocks[k](c).call_and_ladj(h)

    def _order(self) -> list[int]:
        return list(reversed(range(len(self.blocks)))) if self.reverse else list(range(len(self.blocks)))

    def forward(self, x: Tensor, c: Tensor, *, states: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """All blocks, one pass each: ``(y, log|det dy/dx| (B,), [x, ..., y] if states)``."""
        ladj = x.new_zeros(len(x))
        hs = [x]
        for k in self._order():
            x, l = self.block(k, x, c)
            ladj = ladj + l
            if states:
                hs.append(x)
        return x, ladj, hs

    def inverse(self, z: Tensor, c: Tensor) -> Tensor:
        """``forward``'s inverse: ``features`` passes per block."""
        for k in reversed(self._order()):
            z = self.blocks[k](c).inv(z)
        return z

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        """Log-density ``(B,)`` of ``x`` with a standard-normal base: as a MAF (``x -> z`` is
        ``forward``, one pass per block) or, with ``reverse``, as an IAF (``z = inverse(x)``)."""
        if self.reverse:
            z = self.inverse(x, c)
            return _normal_log_prob(z) - self(z, c)[1]
        z, ladj, _ = self(x, c)
        return _normal_log_prob(z) + ladj

    def one_pass(self) -> nn.Module:
        """``forward`` (one pass per block) as plain layers, for sampling: ``f(x, c) -> y``."""
        return _OnePass([_OnePassBlock(self.blocks[k]) for k in self._order()])


class _OnePassBlock(nn.Module):
    """One pass of a zuko affine :class:`MaskedAutoregressiveTransform` with its masks folded into
    plain ``nn.Linear`` weights: the same function (tested) without the per-call mask products
    and distribution objects, which dominate at batch 1, and a flat graph for ONNX."""

    def __init__(self, block: MaskedAutoregressiveTransform) -> None:
        super().__init__()
        if block.univariate is not MonotonicAffineTransform or block.total != 2:
            raise TypeError("_OnePassBlock: needs an affine MaskedAutoregressiveTransform")
        layers: list[nn.Module] = []
        for m in block.hyper:
            if isinstance(m, MaskedLinear):
                lin = nn.Linear(m.in_features, m.out_features)
                with torch.no_grad():
                    lin.weight.copy_(m.weight * m.mask)
                    lin.bias.copy_(m.bias)
                layers.append(lin)
            else:
                layers.append(copy.deepcopy(m))
        self.hyper = nn.Sequential(*layers)
        self.log_slope = abs(math.log(_MIN_SLOPE))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        phi = self.hyper(torch.cat([x, c], 1)).unflatten(-1, (-1, 2))  # zuko's (shift, scale) per feature
        a = phi[..., 1]
        return x * torch.exp(a / (1.0 + a.abs() / self.log_slope)) + phi[..., 0]  # MonotonicAffineTransform


class _OnePass(nn.Module):
    def __init__(self, blocks: list[_OnePassBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x, c)
        return x


def distillation_losses(teacher: AutoregressiveStack, student: AutoregressiveStack, y: Tensor, c: Tensor,
                        z: Tensor) -> dict[str, Tensor]:
    """CaloFlow II's losses of an IAF ``student`` (``reverse=True``, block ``k`` inverting the MAF
    ``teacher``'s block ``k``) on real points ``y (B, D)`` with context ``c (B, C)`` and normal
    noise ``z (B, D)``; the teacher gets no gradient (it is only differentiated through).

    ``block``: each student block maps the teacher's state after block ``k`` of ``y`` back to the
    one before it; ``x``: the teacher's ``z`` of ``y`` through the whole student back to ``y``;
    ``z``: the student's sample of ``z`` through the teacher back to ``z`` (mean squares per
    value; Huber for ``z``); ``kl``: ``E[log q_S - log p_T]`` of the student's samples (nats per point).
    """
    with torch.no_grad():
        _, _, hs = teacher(y, c, states=True)  # y = h_0, ..., h_K = the teacher's z
    n = len(teacher.blocks)
    block = sum(((student.block(k, hs[k + 1], c)[0] - hs[k]) ** 2).mean() for k in range(n)) / n
    loss_x = ((student(hs[-1], c)[0] - y) ** 2).mean()
    y_s, ladj_s, _ = student(z, c)
    z_t, ladj_t, _ = teacher(y_s, c)
    # Huber: an early student's samples can sit where the teacher maps them far out (|z| ~ 1e6)
    loss_z = F.smooth_l1_loss(z_t, z)
    kl = (_normal_log_prob(z) - ladj_s - _normal_log_prob(z_t) - ladj_t).mean()
    return {"block": block, "x": loss_x, "z": loss_z, "kl": kl}


# ------------------------------------------------------------------------------------------
# CaloFlow's preprocessing of the cells (flow II's space)
# ------------------------------------------------------------------------------------------
class Preprocessing(nn.Module):
    """Cells ``x (B, n_cells)`` (linear units, e.g. E / E_inc) <-> flow II's ``y (B, n_cells)``.

    ``forward``: each layer divided by its energy (``v``, an empty layer all 0), uniform noise
    ``w = (v + noise u) / (1 + noise)`` against the zero cells, ``logit(alpha + (1 - 2 alpha) w)``,
    then ``(. - mean) / std`` per cell (buffers, :meth:`fit`). With ``noise ~ alpha`` the zero
    cells fill a band ``log(1 + noise / alpha)`` wide in logit space that a flow can resolve.
    ``inverse(y, f)``: sigmoid, ``w``, cells with ``w < cut`` zeroed (``cut >= noise``: a flow
    blurs the zero band's upper edge by about a decade, which would read as many tiny hits;
    Geant4 hits below ``1e-5`` of their layer energy are 3.5 % of the hits on calogan, 0.5 % of
    the cells), each layer's shape times its energy ``f (B, L)`` (units of ``x``); a layer below
    ``2e-6`` of the shower's energy (flow I's clipped empty layer) is empty.
    """

    def __init__(self, slices: list[slice], noise: float, alpha: float, cut: float | None = None) -> None:
        super().__init__()
        self.slices, self.noise, self.alpha = list(slices), float(noise), float(alpha)
        self.cut = max(float(noise if cut is None else cut), self.noise / (1.0 + self.noise))
        n = slices[-1].stop
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        # cell -> layer one-hot (n_cells, L): layer sums and their broadcast as matrix products
        onehot = torch.zeros(n, len(slices))
        for i, s in enumerate(slices):
            onehot[s, i] = 1.0
        self.register_buffer("onehot", onehot)

    def _per_cell(self, x: Tensor) -> Tensor:
        """Each cell's layer sum ``(B, n_cells)``."""
        return x @ self.onehot @ self.onehot.T

    def _logit(self, x: Tensor, u: Tensor) -> Tensor:
        x = x.clamp_min(0.0)
        e = self._per_cell(x)
        v = torch.where(e > 0, x / e.clamp_min(1e-30), torch.zeros_like(x))
        w = (v + self.noise * u) / (1.0 + self.noise)
        p = self.alpha + (1.0 - 2.0 * self.alpha) * w
        return torch.log(p) - torch.log1p(-p)

    @torch.no_grad()
    def fit(self, x: Tensor, u: Tensor) -> None:
        """Per-cell mean and std of the logits of ``x (N, n_cells)`` with uniform noise ``u``."""
        y = self._logit(x, u)
        self.mean.copy_(y.mean(0))
        # floor 1 (logit units): a cell empty in every fitted shower has only the noise band's
        # spread (~0.2); a held-out hit there would sit ~50 std out, where the affine flow's
        # density (and its inverse, in sampling) runs away
        self.std.copy_(y.std(0).nan_to_num(1.0).clamp_min(1.0))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """``x (B, n_cells)``, uniform ``u (B, n_cells)`` -> ``y (B, n_cells)``."""
        return (self._logit(x, u) - self.mean) / self.std

    def inverse(self, y: Tensor, f: Tensor) -> Tensor:
        """``y (B, n_cells)``, layer energies ``f (B, L)`` -> cells ``(B, n_cells)`` summing to ``f`` per layer."""
        p = torch.sigmoid(y * self.std + self.mean)
        w = ((p - self.alpha) / (1.0 - 2.0 * self.alpha)).clamp_min(0.0)
        hit = torch.where(w < self.cut, torch.zeros_like(w), w)
        kept = self._per_cell(hit)
        shape = torch.where(kept > 0, hit / kept.clamp_min(1e-30), w / self._per_cell(w).clamp_min(1e-30))
        f = torch.where(f < 2e-6 * f.sum(1, keepdim=True), torch.zeros_like(f), f)
        return shape * (f @ self.onehot.T)


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
@register_model
class CaloFlow(ShowerModel):
    """CaloFlow: layer-energy flow + MAF teacher for the cells, distilled into a one-pass IAF student."""

    name = "caloflow"
    ema_modules = ("student",)
    cells_only = True

    @dataclass
    class Config(TrainConfig):
        # CPU recipe (docs/caloflow.md): `teacher_steps` likelihood steps of flow I + the teacher,
        # then `steps` distillation steps of the student (each ~4 teacher steps), batch 128. On
        # 1.8k Geant4 training showers the teacher's held-out NLL is lowest after ~100-150 steps
        # (~10 epochs) and rises after (e+: 637-665 nats median at 100, 1410 at 400, train 374)
        transform: Literal["scale", "identity"] = "scale"  # linear in the cells: layer sums map like cells
        batch_size: int = param(128, ge=1)
        steps: int | None = param(300, ge=1)  # student (distillation) steps
        teacher_steps: int = param(150, ge=1, le=MAX_STEPS)
        val_every: int = param(100, ge=0)
        val_size: int = param(2000, ge=1)
        final_weights: Literal["last", "best"] = "best"
        ema: float = param(0.995, ge=0.0, lt=1.0)
        sampler: Literal["student", "teacher"] = "student"
        # flow II (teacher and student alike)
        blocks: int = param(6, ge=1, le=64)
        hidden: int = param(64, ge=1, le=MAX_WIDTH)  # small: 2k training showers, and fast sampling
        depth: int = param(1, ge=1, le=8)  # hidden layers per block
        # autoregressive groups per block: the cells in `passes` groups of consecutive cells, each
        # conditioned on the groups before it (None: one cell per group, CaloFlow's fully
        # autoregressive MADE). Fewer groups: the teacher samples in `passes` passes per block,
        # and a MADE narrower than n_cells still conditions every group on all earlier ones
        passes: int | None = param(24, ge=2, le=1 << 20)
        # flow I (layer energies)
        energy_blocks: int = param(4, ge=1, le=64)
        energy_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        # flow II's preprocessing
        noise: float = param(1e-6, gt=0.0, lt=1.0)  # dequantisation, in units of the layer energy
        alpha: float = param(1e-6, gt=0.0, lt=0.5)  # CaloFlow's
        cut: float = param(1e-5, gt=0.0, lt=1.0)  # generated cells below cut x their layer energy are empty
        lr: float = param(1e-3, gt=0.0)  # teacher and flow I
        student_lr: float = param(1e-3, gt=0.0)
        weight_decay: float = param(1e-5, ge=0.0)
        # distillation loss weights
        block_weight: float = param(1.0, ge=0.0)
        x_weight: float = param(1.0, ge=0.0)
        z_weight: float = param(1.0, ge=0.0)
        kl_weight: float = param(0.0, ge=0.0)

    config: Config

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        n_layers, n = geometry.n_layers, geometry.n_cells
        # flow I is low-dimensional: an IAF trained by likelihood directly (its density inverts L
        # values per block, cheap), so sampling it is one pass per block as well
        self.energy = AutoregressiveStack(n_layers, cond_dim, cfg.energy_blocks, cfg.energy_hidden, 2, reverse=True)
        self.teacher = AutoregressiveStack(n, cond_dim + n_layers, cfg.blocks, cfg.hidden, cfg.depth,
                                           passes=cfg.passes)
        # student block k inverts teacher block k (same feature order), so it runs them last to first
        self.student = AutoregressiveStack(n, cond_dim + n_layers, cfg.blocks, cfg.hidden, cfg.depth,
                                           reverse=True, passes=cfg.passes)
        self.prep = Preprocessing(geometry.layer_slices, cfg.noise, cfg.alpha, cfg.cut)
        self.register_buffer("t_mean", torch.zeros(n_layers))
        self.register_buffer("t_std", torch.ones(n_layers))
        self.latent_dim = n_layers + n
        self._cache: tuple[Any, nn.Module] | None = None

    # -- the two spaces -------------------------------------------------------------------
    def energy_target(self, x: Tensor) -> Tensor:
        """Standardised energy vector ``(B, L)`` of showers ``x (B, n_cells)``."""
        return (energy_vector(features.layer_energies(x, self.geometry)) - self.t_mean) / self.t_std

    def _uniform(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        g = generator
        return torch.rand(x.shape, generator=g, device=g.device if g is not None else x.device).to(x.device)

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Standardisations of the energy vector and of the preprocessed cells, on the first batches."""
        t = energy_vector(features.layer_energies(x, self.geometry))
        self.t_mean.copy_(t.mean(0))
        self.t_std.copy_(t.std(0).nan_to_num(1.0).clamp_min(1e-3))
        self.prep.fit(x, self._uniform(x, ctx.generator))

    def n_statistics_batches(self) -> int:
        return 16  # every training shower of a 2k-shower set at batch 128: rare cells get a fair std

    def log_prob(self, x: Tensor, cond: Tensor, sampler: str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Log-likelihood ``(B,)`` in nats of showers ``x (B, n_cells)``: flow I's of the standardised
        energy vector plus flow II's of the preprocessed cells (one dequantisation draw from
        ``generator``). ``sampler`` (default the config's): ``teacher`` (one pass per block) or
        ``student`` (its inverse: ``n_cells`` passes per block)."""
        t = self.energy_target(x)
        y = self.prep(x, self._uniform(x, generator))
        c = torch.cat([cond, t], 1)
        lp = self.energy.log_prob(t, cond)
        if (sampler or self.config.sampler) == "teacher":
            return lp + self.teacher.log_prob(y, c)
        z = self.student.inverse(y, c)
        _, ladj, _ = self.student(z, c)  # log|det dy/dz|
        return lp + _normal_log_prob(z) - ladj

    # -- training -------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        teacher = [*self.energy.parameters(), *self.teacher.parameters()]
        return {"teacher": torch.optim.AdamW(teacher, lr=cfg.lr, weight_decay=cfg.weight_decay),
                "student": torch.optim.AdamW(self.student.parameters(), lr=cfg.student_lr, weight_decay=cfg.weight_decay)}

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Cosine decays over each stage."""
        return {"teacher": LRSchedule("cosine", self.pretrain_steps()), "student": LRSchedule("cosine", total_steps)}

    def pretrain_steps(self) -> int:
        return int(self.config.teacher_steps)

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Flow I and the teacher by maximum likelihood (``pretrain_steps()`` AdamW steps), then frozen.
        Returns their final smoothed NLLs per shower (nats)."""
        self.energy.requires_grad_(True).train()
        self.teacher.requires_grad_(True).train()
        nll_e = nll_c = float("nan")
        for i in range(self.pretrain_steps()):
            x, cond = next(batches)
            t = self.energy_target(x)
            y = self.prep(x, self._uniform(x, ctx.generator))
            le = -self.energy.log_prob(t, cond).mean()
            lc = -self.teacher.log_prob(y, torch.cat([cond, t], 1)).mean()
            ctx.backward_step(le + lc, "teacher")  # disjoint parameters: two independent fits
            a = 0.0 if i == 0 else 0.98
            nll_e = le.item() if i == 0 else a * nll_e + (1 - a) * le.item()
            nll_c = lc.item() if i == 0 else a * nll_c + (1 - a) * lc.item()
        self.energy.eval().requires_grad_(False)
        self.teacher.eval().requires_grad_(False)
        return {"nll_energy": nll_e, "nll_cells": nll_c, "teacher_steps": self.pretrain_steps()}

    def distillation_losses(self, x: Tensor, cond: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """:func:`distillation_losses` of the student on a real batch ``x (B, n_cells)``."""
        t = self.energy_target(x)
        y = self.prep(x, self._uniform(x, generator))
        z = standard_normal(len(x), self.data_dim, generator, x.device)
        return distillation_losses(self.teacher, self.student, y, torch.cat([cond, t], 1), z)

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One distillation step of the student against the frozen teacher."""
        cfg = self.config
        self.teacher.requires_grad_(False)
        self.energy.requires_grad_(False)
        losses = self.distillation_losses(x, cond, ctx.generator)
        loss = (cfg.block_weight * losses["block"] + cfg.x_weight * losses["x"] + cfg.z_weight * losses["z"]
                + cfg.kl_weight * losses["kl"])
        ctx.backward_step(loss, "student")
        return {"loss": loss.item(), **{f"loss_{k}": v.item() for k, v in losses.items()}}

    # -- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers ``(B, n_cells)`` in the transform space, with the config's ``sampler``."""
        z = standard_normal(len(cond), self.latent_dim, generator, cond.device)
        # the sampling path folds the weights once; rebuilt whenever any weight changed in place
        key = (self.config.sampler, *((id(p), p._version) for p in self.parameters()),
               *((id(b), b._version) for b in self.buffers()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.export_module())
        return self._cache[1](z, cond)

    def export_module(self, sampler: str | None = None) -> nn.Module:
        """Eval-mode sampling path ``f(z, cond) -> x`` with its own copy of the weights (default:
        the config's ``sampler``)."""
        return _Sampler(self, sampler or self.config.sampler).eval()


class _Sampler(nn.Module):
    """``forward(z (B, L + n_cells), cond (B, cond_dim)) -> x (B, n_cells)``: flow I on ``z[:, :L]``
    (one pass per block), then flow II on ``z[:, L:]``: the student's one pass per block, or the
    teacher inverted (``passes`` passes per block). Holds copies of the weights."""

    def __init__(self, model: CaloFlow, sampler: str) -> None:
        super().__init__()
        if sampler not in ("student", "teacher"):
            raise ValueError(f"caloflow: sampler must be 'student' or 'teacher', got {sampler!r}")
        self.sampler = sampler
        self.energy = model.energy.one_pass()
        self.flow = model.student.one_pass() if sampler == "student" else copy.deepcopy(model.teacher)
        self.prep = copy.deepcopy(model.prep)
        self.register_buffer("t_mean", model.t_mean.clone())
        self.register_buffer("t_std", model.t_std.clone())
        self.n_layers, self.latent_dim = len(model.t_mean), model.latent_dim

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        t = self.energy(z[:, :self.n_layers], cond)
        f = energy_fractions(t * self.t_std + self.t_mean)
        c = torch.cat([cond, t], 1)
        zc = z[:, self.n_layers:]
        y = self.flow(zc, c) if self.sampler == "student" else self.flow.inverse(zc, c)
        return self.prep.inverse(y, f)


# ------------------------------------------------------------------------------------------
# run-level helpers: the other sampler, the test log-likelihood
# ------------------------------------------------------------------------------------------
def with_sampler(run_dir: str | Path, out_dir: str | Path, sampler: Literal["student", "teacher"]) -> Path:
    """A copy of the caloflow run ``run_dir`` at ``out_dir`` whose ``sampler`` is ``sampler``, so
    ``calosim generate/bench/export --run out_dir`` use that flow (same weights). Written to a
    temporary directory, then renamed."""
    src, out = Path(run_dir), Path(out_dir)
    cfg_path = src / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model") != CaloFlow.name:
        raise ValueError(f"{cfg_path}: model is {cfg.get('model')!r}, expected 'caloflow'")
    if sampler not in ("student", "teacher"):
        raise ValueError(f"sampler must be 'student' or 'teacher', got {sampler!r}")
    if out.exists():
        raise FileExistsError(f"{out}: exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".lock"):
                shutil.copy2(f, tmp / f.name)
        cfg["config"]["sampler"] = sampler
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@torch.no_grad()
def held_out_log_likelihood(run_dir: str | Path, data_path: str | Path, sampler: str | None = None, *, n: int | None = None,
                        batch: int = 500, seed: int = 0) -> dict[str, float]:
    """Mean log-likelihood per shower (nats) of the showers in ``data_path`` under a caloflow run.

    The space is the model's: flow I's standardised energy vector (``L`` values) plus flow II's
    standardised logits of the dequantised layer-normalised cells (``n_cells`` values), one
    dequantisation draw (seeded); no Jacobian back to MeV, so it compares caloflow runs (teacher
    vs student, recipes) on the same geometry, not other models. ``sampler``: ``teacher`` or
    ``student`` (default: the run's). Returns ``{"loglik", "loglik_median", "loglik_energy",
    "loglik_cells", "std_err", "n"}``: the mean is dominated by a few showers far outside the
    training set (an affine flow's density falls like a Gaussian's there), hence the median too.
    """
    from ..io import read_showers
    from ..runs import load_run
    from ..train.conditions import raw_conditions

    run = load_run(run_dir)
    model = run.model
    if not isinstance(model, CaloFlow):
        raise ValueError(f"{run_dir}: model is {run.model_name!r}, expected 'caloflow'")
    data = read_showers(data_path, geometry=run.geometry)
    m = len(data) if n is None else min(int(n), len(data))
    raw = {k: v[:m] for k, v in raw_conditions(data).items()}
    cond = run.conditions.encode(raw)
    e = torch.as_tensor(np.asarray(raw["incident_energies"], dtype=np.float32).reshape(-1, 1))
    x_all = run.transform(torch.as_tensor(data.showers[:m], dtype=torch.float32), e)
    gen = torch.Generator().manual_seed(seed)
    total, energy = [], []
    for a in range(0, m, batch):
        x, c = x_all[a:a + batch], cond[a:a + batch]
        total.append(model.log_prob(x, c, sampler, gen))
        energy.append(model.energy.log_prob(model.energy_target(x), c))
    lp, le = torch.cat(total).double(), torch.cat(energy).double()
    return {"loglik": float(lp.mean()), "loglik_median": float(lp.median()), "loglik_energy": float(le.mean()),
            "loglik_cells": float((lp - le).mean()), "std_err": float(lp.std() / math.sqrt(m)), "n": m}
