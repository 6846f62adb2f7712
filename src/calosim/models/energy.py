"""Layer energies as one vector, its bookkeeping, and a mixture-density network for it (shared
by calogan and spots).

A shower's layer energies ``f (B, L)`` map one-to-one to an unconstrained *energy vector*
``t (B, L)`` (:func:`energy_vector`, :func:`energy_fractions`); :class:`EnergyMDN` models
``p(t | cond)`` by maximum likelihood, which gets the narrow response and the layer
correlations right far faster than an adversarial game.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._random import normal_cdf

__all__ = ["EnergyMDN", "energy_vector", "energy_fractions", "fit_energy_mdn", "pretrain_energy_network",
           "energy_target", "energy_fractions_numpy", "normal_cdf_numpy", "sequential_forward"]


def sequential_forward(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` without the per-module call machinery (hooks, forward dispatch: ~3 µs a module,
    a third of a batch-1 MLP's time): Linear and SiLU as functions, other modules called as usual."""
    for m in seq:
        if type(m) is nn.Linear:
            x = F.linear(x, m.weight, m.bias)
        elif type(m) is nn.SiLU:
            x = F.silu(x)
        else:
            x = m(x)
    return x


def normal_cdf_numpy(z: np.ndarray) -> np.ndarray:
    """:func:`~calosim.models._random.normal_cdf` of a NumPy array, through torch's ``erf`` (NumPy
    has none; scipy's costs 0.4 s to import), so the small-batch NumPy paths map noise to the
    very same uniforms as the torch paths."""
    return 0.5 * (1.0 + torch.erf(torch.from_numpy(z / math.sqrt(2.0))).numpy())

# ------------------------------------------------------------------------------------------
_ALPHA = 1e-6  # clip of the stick-breaking fractions (an empty layer maps to logit(alpha))


def energy_vector(f: Tensor) -> Tensor:
    """Layer energies ``f (B, L)`` (any linear unit, e.g. E_l / E_inc) -> ``t (B, L)``.

    ``t_0 = log sum_l f_l`` (the response, a narrow peak in its own coordinate) and, for
    ``l >= 1``, ``t_l = logit(u_l)`` of the stick-breaking fractions
    ``u_l = f_{l-1} / (f_{l-1} + ... + f_{L-1})`` (CaloFlow's u-space), so every point of
    R^L is a valid set of non-negative layer energies.
    """
    f = f.clamp_min(0.0)
    rest = f.flip(1).cumsum(1).flip(1)  # (B, L): f_l + ... + f_{L-1}
    t0 = torch.log(rest[:, :1].clamp_min(1e-30))
    u = (f[:, :-1] / rest[:, :-1].clamp_min(1e-30)).clamp(_ALPHA, 1.0 - _ALPHA)
    return torch.cat([t0, torch.log(u) - torch.log1p(-u)], 1)


def energy_fractions(t: Tensor) -> Tensor:
    """Inverse of :func:`energy_vector`: ``t (B, L) -> f (B, L)`` (non-negative)."""
    rest = torch.exp(t[:, :1])
    out = []
    for j in range(1, t.shape[1]):
        f = rest * torch.sigmoid(t[:, j:j + 1])
        out.append(f)
        rest = rest - f
    return torch.cat([*out, rest], 1)


def energy_fractions_numpy(t: np.ndarray) -> np.ndarray:
    """:func:`energy_fractions` of a NumPy array (the same steps, for the small-batch NumPy paths)."""
    rest = np.exp(t[:, :1])
    out = []
    for j in range(1, t.shape[1]):
        f = rest / (1.0 + np.exp(-t[:, j:j + 1]))  # sigmoid
        out.append(f)
        rest = rest - f
    return np.concatenate([*out, rest], 1)


class EnergyMDN(nn.Module):
    """Mixture-density network ``p(t | cond)``: K full-covariance Gaussians in the L-dim
    (standardised) energy vector, weights, means and Cholesky factors from an MLP of ``cond``.

    Trained by maximum likelihood before the GAN (e.g. :meth:`CaloGAN.pretrain`); sampling is a
    deterministic function of standard-normal noise (one value picks the component through
    its normal CDF, L values are the Gaussian), so it exports to ONNX and is reproducible.
    """

    def __init__(self, cond_dim: int, n_layers: int, components: int, hidden: int) -> None:
        super().__init__()
        k, d = int(components), int(n_layers)
        self.k, self.d = k, d
        n_off = d * (d - 1) // 2
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, k * (1 + 2 * d + n_off)))
        # where each entry of the flattened (d, d) factor comes from in [0, diagonal, strictly lower]:
        # a gather, O(d^2); the dense 0/1 placement matmuls it replaces were O(d^4) (45 layers:
        # 3e11 flop a batch, 3 pretraining steps in 9 minutes, and 130 MB in every run file)
        rows, cols = torch.tril_indices(d, d, -1)
        place = torch.zeros(d * d, dtype=torch.long)
        place[torch.arange(d) * (d + 1)] = 1 + torch.arange(d)
        place[rows * d + cols] = 1 + d + torch.arange(n_off)
        self.register_buffer("place", place, persistent=False)
        with torch.no_grad():  # spread the initial means so the components differ
            last = self.net[-1]
            last.weight.mul_(0.1)
            last.bias.view(k, -1)[:, 1:1 + d].copy_(torch.randn(k, d, generator=torch.Generator().manual_seed(0)))

    def params(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``log_w (B, K)``, ``mu (B, K, d)``, ``tril (B, K, d, d)``, ``log_diag (B, K, d)``."""
        o = self.net(cond).view(cond.shape[0], self.k, -1)
        return (torch.log_softmax(o[..., 0], -1), *self._gaussian(o))

    def _gaussian(self, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``mu (..., d)``, ``tril (..., d, d)``, ``log_diag (..., d)`` from one component's
        network outputs ``o (..., 1 + 2 d + d (d - 1) / 2)`` (column 0, the weight, is skipped)."""
        d = self.d
        mu = o[..., 1:1 + d]
        log_diag = o[..., 1 + d:1 + 2 * d].clamp(-7.0, 3.0)
        vals = torch.cat([torch.zeros_like(o[..., :1]), torch.exp(log_diag), o[..., 1 + 2 * d:]], -1)
        tril = torch.index_select(vals, -1, self.place).view(*o.shape[:-1], d, d)
        return mu, tril, log_diag

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ("p_off", "p_diag"):  # the placement matrices stored by runs written before the gather
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def log_prob(self, t: Tensor, cond: Tensor) -> Tensor:
        """``log p(t | cond)`` ``(B,)`` for ``t (B, d)``."""
        log_w, mu, tril, log_diag = self.params(cond)
        diff = (t[:, None, :] - mu).unsqueeze(-1)  # (B, K, d, 1)
        z = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
        log_n = -0.5 * (z * z).sum(-1) - log_diag.sum(-1) - 0.5 * self.d * math.log(2 * math.pi)
        return torch.logsumexp(log_w + log_n, -1)

    def sample(self, cond: Tensor, noise: Tensor) -> Tensor:
        """``t (B, d)`` from ``noise (B, 1 + d)`` standard normal."""
        o = self.net(cond).view(cond.shape[0], self.k, -1)
        u = normal_cdf(noise[:, :1])  # uniform
        k = (u > torch.cumsum(torch.exp(torch.log_softmax(o[..., 0], -1)), -1)).sum(-1).clamp_max(self.k - 1)  # (B,)
        onehot = (k[:, None] == torch.arange(self.k, device=cond.device)[None]).to(o.dtype)  # (B, K)
        # the picked component's outputs first, so only its (d, d) factor is built
        mu, tril, _ = self._gaussian((onehot[..., None] * o).sum(1))
        return mu + (tril @ noise[:, 1:, None]).squeeze(-1)

    def sample_numpy(self, cond: Tensor, noise: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        """:meth:`sample` for small eager batches on the CPU: ``t (B, d)`` from ``noise (B, 1 + d)``
        (and ``u = normal_cdf(noise[:, :1])`` if the caller has it).

        The network runs in torch (the same outputs, on torch's threads); the few dozen
        element-wise steps after it run in NumPy, whose ~1 µs per operation on a few hundred
        values is 2-3 times less than torch's. Same formulas as :meth:`sample`, so the same draw
        to float rounding (the component by fancy indexing instead of a one-hot sum).
        """
        d = self.d
        o = sequential_forward(self.net, cond).numpy().reshape(cond.shape[0], self.k, -1)
        u = normal_cdf_numpy(noise[:, :1]) if u is None else u
        w = o[..., 0]
        w = w - w.max(-1, keepdims=True)
        w = np.exp(w - np.log(np.exp(w).sum(-1, keepdims=True)))  # softmax as exp(log_softmax), as in sample
        k = np.minimum((u > w.cumsum(-1)).sum(-1), self.k - 1)
        o = o[np.arange(len(k)), k]  # (B, C): the picked component
        # (np.clip is a Python wrapper, several times the cost of the two ufuncs)
        log_diag = np.minimum(np.maximum(o[:, 1 + d:1 + 2 * d], -7.0), 3.0)
        vals = np.concatenate([np.zeros_like(o[:, :1]), np.exp(log_diag), o[:, 1 + 2 * d:]], -1)
        tril = vals[:, self.place.numpy()].reshape(-1, d, d)
        return o[:, 1:1 + d] + (tril @ noise[:, 1:, None])[..., 0]


def fit_energy_mdn(mdn: EnergyMDN, batches: Iterator[tuple[Tensor, Tensor]], target: Callable[[Tensor], Tensor],
                   ctx: Any, steps: int, batches_per_step: int, optimizer: str = "energy") -> float:
    """Fit ``mdn`` by maximum likelihood, then freeze it; returns the final (smoothed) NLL per shower.

    ``steps`` steps of ``ctx.optimizers[optimizer]`` (through ``ctx.backward_step``, so its
    declared learning-rate schedule applies) on ``batches_per_step`` concatenated training
    batches; ``target(x)`` gives the standardised energy vector ``(B, d)`` of showers ``x`` (it
    may draw dequantisation noise from ``ctx.generator``).
    """
    k = max(int(batches_per_step), 1)
    mdn.requires_grad_(True).train()
    nll = float("nan")
    for i in range(int(steps)):
        parts = [next(batches) for _ in range(k)]
        x = torch.cat([p[0] for p in parts])
        cond = torch.cat([p[1] for p in parts])
        loss = -mdn.log_prob(target(x), cond).mean()
        ctx.backward_step(loss, optimizer)
        nll = loss.item() if i == 0 or not math.isfinite(nll) else 0.98 * nll + 0.02 * loss.item()
    mdn.eval().requires_grad_(False)
    return nll


def pretrain_energy_network(model: Any, batches: Iterator[tuple[Tensor, Tensor]], ctx: Any, steps: int,
                            batches_per_step: int, *, dequantise: bool = True) -> float:
    """The energy-network stage of the models that draw layer energies first (spots, calogan,
    flowmatch): :func:`fit_energy_mdn` of ``model.energy`` on the standardised energy target
    ``(model.energy_target(x, u) - model.t_mean) / model.t_std``, with ``u`` uniform from the
    run's generator (hit-count dequantisation) or 0.5 without it; returns the final NLL."""

    def target(x: Tensor) -> Tensor:
        u: Tensor | float = 0.5
        if dequantise:
            u = torch.rand(len(x), model.geometry.n_layers, generator=ctx.generator,
                           device=ctx.generator.device).to(x.device)
        return (model.energy_target(x, u) - model.t_mean) / model.t_std

    return fit_energy_mdn(model.energy, batches, target, ctx, steps, batches_per_step)


# ------------------------------------------------------------------------------------------
# the energy vector of showers (shared by calogan and spots)
# ------------------------------------------------------------------------------------------
def energy_target(f: Tensor, n: Tensor | None = None, u: Tensor | float = 0.5) -> Tensor:
    """The energy vector from layer sums ``f (B, L)`` and (optionally) hit counts ``n (B, L)``
    (:func:`calosim.features.layer_energies`, :func:`calosim.features.hit_counts`):
    :func:`energy_vector` of ``f``, then ``log(n_l + u)`` with ``u`` a uniform dequantisation
    (0.5 where the value is a condition). ``(B, L)`` or ``(B, 2 L)``."""
    t = energy_vector(f)
    return t if n is None else torch.cat([t, torch.log(n + u)], 1)
