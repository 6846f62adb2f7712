"""Training configuration: framework defaults, TOML files and their resolution.

The resolved configuration of a run is ``FRAMEWORK_DEFAULTS ⊕ model.default_config ⊕ file ⊕
overrides`` (later wins), plus the explicit ``steps``/``epochs`` arguments of :func:`train`.
It is a flat dict (nested tables such as ``transform_kw`` stay dicts) stored in the run's
``config.json``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["FRAMEWORK_DEFAULTS", "load_config_file", "resolve_config", "config_diff"]

#: Keys the framework reads. A model's ``default_config`` overrides these and adds its own.
FRAMEWORK_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,          # global batch (split evenly over DDP ranks)
    "steps": None,              # optimiser steps; or give "epochs"
    "epochs": None,
    "ema": 0.999,               # EMA decay of model.ema_modules
    "ema_warmup": True,         # decay = min(ema, (1 + step) / (10 + step)) so short runs are usable
    "log_every": 100,
    "val_every": 1000,          # 0 disables periodic validation (the final step still validates)
    "checkpoint_every": 1000,
    "val_size": 10000,          # held-out showers used per validation
    "val_batch": 1024,
    "val_bins": 30,
    "transform": "identity",
    "transform_kw": {},
    "conditions": ["energy"],
    "clip_grad": None,          # max grad norm, applied in backward_step
    "amp": False,               # mixed precision (CUDA only)
    "pool_size": 5000,          # training condition rows kept in the run for generation
    "geometry": None,           # override the file's geometry (name), e.g. for CaloChallenge files
    "threads": None,            # torch intra-op threads (None: torch's default); 1 is often fastest for small models
    "final_weights": "last",    # model.safetensors: the EMA weights at the end ("last") or of the best validation ("best")
}

#: Keys that may change when resuming (they do not change the trajectory up to the resume point).
RESUMABLE_KEYS = frozenset({"steps", "epochs", "log_every", "val_every", "checkpoint_every", "val_size", "val_batch",
                            "threads", "final_weights"})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict. A ``[train]`` table, if present, is flattened in."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    train = data.pop("train", None)
    if isinstance(train, dict):  # allow both flat files and a [train] section
        data = {**data, **train}
    return data


def resolve_config(model_defaults: dict[str, Any], *, config_file: str | Path | None = None,
                   config: dict[str, Any] | None = None, epochs: int | None = None,
                   steps: int | None = None) -> dict[str, Any]:
    """Merge defaults, model defaults, the TOML file and ``config``; apply ``epochs``/``steps``.

    Explicit ``steps``/``epochs`` arguments win over any config value and clear the other one.
    """
    out: dict[str, Any] = json.loads(json.dumps(FRAMEWORK_DEFAULTS))  # deep copy
    out.update(json.loads(json.dumps(model_defaults, default=_jsonable)))
    if config_file is not None:
        out.update(load_config_file(config_file))
    if config:
        out.update(json.loads(json.dumps(config, default=_jsonable)))
    if steps is not None and epochs is not None:
        raise ValueError("give either steps or epochs, not both")
    if steps is not None:
        out["steps"], out["epochs"] = int(steps), None
    elif epochs is not None:
        out["steps"], out["epochs"] = None, int(epochs)
    if out.get("steps") is None and out.get("epochs") is None:
        raise ValueError("the training length is not set: pass steps= or epochs= (or set 'steps' in the config)")
    conds = out.get("conditions")
    if isinstance(conds, str):
        out["conditions"] = [c.strip() for c in conds.split(",") if c.strip()]
    for key in ("batch_size", "log_every", "checkpoint_every"):
        if not isinstance(out.get(key), int) or out[key] < 1:
            raise ValueError(f"config {key!r} must be a positive integer, got {out.get(key)!r}")
    if not 0.0 <= float(out["ema"]) < 1.0:
        raise ValueError(f"config 'ema' must be in [0, 1), got {out['ema']!r}")
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RESUMABLE_KEYS) -> list[str]:
    """Keys whose values differ between two resolved configs (for resume checks)."""
    keys = (set(a) | set(b)) - ignore
    return sorted(k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


def _jsonable(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"config value {o!r} is not JSON-serialisable")
