"""Random-number helpers shared by the models: draws on the run's generator, and the
ONNX-friendly maps from standard-normal latent values to uniform and Gumbel variates (a
sampling path that takes only normal noise stays one deterministic, exportable graph)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["standard_normal", "normal_cdf", "gumbel"]


def standard_normal(n: int, dim: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``(n, dim)`` standard normal, drawn on ``generator``'s device (reproducible) and moved to ``device``."""
    z = torch.randn(n, dim, generator=generator, device=generator.device if generator is not None else device)
    return z.to(device)


def normal_cdf(z: Tensor) -> Tensor:
    """Standard normal ``z`` -> uniform on (0, 1), ``Phi(z)`` from erf (ONNX has no erfc)."""
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def gumbel(u: Tensor) -> Tensor:
    """Uniform ``u`` -> standard Gumbel ``-log(-log(u))``, ``u`` clipped to [1e-7, 1 - 1e-7]
    (``Phi`` rounds to 1 above z ~ 5 in float32)."""
    return -torch.log(-torch.log(u.clamp(1e-7, 1.0 - 1e-7)))
