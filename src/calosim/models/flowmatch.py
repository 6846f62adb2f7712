"""Flowmatch: conditional flow matching (a CaloDREAM-style ODE model), distilled by reflow to
a few straight Euler steps.

The shower is split as in CaloFlow:

1. ``p(t | cond)``: the energy vector ``t`` (:func:`~calosim.models.energy.energy_vector` of
   the layer energies, plus ``log(n_l + u)`` of the hit cells per layer) from the
   mixture-density network :class:`~calosim.models.energy.EnergyMDN`, fitted first by maximum
   likelihood (:meth:`FlowMatch.pretrain`, the same network spots and calogan use).
2. ``p(y | cond, t)``: the layer-normalised cells as ``y = log(x_c / E_l + delta U)``
   (``U`` uniform dequantisation against the empty cells, ``delta`` a low quantile of the real
   fractions), standardised per cell. A vector field ``v(y_s, s, cond, t)`` (a residual MLP
   with sinusoidal time features) is trained by conditional flow matching on the
   optimal-transport (linear) path ``y_s = (1 - s) z + s y`` with target ``y - z``
   (Lipman et al. 2023; rectified flow, Liu et al. 2023). Sampling solves
   ``dy/ds = v`` from ``z ~ N(0, I)`` at ``s = 0`` to ``s = 1``.

The generated shower is *rescaled* to the MDN's layer energies, not only conditioned on them:
each layer keeps its ``n_l`` largest cells (``n_l`` also drawn by the MDN), normalised to sum
to ``E_l``. The field then only has to learn shapes; the response, the layer correlations and
the occupancy (a sharp high-level observable: these data have no readout threshold, so a
1e-9 MeV deposit is a hit) are exactly the likelihood-fitted MDN's.

Sampler. ``sample`` solves the ODE with ``torchdiffeq.odeint`` (fixed-step ``euler``,
``midpoint``, ``rk4`` on ``n_steps`` equal steps, or adaptive ``dopri5`` with ``rtol``/``atol``);
``export_module`` is the same solve unrolled in plain torch (ONNX-traceable), equal to
``sample`` for the fixed-step solvers (:func:`fixed_step_solve` follows torchdiffeq's
update formulas, including its 3/8-rule ``rk4``).

Distillation (reflow, "2-rectified flow"). The main loop's first ``teacher_steps`` steps
train the teacher field; during them the student mirrors the teacher, so the framework's EMA
of the student is the teacher's and reflow starts from the teacher, as in Liu et al. At the
first later step the frozen teacher maps ``reflow_pairs`` fixed noises ``z`` to ``y1``
(conditions from the training batches seen by :meth:`FlowMatch.fit_statistics`, energy vectors
from the MDN), and the remaining steps train the student by flow matching on these
deterministic couplings, whose straight interpolations no longer cross: a few Euler steps
(``distilled_steps``, 1-4) of the student then follow the teacher's map. Half of the student's
times are its own sampler's grid ``{0, 1/k, ...}``, half uniform. ``sampler = "auto"`` samples
with the student once it is trained, with the teacher before (``"full"`` / ``"distilled"`` force
one). The pairs are regenerated identically after a resume (fixed noise seed, frozen teacher).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import register_model
from ._random import standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param
from .. import features
from .energy import EnergyMDN, energy_fractions, energy_target, pretrain_energy_network

__all__ = ["FlowMatch", "VectorField", "cfm_loss", "odeint_solve", "fixed_step_solve", "SOLVERS"]

Field = Callable[[Tensor, Tensor], Tensor]  # v(s (scalar tensor), y (B, D)) -> (B, D)
SOLVERS = ("euler", "midpoint", "rk4", "dopri5")
_REFLOW_SEED = 20231  # noise of the reflow pairs: fixed, so a resumed run rebuilds the same pairs


# ------------------------------------------------------------------------------------------
# ODE solvers
# ------------------------------------------------------------------------------------------
def odeint_solve(field: Field, z: Tensor, solver: str, n_steps: int, rtol: float = 1e-4,
                 atol: float = 1e-4) -> Tensor:
    """``y(1)`` of ``dy/ds = field(s, y)``, ``y(0) = z (B, D)``, by ``torchdiffeq.odeint``.

    Fixed-step solvers take ``n_steps`` equal steps; ``dopri5`` is adaptive (``rtol``, ``atol``).
    """
    from torchdiffeq import odeint

    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if solver == "dopri5":
        grid = torch.tensor([0.0, 1.0], dtype=z.dtype, device=z.device)
        return odeint(field, z, grid, method="dopri5", rtol=rtol, atol=atol)[-1]
    grid = torch.linspace(0.0, 1.0, int(n_steps) + 1, dtype=z.dtype, device=z.device)
    return odeint(field, z, grid, method=solver)[-1]


def fixed_step_solve(field: Field, z: Tensor, solver: str, n_steps: int) -> Tensor:
    """The same solve as :func:`odeint_solve` unrolled in plain torch (a static graph for ONNX):
    torchdiffeq's update formulas on the same time grid."""
    if solver not in ("euler", "midpoint", "rk4"):
        raise ValueError(f"solver {solver!r} has no fixed-step graph; use euler, midpoint or rk4")
    grid = torch.linspace(0.0, 1.0, int(n_steps) + 1, dtype=z.dtype)
    y = z
    for i in range(int(n_steps)):
        t0, t1 = grid[i].to(z.device), grid[i + 1].to(z.device)
        dt = t1 - t0
        k1 = field(t0, y)
        if solver == "euler":
            y = y + dt * k1
        elif solver == "midpoint":
            y = y + dt * field(t0 + 0.5 * dt, y + k1 * (0.5 * dt))
        else:  # rk4: the 3/8 rule, torchdiffeq's rk4_alt_step_func
            k2 = field(t0 + dt * (1 / 3), y + dt * k1 * (1 / 3))
            k3 = field(t0 + dt * (2 / 3), y + dt * (k2 - k1 * (1 / 3)))
            k4 = field(t1, y + dt * (k1 - k2 + k3))
            y = y + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
    return y


# ------------------------------------------------------------------------------------------
# the vector field and its loss
# ------------------------------------------------------------------------------------------
class VectorField(nn.Module):
    """``v(y (B, dim), s (B, 1), c (B, ctx_dim)) -> (B, dim)``: a residual MLP; the time enters
    as sinusoidal features and, with the context, as a shift of every block."""

    def __init__(self, dim: int, ctx_dim: int, hidden: int, depth: int, n_freq: int = 16) -> None:
        super().__init__()
        # log-spaced angular frequencies 1 .. 500: s in [0, 1] resolved on every scale
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(500.0), n_freq)))
        emb = ctx_dim + 2 * n_freq
        self.inp = nn.Linear(dim + emb, hidden)
        self.shifts = nn.ModuleList(nn.Linear(emb, hidden) for _ in range(depth))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, y: Tensor, s: Tensor, c: Tensor) -> Tensor:
        a = s * self.freqs
        e = torch.cat([c, torch.sin(a), torch.cos(a)], 1)
        h = self.inp(torch.cat([y, e], 1))
        for shift, block in zip(self.shifts, self.blocks):
            h = h + block(torch.nn.functional.silu(h + shift(e)))
        return self.out(h)

    def at(self, c: Tensor) -> Field:
        """The field as ``f(s, y)`` for an ODE solver, with the context ``c`` fixed."""
        return lambda s, y: self(y, torch.zeros_like(y[:, :1]) + s, c)  # (B, 1), batch stays dynamic in ONNX


def cfm_loss(field: VectorField, z: Tensor, y1: Tensor, c: Tensor, s: Tensor) -> Tensor:
    """Flow-matching loss on the linear path: ``|v((1 - s) z + s y1, s, c) - (y1 - z)|^2``,
    mean over batch and dimensions; ``z``, ``y1`` (B, D), ``c`` (B, ctx_dim), ``s`` (B, 1)."""
    ys = (1.0 - s) * z + s * y1
    return (field(ys, s, c) - (y1 - z)).pow(2).mean()


# ------------------------------------------------------------------------------------------
# the sampling path (shared by sample and export)
# ------------------------------------------------------------------------------------------
class _Sampler(nn.Module):
    """``forward(z (B, latent_dim), cond (B, cond_dim)) -> x (B, n_cells)``.

    ``z`` = [``1 + 2 L`` values for the energy network, then one per cell], standard normal.
    ``unrolled``: the plain-torch solver (export); else torchdiffeq (``sample``).
    """

    def __init__(self, model: "FlowMatch", unrolled: bool) -> None:
        super().__init__()
        student = model.uses_student()
        cfg = model.config
        self.field = model.student if student else model.teacher
        self.solver = "euler" if student else cfg.solver
        self.n_steps = cfg.distilled_steps if student else cfg.n_steps
        self.rtol, self.atol = cfg.rtol, cfg.atol
        if unrolled and self.solver == "dopri5":
            raise ValueError("flowmatch: solver 'dopri5' is adaptive and has no fixed graph to export; "
                             "set solver = 'rk4', 'midpoint' or 'euler' (or sample with the distilled student)")
        self.unrolled = unrolled
        self.energy = model.energy
        for k in ("t_mean", "t_std", "y_mean", "y_std", "n_cells_per_layer"):
            self.register_buffer(k, getattr(model, k))
        self.sizes = [l.n_cells for l in model.geometry.layers]
        self.latent_dim = model.latent_dim

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        n_l = len(self.sizes)
        n_t = len(self.t_mean)
        t = self.energy.sample(cond, z[:, :1 + n_t]) * self.t_std + self.t_mean
        f = energy_fractions(t[:, :n_l])
        # exp(t_hits) = n + u with u ~ U(0, 1): the hit count is its floor (as in spots)
        n = torch.minimum(torch.floor(torch.exp(t[:, n_l:])), self.n_cells_per_layer)
        live = (n >= 1) & (f > 0)
        f, n = f * live, n * live
        t = torch.cat([t[:, :n_l], torch.log(n + 0.5)], 1)
        c = torch.cat([cond, (t - self.t_mean) / self.t_std], 1)
        z_y = z[:, 1 + n_t:]
        fn = self.field.at(c)
        y = (fixed_step_solve(fn, z_y, self.solver, self.n_steps) if self.unrolled
             else odeint_solve(fn, z_y, self.solver, self.n_steps, self.rtol, self.atol))
        y = y * self.y_std + self.y_mean  # log of the dequantised layer fractions
        out, a = [], 0
        for i, size in enumerate(self.sizes):
            out.append(_layer(y[:, a:a + size], f[:, i], n[:, i]))
            a += size
        return torch.cat(out, 1)


def _layer(y: Tensor, f: Tensor, n: Tensor) -> Tensor:
    """Cells ``(B, P)`` of one layer: its ``n (B,)`` largest cells of ``exp(y (B, P))``,
    normalised to sum to ``f (B,)``; ``n = 0``: an empty layer."""
    vals = torch.sort(y, dim=1, descending=True)[0]
    k = (n - 1).clamp(0, y.shape[1] - 1).long()
    keep = (y >= vals.gather(1, k[:, None])) & (n[:, None] >= 1)
    u = torch.exp(y - vals[:, :1]) * keep  # relative to the layer's largest: no overflow
    return u / u.sum(1, keepdim=True).clamp_min(1e-30) * f[:, None]


# ------------------------------------------------------------------------------------------
@register_model
class FlowMatch(ShowerModel):
    """Conditional flow matching on layer-normalised cells (energy MDN in front), reflow-distilled."""

    name = "flowmatch"
    ema_modules = ("teacher", "student")

    @dataclass
    class Config(TrainConfig):
        # the CPU recipe (2000 Geant4 calogan showers): 9-12 min on one busy thread in all, see docs/flowmatch.md
        transform: Literal["scale", "identity"] = "scale"  # linear in the cells: layer sums map like cells
        batch_size: int = param(256, ge=1)
        steps: int | None = param(4500, ge=1)  # teacher_steps of the teacher, the rest distils the student
        teacher_steps: int = param(3000, ge=1, le=MAX_STEPS)
        val_every: int = param(1000, ge=0)
        final_weights: Literal["last", "best"] = "last"  # "best" could pick a teacher-phase state
        lr: float = param(1e-3, gt=0.0)
        hidden: int = param(256, ge=1, le=MAX_WIDTH)
        depth: int = param(2, ge=1, le=32)
        # delta: this quantile of the real layer fractions (the sub-delta hits carry little energy). On
        # Geant4 e+ 0.3 gave FPD 100 (0.01: 1440) and mean images 3x closer, AUC high 0.991 (0.01: 0.969)
        floor_quantile: float = param(0.3, gt=0.0, lt=1.0)
        # the full sampler (teacher)
        solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "midpoint"
        n_steps: int = param(16, ge=1, le=4096)
        rtol: float = param(1e-4, gt=0.0)
        atol: float = param(1e-4, gt=0.0)
        sampler: Literal["auto", "full", "distilled"] = "auto"  # auto: the student once it is trained
        # distillation (reflow)
        distilled_steps: int = param(1, ge=1, le=64)  # Euler steps of the student
        reflow_pairs: int = param(8192, ge=1, le=1 << 22)
        reflow_conditions: int = param(4096, ge=1, le=1 << 20)  # condition rows kept from the first batches
        reflow_lr: float = param(5e-4, gt=0.0)
        # the energy network (as in spots)
        mdn_components: int = param(10, ge=1, le=256)
        mdn_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        mdn_steps: int = param(1000, ge=0, le=MAX_STEPS)
        mdn_lr: float = param(3e-3, gt=0.0)
        mdn_batches: int = param(4, ge=1, le=1024)

    config: Config

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        n_t = 2 * geometry.n_layers  # layer energies, hit counts
        d = geometry.n_cells
        self.energy = EnergyMDN(cond_dim, n_t, cfg.mdn_components, cfg.mdn_hidden)
        self.teacher = VectorField(d, cond_dim + n_t, cfg.hidden, cfg.depth)
        self.student = copy.deepcopy(self.teacher)
        self.register_buffer("t_mean", torch.zeros(n_t))
        self.register_buffer("t_std", torch.ones(n_t))
        self.register_buffer("y_mean", torch.zeros(d))
        self.register_buffer("y_std", torch.ones(d))
        self.register_buffer("delta", torch.ones(()))  # dequantisation width in layer-fraction units
        self.register_buffer("n_cells_per_layer", torch.tensor([float(l.n_cells) for l in geometry.layers]))
        self.register_buffer("pool_cond", torch.zeros(cfg.reflow_conditions, cond_dim))
        self.register_buffer("distilled", torch.zeros((), dtype=torch.bool))  # the student has been trained
        self._pairs: tuple[Tensor, Tensor, Tensor] | None = None  # (z, y1, c) of reflow, rebuilt on resume

    @property
    def latent_dim(self) -> int:
        return 1 + len(self.t_mean) + self.geometry.n_cells

    def uses_student(self) -> bool:
        """Whether sampling uses the distilled student (``sampler``; ``auto``: once it is trained)."""
        return self.config.sampler == "distilled" or (self.config.sampler == "auto" and bool(self.distilled))

    # -- preprocessing --------------------------------------------------------------------
    def energy_target(self, x: Tensor, u: Tensor | float = 0.5) -> Tensor:
        """``(B, 2 L)``: the energy vector of layer sums and hit counts of ``x (B, n_cells)``."""
        geo = self.geometry
        return energy_target(features.layer_energies(x, geo), features.hit_counts(x, geo), u)

    def _fractions(self, x: Tensor) -> Tensor:
        """Layer-normalised cells ``(B, n_cells)`` (an empty layer is all 0)."""
        parts = []
        for s in self.geometry.layer_slices:
            e = x[:, s].sum(1, keepdim=True)
            parts.append(x[:, s] / torch.where(e > 0, e, torch.ones_like(e)))
        return torch.cat(parts, 1)

    def _log_fractions(self, frac: Tensor, generator: torch.Generator | None) -> Tensor:
        """Layer fractions ``(B, n_cells)`` -> the unstandardised ``y = log(frac + delta V)``, ``V``
        uniform on (0, 1] (an empty cell never maps to log(0))."""
        dev = generator.device if generator is not None else frac.device
        v = 1.0 - torch.rand(frac.shape, generator=generator, device=dev).to(frac.device)
        return torch.log(frac + self.delta * v)

    def encode(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Showers ``x (B, n_cells)`` -> ``y (B, n_cells)``: standardised log layer fractions (:meth:`_log_fractions`)."""
        return (self._log_fractions(self._fractions(x.clamp_min(0.0)), generator) - self.y_mean) / self.y_std

    def context(self, x: Tensor, cond: Tensor) -> Tensor:
        """The field's condition ``(B, cond_dim + 2 L)``: ``cond`` and the standardised energy
        vector of ``x`` with hit counts as ``log(n + 0.5)`` (as the sampler passes them)."""
        return torch.cat([cond, (self.energy_target(x) - self.t_mean) / self.t_std], 1)

    def n_statistics_batches(self) -> int:
        return max(1, math.ceil(self.config.reflow_conditions / self.config.batch_size))

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Standardisations of ``t`` and ``y``, the dequantisation width ``delta``, and the
        condition rows of the reflow pairs (repeated if fewer)."""
        t = self.energy_target(x)
        self.t_mean.copy_(t.mean(0))
        self.t_std.copy_(t.std(0).nan_to_num(1.0).clamp_min(1e-3))
        frac = self._fractions(x.clamp_min(0.0))
        pos = frac[frac > 0]
        if pos.numel():  # torch.quantile has an input-size limit: a strided subsample is plenty
            pos = pos[:: max(1, pos.numel() // 1_000_000)]
            self.delta.fill_(float(torch.quantile(pos.float(), self.config.floor_quantile)))
        g = torch.Generator(device=x.device).manual_seed(0)
        y = self._log_fractions(frac, g)
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).nan_to_num(1.0).clamp_min(1e-3))
        idx = torch.arange(len(self.pool_cond), device=x.device) % len(cond)
        self.pool_cond.copy_(cond[idx])

    # -- training -------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {"energy": torch.optim.Adam(self.energy.parameters(), lr=cfg.mdn_lr),
                "teacher": torch.optim.Adam(self.teacher.parameters(), lr=cfg.lr),
                "student": torch.optim.Adam(self.student.parameters(), lr=cfg.reflow_lr)}

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Cosine decays: the MDN over its fit, the teacher over its steps (it ends at lr 0, so the
        live teacher that makes the reflow pairs is converged), the student over the rest."""
        cfg = self.config
        teacher = min(cfg.teacher_steps, total_steps)
        return {"energy": LRSchedule("cosine", cfg.mdn_steps), "teacher": LRSchedule("cosine", teacher),
                "student": LRSchedule("cosine", max(total_steps - teacher, 1))}

    def pretrain_steps(self) -> int:
        return self.config.mdn_steps

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Fit the energy network by maximum likelihood, then freeze it; returns its final NLL."""
        cfg = self.config

        nll = pretrain_energy_network(self, batches, ctx, cfg.mdn_steps, cfg.mdn_batches)
        return {"mdn_nll": nll, "mdn_steps": cfg.mdn_steps}

    def _times(self, n: int, generator: torch.Generator, device: torch.device, grid: int | None = None) -> Tensor:
        """``s (n, 1)``: uniform on [0, 1); with ``grid = k``, half of them on ``{0, 1/k, ...}``."""
        gd = generator.device
        s = torch.rand(n, 1, generator=generator, device=gd)
        if grid is not None:
            on_grid = torch.randint(0, grid, (n, 1), generator=generator, device=gd).float() / grid
            s = torch.where(torch.rand(n, 1, generator=generator, device=gd) < 0.5, on_grid, s)
        return s.to(device)

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """A teacher step on the real batch for the first ``teacher_steps`` steps, then a student
        (reflow) step on a batch of the teacher's couplings."""
        if ctx.step < self.config.teacher_steps:
            y1 = self.encode(x, ctx.generator)
            z = standard_normal(len(x), y1.shape[1], ctx.generator, x.device)
            loss = cfm_loss(self.teacher, z, y1, self.context(x, cond), self._times(len(x), ctx.generator, x.device))
            ctx.backward_step(loss, "teacher")
            with torch.no_grad():  # the student mirrors the teacher (and so does its EMA)
                for p, q in zip(self.student.parameters(), self.teacher.parameters()):
                    p.copy_(q)
            return {"loss_teacher": loss.item()}
        if self._pairs is None:
            self._pairs = self.reflow_pairs()
        z_all, y_all, c_all = self._pairs
        idx = torch.randint(0, len(z_all), (len(x),), generator=ctx.generator, device=ctx.generator.device).to(x.device)
        s = self._times(len(x), ctx.generator, x.device, grid=self.config.distilled_steps)
        loss = cfm_loss(self.student, z_all[idx], y_all[idx], c_all[idx], s)
        ctx.backward_step(loss, "student")
        self.distilled.fill_(True)
        return {"loss_student": loss.item()}

    @torch.no_grad()
    def reflow_pairs(self, chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
        """The teacher's couplings ``(z, y1, c)``, ``reflow_pairs`` rows: fixed noise, the kept
        condition rows, energy vectors from the MDN, ``y1`` by the teacher's solver."""
        cfg = self.config
        dev = self.pool_cond.device
        g = torch.Generator(device=dev).manual_seed(_REFLOW_SEED)
        was = self.training
        self.eval()
        zs, ys, cs = [], [], []
        try:
            for a in range(0, cfg.reflow_pairs, chunk):
                m = min(chunk, cfg.reflow_pairs - a)
                cond = self.pool_cond[torch.arange(a, a + m, device=dev) % len(self.pool_cond)]
                zt = standard_normal(m, 1 + len(self.t_mean), g, dev)
                t = self.energy.sample(cond, zt) * self.t_std + self.t_mean
                n_l = self.geometry.n_layers
                n = torch.minimum(torch.floor(torch.exp(t[:, n_l:])), self.n_cells_per_layer)
                t = torch.cat([t[:, :n_l], torch.log(n + 0.5)], 1)
                c = torch.cat([cond, (t - self.t_mean) / self.t_std], 1)
                z = standard_normal(m, self.geometry.n_cells, g, dev)
                ys.append(odeint_solve(self.teacher.at(c), z, cfg.solver, cfg.n_steps, cfg.rtol, cfg.atol))
                zs.append(z)
                cs.append(c)
        finally:
            self.train(was)
        return torch.cat(zs), torch.cat(ys), torch.cat(cs)

    # -- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers ``(B, n_cells)`` in the transform space for encoded conditions ``cond (B, cond_dim)``."""
        z = standard_normal(cond.shape[0], self.latent_dim, generator, cond.device)
        return _Sampler(self, unrolled=False)(z, cond)

    def export_module(self) -> nn.Module:
        """Eval-mode copy of the sampling path with the unrolled solver: ``f(z, cond) -> x``."""
        return copy.deepcopy(_Sampler(self, unrolled=True)).eval()
