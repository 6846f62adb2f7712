"""Conditional WGAN-GP with a pre-trained condition regressor (LHCb / BESIII / CEPC seeds).

Three networks:

* **generator** ``G(z, c)``: noise ``z`` (B, latent_dim) and encoded conditions ``c`` (B, cond_dim)
  → dense trunk → one transposed-convolution head per *shape group* → shower (B, n_cells).
* **critic** ``D(x, c)``: one strided-conv encoder per shape group (LeakyReLU, optional
  LayerNorm, never batch norm — batch statistics break the per-sample gradient penalty),
  features concatenated with ``c`` (and optionally with physics observables, see below) → MLP
  → score (B,). Trained ``n_critic`` times per generator step with the Wasserstein loss plus
  ``lambda_gp`` × gradient penalty on real/fake interpolates.
* **regressor** ``R(x)``: a critic-like CNN predicting *all* encoded condition columns from the
  shower (energy; momentum, position, angles when present). Trained in :meth:`WGANGP.pretrain`,
  then frozen; the generator loss adds ``lambda_reg`` × MSE(R(G(z, c)), c), which is what makes
  the Wasserstein generator respect continuous conditions (the seeds' key idea).

Geometry handling ("shape groups"): layers are grouped by image shape. Layers sharing one shape
form one group and are stacked as *channels* of one image, so a regular stack such as
``cepc-ecal`` (29 × 31×31) is a single (B, 29, 31, 31) image and the convolutions mix layers.
Layers with different shapes (``calogan``: 3×96, 12×12, 12×6) get their own generator head and
critic encoder (no padding to a common grid, which would waste most of the convolution work on
empty cells). Every head upsamples a small base grid by factors of two per axis (only along
axes large enough to need it) and crops to the exact layer shape. Polar layers are treated as
plain (n_alpha, n_r) grids (no angular wrap-around); the model is designed for Cartesian layers.

Network units: the framework's transforms (``boxcox``, ``log``) standardise every cell, which
turns the rare hits of mostly empty cells into 30-sigma spikes that a critic spots at once. The
networks therefore see ``h = (x - floor) / scale`` per cell, with ``floor`` the cell's minimum
(the "empty" value) and ``scale`` its median non-empty value above it, all recorded in
:meth:`WGANGP.pretrain`: h = 0 is an empty cell, h ~ 1 a typical hit, for every cell alike. The
generator output is ``h = 0`` below a per-cell snap threshold (half the gap between "empty"
and the smallest typical hit, where real showers have no values; like a ReLU for an identity
or ``x/E`` transform), and is capped at the largest value seen in training (beyond it an
inverse transform may leave its domain: Box-Cox with lambda < 0 diverges).

Critic observables (``critic_observables``, on by default): besides the image, the critic gets
per-layer log energy fractions, centroids and widths and log(E_tot/E_inc), computed
differentiably in MeV through ``ctx.transform.inverse``, plus a soft per-layer occupancy, all
standardised with training-data statistics (the CaloGAN idea of showing the discriminator the energy sums). They are cheap and
give the generator a direct gradient on the quantities a physics comparison looks at first.
The generator loss also adds ``lambda_obs`` × the squared 1-D Wasserstein-2 distance between
the batch marginals of these observables for real and generated showers (both batches share
the same conditions, so their marginals must agree); set it to 0 for the plain seed recipe.

Training-step semantics: each :meth:`train_step` consumes one batch and performs one critic
update; every ``n_critic``-th step additionally performs one generator update. ``steps`` in the
config therefore counts critic updates (generator updates = steps / n_critic), and every critic
update sees a fresh real batch, as in the WGAN-GP algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import register_model
from .. import features
from .base import LRSchedule, ShowerModel, TrainContext
from .layers import gradient_penalty
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = ["WGANGP", "shape_groups"]


# ------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------
def shape_groups(geometry: "Geometry") -> list[tuple[tuple[int, int], list[int]]]:
    """Layers grouped by image shape, in order of first appearance: ``[(shape, [layer ids])]``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lay in enumerate(geometry.layers):
        groups.setdefault(tuple(lay.shape), []).append(i)  # type: ignore[arg-type]
    return list(groups.items())


def _n_up(n: int, max_up: int) -> int:
    """How many ×2 upsamplings an axis of final size ``n`` gets (base size stays >= 3)."""
    return max(0, min(max_up, int(math.floor(math.log2(max(n, 1) / 3.0))))) if n >= 6 else 0


def _stage_geometry(up_y: int, up_x: int, i: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride, padding of resampling stage ``i``: stride 2 (kernel 4) on axes still being
    resampled, stride 1 (kernel 3) otherwise; both keep/double sizes exactly."""
    sy, sx = (2 if i < up_y else 1), (2 if i < up_x else 1)
    return (4 if sy == 2 else 3, 4 if sx == 2 else 3), (sy, sx), (1, 1)


class _GenHead(nn.Module):
    """Features (B, hidden) → images (B, n_ch, ny, nx) by transposed convolutions from a base grid."""

    def __init__(self, hidden: int, shape: tuple[int, int], n_ch: int, channels: int, max_up: int,
                 min_channels: int) -> None:
        super().__init__()
        ny, nx = shape
        self.shape = shape
        self.up_y, self.up_x = _n_up(ny, max_up), _n_up(nx, max_up)
        self.base = (math.ceil(ny / 2**self.up_y), math.ceil(nx / 2**self.up_x))
        n_stages = max(self.up_y, self.up_x)
        self.c0 = channels
        self.fc = nn.Linear(hidden, channels * self.base[0] * self.base[1])
        blocks: list[nn.Module] = []
        c = channels
        for i in range(n_stages):
            k, s, p = _stage_geometry(self.up_y, self.up_x, i)
            c_out = max(c // 2, min_channels)  # cheap high-resolution stages: CPU sampling speed
            blocks += [nn.ConvTranspose2d(c, c_out, k, s, p), nn.LeakyReLU(0.2)]
            c = c_out
        blocks.append(nn.Conv2d(c, n_ch, 3, 1, 1))
        # channels_last: several times faster (transposed) convolutions on CPU (oneDNN)
        self.net = nn.Sequential(*blocks).to(memory_format=torch.channels_last)

    def forward(self, h: Tensor) -> Tensor:
        """(B, hidden) → (B, n_ch, ny, nx)."""
        y = nn.functional.leaky_relu(self.fc(h), 0.2).view(h.shape[0], self.c0, *self.base)
        y = self.net(y.contiguous(memory_format=torch.channels_last))
        ny, nx = self.shape
        oy, ox = (y.shape[-2] - ny) // 2, (y.shape[-1] - nx) // 2  # centred crop
        return y[..., oy:oy + ny, ox:ox + nx]


class _Encoder(nn.Module):
    """Images (B, n_ch, ny, nx) → features (B, out) by strided convolutions (no batch norm).

    Every stage is a 3×3 convolution with stride 2 along the axes still being reduced (so the
    first one already works at half resolution: the critic runs ~4 passes per sample per step
    with the double back-propagation of the gradient penalty, so its cost dominates training);
    channels double per stage from ``channels`` up to ``max_channels``.
    """

    def __init__(self, shape: tuple[int, int], n_ch: int, channels: int, max_channels: int, max_down: int,
                 out: int, layer_norm: bool) -> None:
        super().__init__()
        ny, nx = shape
        dy, dx = _n_up(ny, max_down), _n_up(nx, max_down)
        blocks: list[nn.Module] = []
        c, hy, hx = n_ch, ny, nx
        c_out = channels
        for i in range(max(dy, dx, 1)):
            s = (2 if i < dy else 1, 2 if i < dx else 1)
            blocks.append(nn.Conv2d(c, c_out, 3, s, 1))
            hy, hx = (hy - 1) // s[0] + 1, (hx - 1) // s[1] + 1
            if layer_norm:  # GroupNorm(1) = LayerNorm over (C, H, W): per-sample, GP-safe
                blocks.append(nn.GroupNorm(1, c_out))
            blocks.append(nn.LeakyReLU(0.2))
            c, c_out = c_out, min(2 * c_out, max_channels)
        blocks += [nn.Flatten(), nn.Linear(c * hy * hx, out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*blocks)

    def forward(self, img: Tensor) -> Tensor:
        return self.net(img)


class _MultiEncoder(nn.Module):
    """Flat showers (B, n_cells) → concatenated per-group features (B, n_groups * feat)."""

    def __init__(self, groups: list[tuple[tuple[int, int], list[int]]], gather: list[Tensor], channels: int,
                 max_channels: int, max_down: int, feat: int, layer_norm: bool) -> None:
        super().__init__()
        self.groups = groups
        for gi, idx in enumerate(gather):
            self.register_buffer(f"gather{gi}", idx, persistent=False)
        self.encoders = nn.ModuleList(
            _Encoder(shape, len(ids), channels, max_channels, max_down, feat, layer_norm) for shape, ids in groups
        )

    def forward(self, x: Tensor) -> Tensor:
        feats = []
        for gi, ((shape, ids), enc) in enumerate(zip(self.groups, self.encoders)):
            img = x[:, getattr(self, f"gather{gi}")].view(len(x), len(ids), *shape)
            feats.append(enc(img))
        return torch.cat(feats, 1)


class Generator(nn.Module):
    """``G(z, c)``: (B, latent) × (B, cond_dim) → raw standardised showers (B, n_cells) (before clamp)."""

    def __init__(self, groups: list[tuple[tuple[int, int], list[int]]], scatter: Tensor, latent_dim: int,
                 cond_dim: int, hidden: int, channels: int, max_up: int, min_channels: int) -> None:
        super().__init__()
        self.groups = groups
        self.register_buffer("scatter", scatter, persistent=False)
        self.trunk = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
        )
        self.heads = nn.ModuleList(_GenHead(hidden, shape, len(ids), channels, max_up, min_channels) for shape, ids in groups)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        h = self.trunk(torch.cat([z, cond], 1))
        out = torch.cat([head(h).reshape(h.shape[0], -1) for head in self.heads], 1)  # group order
        return out[:, self.scatter]  # → geometry's layer-by-layer cell order


class Critic(nn.Module):
    """``D(x, c[, obs])``: standardised showers (B, n_cells), conditions (B, cond_dim) and optional
    observables (B, n_obs) → Wasserstein score (B,)."""

    def __init__(self, encoder: _MultiEncoder, feat_dim: int, cond_dim: int, n_obs: int, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.n_obs = n_obs
        self.head = nn.Sequential(
            nn.Linear(feat_dim + cond_dim + n_obs, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor, cond: Tensor, obs: Tensor | None = None) -> Tensor:
        parts = [self.encoder(x), cond]
        if self.n_obs:
            assert obs is not None, "critic was built with observables; pass obs"
            parts.append(obs)
        return self.head(torch.cat(parts, 1)).squeeze(1)


class Regressor(nn.Module):
    """``R(x)``: standardised showers (B, n_cells) → predicted encoded conditions (B, cond_dim)."""

    def __init__(self, encoder: _MultiEncoder, feat_dim: int, cond_dim: int, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(feat_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, cond_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
@register_model
class WGANGP(ShowerModel):
    """Conditional WGAN-GP with a frozen pre-trained condition regressor (LHCb/BESIII/CEPC)."""

    name = "wgan-gp"
    ema_modules = ("generator",)

    @dataclass
    class Config(TrainConfig):
        transform: str = "boxcox"
        # CPU recipe: calogan, 50k e+ showers, <= 20 min on 2 shared cores (benchmarks/train_wgan_gp.py)
        batch_size: int = param(64, ge=1)
        steps: int | None = param(5000, ge=1)  # critic updates; generator updates = steps / n_critic
        lr_generator: float = param(2e-4, gt=0.0)
        lr_critic: float = param(2e-4, gt=0.0)
        betas: tuple[float, float] = param((0.5, 0.9), ge=0.0, lt=1.0)
        n_critic: int = param(2, ge=1, le=100)  # 5 in the WGAN-GP paper; 2 gives more generator updates per CPU minute
        lambda_gp: float = param(10.0, ge=0.0)
        lambda_reg: float = param(1.0, ge=0.0)
        lambda_obs: float = param(10.0, ge=0.0)  # generator: W2 between real/generated marginals of the observables
        drift: float = param(1e-3, ge=0.0)  # eps_drift * E[D(x_real)^2] keeps critic scores near 0 (Karras et al.)
        latent_dim: int = param(64, ge=1, le=MAX_WIDTH)
        gen_hidden: int = param(128, ge=1, le=MAX_WIDTH)  # generator dense trunk width
        critic_hidden: int = param(256, ge=2, le=MAX_WIDTH)  # critic / regressor MLP width
        gen_channels: int = param(32, ge=1, le=1024)  # at the base grid; halved per upsampling stage ...
        gen_min_channels: int = param(8, ge=1, le=1024)  # ... down to this
        critic_channels: int = param(8, ge=1, le=1024)  # first critic stage; doubled per stage ...
        critic_max_channels: int = param(32, ge=1, le=1024)  # ... up to this
        critic_feat: int = param(64, ge=1, le=MAX_WIDTH)  # features per shape group after the critic encoder
        max_up: int = param(3, ge=0, le=8)  # x2 resampling stages per axis at most
        layer_norm: bool = True  # LayerNorm (GroupNorm(1)) in critic and regressor encoders
        critic_observables: bool = True  # feed per-layer energies/centroids/widths (MeV space) to the critic
        snap: float = param(1.0, ge=0.0)  # outputs below snap x (empty/non-empty gap) become empty cells
        leak: float = param(0.5, ge=0.0, le=1.0)  # straight-through gradient fraction for generated empty cells
        empty_margin: float = param(0.01, ge=0.0)  # sampled empty cells at h = -margin (exact 0 MeV after the clamp)
        regressor_steps: int = param(600, ge=0, le=MAX_STEPS)
        regressor_lr: float = param(1e-3, gt=0.0)
        regressor_batches_val: int = param(8, ge=1, le=10000)
        regressor_channels: int = param(8, ge=1, le=256)

    config: Config

    def __init__(self, geometry: "Geometry", cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        self.groups = shape_groups(geometry)
        offsets = geometry.layer_offsets
        gather: list[Tensor] = []
        for shape, ids in self.groups:
            gather.append(torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in ids]))
        order = torch.cat(gather)  # group-order position → geometry cell index
        scatter = torch.empty_like(order)
        scatter[order] = torch.arange(len(order))  # geometry cell → group-order position
        self.latent_dim = cfg.latent_dim
        self.generator = Generator(self.groups, scatter, self.latent_dim, cond_dim, cfg.gen_hidden,
                                   cfg.gen_channels, cfg.max_up, cfg.gen_min_channels)
        feat = cfg.critic_feat
        n_obs = self._n_observables() if cfg.critic_observables else 0
        enc = _MultiEncoder(self.groups, gather, cfg.critic_channels, cfg.critic_max_channels,
                            cfg.max_up, feat, cfg.layer_norm)
        self.critic = Critic(enc, feat * len(self.groups), cond_dim, n_obs, cfg.critic_hidden)
        renc = _MultiEncoder(self.groups, gather, cfg.regressor_channels, 4 * cfg.regressor_channels,
                             cfg.max_up, feat, cfg.layer_norm)
        self.regressor = Regressor(renc, feat * len(self.groups), cond_dim, cfg.critic_hidden // 2)

        # Statistics of the preprocessed space, set in pretrain (the defaults suit an identity
        # transform of non-negative showers: h = x, a ReLU output).
        n = geometry.n_cells
        self.register_buffer("x_floor", torch.zeros(n))  # per-cell minimum = the "empty cell" value
        self.register_buffer("x_scale", torch.ones(n))  # per-cell median non-empty value above floor
        self.register_buffer("x_ceil", torch.full((n,), math.inf))  # per-cell maximum seen
        self.register_buffer("h_snap", torch.zeros(n))  # outputs h below it are empty cells
        self.register_buffer("h_empty", torch.zeros(n))  # sampled value of an empty cell (see _generate)
        self.register_buffer("obs_mean", torch.zeros(max(n_obs, 1)))
        self.register_buffer("obs_std", torch.ones(max(n_obs, 1)))
        self.register_buffer("layer_cells", torch.tensor([l.n_cells for l in geometry.layers], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("layer_extent", torch.tensor([max(l.extent_mm, 1.0) for l in geometry.layers],
                                                          dtype=torch.float32), persistent=False)
        # Latest generator losses, reported on every step (0 until the first generator update) so
        # the framework's per-interval averages stay finite.
        self._last_gen: dict[str, float] = {"loss_generator": 0.0, "loss_regression": 0.0, "loss_observables": 0.0}
        self._skipped = 0  # updates skipped because a loss was not finite (reported, should stay 0)
        self._held_out: tuple[Tensor, Tensor] | None = None  # fit_statistics' batches, the regressor's validation

    # -- preprocessing helpers ---------------------------------------------------------------
    def _to_h(self, x: Tensor) -> Tensor:
        """Preprocessed showers (B, n_cells) → network units h (B, n_cells): 0 = empty cell,
        ~1 = a typical non-empty value of that cell."""
        return (x - self.x_floor) / self.x_scale

    def _from_h(self, h: Tensor) -> Tensor:
        """Inverse of :meth:`_to_h`."""
        return self.x_floor + self.x_scale * h

    @property
    def _h_ceil(self) -> Tensor:
        return (self.x_ceil - self.x_floor) / self.x_scale

    def _generate_h(self, z: Tensor, cond: Tensor, leak: float = 0.0) -> Tensor:
        """(B, latent), (B, cond_dim) → generated showers in network units h (B, n_cells)."""
        return _activate(self.generator(z, cond), self.h_snap, self._h_ceil, leak)

    def _generate(self, z: Tensor, cond: Tensor) -> Tensor:
        """(B, latent), (B, cond_dim) → preprocessed showers (B, n_cells)."""
        return _to_x(self._generate_h(z, cond), self.x_floor, self.x_scale, self.h_empty)

    def _noise(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        dev = generator.device if generator is not None else device
        return torch.randn((n, self.latent_dim), generator=generator, device=dev).to(device)

    def _n_observables(self) -> int:
        # per layer: log energy fraction, centroid x/y, width x/y, occupancy; plus log total fraction
        return 6 * self.geometry.n_layers + 1

    def occupancy(self, h: Tensor) -> Tensor:
        """Soft fraction of non-empty cells per layer, (B, n_cells) network units → (B, L).

        A sigmoid step between empty (h = 0) and the smallest typical hit (h ~ 0.7), so that
        the occupancy (the "sparsity" of a physics comparison) has a gradient."""
        on = torch.sigmoid((h - 0.3) / 0.1)
        return features.layer_energies(on, self.geometry) / self.layer_cells

    def observables(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        """Differentiable high-level features of showers in MeV.

        ``x_mev`` (B, n_cells), ``e_inc`` (B, 1) MeV → (B, 5 L + 1): per layer log(E_l/E_inc),
        centroids and widths in x and y (in units of the layer half-size), then log(E_tot/E_inc).
        """
        m = features.layer_moments(x_mev.clamp_min(0), self.geometry)  # (B, L, K)
        e_l = m[..., 0]
        # smoothing: an energy floor of 1e-4 E_inc keeps centroids of (nearly) empty layers at 0
        # with bounded gradients, a 1 mm width floor keeps the root differentiable
        eps = 1e-4 * e_inc
        ext = self.layer_extent[:, None]  # (L, 1): x and y
        c = features.centroids_from_moments(m, eps) / ext
        w = features.widths_from_moments(m, eps, var_floor=1.0) / ext
        frac = torch.log(e_l / e_inc + 1e-5)
        tot = torch.log(e_l.sum(1, keepdim=True) / e_inc + 1e-5)
        return torch.cat([frac, c[..., 0], c[..., 1], w[..., 0], w[..., 1], tot], 1)

    def _critic_obs(self, h: Tensor, cond: Tensor, ctx: TrainContext) -> Tensor | None:
        """Standardised observables (B, n_obs) of showers in network units, or None if disabled."""
        if not self.critic.n_obs:
            return None
        e_inc = ctx.conditions.incident_energy(cond)
        # Cap at the largest value seen in training: beyond it an inverse transform may leave its
        # domain (Box-Cox with lambda < 0 diverges), and inf * 0 in its backward poisons the critic.
        x = torch.minimum(self._from_h(h), self.x_ceil)
        obs = torch.cat([self.observables(ctx.transform.inverse(x, e_inc), e_inc), self.occupancy(h)], 1)
        return (obs - self.obs_mean) / self.obs_std

    # -- training -----------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for generator and critic (betas (0.5, 0.9) as usual for WGAN-GP) and for the
        regressor (trained in :meth:`pretrain`, frozen afterwards)."""
        cfg = self.config
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_generator, betas=cfg.betas),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas),
            "regressor": torch.optim.Adam(self.regressor.parameters(), lr=cfg.regressor_lr),
        }

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        return {"regressor": LRSchedule("onecycle", self.config.regressor_steps)}

    def n_statistics_batches(self) -> int:
        return self.config.regressor_batches_val

    @torch.no_grad()
    def fit_statistics(self, xs: Tensor, cs: Tensor, ctx: TrainContext) -> None:
        """Output range, per-cell scales and observable standardisation from the first
        ``regressor_batches_val`` batches ``xs (B, n_cells)``, ``cs (B, cond_dim)`` (which are
        also the regressor's held-out validation set)."""
        self._held_out = (xs, cs)
        self.x_floor.copy_(xs.amin(0))
        self.x_ceil.copy_(xs.amax(0))
        # Why not standardise per cell: a rarely hit cell has a tiny std, so its hits become
        # 30-sigma spikes that the critic spots at once and the generator cannot place. Instead
        # each cell is scaled by its median non-empty value (above the empty value), and the gap
        # between "empty" and the smallest typical non-empty value (1% quantile) is recorded:
        # real showers have no values inside it, so generated values there snap to "empty".
        # Cells hit fewer than 20 times in this sample use the medians over the other cells.
        above = xs - self.x_floor
        hit = above > 1e-6 * (1 + above.abs().amax(0))
        masked = torch.where(hit, above, torch.full_like(above, math.nan))
        enough = hit.sum(0) >= 20
        scale = torch.nanquantile(masked, 0.5, dim=0)
        gap = torch.nanquantile(masked, 0.01, dim=0)
        if bool(enough.any()):
            scale = torch.where(enough, scale, scale[enough].median())
            gap = torch.where(enough, gap, gap[enough].median())
        else:
            scale, gap = torch.ones_like(scale), torch.zeros_like(gap)
        self.x_scale.copy_(scale.clamp_min(1e-6))
        self._gap_h = (gap / self.x_scale).clamp(0, 1)
        if self.critic.n_obs:
            e_inc = ctx.conditions.incident_energy(cs)
            obs = torch.cat([self.observables(ctx.transform.inverse(xs, e_inc), e_inc), self.occupancy(self._to_h(xs))], 1)
            self.obs_mean.copy_(obs.mean(0))
            self.obs_std.copy_(obs.std(0).clamp_min(1e-3))

    def pretrain_steps(self) -> int:
        return self.config.regressor_steps

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Fit data statistics, train the condition regressor, report its validation MSE, freeze it.

        The first ``regressor_batches_val`` batches are held out: their showers are recognised
        and skipped if the (infinite, reshuffled) stream yields them again, so the reported
        validation loss is on showers the regressor never trained on.
        Returns ``regressor_val_mse`` (all columns), per-column ``regressor_val_mse_<i>`` and
        ``regressor_val_r2`` (1 − MSE / variance of the encoded conditions).
        """
        cfg = self.config
        if self._held_out is None:
            raise RuntimeError("wgan-gp: pretrain() needs fit_statistics() first (the framework calls it)")
        xv, cv = self._held_out
        held = {(c, m) for c, m in zip(cv[:, 0].tolist(), xv.amax(1).tolist())}

        reg = self.regressor
        reg.requires_grad_(True).train()
        train_loss = float("nan")
        for _ in range(cfg.regressor_steps):
            x, cond = next(batches)
            with torch.no_grad():  # the output range: from every showers pretraining sees
                torch.minimum(self.x_floor, x.amin(0), out=self.x_floor)
                torch.maximum(self.x_ceil, x.amax(0), out=self.x_ceil)
            keep = [(c, m) not in held for c, m in zip(cond[:, 0].tolist(), x.amax(1).tolist())]
            if not all(keep):
                mask = torch.tensor(keep, device=x.device)
                x, cond = x[mask], cond[mask]
            loss = nn.functional.mse_loss(reg(self._to_h(x)), cond)
            ctx.backward_step(loss, "regressor")  # all-reduced under DDP; OneCycle schedule
            train_loss = 0.9 * train_loss + 0.1 * loss.item() if math.isfinite(train_loss) else loss.item()
        reg.eval().requires_grad_(False)  # frozen: only provides gradients to the generator
        self.h_snap.copy_(cfg.snap * self._gap_h)
        # The empty value of a Box-Cox/log transform does not invert to exactly 0 MeV (float
        # rounding: +-1e-4 MeV), which would count as a hit in occupancy; sampled empty cells
        # sit a little below it so the framework's clamp at 0 makes them exact zeros.
        self.h_empty.copy_(-cfg.empty_margin * (self.x_floor != 0))
        self._held_out = None
        with torch.no_grad():
            err = (reg(self._to_h(xv)) - cv) ** 2
        per_col = err.mean(0)
        var = cv.var(0).clamp_min(1e-12)
        out = {"regressor_train_mse": train_loss, "regressor_val_mse": float(per_col.mean()),
               "regressor_val_r2": float((1 - per_col / var).mean())}
        out.update({f"regressor_val_mse_{i}": float(v) for i, v in enumerate(per_col)})
        return out

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One critic update on ``(x, cond)`` (B, n_cells), (B, cond_dim); every ``n_critic``-th
        step also one generator update. Returns the latest losses of both.

        Critic and regressor work in network units h (see :meth:`_to_h`), and so does the
        gradient penalty (the critic's input space)."""
        cfg = self.config
        B, dev = len(x), x.device
        gen = ctx.generator
        leak = cfg.leak

        # ---- critic: E[D(fake)] - E[D(real)] + GP + drift -----------------------------------
        self.critic.requires_grad_(True)
        h_real = self._to_h(x)
        with torch.no_grad():
            h_fake = self._generate_h(self._noise(B, dev, gen), cond)

        def d(h: Tensor) -> Tensor:
            return self.critic(h, cond, self._critic_obs(h, cond, ctx))

        d_real, d_fake = d(h_real), d(h_fake)
        gp = gradient_penalty(d, h_real, h_fake, cfg.lambda_gp, gen)
        w_dist = d_real.mean() - d_fake.mean()
        loss_c = -w_dist + gp + cfg.drift * (d_real**2).mean()
        out = {"loss_critic": loss_c.item(), "wasserstein": w_dist.item(), "gradient_penalty": gp.item()}
        if math.isfinite(out["loss_critic"]):  # one bad batch must not turn every weight into NaN
            ctx.backward_step(loss_c, "critic")
        else:
            self._skipped += 1

        # ---- generator: -E[D(G(z, c))] + lambda_reg * MSE(R(G(z, c)), c) ----------------------
        if (ctx.step + 1) % max(cfg.n_critic, 1) == 0:
            self.critic.requires_grad_(False)  # no weight grads needed, only input grads
            h_fake = self._generate_h(self._noise(B, dev, gen), cond, leak)
            obs_fake = self._critic_obs(h_fake, cond, ctx)
            adv = -self.critic(h_fake, cond, obs_fake).mean()
            loss_g = adv
            reg_loss = torch.zeros((), device=dev)
            if cfg.lambda_reg > 0:
                reg_loss = nn.functional.mse_loss(self.regressor(h_fake), cond)
                loss_g = loss_g + cfg.lambda_reg * reg_loss
            obs_loss = torch.zeros((), device=dev)
            if cfg.lambda_obs > 0 and obs_fake is not None:
                # Same conditions in both batches, so their observable marginals must agree:
                # squared 1-D Wasserstein-2 distance per observable (sorted samples).
                with torch.no_grad():
                    obs_real = self._critic_obs(h_real, cond, ctx)
                obs_loss = ((obs_fake.sort(0).values - obs_real.sort(0).values) ** 2).mean()
                loss_g = loss_g + cfg.lambda_obs * obs_loss
            if math.isfinite(loss_g.item()):
                ctx.backward_step(loss_g, "generator")
            else:
                self._skipped += 1
            self.critic.requires_grad_(True)
            self._last_gen = {"loss_generator": adv.item(), "loss_regression": reg_loss.item(),
                              "loss_observables": obs_loss.item()}
        out.update(self._last_gen)
        out["skipped_nonfinite"] = float(self._skipped)
        return out

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Preprocessed showers (B, n_cells) for encoded conditions (B, cond_dim).

        Draws ``z`` ~ N(0, 1) of shape (B, latent_dim) with ``generator`` (first and only draw),
        so ``export_module()(z, cond)`` reproduces it for the same z."""
        z = self._noise(len(cond), cond.device, generator)
        return self._generate(z, cond)

    def export_module(self) -> nn.Module:
        """``f(z, cond) -> x``: z (B, latent_dim), cond (B, cond_dim) → preprocessed showers (B, n_cells)."""
        return _Exported(self)

    @torch.no_grad()
    def regressor_errors(self, x: Tensor, cond: Tensor) -> Tensor:
        """Per-column squared error of the frozen regressor, (B, cond_dim): use it on real showers
        and on generated ones for the same ``cond`` to check that G respects the conditions."""
        return (self.regressor(self._to_h(x)) - cond) ** 2


class _Exported(nn.Module):
    """Standalone ``f(z, cond)`` holding the generator and the output statistics."""

    def __init__(self, model: WGANGP) -> None:
        super().__init__()
        self.latent_dim = model.latent_dim
        self.generator = model.generator
        self.register_buffer("x_floor", model.x_floor.clone())
        self.register_buffer("x_scale", model.x_scale.clone())
        self.register_buffer("h_snap", model.h_snap.clone())
        self.register_buffer("h_ceil", model._h_ceil.clone())
        self.register_buffer("h_empty", model.h_empty.clone())

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        h = _activate(self.generator(z, cond), self.h_snap, self.h_ceil)
        return _to_x(h, self.x_floor, self.x_scale, self.h_empty)


def _to_x(h: Tensor, floor: Tensor, scale: Tensor, h_empty: Tensor) -> Tensor:
    """Network units (B, n_cells) → preprocessed showers, empty cells (h == 0) at ``h_empty``."""
    return floor + scale * torch.where(h == 0, h_empty, h)


def _activate(raw: Tensor, snap: Tensor, ceil: Tensor, leak: float = 0.0) -> Tensor:
    """Generator output (B, n_cells) → network units h in the data range: below ``snap`` (>= 0)
    exactly 0 (an empty cell), above ``ceil`` the ceiling (the largest value seen in training:
    beyond it an inverse transform can leave its domain, e.g. Box-Cox with lambda < 0).

    ``leak`` > 0 lets a fraction of the gradient through the "empty" branch (straight-through),
    so cells that start below the snap threshold can still learn to switch on."""
    empty = raw < snap.clamp_min(0)
    h = torch.where(empty, torch.zeros_like(raw), torch.minimum(raw, ceil))
    if leak > 0:
        h = h + leak * (raw - raw.detach()) * empty
    return h
