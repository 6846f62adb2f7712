"""Run directories: checkpoints and final weights (loading a run for sampling is :mod:`calosim.runs`).

Everything is stored as safetensors (tensors only, never pickles). Non-tensor state (optimiser
hyper-parameters, step counters, numpy/python RNG states, condition-encoder state, ...) is
JSON in the safetensors header metadata (``"calosim"`` key), so each file is written in one
atomic rename and can never be half-updated; a human-readable JSON sidecar (``*.json``) next to
each checkpoint repeats the summary fields (step, validation score) for inspection only.

Run directory layout::

    config.json                     resolved config, model name, geometry JSON, data path, conditions
    versions.json                   provenance: python/torch/numpy/calosim versions, git commit, command, seed
    preprocessing.safetensors       fitted transform buffers + condition encoder (JSON metadata)
    conditions_pool.safetensors     <= pool_size raw training condition rows (for generation)
    checkpoints/last.safetensors    model + EMA + optimisers + RNG states + step (resume point)
    checkpoints/best.safetensors    same, at the best validation score
    metrics.jsonl                   one JSON line per log interval / validation
    model.safetensors               final EMA weights + transform + encoder: all that sampling needs
    train_summary.json              steps, time, throughput, best score, final validation figures
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..geometry import Geometry
from ..io import atomic_path, write_text_atomic
from .conditions import ConditionEncoder
from .transforms import ShowerTransform, get_transform

__all__ = [
    "RunError", "save_tensors", "load_tensors", "flatten_state", "unflatten_state",
    "CONFIG_FILE", "VERSIONS_FILE", "PREPROCESSING_FILE", "POOL_FILE", "LAST_CKPT", "BEST_CKPT",
    "METRICS_FILE", "MODEL_FILE", "SUMMARY_FILE", "LOCK_FILE", "data_fingerprint", "lock_run_dir",
]

CONFIG_FILE = "config.json"
VERSIONS_FILE = "versions.json"
PREPROCESSING_FILE = "preprocessing.safetensors"
POOL_FILE = "conditions_pool.safetensors"
LAST_CKPT = "checkpoints/last.safetensors"
BEST_CKPT = "checkpoints/best.safetensors"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "train_summary.json"
LOCK_FILE = ".lock"  # held (flock) by the one train writing the directory
#: Every file a run writes (used by ``overwrite=True`` to clear only what is ours).
RUN_FILES = (LOCK_FILE, CONFIG_FILE, VERSIONS_FILE, PREPROCESSING_FILE, POOL_FILE, LAST_CKPT, BEST_CKPT,
             LAST_CKPT.replace(".safetensors", ".json"), BEST_CKPT.replace(".safetensors", ".json"),
             METRICS_FILE, MODEL_FILE, SUMMARY_FILE)
FORMAT_VERSION = 1


class RunError(ValueError):
    """A run directory is missing, incomplete or corrupt."""


# ------------------------------------------------------------------------------------------
# tensors + JSON metadata in one safetensors file
# ------------------------------------------------------------------------------------------
def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` and JSON-able ``meta`` (in the header) to a safetensors file."""
    from safetensors.torch import save_file

    # clone: safetensors refuses shared/non-contiguous storage (tied weights, views)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(flat, str(tmp), metadata={"calosim": json.dumps(meta, sort_keys=True), "format": str(FORMAT_VERSION)})


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a file written by :func:`save_tensors`; :class:`RunError` if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get("calosim", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        raise RunError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    return tensors, meta


def flatten_state(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state (dicts/lists/tuples of tensors and plain values, e.g. an optimiser
    ``state_dict``) into ``tensors[prefix/...]`` and a JSON skeleton that references them."""
    if isinstance(obj, Tensor):
        key = prefix
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # keys may be ints (optimiser param ids): keep their type
        return {"__dict__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store state value of type {type(obj).__name__} at {prefix!r}")


def unflatten_state(skel: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {k: unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
        raise RunError(f"malformed state skeleton: {list(skel)}")
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    return skel


def prefixed(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def unprefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def ema_model_weights(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model ``state_dict`` of a training checkpoint with its EMA weights in place of the live ones."""
    return {**unprefixed(tensors, "model"), **unprefixed(tensors, "ema")}


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------------------
# preprocessing (transform + encoder) and final model files
# ------------------------------------------------------------------------------------------
def preprocessing_tensors(transform: ShowerTransform, encoder: ConditionEncoder) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return prefixed(transform.state_dict(), "transform"), {"transform": transform.config(), "conditions": encoder.to_dict()}


def build_preprocessing(geometry: Geometry, tensors: Mapping[str, Tensor], meta: Mapping[str, Any],
                        source: str) -> tuple[ShowerTransform, ConditionEncoder]:
    """Rebuild the fitted transform and condition encoder from a file's tensors + metadata."""
    try:
        tcfg = dict(meta["transform"])
        transform = get_transform(tcfg.pop("name"), geometry, **tcfg)
        transform.load_state_dict(unprefixed(tensors, "transform"))
        encoder = ConditionEncoder.from_dict(meta["conditions"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise RunError(f"{source}: preprocessing state missing or malformed: {exc}") from None
    return transform, encoder


# ------------------------------------------------------------------------------------------
# data fingerprint and the run-directory lock
# ------------------------------------------------------------------------------------------
def data_fingerprint(showers: np.ndarray, incident_energies: np.ndarray,
                     conditions: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Shape and a BLAKE2b hash of the training data's content (showers, energies, conditions),
    in 64 MiB chunks: a resume refuses a file that changed at the same path."""
    h = hashlib.blake2b(digest_size=16)
    for name, arr in [("showers", showers), ("incident_energies", incident_energies), *sorted(conditions.items())]:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        flat = a.reshape(-1).view(np.uint8)
        for lo in range(0, flat.size, 1 << 26):
            h.update(flat[lo:lo + (1 << 26)])
    return {"n_showers": int(len(showers)), "n_cells": int(showers.shape[1]), "blake2b": h.hexdigest()}


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run>/.lock`` (released and removed by :meth:`release`)."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = run_dir / LOCK_FILE
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise RunError(f"{run_dir}: another train is writing to this run directory ({LOCK_FILE} is locked)") \
                from None

    def release(self) -> None:
        if self._f.closed:
            return
        self.path.unlink(missing_ok=True)
        self._f.close()


def lock_run_dir(run_dir: Path) -> tuple[RunLock, bool]:
    """Create ``run_dir`` if needed and lock it; returns the lock and whether the directory was created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a directory")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return RunLock(run_dir), created
    except RunError:
        if created:
            run_dir.rmdir()
        raise
