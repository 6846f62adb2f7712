"""BIB-AE: a bounded-information-bottleneck autoencoder with a latent sampler and a
post-processor (the ILD group's model, seed 003; ``docs/bib-ae.md``).

Networks (all small enough for CPU training and sampling):

* **encoder** ``E(x, c) -> (mu, log_var)`` and **decoder** ``D(z, c) -> x``: convolutional per
  *shape group* (layers of one image shape, as in ``wgan_gp.shape_groups``). A group of at
  least ``conv3d_min_layers`` layers is one 3D image (1, layers, rows, cols) with 3D
  (transposed) convolutions, which mix neighbouring layers; a thinner group stacks its layers
  as channels of 2D convolutions. Conditions (encoded E_inc, and θ/φ when the run has them)
  enter the dense parts of both.
* **critics** (WGAN-GP, ``layers.gradient_penalty``): one on showers ``(x, c)`` (real against
  reconstructed, the per-layer energies as extra inputs) and one on the latent (encoded ``z``
  against ``N(0, 1)`` draws).
* **post-processor** ``P(x, c)``: a residual convolutional network on the decoded shower,
  initialised to the identity, trained after the autoencoder with an MMD on the per-shower
  sorted cell values (the cell-energy spectrum and the hit count) plus the reconstruction.
* **cell noise** (``cell_noise``, ``noise_tail``): the per-cell fluctuations the latent does not
  carry (per-layer centroids and widths of real showers fluctuate almost independently layer to
  layer). After the post-processor every cell gets ``sigma(c) * eps * exp(noise_tail eps^2 / 2)``
  (the decoder's residual width, linear in the conditions; Tukey's heavy tail), the output snap
  is a line in the conditions (the hit count grows with E_inc), and each layer is rescaled to
  its noise-free energy. ``cell_noise = 0, snap_by_conditions = False`` is the old recipe.
* **latent sampler** (``models/latent.py``): a conditional KDE over encoded training showers or
  a conditional latent flow (zuko); ``latent = "auto"`` takes the flow when the training
  data's angles vary, else the KDE.

Stages, all in one ``calosim train`` (``ctx.step`` decides; the progress bar shows ``stage``):

1. steps ``[0, ae_steps)``: autoencoder = reconstruction + ``beta_kl`` KL + ``lambda_mmd`` MMD
   to N(0, 1) + adversarial terms of both critics (one critic update per step, then one
   autoencoder update);
2. ``latent_steps`` steps: encoder and decoder frozen; each batch's posterior means are stored
   as KDE centres (up to ``kde_size``) and train the latent flow by maximum likelihood;
   With cell noise, the squared residuals of the decoded means fit the noise variance;
3. the remaining steps: the post-processor, on (noise-free) reconstructions of the real batch;
   the output snap follows the value that gives each (noisy) shower its real hit count.

Network units: cells are ``h = log1p((x - floor) / x0)`` (``floor`` the per-cell empty value,
0 for the non-negative ``scale``/``identity`` transforms; ``x0`` the median non-empty value),
so 0 is an empty cell and every decade of energy counts alike. The decoder's output passes a
ReLU: empty cells are exact zeros. Its reconstruction loss is ``(raw - h)^2`` on hit cells and
``relu(raw)^2`` on empty ones, so a cell that should be hit is pulled up even while switched off.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from . import register_model
from ._random import standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_WIDTH, TrainConfig, param
from .latent import LatentFlow, LatentKDE
from .layers import gradient_penalty
from .wgan_gp import shape_groups
from .. import features

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = ["BIBAE", "mmd", "sorted_energy_mmd"]

_ANGLES = ("theta", "phi", "direction")


# ------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------
def mmd(a: Tensor, b: Tensor, scales: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)) -> Tensor:
    """Biased squared MMD between samples ``a`` (N, d) and ``b`` (M, d) with a sum of Gaussian
    kernels whose widths are ``scales`` x the median squared distance (detached). Exactly 0 for
    identical samples, > 0 when the distributions differ."""
    x = torch.cat([a, b])
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    med = d2.detach().median().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (s * med)) for s in scales)
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def sorted_energy_mmd(a: Tensor, b: Tensor, top_k: int | None = None) -> Tensor:
    """MMD between the distributions of per-shower sorted cell values: ``a`` (N, n_cells),
    ``b`` (M, n_cells); each shower becomes its ``top_k`` largest values in descending order,
    a vector whose profile is the cell-energy spectrum and whose zero tail is the hit count."""
    k = a.shape[1] if top_k is None else min(int(top_k), a.shape[1])
    return mmd(a.sort(1, descending=True).values[:, :k], b.sort(1, descending=True).values[:, :k])


# ------------------------------------------------------------------------------------------
# convolutional blocks per shape group
# ------------------------------------------------------------------------------------------
def _halvings(n: int, most: int) -> int:
    """×2 resampling stages along an axis of size ``n`` (the coarsest size stays >= 3)."""
    return max(0, min(most, int(math.floor(math.log2(n / 3.0))))) if n >= 6 else 0


class _Group:
    """A shape group as an image: 3D ``(1, L, H, W)`` or 2D ``(L, H, W)`` (layers as channels)."""

    def __init__(self, shape: tuple[int, int], n_layers: int, use_3d: bool) -> None:
        self.n_layers, self.use_3d = n_layers, use_3d
        self.dims: tuple[int, ...] = (n_layers, *shape) if use_3d else tuple(shape)
        self.channels = 1 if use_3d else n_layers
        self.conv: type[nn.Module] = nn.Conv3d if use_3d else nn.Conv2d
        self.tconv: type[nn.Module] = nn.ConvTranspose3d if use_3d else nn.ConvTranspose2d

    def image(self, flat: Tensor) -> Tensor:
        """(B, cells of the group) -> (B, channels, *dims)."""
        return flat.reshape(flat.shape[0], self.channels, *self.dims)


class _Down(nn.Module):
    """Group image (B, C, *dims) -> features (B, out): space to depth (each block of cells of a
    coarse voxel becomes channels, the inverse of :class:`_Up`'s sub-pixel step), then
    ``n_conv`` 3-kernel convolutions of ``channels`` at coarse resolution and a dense layer."""

    def __init__(self, g: _Group, channels: int, n_conv: int, max_down: int, out: int, norm: bool) -> None:
        super().__init__()
        self.dims, self.c_in = g.dims, g.channels
        self.factors = tuple(2 ** _halvings(n, max_down) for n in g.dims)
        self.base = tuple(math.ceil(n / f) for n, f in zip(g.dims, self.factors))
        pads: list[int] = []
        for n, b, f in reversed(list(zip(g.dims, self.base, self.factors))):  # F.pad: last axis first
            extra = b * f - n
            pads += [extra // 2, extra - extra // 2]
        self.pads = tuple(pads)
        blocks: list[nn.Module] = []
        c = g.channels * math.prod(self.factors)
        for _ in range(max(n_conv, 1)):
            blocks.append(g.conv(c, channels, 3, 1, 1))
            if norm:  # GroupNorm(1): per-sample (gradient-penalty safe), never batch norm
                blocks.append(nn.GroupNorm(1, channels))
            blocks.append(nn.LeakyReLU(0.2))
            c = channels
        blocks += [nn.Flatten(), nn.Linear(c * math.prod(self.base), out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*blocks)

    def forward(self, img: Tensor) -> Tensor:
        B, n = img.shape[0], len(self.dims)
        y = nn.functional.pad(img, self.pads) if any(self.pads) else img
        # (B, C, b_1 f_1, ..., b_n f_n) -> (B, C, f_1..f_n, b_1..b_n) -> (B, C F, b_1..b_n)
        y = y.reshape(B, self.c_in, *[k for bf in zip(self.base, self.factors) for k in bf])
        y = y.permute(0, 1, *[2 + 2 * i + 1 for i in range(n)], *[2 + 2 * i for i in range(n)])
        return self.net(y.reshape(B, -1, *self.base))


class _Up(nn.Module):
    """Features (B, hidden) -> group image (B, C, *dims): a coarse grid of ``channels`` (the
    image size / 2 per resampled axis, up to ``max_up`` times), ``n_conv`` 3-kernel convolutions
    on it, then a sub-pixel convolution (Shi et al. 2016): one convolution giving every coarse
    voxel its block of fine cells, rearranged to the full grid and cropped. All the convolution
    work is at coarse resolution with many channels, which CPUs do several times faster than
    small-channel convolutions at full resolution."""

    def __init__(self, g: _Group, hidden: int, channels: int, n_conv: int, max_up: int) -> None:
        super().__init__()
        self.dims, self.c_out = g.dims, g.channels
        self.factors = tuple(2 ** _halvings(n, max_up) for n in g.dims)
        self.base = tuple(math.ceil(n / f) for n, f in zip(g.dims, self.factors))
        self.c0 = channels
        self.fc = nn.Linear(hidden, channels * math.prod(self.base))
        blocks: list[nn.Module] = []
        for _ in range(n_conv):
            blocks += [g.conv(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2)]
        blocks.append(g.conv(channels, g.channels * math.prod(self.factors), 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, h: Tensor) -> Tensor:
        B, n = h.shape[0], len(self.dims)
        y = nn.functional.leaky_relu(self.fc(h), 0.2).view(B, self.c0, *self.base)
        y = self.net(y).view(B, self.c_out, *self.factors, *self.base)
        # depth to space: (B, C, f_1..f_n, b_1..b_n) -> (B, C, b_1, f_1, ..., b_n, f_n)
        y = y.permute(0, 1, *[k for i in range(n) for k in (2 + n + i, 2 + i)])
        y = y.reshape(B, self.c_out, *[b * f for b, f in zip(self.base, self.factors)])
        for ax, size in enumerate(self.dims):  # centred crop to the exact group shape
            o = (y.shape[2 + ax] - size) // 2
            y = y.narrow(2 + ax, o, size)
        return y


class _Residual(nn.Module):
    """Post-processor block of one group: image (B, C, *dims), conditions (B, cond_dim) -> a
    correction of the same shape. 2D convolutions with the group's layers as channels (every
    cell sees its 3x3 neighbourhood in all layers, cheaply); the last one starts at zero, so
    the post-processor starts as the identity."""

    def __init__(self, g: _Group, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.n_layers = g.n_layers
        self.inp = nn.Conv2d(g.n_layers, channels, 3, 1, 1)
        self.cond = nn.Linear(cond_dim, channels)
        self.out = nn.Conv2d(channels, g.n_layers, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, img: Tensor, cond: Tensor) -> Tensor:
        shape = img.shape
        x = img.reshape(shape[0], self.n_layers, *shape[-2:])
        y = nn.functional.leaky_relu(self.inp(x) + self.cond(cond)[:, :, None, None], 0.2)
        return self.out(y).reshape(shape)


class _Groups(nn.Module):
    """Cell order bookkeeping: flat showers (geometry order) <-> per-group images."""

    def __init__(self, geometry: "Geometry", min_3d: int) -> None:
        super().__init__()
        off = geometry.layer_offsets
        self.groups: list[_Group] = []
        gather: list[Tensor] = []
        for shape, ids in shape_groups(geometry):
            self.groups.append(_Group(tuple(shape), len(ids), len(ids) >= min_3d))
            gather.append(torch.cat([torch.arange(off[i], off[i + 1]) for i in ids]))
        self.sizes = [len(g) for g in gather]
        order = torch.cat(gather)
        scatter = torch.empty_like(order)
        scatter[order] = torch.arange(len(order))
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("scatter", scatter, persistent=False)

    def images(self, x: Tensor) -> list[Tensor]:
        """(B, n_cells) -> one image per group."""
        parts = x[:, self.order].split(self.sizes, 1)
        return [g.image(p) for g, p in zip(self.groups, parts)]

    def flat(self, images: list[Tensor]) -> Tensor:
        """Inverse of :meth:`images`."""
        return torch.cat([im.flatten(1) for im in images], 1)[:, self.scatter]


class Encoder(nn.Module):
    """``E(h, c)``: showers (B, n_cells) in network units, conditions -> (mu, log_var), (B, latent) each."""

    def __init__(self, cells: _Groups, cond_dim: int, latent: int, hidden: int, channels: int, n_conv: int,
                 max_down: int) -> None:
        super().__init__()
        self.cells = cells
        self.down = nn.ModuleList(_Down(g, channels, n_conv, max_down, hidden, norm=False) for g in cells.groups)
        self.head = nn.Sequential(nn.Linear(hidden * len(cells.groups) + cond_dim, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, 2 * latent))

    def forward(self, h: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.cat([d(im) for d, im in zip(self.down, self.cells.images(h))] + [cond], 1)
        mu, log_var = self.head(f).chunk(2, 1)
        return mu, log_var.clamp(-12, 8)


class Decoder(nn.Module):
    """``D(z, c)``: latent (B, latent), conditions (B, cond_dim) -> raw cells (B, n_cells) (before the ReLU)."""

    def __init__(self, cells: _Groups, cond_dim: int, latent: int, hidden: int, channels: int, n_conv: int,
                 max_up: int) -> None:
        super().__init__()
        self.cells = cells
        self.trunk = nn.Sequential(nn.Linear(latent + cond_dim, hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.up = nn.ModuleList(_Up(g, hidden, channels, n_conv, max_up) for g in cells.groups)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        f = self.trunk(torch.cat([z, cond], 1))
        return self.cells.flat([u(f) for u in self.up])


class PostProcessor(nn.Module):
    """``P(h, c)``: decoded showers (B, n_cells) in network units -> raw refined cells (B, n_cells)."""

    def __init__(self, cells: _Groups, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.cells = cells
        self.blocks = nn.ModuleList(_Residual(g, cond_dim, channels) for g in cells.groups)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        ims = self.cells.images(h)
        return h + self.cells.flat([b(im, cond) for b, im in zip(self.blocks, ims)])


class ShowerCritic(nn.Module):
    """``C(h, c)``: showers in network units, conditions -> score (B,); per-layer log energies join the features."""

    def __init__(self, cells: _Groups, geometry: "Geometry", cond_dim: int, hidden: int, channels: int,
                 n_conv: int, max_down: int) -> None:
        super().__init__()
        self.cells, self.geometry = cells, geometry
        self.down = nn.ModuleList(_Down(g, channels, n_conv, max_down, hidden, norm=True) for g in cells.groups)
        self.head = nn.Sequential(
            nn.Linear(hidden * len(cells.groups) + cond_dim + geometry.n_layers, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        e_layer = torch.log1p(features.layer_energies(h, self.geometry))
        f = torch.cat([d(im) for d, im in zip(self.down, self.cells.images(h))] + [cond, e_layer], 1)
        return self.head(f).squeeze(1)


def _mlp_critic(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, 1), nn.Flatten(0))


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
@register_model
class BIBAE(ShowerModel):
    """BIB-AE: VAE + critics, latent KDE or conditional latent flow, post-processor (ILD, seed 003)."""

    name = "bib-ae"

    @dataclass
    class Config(TrainConfig):
        # CPU recipe: ild-ecal-10 photons, 1000-5000 showers, ~8 min on one shared core (docs/bib-ae.md)
        transform: str = "scale"  # x = E_cell / E_inc: non-negative, empty cells exactly 0
        batch_size: int = param(32, ge=2)
        steps: int | None = param(2000, ge=1)  # all stages; the post-processor gets what is left (see lr_schedules)
        ae_steps: int = param(1500, ge=1)
        latent_steps: int = param(200, ge=1)
        latent: Literal["auto", "kde", "flow"] = "auto"  # auto: the flow when the angles vary, else the KDE
        latent_dim: int = param(16, ge=1, le=MAX_WIDTH)
        hidden: int = param(128, ge=2, le=MAX_WIDTH)
        channels: int = param(32, ge=1, le=1024)  # decoder: channels of its coarse grid ...
        decoder_convs: int = param(1, ge=0, le=16)  # ... and convolutions on it before the sub-pixel one
        enc_channels: int = param(32, ge=1, le=1024)  # encoder / critic: channels of the coarse grid ...
        encoder_convs: int = param(1, ge=1, le=16)  # ... and convolutions on it
        max_resample: int = param(3, ge=0, le=8)  # ×2 stages per axis at most
        conv3d_min_layers: int = param(4, ge=1)  # groups with this many layers use 3D convolutions
        lr: float = param(1e-3, gt=0.0)
        lr_critic: float = param(1e-3, gt=0.0)
        betas: tuple[float, float] = param((0.5, 0.9), ge=0.0, lt=1.0)
        lambda_energy: float = param(10.0, ge=0.0)  # paired squared error of log layer and total energies
        beta_kl: float = param(0.05, ge=0.0)
        lambda_mmd: float = param(50.0, ge=0.0)  # latent MMD to N(0, 1)
        lambda_adv: float = param(0.5, ge=0.0)  # shower critic
        lambda_latent_adv: float = param(0.5, ge=0.0)  # latent critic
        lambda_gp: float = param(10.0, ge=0.0)
        critic_hidden: int = param(64, ge=2, le=MAX_WIDTH)
        critic_channels: int = param(16, ge=1, le=1024)  # shower critic's coarse-grid channels
        # latent sampler
        kde_size: int = param(20000, ge=1, le=10**7)  # stored centres (encoded training showers)
        kde_neighbours: int = param(100, ge=1)  # nearest in condition space = kernel centres of one query
        kde_bandwidth: float = param(0.1, ge=0.0)  # x Scott's width (16-d Scott oversmooths: decoded energies 6x too wide)
        flow_transforms: int = param(4, ge=1, le=64)
        flow_hidden: int = param(64, ge=2, le=MAX_WIDTH)
        lr_flow: float = param(3e-3, gt=0.0)
        # post-processor
        pp_channels: int = param(32, ge=1, le=1024)
        lr_pp: float = param(5e-4, gt=0.0)
        pp_lambda_mmd: float = param(20.0, ge=0.0)  # sorted cell values (spectrum, hit count)
        pp_lambda_layers: float = param(20.0, ge=0.0)  # per-layer and total energies (profile, response)
        pp_lambda_rec: float = param(1.0, ge=0.0)
        pp_top_k: int | None = param(None, ge=1)  # sorted values compared per shower (None: all cells)
        snap: float = param(1.0, ge=0.0)  # outputs below snap x (1% quantile of real hits) become empty cells
        snap_rate: float = param(0.05, ge=0.0, le=1.0)  # post-processor stage: snap -> the real hit count (EMA rate)
        # Per-cell fluctuations the latent does not carry (docs/bib-ae.md, "Cell noise"): the
        # output gets noise of the decoder's residual width (linear in the conditions, fitted in
        # the latent stage) x cell_noise, heavy-tailed by noise_tail (Tukey's h: eps exp(h eps^2 / 2),
        # 0 = Gaussian), then each layer is rescaled to its noise-free energy; 0 = the deterministic decoder.
        cell_noise: float = param(1.0, ge=0.0)
        noise_tail: float = param(0.25, ge=0.0, le=1.0)
        # the output snap is linear in the conditions, fitted per shower to the real hit count
        # (the hit count grows with E_inc); false = one threshold for all showers
        snap_by_conditions: bool = True

    config: Config

    def __init__(self, geometry: "Geometry", cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        if any(lay.kind != "cartesian" for lay in geometry.layers):
            raise ValueError(f"bib-ae: needs Cartesian layers; {geometry.name!r} has "
                             f"{sorted({lay.kind for lay in geometry.layers})}")
        d = cfg.latent_dim
        self.cells = _Groups(geometry, cfg.conv3d_min_layers)
        sizes = torch.diff(torch.as_tensor(geometry.layer_offsets))
        self.register_buffer("cell_layer", torch.repeat_interleave(torch.arange(len(sizes)), sizes), persistent=False)
        self.encoder = Encoder(self.cells, cond_dim, d, cfg.hidden, cfg.enc_channels, cfg.encoder_convs, cfg.max_resample)
        self.decoder = Decoder(self.cells, cond_dim, d, cfg.hidden, cfg.channels, cfg.decoder_convs, cfg.max_resample)
        self.post = PostProcessor(self.cells, cond_dim, cfg.pp_channels)
        self.critic = ShowerCritic(self.cells, geometry, cond_dim, cfg.critic_hidden, cfg.critic_channels, 1,
                                   cfg.max_resample)
        self.latent_critic = _mlp_critic(d, cfg.critic_hidden)
        self.kde = LatentKDE(d, cond_dim, cfg.kde_size, cfg.kde_neighbours, cfg.kde_bandwidth) \
            if cfg.latent != "flow" else None
        self.flow = LatentFlow(d, cond_dim, cfg.flow_transforms, cfg.flow_hidden) if cfg.latent != "kde" else None
        self._bounds = (cfg.ae_steps, cfg.ae_steps + cfg.latent_steps)  # stage ends, see lr_schedules
        n = geometry.n_cells
        # export noise: a column choosing the KDE centre, the latent noise, the cell noise
        self.latent_dim = 1 + d + (n if cfg.cell_noise > 0 else 0)
        # network units h = log1p((x - floor) / x0), set in fit_statistics (defaults: MeV-like data)
        self.register_buffer("floor", torch.zeros(n))
        self.register_buffer("x0", torch.ones(()))
        self.register_buffer("h_ceil", torch.full((), 30.0))
        self.register_buffer("h_snap", torch.zeros(()))  # decoder outputs below it are empty cells
        # output snap = snap_w[0] + cond @ snap_w[1:] (with snap_by_conditions false: [h_snap, 0, ...])
        self.register_buffer("snap_w", torch.zeros(1 + cond_dim))
        # cell-noise variance (B, n_cells) = [1, cond] @ noise_w, from the normal equations of the
        # squared residuals accumulated in the latent stage (noise_xtx, noise_xtr)
        self.register_buffer("noise_w", torch.zeros(1 + cond_dim, n))
        self.register_buffer("noise_xtx", torch.zeros(1 + cond_dim, 1 + cond_dim))
        self.register_buffer("noise_xtr", torch.zeros(1 + cond_dim, n))
        self.register_buffer("use_flow", torch.tensor(cfg.latent == "flow"))
        self.register_buffer("latent_trained", torch.zeros((), dtype=torch.long))  # latent-stage steps done

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # runs saved before the cell noise: no noise (zero variance), the output snap = h_snap
        if prefix + "h_snap" in state_dict and prefix + "snap_w" not in state_dict:
            state_dict[prefix + "snap_w"] = torch.zeros_like(self.snap_w)
            state_dict[prefix + "snap_w"][0] = state_dict[prefix + "h_snap"]
            for k in ("noise_w", "noise_xtx", "noise_xtr"):
                state_dict[prefix + k] = torch.zeros_like(getattr(self, k))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- units ------------------------------------------------------------------------------
    def _to_h(self, x: Tensor) -> Tensor:
        """Preprocessed showers (B, n_cells) -> network units (B, n_cells), 0 = empty."""
        return torch.log1p((x - self.floor).clamp_min(0) / self.x0)

    def _to_x(self, h: Tensor) -> Tensor:
        return self.floor + self.x0 * (torch.exp(h) - 1)  # not expm1: ONNX has no such operator

    # -- training ---------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        opts = {
            "ae": torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=cfg.lr, betas=cfg.betas),
            "critics": torch.optim.Adam([*self.critic.parameters(), *self.latent_critic.parameters()],
                                        lr=cfg.lr_critic, betas=cfg.betas),
            "post": torch.optim.Adam(self.post.parameters(), lr=cfg.lr_pp),
        }
        if self.flow is not None:
            opts["flow"] = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr_flow)
        return opts

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Cosine schedules per stage. The framework calls this with the run's total steps (also
        with ``epochs``), which fixes the stage boundaries: a run too short for ``ae_steps +
        latent_steps`` + 1 post-processor steps gets stages of 75 / 10 / 15 % of its steps."""
        cfg = self.config
        ae, lat = cfg.ae_steps, cfg.latent_steps
        if total_steps <= ae + lat:
            ae, lat = max(1, int(0.75 * total_steps)), max(1, int(0.1 * total_steps))
            warnings.warn(f"bib-ae: {total_steps} steps do not exceed ae_steps + latent_steps ({cfg.ae_steps} + "
                          f"{cfg.latent_steps}); using {ae} autoencoder, {lat} latent and "
                          f"{max(total_steps - ae - lat, 0)} post-processor steps", stacklevel=2)
        self._bounds = (ae, ae + lat)
        out = {"ae": LRSchedule("cosine", ae), "post": LRSchedule("cosine", max(total_steps - ae - lat, 1))}
        if self.flow is not None:
            out["flow"] = LRSchedule("cosine", lat)
        return out

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Network units from the first batch ``x`` (B, n_cells), and the latent sampler
        (``latent = "auto"``: the flow if a θ/φ column of ``cond`` (B, cond_dim) varies)."""
        self.floor.copy_(x.amin(0).clamp_max(0))
        above = x - self.floor
        hits = above[above > 1e-6 * above.abs().amax().clamp_min(1e-30)]
        self.x0.fill_(float(hits.median()) if hits.numel() else 1.0)
        h = self._to_h(x)
        self.h_ceil.fill_(1.5 * float(h.amax()) + 1.0)
        # Real showers have no values between "empty" and their smallest hits (a cell threshold,
        # or the smallest deposit); a decoder's many tiny outputs there would be spurious hits.
        h_hit = h[h > 0]
        self.h_snap.fill_(self.config.snap * float(torch.quantile(h_hit[:1 << 24], 0.01)) if h_hit.numel() else 0.0)
        self.snap_w.zero_()[0] = self.h_snap
        if self.config.latent == "auto":
            slices = getattr(ctx.conditions, "slices", {})
            vary = any(float(cond[:, slices[a]].std()) > 1e-6 for a in _ANGLES if a in slices and len(cond) > 1)
            self.use_flow.fill_(vary)

    def stage(self, step: int) -> int:
        """1 autoencoder, 2 latent sampler, 3 post-processor."""
        ae_end, latent_end = self._bounds
        return 1 if step < ae_end else 2 if step < latent_end else 3

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One step of the stage ``ctx.step`` falls in, on ``x`` (B, n_cells), ``cond`` (B, cond_dim)."""
        h = self._to_h(x)
        stage = self.stage(ctx.step)
        out = (self._ae_step if stage == 1 else self._latent_step if stage == 2 else self._post_step)(h, cond, ctx)
        return {"stage": float(stage), **out}

    def _ae_step(self, h: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        cfg, gen = self.config, ctx.generator
        B, d = len(h), cfg.latent_dim
        adversarial = cfg.lambda_adv > 0 or cfg.lambda_latent_adv > 0
        out: dict[str, float] = {}
        if adversarial:  # critics: real vs reconstructed showers, N(0, 1) vs encoded latents
            self._critics_grad(True)
            with torch.no_grad():
                z, _, _ = self._encode(h, cond, gen)
                h_rec = _snap(self.decoder(z, cond), self.h_snap)
            prior = standard_normal(B, d, gen, h.device)
            crit = lambda v: self.critic(v, cond)  # noqa: E731
            w_x = self.critic(h, cond).mean() - self.critic(h_rec, cond).mean()
            w_z = self.latent_critic(prior).mean() - self.latent_critic(z).mean()
            gp = (gradient_penalty(crit, h, h_rec, cfg.lambda_gp, gen)
                  + gradient_penalty(self.latent_critic, prior, z, cfg.lambda_gp, gen))
            ctx.backward_step(-w_x - w_z + gp, "critics")
            self._critics_grad(False)
            out.update(wasserstein=w_x.item(), wasserstein_latent=w_z.item(), gradient_penalty=gp.item())
        z, mu, log_var = self._encode(h, cond, gen)
        raw = self.decoder(z, cond)
        rec = _rec_loss(raw, h).sum(1).mean()
        h_on = torch.where(raw < self.h_snap, 0.5 * (raw - raw.detach()), raw)  # straight-through leak
        energy = ((self._log_layer_energies(h_on) - self._log_layer_energies(h)) ** 2).sum(1).mean()
        kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(1).mean()
        m = mmd(z, standard_normal(B, d, gen, h.device))
        loss = rec + cfg.lambda_energy * energy + cfg.beta_kl * kl + cfg.lambda_mmd * m
        if adversarial:
            loss = loss - cfg.lambda_adv * self.critic(h_on, cond).mean() \
                - cfg.lambda_latent_adv * self.latent_critic(z).mean()
        ctx.backward_step(loss, "ae")
        return {**out, "reconstruction": rec.item(), "energy": energy.item(), "kl": kl.item(), "mmd_latent": m.item()}

    def _latent_step(self, h: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        with torch.no_grad():
            mu = self.encoder(h, cond)[0]
            if self.config.cell_noise > 0:  # squared residuals of the decoded posterior means
                X = _with_ones(cond)
                self.noise_xtx += X.T @ X
                self.noise_xtr += X.T @ (h - torch.relu(self.decoder(mu, cond))) ** 2
                self.noise_w.copy_(_ridge_solve(self.noise_xtx, self.noise_xtr))
        out: dict[str, float] = {}
        if self.kde is not None:
            out["kde_centres"] = float(self.kde.add(mu, cond))
        if self.flow is not None:
            nll = -self.flow.log_prob(mu, cond).mean()
            ctx.backward_step(nll, "flow")
            out["flow_nll"] = nll.item()
        self.latent_trained += 1
        return out

    def _post_step(self, h: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            h_dec = _snap(self.decoder(self.encoder(h, cond)[0], cond), self.h_snap)
        raw = self.post(h_dec, cond)
        with torch.no_grad():  # calibrate the output snap so the hit counts are the real ones
            noisy = raw if cfg.cell_noise == 0 else _add_cell_noise(
                raw, self._noise_std(cond), standard_normal(*raw.shape, ctx.generator, raw.device), cfg.noise_tail)
            self._calibrate_snap(noisy, (h > 0).sum(1), cond)
        # The losses see the noise-free output (heavy-tailed noise in them makes the post-processor
        # chase the noise: energies drift, measured in docs/bib-ae.md); the noise only moves energy
        # within a layer, so the noise-free layer energies are the output's.
        thr = self.h_snap if cfg.cell_noise > 0 else _with_ones(cond) @ self.snap_w[:, None]
        h_pp = torch.where(raw < thr, 0.5 * (raw - raw.detach()), raw)  # off cells: straight-through, can switch on
        m = sorted_energy_mmd(h_pp, h, cfg.pp_top_k)
        m_layers = mmd(self._log_layer_energies(h_pp), self._log_layer_energies(h))
        rec = _rec_loss(raw, h).sum(1).mean() \
            + cfg.lambda_energy * ((self._log_layer_energies(h_pp) - self._log_layer_energies(h)) ** 2).sum(1).mean()
        ctx.backward_step(cfg.pp_lambda_mmd * m + cfg.pp_lambda_layers * m_layers + cfg.pp_lambda_rec * rec, "post")
        return {"pp_mmd_sorted": m.item(), "pp_mmd_layers": m_layers.item(), "pp_reconstruction": rec.item()}

    def _noise_std(self, cond: Tensor) -> Tensor:
        """Cell-noise standard deviation (B, n_cells) for conditions (B, cond_dim); zeros without cell noise."""
        return self.config.cell_noise * (_with_ones(cond) @ self.noise_w).clamp_min(0).sqrt()

    def _calibrate_snap(self, noisy: Tensor, n_real: Tensor, cond: Tensor) -> None:
        """Move the output snap towards the hit counts ``n_real`` (B,) of the real showers paired
        with the outputs ``noisy`` (B, n_cells): per shower, the threshold that leaves its real hit
        count on, then (``snap_by_conditions``) a least-squares line in the conditions (B, cond_dim)."""
        rate = self.config.snap_rate
        if not self.config.snap_by_conditions:  # one threshold for the batch's total hit count
            n, vals = int(n_real.sum()), noisy.flatten()
            if 0 < n < vals.numel():
                self.h_snap.lerp_(vals.kthvalue(vals.numel() - n).values.clamp_min(0), rate)
            self.snap_w.zero_()[0] = self.h_snap
            return
        desc = noisy.sort(1, descending=True).values
        k = n_real.clamp(1, noisy.shape[1] - 1)[:, None]
        # halfway between the smallest value kept on and the largest switched off
        thr = (0.5 * (desc.gather(1, k - 1) + desc.gather(1, k))).clamp_min(0)
        X = _with_ones(cond)
        w = _ridge_solve(X.T @ X, X.T @ thr).squeeze(1)
        self.snap_w.lerp_(w, rate)

    def _log_layer_energies(self, h: Tensor) -> Tensor:
        """Network units (B, n_cells) -> log energy per layer and in total, (B, n_layers + 1),
        in units of x0 (the joint distribution of the longitudinal profile and the response)."""
        e = features.layer_energies(torch.exp(h) - 1, self.geometry)
        return torch.log1p(torch.cat([e, e.sum(1, keepdim=True)], 1))

    def _encode(self, h: Tensor, cond: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encoder(h, cond)
        z = mu + (0.5 * log_var).exp() * standard_normal(len(h), mu.shape[1], gen, h.device)
        return z, mu, log_var

    def _critics_grad(self, on: bool) -> None:
        self.critic.requires_grad_(on)
        self.latent_critic.requires_grad_(on)

    # -- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Preprocessed showers (B, n_cells) for conditions (B, cond_dim); draws the noise
        (B, latent_dim) first, as :meth:`export_module` takes it."""
        z = standard_normal(len(cond), self.latent_dim, generator, cond.device)
        return self.export_module()(z, cond)

    def export_module(self) -> nn.Module:
        """``f(z, cond) -> x``: noise (B, 1 + latent) -> latent sampler -> decoder -> post-processor."""
        return _Exported(self)

    def latent_sampler(self) -> nn.Module | None:
        """The sampler in use: the flow or the KDE once the latent stage ran, else None (N(0, 1))."""
        if int(self.latent_trained) == 0:
            return None
        if bool(self.use_flow) and self.flow is not None:
            return self.flow
        if self.kde is not None and self.kde.n > 0:
            return self.kde
        return self.flow


def _with_ones(cond: Tensor) -> Tensor:
    """Conditions (B, cond_dim) -> (B, 1 + cond_dim) with a leading column of ones (an intercept)."""
    return torch.cat([torch.ones_like(cond[:, :1]), cond], 1)


def _ridge_solve(xtx: Tensor, xty: Tensor) -> Tensor:
    """Least squares from normal equations: ``(X^T X + eps I) w = X^T y``, (k, k) and (k, m) -> (k, m);
    the small ridge keeps a condition column that never varied (a fixed angle) solvable."""
    eps = 1e-6 * float(xtx.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.solve(xtx + eps * torch.eye(len(xtx), dtype=xtx.dtype, device=xtx.device), xty)


def _add_cell_noise(raw: Tensor, std: Tensor, eps: Tensor, tail: float = 0.0) -> Tensor:
    """Raw output (B, n_cells) -> ``relu(raw) + std * eps * exp(tail * eps^2 / 2)`` (Tukey's
    h-transform of standard normal ``eps``: Gaussian at ``tail`` 0, tails ~ |x|^(-1/tail));
    ``std``, ``eps`` (B, n_cells). Empty cells switch on where the noise passes the snap."""
    on = raw + (torch.relu(raw) - raw).detach()  # relu(raw), with the gradient of raw (off cells can switch on)
    return on + std * (eps * torch.exp(0.5 * tail * eps * eps) if tail > 0 else eps)


def _keep_layer_energies(h: Tensor, ref: Tensor, geometry: "Geometry", cell_layer: Tensor) -> Tensor:
    """Noisy snapped cells ``h`` (B, n_cells) rescaled per layer to the energies of the noise-free
    output ``ref`` (B, n_cells), both in network units: the noise moves energy within a layer only
    (the longitudinal profile and the response stay the post-processor's). ``cell_layer`` (n_cells,): layer per cell."""
    e_ref = features.layer_energies(torch.exp(ref) - 1, geometry)
    e_now = features.layer_energies(torch.exp(h) - 1, geometry)
    ratio = (e_ref / e_now.clamp_min(1e-12))[:, cell_layer]
    return torch.log(1 + (torch.exp(h) - 1) * ratio)  # not log1p / expm1: ONNX has no such operators


def _snap(raw: Tensor, h_snap: Tensor) -> Tensor:
    """Raw network output (B, n_cells) -> network units: 0 below ``h_snap`` (empty cells)."""
    return torch.where(raw < h_snap, torch.zeros_like(raw), raw)


def _rec_loss(raw: Tensor, h: Tensor) -> Tensor:
    """Per-cell reconstruction loss (B, n_cells): ``(raw - h)^2`` on hit cells, ``relu(raw)^2``
    on empty ones (any raw <= 0 is an exact empty cell after the ReLU)."""
    return torch.where(h > 0, (raw - h) ** 2, torch.relu(raw) ** 2)


class _Exported(nn.Module):
    """Standalone ``f(z, cond)``: z (B, 1 + latent) standard normal -> preprocessed showers (B, n_cells)."""

    def __init__(self, model: BIBAE) -> None:
        super().__init__()
        self.latent_dim = model.latent_dim
        self.n_latent = 1 + model.config.latent_dim  # noise columns of the latent sampler
        self.sampler = model.latent_sampler()
        self.decoder, self.post = model.decoder, model.post
        self.cell_noise, self.tail, self.geometry = model.config.cell_noise > 0, model.config.noise_tail, model.geometry
        self.register_buffer("cell_layer", model.cell_layer.clone(), persistent=False)
        self.register_buffer("noise_w", model.config.cell_noise ** 2 * model.noise_w.clone())  # variance coefficients
        self.register_buffer("floor", model.floor.clone())
        self.register_buffer("x0", model.x0.clone())
        self.register_buffer("h_ceil", model.h_ceil.clone())
        self.register_buffer("h_snap", model.h_snap.clone())
        self.register_buffer("snap_w", model.snap_w.clone())

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        zl = z[:, 1:self.n_latent] if self.sampler is None else self.sampler(z[:, :self.n_latent], cond)
        raw = self.post(_snap(self.decoder(zl, cond), self.h_snap), cond)
        c1 = _with_ones(cond)
        if not self.cell_noise:
            h = _snap(raw, c1 @ self.snap_w[:, None]).clamp_max(self.h_ceil)
        else:
            noisy = _add_cell_noise(raw, (c1 @ self.noise_w).clamp_min(0).sqrt(), z[:, self.n_latent:], self.tail)
            h = _snap(noisy, c1 @ self.snap_w[:, None]).clamp_max(self.h_ceil)
            ref = _snap(raw, self.h_snap).clamp_max(self.h_ceil)  # what the post-processor was trained on
            h = _keep_layer_energies(h, ref, self.geometry, self.cell_layer).clamp_max(self.h_ceil)
        return self.floor + self.x0 * (torch.exp(h) - 1)  # not expm1: ONNX has no such operator
