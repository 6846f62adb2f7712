"""Latent samplers for autoencoder models (the BIB-AE of ``bib_ae.py``); no registered model.

Two ways to draw a latent vector ``z`` (B, dim) for conditions ``c`` (B, cond_dim), both as
deterministic maps of standard-normal noise so a whole sampling path stays one exportable graph:

* :class:`LatentKDE`: a kernel density estimate over the encoded training showers ("Decoding
  Photons", seed 003), conditional by nearest neighbours: for each query the ``neighbours``
  stored showers closest in encoded-condition space (energy, and angles when present) are the
  kernel centres; one is chosen by a uniform variate and a Gaussian kernel of Scott's width
  (over the neighbours' spread) is added. With ``neighbours >= n`` it is the plain KDE.
  The centres are buffers, so a run reloads without the training file.
* :class:`LatentFlow`: a conditional normalising flow (zuko masked affine autoregressive
  transforms, coupling by default: one network pass per transform when sampling) over the
  conditions, the seed's "replace latent KDE with conditional latent flow" for angles.

Noise layout of both: ``eps`` (B, 1 + dim); column 0 picks the KDE centre (the flow ignores
it), columns 1: are the kernel / base noise.
"""

from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn

from ._random import normal_cdf

__all__ = ["LatentKDE", "LatentFlow"]


class LatentKDE(nn.Module):
    """Conditional KDE over up to ``capacity`` encoded showers (centres (n, dim), conditions (n, cond_dim))."""

    def __init__(self, dim: int, cond_dim: int, capacity: int, neighbours: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        if capacity < 1 or neighbours < 1:
            raise ValueError(f"LatentKDE: capacity and neighbours must be >= 1, got {capacity}, {neighbours}")
        self.dim, self.neighbours, self.bandwidth = int(dim), int(neighbours), float(bandwidth)
        self.register_buffer("centres", torch.zeros(capacity, dim))
        self.register_buffer("conds", torch.zeros(capacity, cond_dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def n(self) -> int:
        """Number of stored centres."""
        return int(self.count)

    @property
    def capacity(self) -> int:
        return len(self.centres)

    @torch.no_grad()
    def add(self, z: Tensor, cond: Tensor) -> int:
        """Store encoded showers ``z`` (B, dim) with their conditions (B, cond_dim) until full;
        returns the number stored."""
        n = self.n
        take = min(len(z), self.capacity - n)
        if take > 0:
            self.centres[n:n + take] = z[:take].to(self.centres)
            self.conds[n:n + take] = cond[:take].to(self.conds)
            self.count.fill_(n + take)
        return self.n

    @torch.no_grad()
    def fit(self, z: Tensor, cond: Tensor) -> "LatentKDE":
        """Replace the centres by ``z`` (N, dim), ``cond`` (N, cond_dim) (at most ``capacity``)."""
        self.count.zero_()
        self.add(z, cond)
        return self

    def forward(self, eps: Tensor, cond: Tensor) -> Tensor:
        """Noise (B, 1 + dim) standard normal, conditions (B, cond_dim) -> latent samples (B, dim).

        With no centres stored yet, the standard-normal prior ``eps[:, 1:]``."""
        n = self.n
        noise = eps[:, 1:]
        if n == 0:
            return noise
        centres, conds = self.centres[:n], self.conds[:n]
        k = min(self.neighbours, n)
        j = (normal_cdf(eps[:, :1]) * k).long().clamp(0, k - 1)  # uniform choice among the neighbours
        if k == n:  # every centre is a neighbour: the unconditional KDE
            pick = j.squeeze(1)
            spread = centres.std(0, unbiased=False).expand_as(noise)
        else:  # squared distances in encoded-condition space, (B, n)
            d2 = (cond * cond).sum(1, keepdim=True) - 2 * cond @ conds.T + (conds * conds).sum(1)
            idx = d2.topk(k, dim=1, largest=False).indices  # (B, k)
            pick = idx.gather(1, j).squeeze(1)
            spread = centres[idx].std(1, unbiased=False) if k > 1 else torch.zeros_like(noise)
        # Scott's rule over the neighbours: width = factor * k^(-1/(d+4)) * their spread
        width = self.bandwidth * k ** (-1.0 / (self.dim + 4)) * spread
        return centres[pick] + width * noise


class LatentFlow(nn.Module):
    """Conditional density p(z | c) (dim features, cond_dim context) by zuko affine MAF transforms."""

    def __init__(self, dim: int, cond_dim: int, transforms: int = 4, hidden: int = 64, passes: int | None = 2) -> None:
        super().__init__()
        self.dim = int(dim)
        # passes=2 (coupling): sampling is one network pass per transform, not dim passes
        self.flow = zuko.flows.MAF(dim, cond_dim, transforms=transforms, hidden_features=(hidden, hidden),
                                   passes=min(passes, dim) if passes else None, randperm=False)

    def log_prob(self, z: Tensor, cond: Tensor) -> Tensor:
        """log p(z | c): z (B, dim), c (B, cond_dim) -> (B,)."""
        return self.flow(cond).log_prob(z)

    def forward(self, eps: Tensor, cond: Tensor) -> Tensor:
        """Noise (B, 1 + dim) standard normal, conditions (B, cond_dim) -> latent samples (B, dim)."""
        return self.flow(cond).transform.inv(eps[:, 1:])

