"""Network layers shared by the models: the locally-connected layer (flat batch-last layout),
CaloGAN's inter-layer attention transfer, minibatch discrimination, whole-shower mirror
reflections and the WGAN-GP gradient penalty."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["to_flat", "from_flat", "LocallyConnected2d", "bn_affine", "AttentionTransfer", "overlap_matrix",
           "axis_edges", "MinibatchDiscrimination", "Mirror", "gradient_penalty"]


# ------------------------------------------------------------------------------------------
# flat batch-last layout and the locally-connected layer
# ------------------------------------------------------------------------------------------
def to_flat(img: Tensor, tail: int = 0) -> Tensor:
    """``(B, C, H, W) -> (H * W + tail, C, B)``: row-major positions, batch last, ``tail`` zero rows."""
    b, c, h, w = img.shape
    x = img.permute(2, 3, 1, 0).reshape(h * w, c, b)
    return F.pad(x, (0, 0, 0, 0, 0, tail)) if tail else x


def from_flat(x: Tensor, shape: tuple[int, int], row: int) -> Tensor:
    """Valid positions of a flat tensor ``(P, C, B)`` with row stride ``row`` -> ``(B, C, H, W)``."""
    h, w = shape
    return x[: h * row].view(h, row, x.shape[1], x.shape[2])[:, :w].permute(3, 2, 0, 1)


class LocallyConnected2d(nn.Module):
    """2D convolution with unshared weights (every output position has its own kernel), stride 1.

    Works on flat batch-last tensors ``(n_in, C_in, B)``: positions of a 2D grid in row-major
    order with row stride ``row``. Output position ``p`` reads input positions
    ``p + dy * row + dx`` for the ``k_h x k_w`` window, so each window offset is one contiguous
    slice and the layer is ``k_h k_w`` batched matmuls ``(n_out, C_out, C_in) @ (n_out, C_in, B)``.
    Output ``(n_out, C_out, B)`` with ``n_out = n_in - (k_h - 1) row - (k_w - 1)`` keeps the row
    stride: columns ``>= W - k_w + 1`` of each row wrap around and are don't-care values (never
    read by valid outputs of later layers; :func:`from_flat` drops them).
    """

    def __init__(self, in_channels: int, out_channels: int, n_in: int, row: int, kernel: tuple[int, int],
                 bias: bool = True) -> None:
        super().__init__()
        kh, kw = kernel
        self.in_channels, self.out_channels, self.row, self.kernel = in_channels, out_channels, row, (kh, kw)
        self.offsets = [dy * row + dx for dy in range(kh) for dx in range(kw)]
        self.n_in, self.n_out = n_in, n_in - self.offsets[-1]
        if self.n_out < 1:
            raise ValueError(f"LocallyConnected2d: window {kernel} does not fit {n_in} positions of row {row}")
        bound = math.sqrt(6.0 / (in_channels * kh * kw))  # He-uniform, as CaloGAN's LC layers
        self.weight = nn.Parameter(torch.empty(kh * kw, self.n_out, out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(self.n_out, out_channels, 1)) if bias else None

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """``(n_in, C_in, B) -> (n_out, C_out, B)``; ``weight``/``bias`` override (folded BN)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        n = self.n_out
        out = torch.bmm(w[0], x[self.offsets[0]: self.offsets[0] + n])
        for j in range(1, len(self.offsets)):
            o = self.offsets[j]
            out.baddbmm_(w[j], x[o: o + n])  # in place: bmm does not keep its output for backward
        return out if b is None else out.add_(b)

    def fold_input_affine(self, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor | None]:
        """Weights/bias equivalent to applying ``x * scale + shift`` (per input channel) first."""
        w = self.weight * scale
        extra = torch.einsum("jnoc,c->no", self.weight, shift).unsqueeze(-1)
        return w, extra if self.bias is None else self.bias + extra


def bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


# ------------------------------------------------------------------------------------------
# attention transfer between layers
# ------------------------------------------------------------------------------------------
def overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """``(n_dst, n_src)`` row-normalised overlap of 1-D bins (an averaging resampler)."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    m = np.clip(hi - lo, 0.0, None)
    empty = m.sum(1) == 0
    if empty.any():  # bins outside the other grid: fall back to index space
        m[empty] = overlap_matrix(np.linspace(0, 1, len(src_edges)), np.linspace(0, 1, len(dst_edges)))[empty]
    return m / m.sum(1, keepdims=True)


def axis_edges(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges along the image rows and columns of a layer (mm; angle as a fraction of a turn)."""
    ny, nx = layer.shape
    if layer.kind == "cartesian":
        dy, dx = layer.cell_mm
        return (np.arange(ny + 1) - ny / 2) * dy, (np.arange(nx + 1) - nx / 2) * dx
    return np.linspace(0.0, 1.0, ny + 1), np.asarray(layer.r_edges_mm, dtype=float)


class AttentionTransfer(nn.Module):
    """CaloGAN's inter-layer attention on ``(ny, nx, B)`` images: ``out = g * carry + (1 - g) * own``.

    ``carry`` is the previous layer's (non-negative) output resampled onto this grid with fixed
    overlap matrices ``R_y @ prev @ R_x^T`` (CaloGAN up-samples/average-pools its hard-coded
    shapes; the cell overlap in mm does the same for any pair of layers) and scaled by a learned
    factor (layers hold different energy fractions). The gate ``g`` is a per-pixel sigmoid of a
    1x1 locally-connected map of ``[own, carry]``, biased towards ``own`` at the start.
    """

    def __init__(self, src: Any, dst: Any, gate_bias: float, log_domain: bool = False) -> None:
        super().__init__()
        self.log_domain = log_domain  # exp output: mix in the log domain (a multiplicative mask)
        sy, sx = axis_edges(src)
        dy, dx = axis_edges(dst)
        if src.kind != dst.kind:  # nothing physical to match: index space
            sy, sx, dy, dx = (np.linspace(0, 1, len(a)) for a in (sy, sx, dy, dx))
        self.register_buffer("ry", torch.tensor(overlap_matrix(sy, dy), dtype=torch.float32))  # (ny, ny_src)
        self.register_buffer("rx", torch.tensor(overlap_matrix(sx, dx), dtype=torch.float32))  # (nx, nx_src)
        ny, nx = dst.shape
        self.w = nn.Parameter(torch.zeros(2, ny, nx, 1))
        self.b = nn.Parameter(torch.full((ny, nx, 1), float(gate_bias)))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, own: Tensor, prev: Tensor) -> Tensor:
        """``own (ny, nx, B)``, ``prev (ny_src, nx_src, B)`` -> ``(ny, nx, B)``.

        In the log domain ``own`` is log(cell) and ``prev`` is in units of the floor.
        """
        p, q, b = prev.shape
        carry = torch.mm(self.ry, prev.reshape(p, q * b)).view(-1, q, b)  # rows
        carry = torch.matmul(self.rx, carry)  # columns, batched over rows
        if self.log_domain:
            carry = torch.log(carry + 0.1) + self.log_scale  # 0 -> log 0.1, hits -> >= log 1.1
        else:
            carry = carry * self.log_scale.exp()
        gate = torch.sigmoid(own * self.w[0] + carry * self.w[1] + self.b)
        return own + gate * (carry - own)


# ------------------------------------------------------------------------------------------
# discriminator helpers
# ------------------------------------------------------------------------------------------
class MinibatchDiscrimination(nn.Module):
    """Salimans et al.: ``(B, F) -> (B, K)`` closeness of each sample to the rest of its batch.

    ``c_k(i) = sum_j exp(-|M_ik - M_jk|)`` with Euclidean distances from one batched matmul
    (CaloGAN used L1; on CPU the L1 pairwise tensor and its backward cost more than the rest of D).
    """

    def __init__(self, n_in: int, n_kernels: int = 10, dim: int = 10) -> None:
        super().__init__()
        self.k, self.d = n_kernels, dim
        self.t = nn.Linear(n_in, n_kernels * dim, bias=False)

    def forward(self, f: Tensor) -> Tensor:
        m = self.t(f).view(-1, self.k, self.d).transpose(0, 1)  # (K, B, D)
        sq = (m * m).sum(-1)  # (K, B)
        d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(m, m.transpose(1, 2))  # (K, B, B)
        dist = torch.sqrt(d2.clamp_min(0.0) + 1e-6)
        return torch.tanh(torch.exp(-dist).sum(2).t() - 1.0)  # minus the self-term; tanh as CaloGAN


class Mirror(nn.Module):
    """Reflections ``x -> -x`` and ``y -> -y`` of whole showers (all layers at once), chosen per
    shower by the signs of two standard-normal values: makes a generator exactly symmetric
    when the detector and beam are (normal incidence on the centre of centred grids, as in
    CaloGAN), so no model capacity is spent on, and no training noise breaks, that symmetry.
    ``on`` (a buffer) switches it off for data that are not symmetric."""

    def __init__(self, geometry: Any) -> None:
        super().__init__()
        px, py, base = [], [], 0
        for l in geometry.layers:
            ny, nx = l.shape
            idx = torch.arange(ny * nx).view(ny, nx) + base
            px.append(idx.flip(1).reshape(-1))
            py.append(idx.flip(0).reshape(-1))
            base += ny * nx
        self.register_buffer("perm_x", torch.cat(px))
        self.register_buffer("perm_y", torch.cat(py))
        self.register_buffer("on", torch.tensor(True))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """``x (B, n_cells)``, ``z (B, 2)`` -> ``x`` with the reflections where ``z > 0`` (and ``on``)."""
        flip = (z > 0) & self.on
        x = torch.where(flip[:, :1], x[:, self.perm_x], x)
        return torch.where(flip[:, 1:2], x[:, self.perm_y], x)


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, lam: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """``lam * E[(||∇_x̂ D(x̂)||₂ − 1)²]`` on random interpolates ``x̂ = ε·real + (1−ε)·fake``.

    ``critic`` maps (B, n) → (B,) (conditions bound by the caller); ``real``/``fake`` (B, n).
    One ε ~ U(0, 1) per sample, drawn with ``generator``.
    """
    eps = torch.rand((len(real), 1), generator=generator, device=generator.device if generator else real.device)
    eps = eps.to(real.device, real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return lam * ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
