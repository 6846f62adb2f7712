"""The contract between generative models and the training framework.

A model is one file in ``calosim/models/`` defining a subclass of :class:`ShowerModel`
decorated with :func:`calosim.models.register_model` (``docs/models.md`` has the smallest
complete template). The framework (``calosim.train``) owns everything that is the same for
all models: data loading, preprocessing transforms, condition encoding, config validation,
the step loop, learning-rate schedules, EMA, validation, checkpoints, resume and data
parallelism. A model owns its networks, its optimisers and what one training step does.

What a model declares:

* ``Config``: a dataclass subclassing :class:`~calosim.models.config.TrainConfig` (its
  hyper-parameters and its recipe's framework defaults); ``self.config`` is an instance.
* :meth:`ShowerModel.make_optimizers` (named optimisers) and, optionally,
  :meth:`ShowerModel.lr_schedules` (one :class:`LRSchedule` per optimiser name). Every
  optimiser step goes through ``ctx.backward_step`` (which all-reduces gradients under DDP and
  steps the schedule), pretraining included.
* optionally :meth:`ShowerModel.fit_statistics`: called once per run, before pretraining, on
  the first ``n_statistics_batches()`` training batches (e.g. standardisations; keep them in
  buffers so they are saved with the weights).
* :meth:`ShowerModel.sample` and :meth:`ShowerModel.export_module`, whose ``latent_dim``
  attribute is the width of the standard-normal ``z`` it takes: ``export_module()(z, cond)``
  reproduces ``sample(cond, generator)`` for the ``z`` drawn first from that generator.

Data a model sees (all torch tensors on ``ctx.device``):

* ``x``    (B, data_dim) showers in the *preprocessed* space of ``ctx.transform``
  (``data_dim == n_cells`` unless the class sets ``cells_only = False``)
* ``cond`` (B, cond_dim) encoded conditions (``ctx.conditions`` says which columns are what;
  column 0 is always the encoded incident energy)
* ``ctx.transform.inverse(x, e_inc)`` maps back to MeV differentiably, for physics losses
  such as CaloGAN's energy term; ``ctx.conditions.incident_energy(cond)`` gives E_inc (B, 1) MeV.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from .config import TrainConfig, validate_config

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = ["ShowerModel", "TrainContext", "LRSchedule", "Transform", "Conditions"]


class Transform(Protocol):
    """The fitted preprocessing (``calosim.train.transforms.ShowerTransform``)."""

    out_dim: int

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        """(B, n_cells) MeV, (B, 1) MeV -> (B, out_dim), differentiable."""
        ...

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        """(B, out_dim), (B, 1) MeV -> (B, n_cells) MeV, differentiable."""
        ...


class Conditions(Protocol):
    """The fitted condition encoder (``calosim.train.conditions.ConditionEncoder``)."""

    names: list[str]
    cond_dim: int

    def incident_energy(self, cond: Tensor) -> Tensor:
        """Encoded conditions (B, cond_dim) -> incident energy (B, 1) MeV."""
        ...


class TrainContext(Protocol):
    """What the training loop hands to the model's hooks (implemented in calosim.train)."""

    device: torch.device
    step: int  # global optimiser step, 0-based
    transform: Transform
    conditions: Conditions
    generator: torch.Generator  # the run's RNG for any extra sampling inside a step
    optimizers: Mapping[str, torch.optim.Optimizer]  # what make_optimizers returned

    def backward_step(self, loss: Tensor, optimizer: str, *, retain_graph: bool = False) -> None:
        """zero_grad, backward (with AMP scaling on GPU), all-reduce grads across DDP ranks,
        optional clipping, ``optimizers[optimizer].step()``, then its learning-rate schedule."""
        ...


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate schedule over ``steps`` steps of one optimiser (its own step count).

    ``cosine``: ``lr * (1 + cos(pi * min(i / steps, 1))) / 2`` before step ``i``;
    ``onecycle``: :class:`torch.optim.lr_scheduler.OneCycleLR` with ``max_lr`` = the optimiser's lr.
    """

    kind: Literal["cosine", "onecycle"]
    steps: int

    def build(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        n = max(int(self.steps), 1)
        if self.kind == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=n)
        if self.kind == "cosine":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i / n, 1.0))))
        raise ValueError(f"unknown learning-rate schedule {self.kind!r}; valid: 'cosine', 'onecycle'")


class ShowerModel(nn.Module):
    """Base class of all generative shower models.

    Subclasses set ``name`` and ``Config`` and implement ``__init__``, ``make_optimizers``,
    ``train_step``, ``sample`` and ``export_module``. ``ema_modules`` names the sub-modules whose
    weights the framework keeps an exponential moving average of (usually the generator);
    sampling uses the EMA weights. ``cells_only`` (default True): the model needs a transform
    with one value per cell (``data_dim == geometry.n_cells``), checked here.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[TrainConfig]] = TrainConfig
    ema_modules: ClassVar[tuple[str, ...]] = ()
    cells_only: ClassVar[bool] = True
    #: Contract items this model cannot meet, with the reason (``{"export": "..."}``; items:
    #: ``"export"``, ``"reproducible"``, ``"train_step"``); the contract test skips them visibly.
    contract_exemptions: ClassVar[dict[str, str]] = {}
    #: Read-only: the defaults of ``Config`` as a JSON-able dict (derived, never set by hand).
    default_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, geometry: "Geometry", cond_dim: int, config: TrainConfig | Mapping[str, Any] | None = None,
                 *, data_dim: int | None = None) -> None:
        super().__init__()
        self.geometry = geometry
        self.cond_dim = int(cond_dim)
        self.data_dim = int(geometry.n_cells if data_dim is None else data_dim)
        if self.cells_only and self.data_dim != geometry.n_cells:
            raise ValueError(f"{self.name}: needs a transform with one value per cell, got data_dim={self.data_dim} "
                             f"for the {geometry.n_cells} cells of {geometry.name!r}")
        if isinstance(config, self.Config):
            self.config = config
        elif isinstance(config, TrainConfig):
            raise TypeError(f"{self.name}: config is a {type(config).__name__}, expected {self.Config.__name__}")
        else:
            self.config = validate_config(self.Config, config or {}, f"{self.name} config")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "default_config" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: declare defaults as fields of its 'Config' dataclass, "
                            "not in default_config")
        cls.default_config = json_defaults(cls.Config)

    # -- training -----------------------------------------------------------------------
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Create this model's optimisers (called once by the framework, after ``.to(device)``)."""
        raise NotImplementedError

    def lr_schedules(self, total_steps: int) -> dict[str, LRSchedule]:
        """Learning-rate schedules by optimiser name (none by default); ``total_steps`` is the
        run's number of main-loop steps."""
        return {}

    def n_statistics_batches(self) -> int:
        """How many training batches :meth:`fit_statistics` gets (concatenated)."""
        return 1

    def fit_statistics(self, x: Tensor, cond: Tensor, ctx: TrainContext) -> None:
        """Optional: fit data statistics on the first batches, ``x (B, data_dim)``, ``cond (B, cond_dim)``."""

    def pretrain_steps(self) -> int | None:
        """Optimiser steps :meth:`pretrain` takes (for its progress bar), or None if unknown."""
        return None

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
        """Showers in the preprocessed space, ``(B, data_dim)``, for encoded conditions ``(B, cond_dim)``."""
        raise NotImplementedError

    def export_module(self) -> nn.Module:
        """A module ``f(z (B, latent_dim), cond (B, cond_dim)) -> x (B, data_dim)`` with a
        ``latent_dim`` attribute, for ONNX export."""
        raise NotImplementedError(f"model {self.name!r} does not support export")

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def json_defaults(cls: type[TrainConfig]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(dataclasses.asdict(cls())))

