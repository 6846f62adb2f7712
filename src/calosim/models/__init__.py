"""Model registry. A new model is one new file in this folder defining a registered
:class:`~calosim.models.base.ShowerModel` subclass; it is discovered automatically."""

from __future__ import annotations

import importlib
import pkgutil

from .base import ShowerModel, TrainContext

__all__ = ["ShowerModel", "TrainContext", "register_model", "get_model_class", "list_models"]

_REGISTRY: dict[str, type[ShowerModel]] = {}
_DISCOVERED = False


def register_model(cls: type[ShowerModel]) -> type[ShowerModel]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty 'name'")
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
        if mod.name not in ("base",) and not mod.name.startswith("_"):
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
