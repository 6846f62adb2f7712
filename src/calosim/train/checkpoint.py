"""Run directories: checkpoints, final weights, and loading a trained run for sampling.

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

import json
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..geometry import Geometry, GeometryError
from ..io import ShowerData, atomic_path, write_text_atomic
from .conditions import ConditionEncoder, load_pool
from .transforms import ShowerTransform, get_transform, postprocess

__all__ = [
    "RunError", "Run", "load_run", "save_tensors", "load_tensors", "flatten_state", "unflatten_state",
    "CONFIG_FILE", "VERSIONS_FILE", "PREPROCESSING_FILE", "POOL_FILE", "LAST_CKPT", "BEST_CKPT",
    "METRICS_FILE", "MODEL_FILE", "SUMMARY_FILE",
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
#: Every file a run writes (used by ``overwrite=True`` to clear only what is ours).
RUN_FILES = (CONFIG_FILE, VERSIONS_FILE, PREPROCESSING_FILE, POOL_FILE, LAST_CKPT, BEST_CKPT,
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
# loading a run for sampling
# ------------------------------------------------------------------------------------------
class Run:
    """A trained run ready to sample: ``geometry``, ``model`` (EMA weights, eval mode),
    ``transform``, ``conditions`` (the encoder), ``config``, ``pool`` (training condition rows)."""

    def __init__(self, run_dir: Path, model_name: str, geometry: Geometry, model: torch.nn.Module,
                 transform: ShowerTransform, conditions: ConditionEncoder, config: dict[str, Any],
                 pool: dict[str, np.ndarray], device: torch.device, info: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.model_name = model_name
        self.geometry = geometry
        self.model = model
        self.transform = transform
        self.conditions = conditions
        self.config = config
        self.pool = pool
        self.device = device
        self.info = info
        self.last_nan_count = 0

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, model={self.model_name!r}, geometry={self.geometry.name!r})"

    @property
    def particle_pdgs(self) -> list[int]:
        """PDG codes seen in training (from the encoder or the pool), possibly empty."""
        if self.conditions.pdgs:
            return list(self.conditions.pdgs)
        if "pdg" in self.pool:
            return sorted(int(p) for p in np.unique(self.pool["pdg"]))
        return []

    def sample(self, cond_raw: ShowerData | Mapping[str, Any], generator: torch.Generator | int | None = None,
               *, batch: int = 1024) -> np.ndarray:
        """Showers ``(N, n_cells)`` float32 MeV for raw conditions (``incident_energies`` (N, 1) MeV, ...).

        Sampled in batches of ``batch`` with the EMA weights, then inverse-transformed and
        post-processed (clamp >= 0, cells below ``geometry.threshold_mev`` zeroed, NaN -> 0 with
        a warning; the count is in ``last_nan_count``). ``generator``: a torch.Generator on the
        run's device, or an int seed.
        """
        from .conditions import raw_conditions

        raw = raw_conditions(cond_raw)
        cond = self.conditions.encode(raw)
        e_inc = torch.as_tensor(np.asarray(raw["incident_energies"], dtype=np.float32).reshape(-1, 1))
        if not isinstance(generator, torch.Generator):
            seed = 0 if generator is None else int(generator)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        n = len(cond)
        out = np.empty((n, self.geometry.n_cells), dtype=np.float32)
        n_bad = 0
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" and self.config.get("amp")
                    else nullcontext())
        with torch.inference_mode(), autocast:
            for lo in range(0, n, batch):
                c = cond[lo:lo + batch].to(self.device)
                e = e_inc[lo:lo + batch].to(self.device)
                x = self.model.sample(c, generator)
                mev, bad = postprocess(self.transform.inverse(x.float(), e), self.geometry.threshold_mev)
                n_bad += bad
                out[lo:lo + len(c)] = mev.cpu().numpy()
        self.last_nan_count = n_bad
        if n_bad:
            warnings.warn(f"{self.run_dir}: {n_bad} non-finite generated cell values were set to 0", RuntimeWarning, stacklevel=2)
        return out


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *, which: str = "final") -> Run:
    """Rebuild a trained run for sampling.

    ``which``: ``"final"`` (``model.safetensors``, written at the end of training), ``"best"`` or
    ``"last"`` (EMA weights of that checkpoint, e.g. of a run that is still training).
    """
    from ..models import get_model_class

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory not found")
    cfg = read_json(run_dir / CONFIG_FILE)
    try:
        model_name, config, geo = cfg["model"], cfg["config"], cfg["geometry"]
        geometry = Geometry.from_dict(geo)
    except (KeyError, TypeError, GeometryError) as exc:
        raise RunError(f"{run_dir / CONFIG_FILE}: malformed run config ({exc})") from None
    device = torch.device(device)
    if which == "final":
        path = run_dir / MODEL_FILE
        if not path.is_file():
            hint = " (training did not finish: use which='last' or resume training)" if (run_dir / LAST_CKPT).is_file() else ""
            raise RunError(f"{path}: file not found{hint}")
        tensors, meta = load_tensors(path)
        transform, encoder = build_preprocessing(geometry, tensors, meta, str(path))
        weights = unprefixed(tensors, "model")
    elif which in ("best", "last"):
        path = run_dir / (BEST_CKPT if which == "best" else LAST_CKPT)
        tensors, meta = load_tensors(path)
        ptensors, pmeta = load_tensors(run_dir / PREPROCESSING_FILE)
        transform, encoder = build_preprocessing(geometry, ptensors, pmeta, str(run_dir / PREPROCESSING_FILE))
        weights = ema_model_weights(tensors)
    else:
        raise ValueError(f"which must be 'final', 'best' or 'last', got {which!r}")
    try:
        cls = get_model_class(model_name)
    except KeyError as exc:
        raise RunError(f"{run_dir}: {exc.args[0]}") from None
    mcfg = {**config, "data_dim": transform.out_dim}
    torch.manual_seed(0)  # construction may draw init weights; make it quiet and reproducible
    model = cls(geometry, encoder.cond_dim, mcfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise RunError(f"{path}: weights do not fit model {model_name!r}: {exc}") from None
    model.to(device).eval()
    transform.to(device)
    pool = load_pool(run_dir / POOL_FILE) if (run_dir / POOL_FILE).is_file() else {}
    info = {"path": str(path), "step": meta.get("step"), "which": which, "data_path": cfg.get("data_path"),
            "seed": cfg.get("seed"), "particle": cfg.get("particle")}
    return Run(run_dir, model_name, geometry, model, transform, encoder, config, pool, device, info)
