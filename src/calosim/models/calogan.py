"""CaloGAN (Paganini, de Oliveira, Nachman 2018): a conditional GAN with one LAGAN per layer.

Generator: the latent ``z`` is modulated by the encoded condition (CaloGAN multiplies ``z`` by
the scaled incident energy; here a learned gain of the whole ``cond`` vector, so a pdg one-hot
works too) and fed to one LAGAN sub-network per calorimeter layer: dense -> 2D conv -> BN ->
locally-connected (LC) -> BN -> LC. Layer ``i`` is then mixed with layer ``i-1`` through the
attentional transfer: the previous image is resampled onto this layer's grid (physical overlap
of the cells) and a per-pixel learned sigmoid gate mixes it with the layer's own output. A ReLU
(or CaloGAN's ReLU) keeps cells non-negative.

Discriminator: per-layer conv/LC features with minibatch discrimination, and CaloGAN's energy
block (per-layer energies / E_inc, total / E_inc, the "energy well" |E_tot - E_inc| and its
too-big flag, per-layer sparsity) with its own minibatch discrimination, plus ``cond``.

Losses: adversarial (``"ns"`` non-saturating as in the seed, or ``"wgan-gp"``) plus
CaloGAN's auxiliary energy term ``lambda_e * |E_inc - E_hat| / E_inc`` on generated showers,
``E_hat`` = sum of the generated cells in MeV (through ``ctx.transform.inverse``) divided by
the detector response (mean visible / incident energy of the real batches: a sampling
calorimeter sees a fraction of E_inc, so E_hat estimates E_inc only after this calibration).

Layer energies (``layer_energies``): ``"generator"`` is the seed's design, G draws every cell.
``"mdn"`` (the default recipe) splits the shower as CaloFlow does: a small mixture-density
network ``p(E_1..E_L | cond)`` over the energy vector ``t = (log E_tot, logit of the
stick-breaking layer fractions)`` is fitted first by maximum likelihood (seconds; it gets the
narrow response and the layer correlations right, which a short adversarial run does not),
and G draws each layer as a normalised shape (softmax, cells below the floor switched off,
renormalised) times its energy, conditioned on ``t``. With ``hit_counts`` the network also
draws the number of hit cells per layer and G puts exactly that many hits, each at least the
smallest real deposit: drawn from its shape without replacement (``hit_sampling="gumbel"``,
Gumbel-top-k) or its k largest cells (``"top-k"``). In training G gets the real vector
``t`` of the batch (teacher forcing), so D judges the rest of the shape; in sampling ``t``
comes from the network.
``mirror`` reflects generated showers at random in x and y where the data are symmetric.

Speed: the generator runs in a "flat, batch-last" layout ``(positions, channels, batch)`` in
which a locally-connected layer is ``k_h * k_w`` batched matmuls over contiguous slices (no
patch copies), and in eval mode dense+conv are folded into one matrix and the batch norms into
the following LC layers, so sampling is one GEMM plus two LC layers per calorimeter layer.
Works on any geometry whose layers are 2D grids (any per-layer shape); kernels and windows
are chosen from each layer's shape.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_model
from ._random import gumbel, normal_cdf, standard_normal
from .base import LRSchedule, ShowerModel, TrainContext
from .config import MAX_STEPS, MAX_WIDTH, TrainConfig, param
from .. import features
from .energy import EnergyMDN, energy_fractions, energy_target, pretrain_energy_network
from .layers import (AttentionTransfer, LocallyConnected2d, MinibatchDiscrimination, Mirror, bn_affine, from_flat,
                     gradient_penalty, to_flat)

__all__ = ["CaloGAN"]


def _lc_window(n: int) -> int:
    """LC window along an axis of ``n`` cells: CaloGAN's 2, or 1 for a single row/column."""
    return 2 if n >= 2 else 1


def _conv_kernel(n: int) -> int:
    """Odd 'same' conv kernel along an axis: 3 where there is room, else 1."""
    return 3 if n >= 3 else 1


# ------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------
class _LaganG(nn.Module):
    """Generator sub-network of one layer: ``h (B, h_dim) -> image (ny, nx, B)`` (pre-activation).

    dense -> reshape (C0, ny + 2(kh-1), nx + 2(kw-1)) -> conv 'same' -> LeakyReLU -> BN
    -> LC(kh, kw) [+ per-position noise] -> LeakyReLU -> BN -> LC(kh, kw, no bias), each LC
    shrinking the grid by k-1. Dense and conv are linear, so they are applied as one folded
    matrix ``(P * C1, h_dim)`` (computed from both weights at every call, so gradients reach both).

    The optional per-position noise (one standard normal per position of the first LC output,
    scaled per channel, as StyleGAN's noise inputs) gives every cell its own randomness: a
    global latent vector alone cannot make the independent hits of a shower's halo.
    """

    def __init__(self, h_dim: int, shape: tuple[int, int], c0: int, c1: int, c2: int, init_gain: float = 1.0,
                 batchnorm: bool = True, cell_noise: bool = False) -> None:
        super().__init__()
        ny, nx = shape
        self.shape = (ny, nx)
        kh, kw = _lc_window(ny), _lc_window(nx)
        self.grid = (ny + 2 * (kh - 1), nx + 2 * (kw - 1))
        self.tail = 2 * (kw - 1)  # zero positions so every LC window slice stays in range
        self.c0, self.c1 = c0, c1
        self.dense = nn.Linear(h_dim, c0 * self.grid[0] * self.grid[1])
        ch, cw = _conv_kernel(self.grid[0]), _conv_kernel(self.grid[1])
        self.conv = nn.Conv2d(c0, c1, (ch, cw), padding=(ch // 2, cw // 2))
        self.bn1 = nn.BatchNorm1d(c1) if batchnorm else nn.Identity()
        n0 = self.grid[0] * self.grid[1] + self.tail
        self.lc1 = LocallyConnected2d(c1, c2, n0, self.grid[1], (kh, kw))
        self.bn2 = nn.BatchNorm1d(c2) if batchnorm else nn.Identity()
        self.lc2 = LocallyConnected2d(c2, 1, self.lc1.n_out, self.grid[1], (kh, kw), bias=False)
        self.n_noise = self.lc1.n_out if cell_noise else 0
        self.noise_scale = nn.Parameter(torch.full((1, c2, 1), 0.1)) if cell_noise else None
        nn.init.xavier_normal_(self.lc2.weight.view(-1, c2), gain=init_gain)  # glorot, as CaloGAN's last LC

    def folded(self) -> tuple[Tensor, Tensor]:
        """conv(dense(h)) as ``W (P * C1, h_dim)``, ``b (P * C1, 1)``, rows ordered (position, channel)."""
        hh, ww = self.grid
        h_dim = self.dense.in_features
        cols = torch.cat([self.dense.weight.t(), self.dense.bias[None]], 0).view(h_dim + 1, self.c0, hh, ww)
        y = F.conv2d(cols, self.conv.weight, padding=self.conv.padding)  # (h_dim + 1, C1, hh, ww)
        m = y.permute(2, 3, 1, 0).reshape(hh * ww * self.c1, h_dim + 1)
        w, b = m[:, :h_dim], m[:, h_dim:] + self.conv.bias.repeat(hh * ww)[:, None]
        if self.tail:
            w = F.pad(w, (0, 0, 0, self.tail * self.c1))
            b = F.pad(b, (0, 0, 0, self.tail * self.c1))
        return w, b

    def forward(self, h: Tensor, noise: Tensor | None = None) -> Tensor:
        """``h (B, h_dim)``, ``noise (B, n_noise)`` -> pre-activation image ``(ny, nx, B)``."""
        w, b = self.folded()
        x = torch.addmm(b, w, h.t()).view(-1, self.c1, h.shape[0])  # (P, C1, B)
        fold = not (self.training or isinstance(self.bn1, nn.Identity))
        if fold:  # eval: batch norms folded into the next LC layer, activations in place
            x = self.lc1(F.leaky_relu_(x, 0.2), *self.lc1.fold_input_affine(*bn_affine(self.bn1)))
        else:
            x = self.lc1(self.bn1(F.leaky_relu(x, 0.2)))
        if self.noise_scale is not None and noise is not None:
            n = noise.t().contiguous().unsqueeze(1)  # (n_noise, 1, B)
            x = x.addcmul_(n, self.noise_scale) if fold else torch.addcmul(x, n, self.noise_scale)
        if fold:
            x = self.lc2(F.leaky_relu_(x, 0.2), *self.lc2.fold_input_affine(*bn_affine(self.bn2)))
        else:
            x = self.lc2(self.bn2(F.leaky_relu(x, 0.2)))
        ny, nx = self.shape
        return x[: ny * self.grid[1]].view(ny, self.grid[1], -1)[:, :nx]  # (ny, nx, B)


def _gumbel(z: Tensor) -> Tensor:
    """Standard normal ``z`` -> standard Gumbel variates ``-log(-log(Phi(z)))`` (same shape).

    A tie in top-k needs ``Phi`` rounded to 1 (z above ~5) and equal logits as well.
    """
    return gumbel(normal_cdf(z))


class _Generator(nn.Module):
    """``f(z (B, latent_dim), cond (B, cond_dim), floor_ab (2,)) -> x (B, n_cells)`` (transform space).

    ``z`` = [global latent (``config.latent_dim``), per-position noise of every layer], all
    standard normal. ``floor_ab``: the exp output's floor ``exp(a + b * cond[:, 0])``; kept
    outside this module (a model buffer) so that the EMA of the generator does not average it.
    """

    def __init__(self, geometry: Any, cond_dim: int, cfg: Any) -> None:
        super().__init__()
        self.global_dim = cfg.latent_dim
        # CaloGAN feeds z * E/100; a learned (identity-initialised) gain of the whole cond vector.
        self.cond_gain = nn.Linear(cond_dim, self.global_dim)
        nn.init.zeros_(self.cond_gain.weight)
        nn.init.zeros_(self.cond_gain.bias)
        h_dim = self.global_dim + cond_dim
        c0, c1, c2 = (int(c) for c in cfg.g_channels)
        # last LC initialised small: cells start near the data scale, not at O(1) per cell
        self.lagans = nn.ModuleList(_LaganG(h_dim, tuple(l.shape), c0, c1, c2, cfg.init_gain,
                                            cfg.g_batchnorm, cfg.cell_noise)
                                    for l in geometry.layers)
        self.noise_sizes = [m.n_noise for m in self.lagans]
        # Gumbel-top-k hits: one more standard normal per cell (-> a Gumbel variate)
        gumbel = cfg.layer_energies == "mdn" and cfg.hit_counts and cfg.hit_sampling == "gumbel"
        self.gumbel_sizes = [l.n_cells if gumbel else 0 for l in geometry.layers]
        self.latent_dim = self.global_dim + sum(self.noise_sizes) + sum(self.gumbel_sizes)
        self.activation = cfg.output_activation
        self.floor = cfg.output_floor
        pairs = zip(geometry.layers[:-1], geometry.layers[1:])
        log_domain = self.activation == "exp"
        self.attention = nn.ModuleList(AttentionTransfer(a, b, cfg.gate_bias, log_domain) for a, b in pairs) \
            if cfg.attention else None
        if self.activation == "exp":  # per-cell offset of log(cell); set to the mean real image at the first step
            self.log_bias = nn.ParameterList(nn.Parameter(torch.full((*l.shape, 1), -9.0)) for l in geometry.layers)

    def _act(self, x: Tensor, floor: Tensor | None = None) -> Tensor:
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "exp":
            # x = log(cell): cells are exp(x) (decades of dynamic range) where above the floor
            # (the smallest real deposit), else exactly 0. The hard gate has a straight-through
            # sigmoid gradient, so cells just below the floor can still be switched on.
            v = torch.exp(x)
            hard = v * (v > floor)
            if not torch.is_grad_enabled():
                return hard
            soft = v * torch.sigmoid(4.0 * (x - torch.log(floor)))
            return soft + (hard - soft).detach()
        raise ValueError(f"calogan: unknown output_activation {self.activation!r}")

    def _with_hits(self, x: Tensor, f: Tensor, n: Tensor, floor: Tensor, gumbel: Tensor | None = None) -> Tensor:
        """Pre-activation ``x (P, B)`` -> cells ``(P, B)`` with exactly ``k`` hits summing to ``f``.

        ``k = n`` clipped to what the energy allows (``1 <= k <= f / floor`` for a non-empty
        layer): the ``k`` cells of largest ``log w + g`` are hits (``w = softmax(x)``; with
        Gumbel noise ``g (P, B)`` this draws the k hit cells from ``w`` without replacement, as
        independent deposits land in a real shower's halo; ``g = 0`` takes the k largest). Each
        hit gets the floor (the smallest real deposit) plus its share ``w / sum_hits w`` of the
        rest ``f - k floor``. The hard top-k mask has the straight-through gradient of a
        sigmoid in the key.
        """
        p = x.shape[0]
        k = torch.minimum(n.clamp(0, p), torch.floor(f / floor)).clamp_min(0)
        k = torch.where(f >= floor, k.clamp_min(1), torch.zeros_like(k))
        logw = x - torch.logsumexp(x, 0, keepdim=True)
        key = logw if gumbel is None else logw + gumbel
        # the k-th largest per column: top-(max k) is several times cheaper than a full sort;
        # a traced graph (ONNX) cannot depend on the batch's max k, so it takes all P
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        k_max = p if exporting else max(int(k.max()), 1)
        top, idx = torch.topk(key, k_max, 0)
        thr = top.gather(0, (k - 1).clamp(0, k_max - 1).long()[None])  # (1, B)
        # the first k of the top indices (not key >= thr: a float tie would add a hit)
        chosen = (torch.arange(k_max, device=x.device)[:, None] < k[None]).to(x.dtype)
        hard = torch.zeros_like(x).scatter(0, idx, chosen)
        if torch.is_grad_enabled():
            soft = torch.sigmoid(4.0 * (key - thr)) * (k > 0)[None]
            m = soft + (hard - soft).detach()
        else:
            m = hard
        w = torch.exp(logw - logw.amax(0, keepdim=True)) * m
        total = w.sum(0)
        # not a clamp: d(w / s)/ds = -w / s^2 would be 0/0 for an empty layer
        share = w / torch.where(total > 0, total, torch.ones_like(total))
        return m * floor + (f - k * floor).clamp_min(0) * share

    def _normalised(self, x: Tensor, f: Tensor, floor: Tensor | None) -> Tensor:
        """Pre-activation ``x (P, B)`` of one layer -> cells ``(P, B)`` summing to ``f (B,)``.

        exp output: ``softmax(x) * f`` with the cells below the floor switched off (hard, with
        the straight-through gradient of :meth:`_act`), then renormalised so the layer still
        sums to ``f`` exactly; an empty layer (``f = 0``) stays all zero.
        """
        if self.activation == "exp" and floor is not None:  # x -> log of the cells of softmax(x) * f
            x = x - torch.logsumexp(x, 0, keepdim=True) + torch.log(f.clamp_min(1e-30))
        v = self._act(x, floor)
        total = v.sum(0)
        # exact layer sum; the factor (>= 1: only dropped cells) is a constant for the gradient,
        # and an all-dropped layer keeps factor 1 so the soft path can still switch cells on
        scale = torch.where(total > 0, f / total.clamp_min(1e-30), torch.ones_like(total)).detach()
        return v * scale

    def forward(self, z: Tensor, cond: Tensor, floor_ab: Tensor | None = None, f: Tensor | None = None,
                n: Tensor | None = None) -> Tensor:
        """``z (B, latent_dim)``, ``cond (B, cond_dim)`` -> ``x (B, n_cells)``.

        With layer energies ``f (B, L)`` (in the units of ``x``) every layer is a normalised
        shape times its ``f``: G draws only where the energy goes, not how much there is; with
        hit counts ``n (B, L)`` as well, each layer has exactly that many hits (exp output).
        """
        zg, *noises = torch.split(z, [self.global_dim, *self.noise_sizes, *self.gumbel_sizes], 1)
        noises, gumbels = noises[:len(self.lagans)], noises[len(self.lagans):]
        h = torch.cat([zg * (1.0 + self.cond_gain(cond)), cond], 1)
        floor = None
        if self.activation == "exp":  # (B,)
            floor = self.floor * torch.ones_like(cond[:, 0]) if floor_ab is None else \
                torch.exp(floor_ab[0] + floor_ab[1] * cond[:, 0])
        out, prev = [], None
        for i, lagan in enumerate(self.lagans):
            img = lagan(h, noises[i] if self.noise_sizes[i] else None)  # (ny, nx, B)
            if self.activation == "exp":
                img = img + self.log_bias[i]
            if self.attention is not None and prev is not None:
                img = self.attention[i - 1](img, prev)
            if f is None:
                img = self._act(img, floor)
            elif n is not None and floor is not None:
                g = _gumbel(gumbels[i]).t() if self.gumbel_sizes[i] else None
                img = self._with_hits(img.reshape(-1, img.shape[-1]), f[:, i], n[:, i], floor, g).view_as(img)
            else:
                img = self._normalised(img.reshape(-1, img.shape[-1]), f[:, i], floor).view_as(img)
            prev = img if floor is None else img / floor  # the attention carries floor units
            out.append(img.reshape(-1, img.shape[-1]))
        return torch.cat(out, 0).t()


# ------------------------------------------------------------------------------------------
# discriminator
# ------------------------------------------------------------------------------------------
class _LaganD(nn.Module):
    """Discriminator features of one layer: ``(B, 1, ny, nx) -> (B, n_features)``.

    conv (stride 2 along axes of >= 8 cells) -> LeakyReLU -> [BN] -> LC(2x2) -> LeakyReLU -> [BN]
    -> flatten: CaloGAN's conv + locally-connected stack, one unit of each to stay cheap on CPU.
    Batch norm is optional (``d_batchnorm``): D sees real and fake batches separately, so
    per-batch statistics would hide exactly the global shifts (a too narrow shower, too few
    hits) that G has to correct.
    """

    def __init__(self, shape: tuple[int, int], c1: int, c2: int, batchnorm: bool) -> None:
        super().__init__()
        ny, nx = shape
        ch, cw = _conv_kernel(ny), _conv_kernel(nx)
        stride = (2 if ny >= 8 else 1, 2 if nx >= 8 else 1)
        self.conv = nn.Conv2d(1, c1, (ch, cw), stride=stride, padding=(ch // 2, cw // 2))
        self.bn1 = nn.BatchNorm2d(c1) if batchnorm else nn.Identity()
        h, w = (ny - 1) // stride[0] + 1, (nx - 1) // stride[1] + 1
        kh, kw = _lc_window(h), _lc_window(w)
        self.row, self.tail = w, kw - 1
        self.lc = LocallyConnected2d(c1, c2, h * w + self.tail, w, (kh, kw))
        self.bn2 = nn.BatchNorm1d(c2) if batchnorm else nn.Identity()
        self.out_shape = (h - kh + 1, w - kw + 1)
        self.n_features = c2 * self.out_shape[0] * self.out_shape[1]

    def forward(self, img: Tensor) -> Tensor:
        x = self.bn1(F.leaky_relu(self.conv(img), 0.2))
        x = self.bn2(F.leaky_relu(self.lc(to_flat(x, self.tail)), 0.2))
        return from_flat(x, self.out_shape, self.row).flatten(1)


class _Discriminator(nn.Module):
    """``D(x_mev (B, n_cells), cond (B, cond_dim), e_inc (B, 1)) -> logits (B,)``.

    Inputs: per-layer conv/LC features of the log-compressed image, the physics block of
    :meth:`physics_features` (standardised with statistics of real data), ``cond``, and
    minibatch discrimination on both. Buffers ``response``, ``hit_scale``, ``feat_mean``,
    ``feat_std`` are set from the first real batch (:meth:`calibrate`).
    """

    N_OCC = (0.1, 1.0, 10.0)  # soft occupancy thresholds, multiples of hit_scale

    def __init__(self, geometry: Any, cond_dim: int, cfg: Any) -> None:
        super().__init__()
        self.shapes = [tuple(l.shape) for l in geometry.layers]
        self.offsets = [int(o) for o in geometry.layer_offsets]
        self.image_gain = cfg.d_image_gain
        c1, c2 = (int(c) for c in cfg.d_channels)
        self.lagans = nn.ModuleList(_LaganD(s, c1, c2, cfg.d_batchnorm) for s in self.shapes)
        n_img = sum(m.n_features for m in self.lagans)
        n_layers = len(self.shapes)
        n_phys = 2 * n_layers + 3 + n_layers * len(self.N_OCC) + 4 * n_layers
        self.geometry = geometry  # per-layer moments from calosim.features
        k = cfg.mbd_kernels
        self.mbd_images = MinibatchDiscrimination(n_img, k) if k else None
        self.mbd_phys = MinibatchDiscrimination(n_phys, k) if k else None
        hidden = cfg.d_hidden
        self.head = nn.Sequential(
            nn.Linear(n_img + n_phys + cond_dim + (2 * k if k else 0), hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("response", torch.tensor(1.0))
        self.register_buffer("hit_scale", torch.tensor(1.0))
        self.register_buffer("feat_mean", torch.zeros(n_phys))
        self.register_buffer("feat_std", torch.ones(n_phys))

    def physics_features(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        """CaloGAN's energy/sparsity block plus shower moments, ``(B, n_phys)``, all differentiable.

        * per-layer fractions E_l / E_inc (linear and log), E_tot / E_inc, the energy well
          ``|E_tot / (response E_inc) - 1|`` and a smooth version of the original's too-big flag;
        * per-layer sparsity as soft occupancies ``mean tanh(E_cell / t)`` at ``t`` =
          (0.1, 1, 10) x hit_scale (a hard count, as in the original, would let D separate
          samples by a feature that gives G no gradient);
        * per-layer energy-weighted centroid and width in x and y (mm).
        """
        x_mev = x_mev.clamp_min(0.0)
        frac = x_mev / e_inc
        m = features.layer_moments(frac, self.geometry)  # (B, L, K)
        e_layer = m[..., 0]  # (B, L)
        e_tot = e_layer.sum(1, keepdim=True)
        well = (e_tot / self.response - 1.0).abs()
        too_big = torch.sigmoid((well - 0.2) * 20.0)
        sizes = x_mev.new_tensor([lay.n_cells for lay in self.geometry.layers])
        # smoothing: soft occupancies mean_c tanh(I_c / t), per layer then per t (B, L * len(N_OCC))
        occ = torch.stack([features.layer_energies(torch.tanh(x_mev / (self.hit_scale * t)), self.geometry) / sizes
                           for t in self.N_OCC], -1).flatten(1)
        # smoothing: 1e-9 guards empty layers, a 0.1 mm width floor keeps the root differentiable
        c = features.centroids_from_moments(m, eps=1e-9)
        w = features.widths_from_moments(m, eps=1e-9, var_floor=1e-2)
        mom = torch.stack([c[..., 0], w[..., 0], c[..., 1], w[..., 1]], -1).flatten(1)  # per layer: x, wx, y, wy
        return torch.cat([e_layer, torch.log(e_layer + 1e-4), e_tot, well, too_big, occ, mom], 1)

    @torch.no_grad()
    def calibrate(self, x_mev: Tensor, e_inc: Tensor, response: float | None) -> None:
        """Set the detector response, hit scale and feature standardisation from real showers."""
        self.response.fill_(float((x_mev.sum(1, keepdim=True) / e_inc).mean()) if response is None else response)
        nz = x_mev[x_mev > 0]
        if nz.numel():
            self.hit_scale.fill_(max(float(torch.quantile(nz[:100_000].float(), 0.05)), 1e-6))
        f = self.physics_features(x_mev, e_inc)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).nan_to_num(1.0).clamp_min(1e-3))

    def standardised_features(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        """:meth:`physics_features` standardised with the real-data statistics, ``(B, n_phys)``."""
        return (self.physics_features(x_mev, e_inc) - self.feat_mean) / self.feat_std

    def forward(self, x_mev: Tensor, cond: Tensor, e_inc: Tensor) -> Tensor:
        # log-compressed fractions, so D sees the low-energy halo as well as the core
        img = torch.log1p(x_mev.clamp_min(0.0) / e_inc * self.image_gain)
        feats = [lagan(img[:, a:b].reshape(-1, 1, *s))
                 for lagan, a, b, s in zip(self.lagans, self.offsets[:-1], self.offsets[1:], self.shapes)]
        f_img = torch.cat(feats, 1)
        f_phys = self.standardised_features(x_mev, e_inc)
        parts = [f_img, f_phys, cond]
        if self.mbd_images is not None and self.mbd_phys is not None:
            parts += [self.mbd_images(f_img), self.mbd_phys(f_phys)]
        return self.head(torch.cat(parts, 1)).squeeze(1)


class _Sampler(nn.Module):
    """``forward(z (B, latent_dim), cond (B, cond_dim)) -> x (B, n_cells)``: the whole sampling path.

    ``z`` = [generator latent, then (``layer_energies="mdn"``) 1 + len(energy vector) values
    for the energy network, then (``mirror``) two reflection signs], all standard normal.
    ``layer_energies="mdn"``: the network draws the energy vector (layer energies and hit
    counts) and G draws the shower for it. Shared by :meth:`CaloGAN.sample` and
    the ONNX export, so both are one graph.
    """

    def __init__(self, generator: _Generator, energy: "EnergyMDN | None", floor_ab: Tensor,
                 t_mean: Tensor, t_std: Tensor, n_cells_per_layer: Tensor, mirror: "Mirror | None" = None) -> None:
        super().__init__()
        self.mirror = mirror
        self.generator, self.energy = generator, energy
        self.register_buffer("floor_ab", floor_ab)
        self.register_buffer("t_mean", t_mean)
        self.register_buffer("t_std", t_std)
        self.n_g = generator.latent_dim + (0 if energy is None else 1 + energy.d)
        self.latent_dim = self.n_g + (2 if mirror is not None else 0)
        self.register_buffer("n_cells_per_layer", n_cells_per_layer)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        x = self._generate(z[:, :self.n_g], cond)
        return x if self.mirror is None else self.mirror(x, z[:, self.n_g:])

    def _generate(self, z: Tensor, cond: Tensor) -> Tensor:
        if self.energy is None:
            return self.generator(z, cond, self.floor_ab)
        m = self.generator.latent_dim
        t = self.energy.sample(cond, z[:, m:]) * self.t_std + self.t_mean  # energy vector
        n_layers = self.n_cells_per_layer.shape[0]
        f = energy_fractions(t[:, :n_layers])
        n = None
        if t.shape[1] > n_layers:  # hit counts: exp(t) = n + u, u ~ U(0, 1)
            n = torch.minimum(torch.floor(torch.exp(t[:, n_layers:])), self.n_cells_per_layer)
            t = torch.cat([t[:, :n_layers], torch.log(n + 0.5)], 1)
        return self.generator(z[:, :m], torch.cat([cond, (t - self.t_mean) / self.t_std], 1), self.floor_ab, f, n)


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
@register_model
class CaloGAN(ShowerModel):
    """CaloGAN: conditional GAN with per-layer LAGANs and attentional inter-layer transfer."""

    name = "calogan"
    ema_modules = ("generator",)

    @dataclass
    class Config(TrainConfig):
        """CaloGAN's hyper-parameters. "seed:" marks values kept only to reproduce the seed paper's design,
        "ablation:" a value kept only to re-measure a step of the recipe (benchmarks/train_model.py)."""

        transform: str = "scale"
        # the CPU recipe: ~10-15 min on one core of this 2-core machine for 50k showers. The
        # adversarial game drifts after ~1000-2000 steps on CPU budgets: validate often and
        # keep the best validation's weights as the run's model.
        batch_size: int = param(128, ge=1)
        steps: int | None = param(3000, ge=1)
        val_every: int = param(250, ge=0)
        final_weights: Literal["last", "best"] = "best"
        lr_g: float = param(2e-4, gt=0.0)
        lr_d: float = param(1e-4, gt=0.0)
        betas: tuple[float, float] = param((0.5, 0.9), ge=0.0, lt=1.0)
        loss: Literal["ns", "wgan-gp"] = "ns"  # "ns": the seed's non-saturating loss
        n_critic: int = param(1, ge=1, le=100)
        gp_lambda: float = param(10.0, ge=0.0)  # loss="wgan-gp"
        lambda_e: float = param(0.2, ge=0.0)
        lambda_fm: float = param(1.0, ge=0.0)  # feature matching on D's physics features (seed: 0)
        # E_vis / E_inc: "data" (measured on real batches) or a number
        energy_response: Literal["data"] | float = param("data", gt=0.0)
        latent_dim: int = param(32, ge=1, le=MAX_WIDTH)
        g_channels: tuple[int, int, int] = param((4, 4, 4), ge=1, le=1024)  # dense, conv, first LC
        g_batchnorm: bool = True
        cell_noise: bool = True  # per-position noise inputs (part of z)
        d_channels: tuple[int, int] = param((8, 8), ge=1, le=1024)  # conv, LC
        d_batchnorm: bool = False
        d_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        mbd_kernels: int = param(8, ge=0, le=1024)
        d_image_gain: float = param(1e3, gt=0.0)
        attention: bool = True
        gate_bias: float = -2.0
        init_gain: float = param(0.01, gt=0.0)
        # "exp": floor * exp(o) where o > 0 else 0, floor = the smallest real deposit (from the data);
        # seed: "relu"
        output_activation: Literal["exp", "relu"] = "exp"
        output_floor: float = param(1e-5, gt=0.0)
        # "mdn": the layer energies come from a mixture-density network (trained first, by
        # likelihood) and G draws each layer's normalised shape conditioned on them (trained
        # against the real layer energies of the batch) | seed: "generator", G draws the cells
        layer_energies: Literal["mdn", "generator"] = "mdn"
        hit_counts: bool = True  # "mdn": the network also draws the hits per layer; G places exactly that many
        # hit cells drawn from G's shape ("gumbel": Gumbel-top-k) | ablation: "top-k", its k largest (AUC 0.977 vs 0.968)
        hit_sampling: Literal["gumbel", "top-k"] = "gumbel"
        mdn_components: int = param(10, ge=1, le=256)
        mdn_hidden: int = param(64, ge=1, le=MAX_WIDTH)
        mdn_steps: int = param(2000, ge=0, le=MAX_STEPS)
        mdn_lr: float = param(3e-3, gt=0.0)
        mdn_batches: int = param(4, ge=1, le=1024)  # training batches per MDN step
        # reflect generated showers in x and y at random: "auto" = where the training data are
        # symmetric (Cartesian layers, energy/particle conditions only, centroids at 0) | True | False
        mirror: Literal["auto"] | bool = "auto"

        def check(self) -> None:
            super().check()
            if self.layer_energies == "mdn":
                if self.transform not in ("scale", "identity"):
                    raise ValueError("calogan: layer_energies='mdn' needs a transform linear in the cells "
                                     f"('scale' or 'identity'), got transform={self.transform!r}")
                if self.hit_counts and self.output_activation != "exp":
                    raise ValueError("calogan: hit_counts needs output_activation='exp' (hits get at least the floor)")

    config: Config

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        cfg = self.config
        self.mdn = cfg.layer_energies == "mdn"
        n_layers = geometry.n_layers
        self.hits = self.mdn and cfg.hit_counts
        n_t = n_layers * (2 if self.hits else 1)  # length of the energy vector
        self.generator = _Generator(geometry, cond_dim + (n_t if self.mdn else 0), cfg)
        self.discriminator = _Discriminator(geometry, cond_dim, cfg)
        self.energy = EnergyMDN(cond_dim, n_t, cfg.mdn_components, cfg.mdn_hidden) \
            if self.mdn else None
        # standardisation of the energy vector (set from the first real batch)
        self.register_buffer("t_mean", torch.zeros(n_t))
        self.register_buffer("t_std", torch.ones(n_t))
        self.register_buffer("n_cells_per_layer", torch.tensor([float(l.n_cells) for l in geometry.layers]))
        self.mirror = Mirror(geometry) if cfg.mirror and geometry.is_cartesian else None
        # exp-output floor exp(a + b * cond[:, 0]) in the transform space (see _calibrate_floor)
        self.register_buffer("floor_ab", torch.tensor([math.log(cfg.output_floor), 0.0]))

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim + (1 + len(self.t_mean) if self.mdn else 0) + (2 if self.mirror else 0)

    def _sampler(self) -> _Sampler:
        return _Sampler(self.generator, self.energy, self.floor_ab, self.t_mean, self.t_std, self.n_cells_per_layer,
                        self.mirror)

    def energy_target(self, x: Tensor, u: Tensor | float = 0.5) -> Tensor:
        """The energy vector of showers ``x (B, n_cells)``: layer sums, then (``hit_counts``)
        the hits per layer, see :func:`~calosim.models.energy.energy_target`. ``(B, L)`` or ``(B, 2 L)``."""
        geo = self.geometry
        return energy_target(features.layer_energies(x, geo), features.hit_counts(x, geo) if self.hits else None, u)

    def standardised_energy(self, x: Tensor) -> Tensor:
        """The standardised energy vector of showers ``x (B, n_cells)`` (G's extra condition)."""
        return (self.energy_target(x) - self.t_mean) / self.t_std

    # -- training -------------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = tuple(self.config.betas)
        opts = {
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=self.config.lr_d, betas=betas),
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr_g, betas=betas),
        }
        if self.energy is not None:
            opts["energy"] = torch.optim.Adam(self.energy.parameters(), lr=self.config.mdn_lr)
        return opts

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        return {"energy": LRSchedule("cosine", self.config.mdn_steps)} if self.energy is not None else {}

    def pretrain_steps(self) -> int:
        return self.config.mdn_steps if self.energy is not None else 0

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """``layer_energies="mdn"``: fit the energy network by maximum likelihood, then freeze it.

        ``mdn_steps`` Adam steps on ``mdn_batches`` concatenated training batches, cosine
        learning-rate decay. Returns the final mean negative log-likelihood (per shower, in the
        standardised energy vector) and the response E_tot / E_inc (mean, std) of real showers
        and of the network's samples for one batch's conditions.
        """
        if self.energy is None:
            return {}
        cfg = self.config

        nll = pretrain_energy_network(self, batches, ctx, cfg.mdn_steps, cfg.mdn_batches, dequantise=self.hits)
        out = {"mdn_nll": nll, "mdn_steps": float(cfg.mdn_steps)}
        x, cond = next(batches)
        with torch.no_grad():
            e_inc = ctx.conditions.incident_energy(cond)
            noise = torch.randn(len(cond), 1 + len(self.t_mean), generator=ctx.generator,
                                device=ctx.generator.device).to(cond.device)
            t_gen = self.energy.sample(cond, noise) * self.t_std + self.t_mean
            f_gen = energy_fractions(t_gen[:, :self.geometry.n_layers])
            for name, f in (("real", features.layer_energies(x, self.geometry)), ("mdn", f_gen)):
                r = ctx.transform.inverse(f, e_inc).sum(1) / e_inc[:, 0]  # linear transform: sums map like cells
                out[f"response_mean_{name}"], out[f"response_std_{name}"] = float(r.mean()), float(r.std())
        return out

    @staticmethod
    def energy_loss(x_mev: Tensor, e_inc: Tensor, response: Tensor | float = 1.0) -> Tensor:
        """CaloGAN's auxiliary term ``mean |E_inc - E_hat| / E_inc``, ``E_hat = sum(x_mev) / response``.

        ``x_mev (B, n_cells)``, ``e_inc (B, 1)`` MeV. Relative, so all energies weigh alike.
        """
        e_hat = x_mev.sum(1, keepdim=True) / response
        return ((e_inc - e_hat).abs() / e_inc).mean()

    @staticmethod
    def feature_matching(f_real: Tensor, f_fake: Tensor, c: Tensor) -> Tensor:
        """Match batch mean, std and covariance with the energy condition of features ``(B, F)``.

        Salimans et al.'s feature matching on the discriminator's physics block (standardised
        E fractions, sparsity, centroids, widths), with ``c (B,)`` the encoded energy so the
        energy dependence is matched too. Real and fake rows share their conditions.
        """
        def stats(f: Tensor) -> Tensor:
            mu = f.mean(0)
            cc = c - c.mean()
            return torch.stack([mu, f.std(0), ((f - mu) * cc[:, None]).mean(0)])

        return F.smooth_l1_loss(stats(f_fake), stats(f_real))  # Huber: bounded pull when far off

    @torch.no_grad()
    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """First real batch: detector response, typical small cell energy, feature scales, the
        energy vector's standardisation, the exp output's floor and starting image."""
        e_inc = ctx.conditions.incident_energy(cond)
        x_mev = ctx.transform.inverse(x, e_inc)
        fixed = self.config.energy_response
        self.discriminator.calibrate(x_mev, e_inc, None if fixed == "data" else float(fixed))
        if self.mirror is not None and self.config.mirror == "auto":
            self.mirror.on.fill_(self._looks_symmetric(x_mev, ctx))
        if self.mdn:
            t = self.energy_target(x)
            self.t_mean.copy_(t.mean(0))
            self.t_std.copy_(t.std(0).nan_to_num(1.0).clamp_min(1e-3))
        if self.config.output_activation == "exp":
            self._calibrate_floor(x_mev, cond, ctx)
            self._init_mean_image(x)

    @torch.no_grad()
    def _looks_symmetric(self, x_mev: Tensor, ctx: TrainContext | None) -> bool:
        """``mirror="auto"``: no position/direction conditions, and every layer's mean
        energy-weighted centroid within 0.1 of its spread (and of a cell) from the axis."""
        names = list(getattr(getattr(ctx, "conditions", None), "names", ["energy"]))
        if any(n not in ("energy", "pdg") for n in names):
            return False
        centre = features.centroids(x_mev, self.geometry)  # (B, L, 2)
        hit = features.layer_energies(x_mev, self.geometry) > 0
        for i, lay in enumerate(self.geometry.layers):
            ok = hit[:, i]
            if ok.sum() < 10:
                continue
            for j, pitch in ((0, lay.cell_mm[1]), (1, lay.cell_mm[0])):
                m = centre[ok, i, j]
                if abs(float(m.mean())) > 0.1 * max(float(m.std()), float(pitch)):
                    return False
        return True

    @torch.no_grad()
    def _init_mean_image(self, x: Tensor) -> None:
        """Start the exp output at the mean real image: ``log_bias = log(mean x)`` per cell.

        Cells never hit in the batch get the smallest positive mean / e, so G starts from the
        average shower instead of having to find the energy scale of every cell.
        """
        mean = x.mean(0)
        pos = mean[mean > 0]
        if not pos.numel():
            return
        logm = torch.log(mean.clamp_min(float(pos.min()) / math.e))
        for b, (lo, hi) in zip(self.generator.log_bias, zip(self.geometry.layer_offsets[:-1], self.geometry.layer_offsets[1:])):
            b.copy_(logm[int(lo):int(hi)].view_as(b))

    @torch.no_grad()
    def _calibrate_floor(self, x_mev: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Set the exp-output floor to the 1 % quantile of the real non-zero cells (MeV).

        The floor is wanted in the transform space as ``exp(a + b * cond[:, 0])``; this holds
        for transforms linear in the cells with a power-law dependence on E_inc (identity,
        scale) and an encoded energy affine in log E. Anything else keeps ``output_floor``.
        """
        nz = x_mev[x_mev > 0]
        if not nz.numel():
            return
        floor_mev = float(torch.quantile(nz[:100_000].float(), 0.01))
        c = cond[:1].repeat(3, 1)
        c[:, 0] = torch.tensor([0.0, 1.0, -1.0], device=c.device)
        e = ctx.conditions.incident_energy(c)  # (3, 1) MeV
        cells = torch.full((3, x_mev.shape[1]), floor_mev, device=x_mev.device)
        t = ctx.transform.forward(cells, e)
        t2 = ctx.transform.forward(2 * cells, e)
        if not (torch.isfinite(t).all() and (t > 0).all() and torch.allclose(t2, 2 * t, rtol=1e-4)
                and torch.allclose(t, t[:, :1].expand_as(t), rtol=1e-4)):
            return
        lt = torch.log(t[:, 0])
        a, b = lt[0], lt[1] - lt[0]
        if abs(float(lt[2] - (a - b))) > 1e-3 * max(1.0, abs(float(a))):
            return
        self.floor_ab.copy_(torch.stack([a, b]))

    def _d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        loss = self.config.loss
        if loss == "ns":
            return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        return d_fake.mean() - d_real.mean()

    def _g_adv(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean() if self.config.loss == "ns" else -d_fake.mean()

    def _reflect(self, x: Tensor, ctx: TrainContext) -> Tensor:
        return x if self.mirror is None else self.mirror(x, self._noise(len(x), ctx, x.device, 2))

    def _noise(self, n: int, ctx: TrainContext, device: torch.device, dim: int | None = None) -> Tensor:
        """``(n, dim)`` standard normal from the run's generator (default: G's latent size)."""
        return standard_normal(n, self.generator.latent_dim if dim is None else dim, ctx.generator, device)

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """``n_critic`` discriminator updates then one generator update.

        ``x (B, n_cells)`` preprocessed showers, ``cond (B, cond_dim)`` encoded conditions.
        """
        cfg, D, G = self.config, self.discriminator, self.generator
        e_inc = ctx.conditions.incident_energy(cond)
        x_mev = ctx.transform.inverse(x, e_inc)
        b = x.shape[0]
        # "mdn": G draws shapes for the real layer energies of the batch, so D judges shapes alone
        f = features.layer_energies(x, self.geometry) if self.mdn else None
        hits = features.hit_counts(x, self.geometry) if self.hits else None
        g_cond = torch.cat([cond, (energy_target(f, hits) - self.t_mean) / self.t_std], 1) if self.mdn else cond

        D.requires_grad_(True)
        for _ in range(cfg.n_critic):
            with torch.no_grad():
                fake = self._reflect(G(self._noise(b, ctx, x.device), g_cond, self.floor_ab, f, hits), ctx)
            d_real = D(x_mev, cond, e_inc)
            d_fake = D(ctx.transform.inverse(fake, e_inc), cond, e_inc)
            loss_d = self._d_loss(d_real, d_fake)
            if cfg.loss == "wgan-gp":
                loss_d = loss_d + gradient_penalty(lambda m: D(ctx.transform.inverse(m, e_inc), cond, e_inc), x, fake,
                                                   cfg.gp_lambda, ctx.generator)
            ctx.backward_step(loss_d, "discriminator")

        D.requires_grad_(False)  # the G step needs no weight gradients of D
        try:
            fake = self._reflect(G(self._noise(b, ctx, x.device), g_cond, self.floor_ab, f, hits), ctx)
            fake_mev = ctx.transform.inverse(fake, e_inc)
            adv = self._g_adv(D(fake_mev, cond, e_inc))
            loss_e = self.energy_loss(fake_mev, e_inc, D.response)
            loss_g = adv + (0.0 if self.mdn else cfg.lambda_e) * loss_e  # "mdn": energies are given
            loss_fm = torch.zeros(())
            if cfg.lambda_fm:
                with torch.no_grad():
                    f_real = D.standardised_features(x_mev, e_inc)
                loss_fm = self.feature_matching(f_real, D.standardised_features(fake_mev, e_inc), cond[:, 0])
                loss_g = loss_g + cfg.lambda_fm * loss_fm
            ctx.backward_step(loss_g, "generator")
        finally:
            D.requires_grad_(True)
        return {"loss_d": loss_d.item(), "loss_g": adv.item(), "loss_e": loss_e.item(), "loss_fm": loss_fm.item(),
                "d_real": d_real.detach().mean().item(), "d_fake": d_fake.detach().mean().item()}

    # -- sampling -------------------------------------------------------------------------
    def latent(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Standard-normal latent vectors ``(n, latent_dim)`` (drawn on ``generator``'s device)."""
        return standard_normal(n, self.latent_dim, generator, device or next(self.generator.parameters()).device)

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers ``(B, n_cells)`` in the transform space for encoded conditions ``cond (B, cond_dim)``."""
        z = self.latent(cond.shape[0], generator, cond.device)
        was_training = self.generator.training
        self.generator.eval()  # running BN statistics, folded into the LC layers
        try:
            return self._sampler()(z, cond)
        finally:
            self.generator.train(was_training)

    def export_module(self) -> nn.Module:
        """Eval-mode copy of the current (e.g. EMA-swapped) sampling path: ``f(z, cond) -> x``."""
        return copy.deepcopy(self._sampler()).eval()
