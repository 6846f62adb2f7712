"""Multi-flow: one normalising flow per layer, for deep detectors (seed 003, "multiple flows").

A single flow over all cells of a 30-layer detector is too large (the seed counts O(10^9)
parameters for the 10x10x30 ILD region), so the shower is generated layer by layer:

1. ``p(t | cond)``: the layer energies as the energy vector ``t``
   (:func:`~calosim.models.energy.energy_vector`: log of the total, then the stick-breaking
   logits of the layer fractions) from an energy flow (a :class:`LayerFlow` over ``t``,
   context ``cond``), fitted by maximum likelihood in :meth:`MultiFlow.pretrain` and then
   frozen. (The shared :class:`~calosim.models.energy.EnergyMDN` has full covariances: at 30
   layers its Cholesky assembly alone costs ~4 GFLOP per batch of 1024, so a flow it is.)
   Empty layers sit on a spike of ``t`` (``energy_vector`` clips their fraction to 1e-6);
   training spreads the spike into a slab below it, and sampling maps everything below a
   fraction of 3e-6 back to an exactly empty layer.
2. ``p_i(y_i | y_{i-1}, ..., y_{i-k}, E_i, cond)`` for every layer ``i``: a conditional zuko
   flow over the layer's preprocessed, normalised image ``y_i`` (one value per cell), its
   context the preprocessed images of the (up to) ``k = context_layers = 5`` previous layers,
   the layer energy and the encoded conditions, as in the seed's context table
   (``[N, 2]`` for layer 0, ..., ``[N, 502]`` from layer 5 on for 10x10 layers). Training is
   teacher-forced: every flow sees the *true* previous layers, so all of them train in
   parallel by maximum likelihood in one step. Sampling runs over the layers in order, each
   flow conditioned on the images the previous flows generated.

The per-layer preprocessing (``y = preprocess(x)``, inverted by :meth:`MultiFlow.decode`) is
CaloFlow's: the layer-normalised image ``I = x_l / E_l`` plus uniform dequantisation noise
``noise * u`` (so the many empty cells are a narrow continuous pile, not a delta), then
``logit(alpha + (1 - 2 alpha) I)``, then standardised per cell (buffers fitted on the first
batches, saved with the weights). Decoding inverts it, zeroes the cells inside the noise pile
(``I < cut``, 1e-5 >= noise; the brightest cell always stays) and rescales every layer to the energy the
energy network drew, so the generated layer energies are exactly the drawn ones.

Sampling direction. A masked autoregressive flow (MAF, the seed's setup) evaluates the
density in one pass but samples in ``D`` passes (one per cell: 100 sequential network calls
per transform and layer), which is why the seed's flow took 2 s per shower on CPU. The
default here (``flow = "coupling"``) is a *coupling* flow (zuko ``GeneralCouplingTransform``):
each transform is one network call in either direction, so training and sampling cost the
same and the whole sampler is one static graph (ONNX). Consecutive transforms use
complementary halves of a random (seeded, saved) cell split. Its steps are affine (RealNVP,
``bins = 0``, the CPU recipe) or rational-quadratic splines (``bins >= 2``, the Neural
Spline Flow's coupling form: more expressive, ~4x the CPU time per training step in zuko).
``flow = "maf"`` keeps the seed's MAF for comparison; ``docs/multiflow.md`` has the measured times.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import zuko
from torch import Tensor, nn

from . import register_model
from ._random import standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param
from .energy import energy_fractions, energy_vector, fit_energy_mdn

__all__ = ["MultiFlow", "LayerFlow"]

# a stick-breaking fraction below this is an empty layer (energy_vector clips fractions of an
# empty layer to 1e-6: that spike, spread into a slab in training, must come back as exactly 0)
_EMPTY_FRACTION = 3e-6


class LayerFlow(nn.Module):
    """A conditional flow ``p(y | ctx)`` over one layer's ``features`` cells.

    ``ctx (B, context)`` is first embedded (``Linear + SiLU`` to ``embed`` features, shared by
    all transforms; ``embed = 0``: the raw context), then ``transforms`` zuko steps, each an
    affine map (``bins = 0``) or a rational-quadratic spline of ``bins`` bins per cell:
    coupling (one network call per direction) or fully autoregressive (MAF: ``features``
    calls to sample).
    """

    def __init__(self, features: int, context: int, *, kind: str, transforms: int, bins: int, hidden: int,
                 depth: int, embed: int, seed: int) -> None:
        super().__init__()
        self.features = int(features)
        self.embed = nn.Sequential(nn.Linear(context, embed), nn.SiLU()) if embed > 0 else nn.Identity()
        c = embed if embed > 0 else context
        if bins > 0:
            spline = dict(univariate=zuko.transforms.MonotonicRQSTransform, shapes=[(bins,), (bins,), (bins - 1,)])
        else:
            spline = dict(univariate=zuko.transforms.MonotonicAffineTransform, shapes=[(), ()])
        spline.update(hidden_features=(hidden,) * depth, activation=nn.SiLU)
        g = torch.Generator().manual_seed(seed)
        steps: list[nn.Module] = []
        split = torch.zeros(features, dtype=torch.bool)
        for j in range(transforms):
            if kind == "coupling":
                if j % 2 == 0:  # a fresh random half; the next transform updates the other half
                    split = torch.randperm(features, generator=g) < features // 2
                mask = split if j % 2 == 0 else ~split
                steps.append(zuko.flows.GeneralCouplingTransform(features, c, mask=mask, **spline))
            else:
                order = torch.arange(features) if j % 2 == 0 else torch.arange(features).flip(0)
                steps.append(zuko.flows.MaskedAutoregressiveTransform(features, c, order=order, **spline))
        base = zuko.lazy.UnconditionalDistribution(zuko.distributions.DiagNormal, torch.zeros(features),
                                                   torch.ones(features), buffer=True)
        self.flow = zuko.lazy.Flow(steps, base)
        if kind == "coupling":  # derived from the (saved) masks: not part of the state dict
            for j, step in enumerate(steps):
                idx = torch.arange(features)
                keep, update = idx[step.mask], idx[~step.mask]
                self.register_buffer(f"keep{j}", keep, persistent=False)
                self.register_buffer(f"update{j}", update, persistent=False)
                self.register_buffer(f"merge{j}", torch.argsort(torch.cat([keep, update])), persistent=False)

    def log_prob(self, y: Tensor, ctx: Tensor) -> Tensor:
        """``log p(y | ctx)`` ``(B,)`` for ``y (B, features)``, ``ctx (B, context)``."""
        return self.flow(self.embed(ctx)).log_prob(y)

    def inverse(self, z: Tensor, ctx: Tensor) -> Tensor:
        """The sampling direction: ``z (B, features)`` standard normal -> ``y (B, features)``."""
        c = self.embed(ctx)
        steps = self.flow.transform.transforms
        if not isinstance(steps[0], zuko.flows.GeneralCouplingTransform):  # MAF: zuko's D-pass inverse
            return self.flow(c).transform.inv(z)
        # coupling: the same maps as zuko's CouplingTransform.inv, with the split and merge as
        # constant gathers (zuko's per-call nonzero() and index assignment do not export to ONNX)
        for j in reversed(range(len(steps))):
            step, idx_a, idx_b, merge = steps[j], *self.splits[j]
            z_a = z.index_select(1, idx_a)
            z_b = step.meta(c, z_a).inv(z.index_select(1, idx_b))
            z = torch.cat([z_a, z_b], 1).index_select(1, merge)
        return z

    @property
    def splits(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per coupling step: its kept and updated cells, and the gather that undoes ``cat([a, b])``."""
        return [(getattr(self, f"keep{j}"), getattr(self, f"update{j}"), getattr(self, f"merge{j}"))
                for j in range(len(self.flow.transform.transforms))]


@register_model
class MultiFlow(ShowerModel):
    """One conditional coupling flow per layer (context: up to 5 previous layers), energies from a flow."""

    name = "multiflow"
    ema_modules = ("flows",)

    @dataclass
    class Config(TrainConfig):
        # the CPU recipe (ild-ecal-10, 5k showers): docs/multiflow.md
        transform: Literal["scale", "identity"] = "scale"  # linear in the cells: layer sums map like cells
        batch_size: int = param(256, ge=1)
        steps: int | None = param(3000, ge=1)
        val_every: int = param(1000, ge=0)
        val_size: int = param(2000, ge=1)
        clip_grad: float | None = param(10.0, gt=0.0)  # flows: rare huge likelihood gradients
        lr: float = param(1e-3, gt=0.0)
        context_layers: int = param(5, ge=0, le=64)  # previous layers in a flow's context (the seed's 5)
        flow: Literal["coupling", "maf"] = "coupling"  # coupling: one pass to sample; maf: one per cell
        transforms: int = param(4, ge=1, le=64)
        # 0: affine steps (RealNVP); >= 2: rational-quadratic spline bins (NSF), ~4x the CPU
        # time per step in zuko (docs/multiflow.md): the 30-minute CPU recipe is affine
        bins: int = param(0, ge=0, le=64)
        hidden: int = param(64, ge=1, le=MAX_WIDTH)
        depth: int = param(2, ge=1, le=16)
        embed: int = param(64, ge=0, le=MAX_WIDTH)  # context embedding width (0: the raw context)
        noise: float = param(1e-6, ge=0.0, lt=0.1)  # dequantisation, in units of the layer energy
        alpha: float = param(1e-6, gt=0.0, lt=0.1)  # logit(alpha + (1 - 2 alpha) I) stays finite
        # decoding zeroes cells below max(cut, noise) of their layer's energy: the learned noise
        # pile is wider than the noise (Geant4 ild-ecal-10: 0.1 % of the real cells lie in
        # 1e-6..1e-5, while half the generated pile did; docs/multiflow.md)
        cut: float = param(1e-5, ge=0.0, lt=0.1)
        energy_transforms: int = param(6, ge=1, le=64)  # the energy flow (same kind, bins, depth)
        energy_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        energy_steps: int = param(2000, ge=0, le=MAX_STEPS)
        energy_lr: float = param(1e-3, gt=0.0)
        energy_batches: int = param(2, ge=1, le=1024)  # training batches per energy-flow step

        def check(self) -> None:
            super().check()
            if self.bins == 1:
                raise ValueError("config: 'bins' must be 0 (affine) or >= 2 (spline bins), got 1")

    config: Config

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        self.sizes = [layer.n_cells for layer in geometry.layers]
        if len(self.sizes) < 2:
            raise ValueError(f"multiflow: geometry {geometry.name!r} has {len(self.sizes)} layer; it needs >= 2")
        for layer, n in zip(geometry.layers, self.sizes):
            if n < 2:  # a 1-cell layer's normalised image is the constant 1: nothing to learn
                raise ValueError(f"multiflow: layer {layer.name!r} of geometry {geometry.name!r} has {n} cell; "
                                 "every layer needs >= 2 cells")
        n_layers = len(self.sizes)
        self.energy = LayerFlow(n_layers, cond_dim, kind=cfg.flow, transforms=cfg.energy_transforms, bins=cfg.bins,
                                hidden=cfg.energy_hidden, depth=cfg.depth, embed=0, seed=999)
        self.flows = nn.ModuleList(
            LayerFlow(n, sum(self.sizes[j] for j in self.context_of(i)) + 1 + cond_dim, kind=cfg.flow,
                      transforms=cfg.transforms, bins=cfg.bins, hidden=cfg.hidden, depth=cfg.depth, embed=cfg.embed,
                      seed=1000 + i)
            for i, n in enumerate(self.sizes))
        # fitted standardisations (fit_statistics): energy vector, log layer energy, cells of y
        self.register_buffer("t_mean", torch.zeros(n_layers))
        self.register_buffer("t_std", torch.ones(n_layers))
        self.register_buffer("e_mean", torch.zeros(n_layers))
        self.register_buffer("e_std", torch.ones(n_layers))
        self.register_buffer("y_mean", torch.zeros(geometry.n_cells))
        self.register_buffer("y_std", torch.ones(geometry.n_cells))

    def context_of(self, i: int) -> list[int]:
        """The previous layers in flow ``i``'s context, nearest first: ``[i-1, ..., i-k]``."""
        return list(range(i - 1, max(i - self.config.context_layers, 0) - 1, -1))

    @property
    def latent_dim(self) -> int:
        """``L`` values for the energy flow, then one per cell."""
        return len(self.sizes) + self.geometry.n_cells

    # -- preprocessing (saved buffers, invertible up to the noise cut) ----------------------
    def layer_energies(self, x: Tensor) -> Tensor:
        """``(B, L)`` layer sums of ``x (B, n_cells)`` (negative cells count as 0)."""
        return torch.stack([x[:, s].clamp_min(0).sum(1) for s in self.geometry.layer_slices], 1)

    @staticmethod
    def _log_energy(f: Tensor) -> Tensor:
        """``log E_i`` ``(B, L)`` of layer energies ``f (B, L)``, empty layers at 1e-7 of the shower's energy."""
        return torch.log(torch.maximum(f, 1e-7 * f.sum(1, keepdim=True)).clamp_min(1e-30))

    def energy_feature(self, f: Tensor) -> Tensor:
        """Standardised ``log E_i`` ``(B, L)``: flow ``i``'s energy context."""
        return (self._log_energy(f) - self.e_mean) / self.e_std

    def _raw_y(self, x: Tensor, u: Tensor) -> Tensor:
        """Unstandardised ``logit(alpha + (1 - 2 alpha) (x_l / E_l + noise u))`` ``(B, n_cells)``."""
        cfg = self.config
        out = []
        for s in self.geometry.layer_slices:
            cells = x[:, s].clamp_min(0)
            total = cells.sum(1, keepdim=True)
            img = cells / torch.where(total > 0, total, torch.ones_like(total))  # empty layer: all 0
            p = cfg.alpha + (1 - 2 * cfg.alpha) * (img + cfg.noise * u[:, s]).clamp_max(1.0)
            out.append(torch.log(p) - torch.log1p(-p))
        return torch.cat(out, 1)

    def preprocess(self, x: Tensor, u: Tensor) -> Tensor:
        """The flows' space: showers ``x (B, n_cells)`` and uniform noise ``u (B, n_cells)`` ->
        standardised normalised-image logits ``y (B, n_cells)``."""
        return (self._raw_y(x, u) - self.y_mean) / self.y_std

    def decode(self, y: Tensor, f: Tensor) -> Tensor:
        """Inverse of :meth:`preprocess` for generated ``y (B, n_cells)``, each layer rescaled to
        the energy ``f (B, L)``: cells in the noise pile (``I < max(cut, noise)``) are zeroed, the brightest
        cell of a layer always stays, and ``sum(layer l) == f_l`` exactly (``(B, n_cells)``)."""
        cfg = self.config
        p = torch.sigmoid(y * self.y_std + self.y_mean)
        # > 0: a layer drawn all at the lower edge still carries its energy (shared by its max cells)
        img = ((p - cfg.alpha) / (1 - 2 * cfg.alpha)).clamp_min(1e-30)
        out = []
        for i, s in enumerate(self.geometry.layer_slices):
            v = img[:, s]
            keep = (v >= max(cfg.cut, cfg.noise)) | (v == v.max(1, keepdim=True).values)
            v = v * keep
            out.append(v / v.sum(1, keepdim=True).clamp_min(1e-30) * f[:, i:i + 1])
        return torch.cat(out, 1)

    def y_bounds(self) -> tuple[Tensor, Tensor]:
        """The range of :meth:`preprocess` per cell, ``(n_cells,)`` each: ``I`` in [0, 1] maps to
        ``logit(alpha) .. logit(1 - alpha)``, standardised."""
        edge = math.log(1 - self.config.alpha) - math.log(self.config.alpha)
        return (-edge - self.y_mean) / self.y_std, (edge - self.y_mean) / self.y_std

    def context(self, i: int, ys: list[Tensor], e_feat: Tensor, cond: Tensor) -> Tensor:
        """Flow ``i``'s context ``(B, ctx_i)``: ``y_{i-1}, ..., y_{i-k}``, its ``E_i`` feature, ``cond``
        (``ys[j]`` the layer-``j`` image in the flows' space)."""
        return torch.cat([*(ys[j] for j in self.context_of(i)), e_feat[:, i:i + 1], cond], 1)

    def _uniform(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        dev = generator.device if generator is not None else x.device
        return torch.rand(x.shape, generator=generator, device=dev).to(x.device)

    # -- statistics and training --------------------------------------------------------
    def n_statistics_batches(self) -> int:
        return 8

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Standardisations of the energy vector, the log layer energies and every cell of ``y``
        from the first batches ``x (B, n_cells)``."""
        f = self.layer_energies(x)
        for buf_m, buf_s, v in ((self.t_mean, self.t_std, self._raw_t(x, self._uniform(f, ctx.generator))),
                                (self.e_mean, self.e_std, self._log_energy(f)),
                                (self.y_mean, self.y_std, self._raw_y(x, self._uniform(x, ctx.generator)))):
            buf_m.copy_(v.mean(0))
            buf_s.copy_(v.std(0).nan_to_num(1.0).clamp_min(1e-3))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"energy": torch.optim.Adam(self.energy.parameters(), lr=self.config.energy_lr),
                "flows": torch.optim.Adam(self.flows.parameters(), lr=self.config.lr)}

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Cosine decays: the energy flow over its fit, the layer flows over the run."""
        return {"energy": LRSchedule("cosine", self.config.energy_steps), "flows": LRSchedule("cosine", total_steps)}

    def pretrain_steps(self) -> int:
        return self.config.energy_steps

    def energy_target(self, x: Tensor, u: Tensor) -> Tensor:
        """The energy flow's training target ``(B, L)``: the standardised energy vector of
        ``x (B, n_cells)``, the empty-layer spike spread by ``u (B, L)`` uniform into a slab
        2 logit units wide just below it (all of it decodes to an empty layer)."""
        return (self._raw_t(x, u) - self.t_mean) / self.t_std

    def _raw_t(self, x: Tensor, u: Tensor) -> Tensor:
        t = energy_vector(self.layer_energies(x))
        spike = math.log(1e-6 / (1 - 1e-6))  # energy_vector's clip of an empty layer's fraction
        empty = torch.cat([torch.zeros_like(t[:, :1], dtype=torch.bool), t[:, 1:] <= spike + 1e-3], 1)
        return torch.where(empty, spike - 2.0 * u, t)

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Fit the energy flow by maximum likelihood on the energy vector, then freeze it."""
        cfg = self.config

        def target(x: Tensor) -> Tensor:
            return self.energy_target(x, self._uniform(x[:, :len(self.sizes)], ctx.generator))

        # fit_energy_mdn only needs log_prob(t, cond): it fits any density the same way
        nll = fit_energy_mdn(self.energy, batches, target, ctx, cfg.energy_steps, cfg.energy_batches)
        return {"energy_nll": nll, "energy_steps": cfg.energy_steps}

    def layer_log_probs(self, x: Tensor, cond: Tensor, u: Tensor) -> Tensor:
        """Teacher-forced ``log p_i(y_i | true previous layers, E_i, cond)`` ``(B, L)`` of showers
        ``x (B, n_cells)`` with dequantisation noise ``u (B, n_cells)`` (in the flows' space:
        without the preprocessing's Jacobian)."""
        y = self.preprocess(x, u)
        ys = [y[:, s] for s in self.geometry.layer_slices]
        e_feat = self.energy_feature(self.layer_energies(x))
        return torch.stack([flow.log_prob(ys[i], self.context(i, ys, e_feat, cond))
                            for i, flow in enumerate(self.flows)], 1)

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One Adam step of all layer flows at once on ``x (B, n_cells)`` (NLL per cell)."""
        lp = self.layer_log_probs(x, cond, self._uniform(x, ctx.generator))
        loss = -lp.sum(1).mean() / self.geometry.n_cells
        ctx.backward_step(loss, "flows")
        return {"nll_per_cell": loss.item()}

    # -- sampling -------------------------------------------------------------------------
    def draw_energies(self, z: Tensor, cond: Tensor) -> Tensor:
        """Layer energies ``f (B, L)`` (the transform's units) from the energy flow's noise
        ``z (B, L)``; stick-breaking fractions below 3e-6 are empty layers (exactly 0)."""
        t = self.energy.inverse(z, cond) * self.t_std + self.t_mean
        f = energy_fractions(t)
        live = torch.cat([t[:, 1:] > math.log(_EMPTY_FRACTION / (1 - _EMPTY_FRACTION)),
                          torch.ones_like(t[:, :1], dtype=torch.bool)], 1)
        return f * live

    def latent(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Standard-normal latent vectors ``(n, latent_dim)`` (drawn on ``generator``'s device)."""
        return standard_normal(n, self.latent_dim, generator, device or self.t_mean.device)

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers ``(B, n_cells)`` in the transform space for encoded conditions ``cond (B, cond_dim)``."""
        return _Sampler(self)(self.latent(cond.shape[0], generator, cond.device), cond)

    def export_module(self) -> nn.Module:
        """Eval-mode copy of the sampling path: ``f(z (B, latent_dim), cond) -> x (B, n_cells)``."""
        return copy.deepcopy(_Sampler(self)).eval()


class _Sampler(nn.Module):
    """``forward(z (B, latent_dim), cond (B, cond_dim)) -> x (B, n_cells)``: energies, then the
    layer flows in order, each on the images generated before it; shared by
    :meth:`MultiFlow.sample` and the ONNX export."""

    def __init__(self, model: MultiFlow) -> None:
        super().__init__()
        self.model = model
        self.latent_dim = model.latent_dim

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        m = self.model
        n_e = len(m.sizes)
        f = m.draw_energies(z[:, :n_e], cond)
        e_feat = m.energy_feature(f)
        lo, hi = m.y_bounds()
        ys: list[Tensor] = []
        for i, s in enumerate(m.geometry.layer_slices):
            y = m.flows[i].inverse(z[:, n_e + s.start:n_e + s.stop], m.context(i, ys, e_feat, cond))
            # a generated value outside the logit's range is no image: left there, it would be
            # the next layers' context far outside anything seen in training (and the error
            # grows layer by layer up to inf); nan_to_num: a non-finite cell goes to a bound
            ys.append(torch.minimum(torch.maximum(torch.nan_to_num(y), lo[s]), hi[s]))
        return m.decode(torch.cat(ys, 1), f)
