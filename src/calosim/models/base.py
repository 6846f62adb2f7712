"""The contract between generative models and the training framework.

A model is one file in ``calosim/models/`` defining a subclass of :class:`ShowerModel`
decorated with :func:`calosim.models.register_model`. The framework (``calosim.train``) owns
everything that is the same for all models: data loading, preprocessing transforms, condition
encoding, the step loop, EMA, validation, checkpoints, resume and data parallelism. A model
owns its networks, its optimisers and what one training step does.

Data a model sees (all torch tensors on ``ctx.device``):

* ``x``    (B, n_cells) showers in the *preprocessed* space of ``ctx.transform``
* ``cond`` (B, cond_dim) encoded conditions (``ctx.conditions`` says which columns are what;
  column 0 is always the encoded incident energy)
* ``ctx.transform.inverse(x, e_inc)`` maps back to MeV differentiably, for physics losses
  such as CaloGAN's energy term; ``ctx.conditions.incident_energy(cond)`` gives E_inc (B, 1) MeV.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = ["ShowerModel", "TrainContext"]


class TrainContext(Protocol):
    """What the training loop hands to :meth:`ShowerModel.train_step` (implemented in calosim.train)."""

    device: torch.device
    step: int  # global optimiser step, 0-based
    transform: Any  # ShowerTransform: forward(x_mev, e_inc) / inverse(x, e_inc), differentiable
    conditions: Any  # ConditionEncoder: names, slices, incident_energy(cond) -> (B, 1) MeV
    generator: torch.Generator  # the run's RNG for any extra sampling inside a step

    def backward_step(self, loss: Tensor, optimizer: str, *, retain_graph: bool = False) -> None:
        """zero_grad, backward (with AMP scaling on GPU), all-reduce grads across DDP ranks,
        optional clipping, then ``optimizers[optimizer].step()``."""
        ...


class ShowerModel(nn.Module):
    """Base class of all generative shower models.

    Subclasses set ``name`` and ``default_config`` (hyper-parameters, including ``transform``,
    ``batch_size``, ``steps`` and learning rates) and implement ``__init__``, ``train_step``
    and ``sample``. ``ema_modules`` names the sub-modules whose weights the framework keeps an
    exponential moving average of (usually the generator); sampling uses the EMA weights.
    """

    name: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {}
    ema_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, geometry: "Geometry", cond_dim: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.geometry = geometry
        self.cond_dim = cond_dim
        self.config = {**self.default_config, **config}

    # -- training -----------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Create this model's optimisers (called once by the framework, after ``.to(device)``)."""
        raise NotImplementedError

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: TrainContext) -> dict[str, float]:
        """Optional stage before the main loop (e.g. the WGAN-GP condition regressor).

        ``batches`` yields ``(x, cond)`` training batches indefinitely. Returns summary numbers.
        """
        return {}

    def train_step(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> dict[str, float]:
        """One optimisation step on a batch; returns scalar losses for logging."""
        raise NotImplementedError

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Showers in the preprocessed space, ``(B, n_cells)``, for encoded conditions ``(B, cond_dim)``."""
        raise NotImplementedError

    def export_module(self) -> nn.Module:
        """A module ``f(z, cond) -> x`` for ONNX export (optional)."""
        raise NotImplementedError(f"model {self.name!r} does not support export")

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
