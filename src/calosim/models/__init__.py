"""Model registry. A new model is one new file in this folder defining a registered
:class:`~calosim.models.base.ShowerModel` subclass; it is discovered automatically."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING, Any

import torch

from .base import LRSchedule, ShowerModel, TrainContext
from .config import TrainConfig, param

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = ["ShowerModel", "TrainContext", "TrainConfig", "LRSchedule", "param", "register_model", "get_model_class", "list_models",
           "build_model"]

_REGISTRY: dict[str, type[ShowerModel]] = {}
_DISCOVERED = False


def register_model(cls: type[ShowerModel]) -> type[ShowerModel]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty 'name'")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, TrainConfig)) or cls.Config is TrainConfig:
        raise ValueError(f"{cls.__qualname__} must declare a 'Config' dataclass (a TrainConfig subclass)")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base", "config", "energy", "layers") and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def get_model_class(name: str) -> type[ShowerModel]:
    """The model class registered as ``name``; unknown names list the valid ones."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def list_models() -> dict[str, str]:
    """``{name: first docstring line}`` of every registered model."""
    _discover()
    return {k: (v.__doc__ or "").strip().splitlines()[0] if v.__doc__ else "" for k, v in sorted(_REGISTRY.items())}


def build_model(cls: type[ShowerModel], geometry: "Geometry", cond_dim: int, config: Any,
                data_dim: int | None = None) -> ShowerModel:
    """``cls(geometry, cond_dim, config, data_dim=...)``, refused with a one-line ValueError when
    its weights (with gradients and Adam's two moments) would not fit in half the machine's memory.

    The size is measured on a weightless ("meta") copy first, so a huge geometry or width
    fails fast instead of exhausting the memory.
    """
    where = f"model {cls.name!r} on geometry {geometry.name!r} ({geometry.n_cells} cells)"
    try:
        need = _weights_bytes(cls, geometry, cond_dim, config, data_dim)
        avail = _memory_bytes()
        if need is not None and avail is not None and 4 * need > avail // 2:
            raise ValueError(f"{where} needs {need / 2**30:.1f} GiB of weights (x4 when training), more than this "
                             f"machine's {avail / 2**30:.1f} GiB allow; reduce the network widths in the config")
        return cls(geometry, cond_dim, config, data_dim=data_dim)
    except MemoryError:
        raise ValueError(f"{where}: out of memory while building it (is the geometry that large?)") from None


def _weights_bytes(cls: type[ShowerModel], geometry: "Geometry", cond_dim: int, config: Any,
                   data_dim: int | None) -> int | None:
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            m = cls(geometry, cond_dim, config, data_dim=data_dim)
    except (ValueError, MemoryError):
        raise  # a config error, or too large: the same as the real construction would raise
    except Exception:  # noqa: BLE001 - a model whose construction needs real data: skip the estimate
        return None
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
