"""Typed training configuration: one dataclass per model, validated in one place.

:class:`TrainConfig` holds the keys the framework reads (batch size, steps, EMA, validation,
transform, conditions, ...). A model's ``Config`` subclasses it, adds its own hyper-parameters
and overrides framework defaults (its recipe) by redeclaring a field. Field types are the
schema: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``tuple[...]``,
``list[str]``, ``dict[str, Any]``; bounds go in :func:`param`. Cross-field rules live in the
config's :meth:`TrainConfig.check`.

:func:`validate_config` is the only entry point from untyped data (TOML files, ``--set``,
a run's ``config.json``): unknown keys are refused with the list of valid keys, every value
is checked against its field's type and bounds, and errors are one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = ["TrainConfig", "param", "validate_config", "config_dict", "parse_overrides", "field_names"]

C = TypeVar("C", bound="TrainConfig")


def param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None) -> Any:
    """A config field with a default and inclusive (``ge``/``le``) or strict (``gt``/``lt``) bounds."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


#: Upper bound of layer widths, component counts and the like: far beyond any sensible
#: network on this project's detectors, far below sizes that exhaust memory at construction.
MAX_WIDTH = 8192
MAX_STEPS = 10**9


@dataclass
class TrainConfig:
    """Keys the framework reads. Model configs subclass this and override defaults."""

    batch_size: int = param(128, ge=1, le=1 << 20)  # global batch (split evenly over DDP ranks)
    steps: int | None = param(None, ge=1, le=MAX_STEPS)  # optimiser steps; or give epochs
    epochs: int | None = param(None, ge=1, le=MAX_STEPS)
    ema: float = param(0.999, ge=0.0, lt=1.0)  # EMA decay of model.ema_modules
    ema_warmup: bool = True  # decay = min(ema, (1 + step) / (10 + step)) so short runs are usable
    log_every: int = param(100, ge=1)
    val_every: int = param(1000, ge=0)  # 0 disables periodic validation (the final step still validates)
    checkpoint_every: int = param(1000, ge=1)
    val_size: int = param(10000, ge=1)  # held-out showers used per validation
    val_batch: int = param(1024, ge=1, le=1 << 20)
    val_bins: int = param(30, ge=2, le=10000)
    transform: str = "identity"
    transform_kw: dict[str, Any] = param({})
    conditions: list[str] = param(["energy"])
    clip_grad: float | None = param(None, gt=0.0)  # max grad norm, applied in backward_step
    amp: bool | Literal["fp16", "bf16", "bfloat16"] = False  # mixed precision (CUDA only)
    pool_size: int = param(5000, ge=1)  # training condition rows kept in the run for generation
    geometry: str | None = None  # override the file's geometry (name), e.g. for CaloChallenge files
    threads: int | None = param(None, ge=1, le=1024)  # torch intra-op threads (None: torch's default)
    # model.safetensors: the EMA weights at the end ("last") or of the best validation ("best")
    final_weights: Literal["last", "best"] = "last"

    def check(self) -> None:
        """Cross-field rules (raise ValueError naming the keys). Subclasses extend it."""
        if self.steps is not None and self.epochs is not None:
            raise ValueError("config: give either 'steps' or 'epochs', not both")


#: Keys that may change when resuming (they do not change the trajectory up to the resume point).
RESUMABLE_KEYS = frozenset({"steps", "epochs", "log_every", "val_every", "checkpoint_every", "val_size", "val_batch",
                            "threads", "final_weights"})


def field_names(cls: type[TrainConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a JSON-able dict (tuples become lists), e.g. for ``config.json``."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def validate_config(cls: type[C], values: Mapping[str, Any], source: str = "config", *, check: bool = True) -> C:
    """A validated ``cls`` instance from untyped ``values`` (defaults for missing keys);
    ``check=False`` skips the cross-field rules (for one source of a config still being merged).

    Raises ValueError with one line: ``"<source>: unknown key 'x' (did you mean 'y'?); valid keys: ..."``
    or ``"<source>: 'key' must be ..., got ...``.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a table of keys and values, got {type(values).__name__} {values!r:.60}")
    names = field_names(cls)
    unknown = [k for k in values if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{source}: unknown key {k!r}{hint}; valid keys: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = _coerce(values[f.name], hints[f.name], f"{source}: {f.name!r}")
            _check_bounds(v, f.metadata, f"{source}: {f.name!r}")
            kwargs[f.name] = v
    cfg = cls(**kwargs)
    if not check:
        return cfg
    try:
        cfg.check()
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(source) else f"{source}: {msg.removeprefix('config: ')}") from None
    return cfg


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set``) -> dict; values are JSON where they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}s"
        return f"a list of {len(args)} {_describe(args[0])}s"
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce(v: Any, tp: Any, where: str) -> Any:
    """``v`` checked against the type ``tp`` (converted where lossless: int -> float, list -> tuple)."""
    try:
        return _convert(v, tp)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {_describe(tp)}, got {json.dumps(v, default=str)[:60]}") from None


#: Which values a scalar field accepts (bool is not an int here; floats must be finite).
_SCALARS: dict[type, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
}


def _convert(v: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if tp is type(None):
        if v is None:
            return None
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _convert(v, a)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is Literal:
        for a in args:  # type-exact: True must not match 1
            if type(v) is type(a) and v == a:
                return v
        raise ValueError
    if tp in _SCALARS:
        if _SCALARS[tp](v):
            return float(v) if tp is float else v
        raise TypeError
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(a, args[0]) for a in v)
        if len(v) != len(args):
            raise ValueError
        return tuple(_convert(a, t) for a, t in zip(v, args))
    if origin is list:
        if isinstance(v, str) and args[0] is str:  # "energy,pdg" from --set
            v = [c.strip() for c in v.split(",") if c.strip()]
        if not isinstance(v, (list, tuple)):
            raise TypeError
        return [_convert(a, args[0]) for a in v]
    if origin is dict:
        if not isinstance(v, Mapping):
            raise TypeError
        return dict(v)
    raise TypeError(f"unsupported config type {tp!r}")


def _check_bounds(v: Any, meta: Mapping[str, Any], where: str) -> None:
    if not meta or v is None:
        return
    values = v if isinstance(v, tuple) else (v,)
    for x in values:
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            continue
        for op, bound in meta.items():
            ok = {"ge": x >= bound, "gt": x > bound, "le": x <= bound, "lt": x < bound}[op]
            if not ok:
                rel = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
                raise ValueError(f"{where} must be {rel} {bound:g}, got {json.dumps(v)}")
