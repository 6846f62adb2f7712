"""Spots: a learned GFlash. Layer energies from a mixture-density network, a neural shape per
layer, and the cells filled by sampling energy spots from that shape.

A calorimeter cell's energy is the sum of many small deposits (GFlash's "spots"): where a
shower's lateral profile is dense a cell collects many and its energy is close to its mean;
in the halo a cell is hit by one spot or none. The model mirrors that structure and learns
the two things a parameterisation would have to be tuned for:

1. ``p(t | cond)``: the energy vector ``t`` (:func:`~calosim.models.energy.energy_vector` of
   the layer energies, plus ``log(n_l + u)`` of the hit cells per layer) from a
   mixture-density network (:class:`~calosim.models.energy.EnergyMDN`), fitted by maximum
   likelihood in :meth:`Spots.pretrain`.
2. ``p_l(cell | cond, t)``: for every layer, the probability that a spot lands in a cell, a
   softmax over the layer's cells from an MLP of the conditions and ``t`` (so the lateral
   spread follows the shower's longitudinal development). Fitted by maximum likelihood as
   well: the cross-entropy ``-sum_i x_i / E_l log p_l(i)`` of the real layer-normalised
   images, which is the log-likelihood of the real deposits' positions.

Sampling a layer of energy ``E_l`` with ``n_l`` hit cells: ``N`` spots such that the expected
number of distinct hit cells ``sum_i 1 - exp(-N p_i)`` is ``n_l`` (a few Newton steps), cell
``i`` hit with probability ``1 - exp(-N p_i)`` (Poisson spot counts), a hit cell's energy the
mean of the zero-truncated Poisson count with its spread (plus spot-weight fluctuations of
relative width ``1 / sqrt(spot_shape)``), and the layer rescaled to ``E_l`` exactly. All
randomness comes from standard-normal inputs, so sampling is one deterministic graph of
``(z, cond)`` (reproducible, exportable to ONNX) and costs one MLP and a few element-wise
passes over the cells: no adversarial game, no per-cell network.

Training is two likelihood fits (no discriminator), so it is stable and short on CPU; what
it cannot learn is structure beyond the per-shower mean shape given ``(cond, t)`` and the
spot statistics (e.g. sub-cluster correlations inside a layer).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_model
from ._random import gumbel, normal_cdf, standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param
from .. import features
from .energy import (EnergyMDN, energy_fractions, energy_fractions_numpy, energy_target, normal_cdf_numpy,
                     pretrain_energy_network, sequential_forward)

__all__ = ["Spots", "spot_count"]

#: Eager CPU batches up to this size are drawn in NumPy, all layers in one padded block
#: (``_Sampler._forward_numpy``): per-operation overhead dominates there (~1 µs a NumPy
#: operation on a few hundred values, 2-3 times that in torch), while large batches pay for
#: the padding (calogan geometry, one thread: NumPy ahead up to batch ~128, behind from 256).
SMALL_BATCH = 64


def spot_count(p: Tensor, n: Tensor, iterations: int = 5) -> Tensor:
    """Number of spots ``N (B,)`` whose expected distinct hit cells ``sum_i 1 - exp(-N p_i)`` is ``n (B,)``.

    ``p (B, P)`` is a probability vector per row. The left side is increasing and concave in
    ``N`` and is at most ``n`` at ``N = n``, so Newton's method from ``N = n`` climbs to the
    root monotonically (never overshoots); 5 steps leave a relative residual below 2e-3
    (tested up to 90 % occupancy; 2e-4 measured on trained calogan-geometry shapes). ``n`` is clipped to ``[0, 0.98 P]``.
    """
    n = n.clamp(0.0, 0.98 * p.shape[-1])
    big_n = n
    for _ in range(iterations):
        e = torch.exp(-big_n[..., None] * p)
        f = (1.0 - e).sum(-1) - n
        big_n = big_n - f / (p * e).sum(-1).clamp_min(1e-12)
    return big_n


def _normalised(cells: Tensor) -> Tensor:
    """``(..., P)`` cells divided by their sum over the last dimension (all-zero rows stay 0)."""
    total = cells.sum(-1, keepdim=True)
    return cells / torch.where(total > 0, total, torch.ones_like(total))


def _static_graph() -> bool:
    """True while tracing / exporting to ONNX: one graph for every row, no data-dependent branch."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def spot_layer(logp: Tensor, f: Tensor, n: Tensor, z: Tensor, spot_shape: float,
               static: bool | None = None) -> Tensor:
    """Cells ``(B, P)`` of one layer: energy ``f (B,)`` shared among about ``n (B,)`` hit cells.

    ``logp (B, P)`` log-probabilities of a spot landing in each cell; ``z (B, P)`` standard
    normal, one value per cell: its uniform ``u`` decides the hit (``u < q``, ``q = 1 - exp(-lam)``)
    and, given a hit, ``u / q`` is again uniform and gives the energy's fluctuation (a uniform
    of the right variance: spot weights are roughly uniform, and a dense cell's count varies
    little relative to its mean). A layer with ``f > 0`` whose draw leaves every cell empty gets
    all its energy in one cell drawn from ``p`` (Gumbel-max with the same noise).

    Leading dimensions broadcast: ``logp, z (B, L, P)`` with ``f, n (B, L)`` draws L layers at
    once (cells of probability 0, ``logp = -inf``, are padding and stay empty). ``static``:
    whether a traced/exported graph is being built (default: asked of torch, which costs a
    few microseconds a call).
    """
    p = torch.exp(logp)
    lam = spot_count(p, n)[..., None] * p  # mean spots per cell
    q = 1.0 - torch.exp(-lam)  # P(count >= 1); where float32 rounds it to ~0 the hit is never drawn
    u = normal_cdf(z)
    hit = u < q
    m = (lam / q.clamp_min(1e-30)).clamp_min(1.0)  # mean of the zero-truncated Poisson count
    sd = torch.sqrt((m * (1.0 + lam - m)).clamp_min(0.0) + m / spot_shape)
    v = u / q.clamp_min(1e-30)  # uniform on (0, 1) where hit
    # where, not a product: off-hit cells can hold inf (v = u / q with q ~ 0)
    e = torch.where(hit, torch.maximum(m + sd * (math.sqrt(12.0) * (v - 0.5)), 0.05 * m), torch.zeros_like(m))
    empty = (~hit.any(-1)) & (f > 0)

    def one_cell(logp: Tensor, u: Tensor) -> Tensor:  # a cell drawn from p (Gumbel-max), one-hot
        return F.one_hot(torch.argmax(logp + gumbel(u), -1), logp.shape[-1]).to(logp.dtype)

    if _static_graph() if static is None else static:  # one static graph: every row
        e = torch.where(empty[..., None], one_cell(logp, u), e)
    elif bool(empty.any()):  # eager: only the (few) empty rows
        rows = empty.nonzero(as_tuple=True)
        e[rows] = one_cell(logp[rows], u[rows])
    return _normalised(e) * f[..., None]  # f = 0: an empty layer


def _spot_count_numpy(p: np.ndarray, n: np.ndarray, iterations: int = 5) -> np.ndarray:
    """:func:`spot_count` in NumPy (the same Newton steps)."""
    n = np.minimum(np.maximum(n, 0.0), 0.98 * p.shape[-1])
    big_n, minus_p = n, -p
    for _ in range(iterations):
        e = np.exp(big_n[..., None] * minus_p)
        f = (1.0 - e).sum(-1) - n
        big_n = big_n - f / np.maximum(np.vecdot(p, e), 1e-12)  # vecdot: (p * e).sum(-1) in one pass
    return big_n


def _spot_layer_numpy(logp: np.ndarray, f: np.ndarray, n: np.ndarray, u: np.ndarray, spot_shape: float) -> np.ndarray:
    """:func:`spot_layer` in NumPy, eager (the small-batch path), from the uniforms
    ``u = normal_cdf(z)``: the same formulas step by step, so the same cells from the same noise
    up to float rounding. Shapes as there, ``logp, u (B, L, P)`` with ``f, n (B, L)`` for padded layers."""
    p = np.exp(logp)
    lam = _spot_count_numpy(p, n)[..., None] * p
    q = 1.0 - np.exp(-lam)
    hit = u < q
    q_safe = np.maximum(q, 1e-30)
    with np.errstate(over="ignore"):  # off-hit cells of q ~ 0 overflow to inf, as in torch; where drops them
        m = np.maximum(lam / q_safe, 1.0)
        sd = np.sqrt(np.maximum(m * (1.0 + lam - m), 0.0) + m / spot_shape)
        e = np.where(hit, np.maximum(m + sd * (math.sqrt(12.0) * (u / q_safe - 0.5)), 0.05 * m), 0.0)
    empty = ~hit.any(-1) & (f > 0)
    if empty.any():  # one cell drawn from p (Gumbel-max with the same noise)
        rows = np.nonzero(empty)
        e[rows] = 0.0
        u_rows = np.clip(u[rows], 1e-7, 1.0 - 1e-7)
        e[(*rows, np.argmax(logp[rows] - np.log(-np.log(u_rows)), -1))] = 1.0
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0) * f[..., None]


class _Shape(nn.Module):
    """``h (B, in_dim) -> [logp_l (B, P_l) for each layer]``: an MLP with one softmax per layer.

    ``log_bias`` (the log of the mean real layer-normalised image, set at calibration) is added
    to the logits, so the network starts at the average shower and learns the deviations.
    """

    def __init__(self, in_dim: int, sizes: list[int], hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, sum(sizes))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.sizes = list(sizes)
        self.log_bias = nn.Parameter(torch.zeros(sum(sizes)))

    def logits(self, h: Tensor) -> Tensor:
        """Unnormalised log-probabilities ``(B, sum(sizes))``, all layers side by side."""
        return F.linear(sequential_forward(self.body, h), self.out.weight, self.out.bias) + self.log_bias

    def forward(self, h: Tensor) -> list[Tensor]:
        return [torch.log_softmax(x, 1) for x in torch.split(self.logits(h), self.sizes, 1)]


class _Sampler(nn.Module):
    """``forward(z (B, latent_dim), cond (B, cond_dim)) -> x (B, n_cells)``, the whole sampling path.

    ``z`` = [``1 + len(t)`` values for the energy network, then one value per cell],
    all standard normal. Shared by :meth:`Spots.sample` and the ONNX export.
    """

    def __init__(self, model: "Spots") -> None:
        super().__init__()
        self.energy, self.shape = model.energy, model.shape
        self.register_buffer("t_mean", model.t_mean)
        self.register_buffer("t_std", model.t_std)
        self.register_buffer("n_cells_per_layer", model.n_cells_per_layer)
        self.sizes = list(model.shape.sizes)
        self.spot_shape = model.config.spot_shape
        self.n_t = len(model.t_mean)
        self.latent_dim = model.latent_dim
        # the NumPy path: where each cell sits in the padded (L, P_max) block, flattened
        self._width = max(self.sizes)
        self._block_cells = np.concatenate([i * self._width + np.arange(size) for i, size in enumerate(self.sizes)])

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        # NumPy is neither differentiated nor traced (asked before the batch size, which a trace records)
        # and sees CPU memory only
        if not torch.is_grad_enabled() and z.device.type == "cpu" and not _static_graph() and z.shape[0] <= SMALL_BATCH:
            return self._forward_numpy(z, cond)
        static = _static_graph()
        n_layers = len(self.sizes)
        t = self.energy.sample(cond, z[:, :1 + self.n_t]) * self.t_std + self.t_mean
        f = energy_fractions(t[:, :n_layers])
        # exp(t_hits) = n + u with u ~ U(0, 1): the hit count is its floor
        n = torch.minimum(torch.floor(torch.exp(t[:, n_layers:2 * n_layers])), self.n_cells_per_layer)
        # no hits: an empty layer (photons that convert late leave the first layer empty; its
        # fraction is then logit(1e-6) in t, which the Gaussians smear to a tiny non-zero value)
        live = (n >= 1) & (f > 0)
        f, n = f * live, n * live
        t = torch.cat([t[:, :n_layers], torch.log(n + 0.5), t[:, 2 * n_layers:]], 1)
        logits = self.shape.logits(torch.cat([cond, (t - self.t_mean) / self.t_std], 1))
        n = torch.minimum(n, 0.98 * self.n_cells_per_layer)  # spot_count's bound per layer
        z_cells = z[:, 1 + self.n_t:]
        out, a = [], 0
        for i, size in enumerate(self.sizes):
            logp = torch.log_softmax(logits[:, a:a + size], 1)
            out.append(spot_layer(logp, f[:, i], n[:, i], z_cells[:, a:a + size], self.spot_shape, static))
            a += size
        return torch.cat(out, 1)

    def _forward_numpy(self, z: Tensor, cond: Tensor) -> Tensor:
        """:meth:`forward` of a small batch: the networks in torch (its matmuls, its threads), every
        other step in NumPy with the layers padded to one ``(B, L, P_max)`` block (the calogan
        geometry at batch 1: ~25 torch calls and ~150 NumPy operations, where the per-layer torch
        path makes ~400 torch calls). The same formulas as the torch path, step by step, so the
        same showers from the same ``z`` to float rounding."""
        n_layers, b = len(self.sizes), z.shape[0]
        zn = z.detach().numpy()
        u = normal_cdf_numpy(zn)  # one call for the component pick and the cells
        # views of the buffers (the same memory), taken per call: a cached view would outlive a .to()
        t_mean, t_std, n_cells = self.t_mean.numpy(), self.t_std.numpy(), self.n_cells_per_layer.numpy()
        t = self.energy.sample_numpy(cond, zn[:, :1 + self.n_t], u[:, :1]) * t_std + t_mean
        f = energy_fractions_numpy(t[:, :n_layers])
        n = np.minimum(np.floor(np.exp(t[:, n_layers:2 * n_layers])), n_cells)
        live = (n >= 1) & (f > 0)
        f, n = f * live, n * live
        t = np.concatenate([t[:, :n_layers], np.log(n + 0.5), t[:, 2 * n_layers:]], 1)
        h = torch.cat([cond, torch.from_numpy((t - t_mean) / t_std)], 1)
        logits = self.shape.logits(h).numpy()
        n = np.minimum(n, 0.98 * n_cells)
        width, cells = self._width, self._block_cells
        block = np.full((b, n_layers * width), -np.inf, dtype=logits.dtype)
        block[:, cells] = logits
        block = block.reshape(b, n_layers, width)
        block = block - block.max(-1, keepdims=True)
        logp = block - np.log(np.exp(block).sum(-1, keepdims=True))  # log_softmax; padding stays -inf
        u_block = np.full((b, n_layers * width), 0.5, dtype=u.dtype)  # padding: Phi(0), never a hit (q = 0)
        u_block[:, cells] = u[:, 1 + self.n_t:]
        e = _spot_layer_numpy(logp, f, n, u_block.reshape(block.shape), self.spot_shape)
        return torch.from_numpy(e.reshape(b, -1)[:, cells])


@register_model
class Spots(ShowerModel):
    """Spots: a learned GFlash (energy MDN + neural spot shapes), trained by likelihood."""

    name = "spots"
    ema_modules = ("shape",)

    @dataclass
    class Config(TrainConfig):
        # the CPU recipe: a few minutes on one core for 50k showers (no adversarial game)
        transform: Literal["scale", "identity"] = "scale"  # linear in the cells: layer sums map like cells
        batch_size: int = param(256, ge=1)
        steps: int | None = param(3000, ge=1)
        val_every: int = param(500, ge=0)
        final_weights: Literal["last", "best"] = "best"
        lr: float = param(2e-3, gt=0.0)
        hidden: int = param(128, ge=1, le=MAX_WIDTH)  # 256 measured the same AUC (0.660 vs 0.661, e+), 25 % slower sampling
        depth: int = param(2, ge=0, le=16)
        spot_shape: float = param(8.0, gt=0.0)  # spot weights ~ Gamma(spot_shape): relative spread 1 / sqrt(spot_shape)
        mdn_components: int = param(10, ge=1, le=256)
        mdn_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        mdn_steps: int = param(2000, ge=0, le=MAX_STEPS)
        mdn_lr: float = param(3e-3, gt=0.0)
        mdn_batches: int = param(4, ge=1, le=1024)  # training batches per MDN step
        # the energy network also draws each layer's centroid (x, y) and the shapes follow it:
        # for showers whose core wanders from shower to shower (hadrons: sub-showers with
        # transverse kicks); off for EM showers, whose centroid spread is the spots' own noise
        centroids: bool = False

    config: Config

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        n_layers = geometry.n_layers
        self.centroids = cfg.centroids
        n_t = (4 if self.centroids else 2) * n_layers  # layer energies, hit counts[, centroids x, y]
        self.energy = EnergyMDN(cond_dim, n_t, cfg.mdn_components, cfg.mdn_hidden)
        self.shape = _Shape(cond_dim + n_t, [l.n_cells for l in geometry.layers], cfg.hidden, cfg.depth)
        self.register_buffer("t_mean", torch.zeros(n_t))
        self.register_buffer("t_std", torch.ones(n_t))
        self.register_buffer("n_cells_per_layer", torch.tensor([float(l.n_cells) for l in geometry.layers]))

    @property
    def latent_dim(self) -> int:
        return 1 + len(self.t_mean) + self.geometry.n_cells

    # -- the energy vector ----------------------------------------------------------------
    def energy_target(self, x: Tensor, u: Tensor | float = 0.5) -> Tensor:
        """``(B, 2 L)``: :func:`~calosim.models.energy.energy_target` of the layer sums and hit
        counts of ``x (B, n_cells)``; with ``centroids``, then the energy-weighted (x, y) per
        layer in mm: ``(B, 4 L)``."""
        geo = self.geometry
        parts = [energy_target(features.layer_energies(x, geo), features.hit_counts(x, geo), u)]
        if self.centroids:  # (B, L, 2) -> (B, 2 L), x then y per layer; 0 for an empty layer
            parts.append(features.centroids(x, geo).flatten(1))
        return torch.cat(parts, 1)

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """First real batch: standardisation of ``t``, and the shape network starts at the mean image."""
        t = self.energy_target(x)
        self.t_mean.copy_(t.mean(0))
        self.t_std.copy_(t.std(0).nan_to_num(1.0).clamp_min(1e-3))
        biases = []
        for s in self.geometry.layer_slices:
            mean = _normalised(x[:, s]).mean(0)
            pos = mean[mean > 0]
            floor = float(pos.min()) / math.e if pos.numel() else 1.0
            biases.append(torch.log(mean.clamp_min(floor)))
        self.shape.log_bias.copy_(torch.cat(biases))

    # -- training -------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"energy": torch.optim.Adam(self.energy.parameters(), lr=self.config.mdn_lr),
                "shape": torch.optim.Adam(self.shape.parameters(), lr=self.config.lr)}

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Cosine decays: the MDN over its fit, the shapes over the run (the likelihood keeps
        improving as the lr falls)."""
        return {"energy": LRSchedule("cosine", self.config.mdn_steps), "shape": LRSchedule("cosine", total_steps)}

    def pretrain_steps(self) -> int:
        return self.config.mdn_steps

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Fit the energy network by maximum likelihood (``mdn_steps`` Adam steps on ``mdn_batches``
        concatenated batches, cosine learning rate from :meth:`lr_schedules`), then freeze it.
        Returns its final NLL."""
        cfg = self.config

        nll = pretrain_energy_network(self, batches, ctx, cfg.mdn_steps, cfg.mdn_batches)
        return {"mdn_nll": nll, "mdn_steps": cfg.mdn_steps}

    def shape_nll(self, x: Tensor, cond: Tensor) -> Tensor:
        """Mean cross-entropy ``-sum_i x_i / E_l log p_l(i)`` over the non-empty layers of ``x (B, n_cells)``."""
        t = (self.energy_target(x) - self.t_mean) / self.t_std
        logps = self.shape(torch.cat([cond, t], 1))
        losses, weights = [], []
        for logp, s in zip(logps, self.geometry.layer_slices):
            w = _normalised(x[:, s])
            losses.append(-(w * logp).sum(1))
            weights.append((w.sum(1) > 0).to(x.dtype))
        lw = torch.stack(weights, 1)
        return (torch.stack(losses, 1) * lw).sum() / lw.sum().clamp_min(1.0)

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One Adam step of the shape network on the real batch's deposits (``x (B, n_cells)``)."""
        loss = self.shape_nll(x, cond)
        ctx.backward_step(loss, "shape")
        return {"loss_shape": loss.item()}

    # -- sampling -------------------------------------------------------------------------
    def latent(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Standard-normal latent vectors ``(n, latent_dim)`` (drawn on ``generator``'s device)."""
        return standard_normal(n, self.latent_dim, generator, device or self.t_mean.device)

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers ``(B, n_cells)`` in the transform space for encoded conditions ``cond (B, cond_dim)``."""
        return self._sampler()(self.latent(cond.shape[0], generator, cond.device), cond)

    def _sampler(self) -> _Sampler:
        """The sampling path, built once (kept outside the module tree, so not in the state dict)
        and rebuilt when what it shares changes (``.to(device)``, a new config)."""
        smp = self.__dict__.get("_sampler_cache")
        if (smp is None or smp.t_mean is not self.t_mean or smp.t_std is not self.t_std or smp.energy is not self.energy
                or smp.shape is not self.shape or smp.spot_shape != self.config.spot_shape):
            smp = self.__dict__["_sampler_cache"] = _Sampler(self)
        return smp

    def export_module(self) -> nn.Module:
        """Eval-mode copy of the sampling path: ``f(z, cond) -> x``."""
        return copy.deepcopy(_Sampler(self)).eval()
