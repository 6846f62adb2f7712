"""Training configuration: TOML files, ``--set`` overrides and their resolution onto a model's
typed ``Config`` (the schema and its validator are :mod:`calosim.models.config`).

The resolved configuration of a run is ``model.Config defaults ⊕ file ⊕ overrides`` (later
wins), plus the explicit ``steps``/``epochs`` arguments of :func:`train`. It is stored flat
(nested tables such as ``transform_kw`` stay tables) in the run's ``config.json``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from ..models.config import RESUMABLE_KEYS, TrainConfig, parse_overrides, validate_config

__all__ = ["load_config_file", "resolve_config", "config_diff", "parse_overrides", "RESUMABLE_KEYS"]

C = TypeVar("C", bound=TrainConfig)


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


def resolve_config(config_cls: type[C], *, config_file: str | Path | None = None,
                   config: dict[str, Any] | None = None, epochs: int | None = None,
                   steps: int | None = None) -> C:
    """Validate ``config_file`` (TOML) and ``config`` (overrides) onto ``config_cls``; apply
    ``epochs``/``steps``, which win over any config value and clear the other one.

    Errors are one line naming the file (or ``config``), the key and what was expected.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        file_values = load_config_file(config_file)
        validate_config(config_cls, file_values, str(config_file), check=False)  # errors name the file
        values.update(file_values)
    if config:
        validate_config(config_cls, config, "config", check=False)
        values.update(config)
    if steps is not None and epochs is not None:
        raise ValueError("give either steps or epochs, not both")
    if steps is not None:
        values["steps"], values["epochs"] = int(steps), None
    elif epochs is not None:
        values["steps"], values["epochs"] = None, int(epochs)
    elif "epochs" in values and "steps" not in values:
        values["steps"] = None  # epochs from the file or overrides replace the model's default steps
    cfg = validate_config(config_cls, values, "config")
    if cfg.steps is None and cfg.epochs is None:
        raise ValueError("the training length is not set: pass steps= or epochs= (or set 'steps' in the config)")
    return cfg


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RESUMABLE_KEYS) -> list[str]:
    """Keys whose values differ between two resolved configs (for resume checks)."""
    keys = (set(a) | set(b)) - ignore
    return sorted(k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))
