"""Trained runs for sampling: :func:`load_run` rebuilds a run directory written by
:func:`calosim.train.train` into a :class:`Run` (model with EMA weights, transform, condition
encoder, condition pool). ``generate``, ``bench``, ``export`` and the demo sample through it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geometry import Geometry, GeometryError
from .io import ShowerData
from .models import build_model, get_model_class
from .models.config import validate_config
from .train.checkpoint import (BEST_CKPT, CONFIG_FILE, LAST_CKPT, MODEL_FILE, POOL_FILE, PREPROCESSING_FILE, RunError,
                               build_preprocessing, ema_model_weights, load_tensors, read_json, unprefixed)
from .train.conditions import ConditionEncoder, load_pool, raw_conditions
from .train.transforms import ShowerTransform, postprocess

__all__ = ["Run", "load_run", "RunError"]


# ------------------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class Run:
    """A trained run ready to sample: ``geometry``, ``model`` (EMA weights, eval mode),
    ``transform``, ``conditions`` (the encoder), ``config``, ``pool`` (training condition rows)."""

    run_dir: Path
    model_name: str
    geometry: Geometry
    model: torch.nn.Module
    transform: ShowerTransform
    conditions: ConditionEncoder
    config: dict[str, Any]
    pool: dict[str, np.ndarray]
    device: torch.device
    info: dict[str, Any]
    last_nan_count: int = 0  # non-finite cells set to 0 by the last sample()

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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory not found")
    cfg = read_json(run_dir / CONFIG_FILE)
    try:
        model_name, config, geo = cfg["model"], cfg["config"], cfg["geometry"]
        geometry = Geometry.from_dict(geo)
    except (KeyError, TypeError, ValueError, GeometryError) as exc:
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
    if not isinstance(config, dict):
        raise RunError(f"{run_dir / CONFIG_FILE}: 'config' must be a table of keys and values, "
                       f"got {json.dumps(config)[:60]}")
    mcfg = validate_config(cls.Config, config, str(run_dir / CONFIG_FILE))
    torch.manual_seed(0)  # construction may draw init weights; make it quiet and reproducible
    model = build_model(cls, geometry, encoder.cond_dim, mcfg, transform.out_dim)
    # buffers of runs written before the fit_statistics hook and calosim.features (now derived or gone)
    legacy = ("calibrated", "regressor_trained", "discriminator.cell_x", "discriminator.cell_y")
    weights = {k: v for k, v in weights.items() if not k.endswith(legacy)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise RunError(f"{path}: weights do not fit model {model_name!r}: {str(exc).splitlines()[0]}") from None
    bad = sorted(k for k, v in weights.items() if v.is_floating_point() and bool(torch.isnan(v).any()))
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise RunError(f"{path}: weights hold NaN ({bad[0]}{more}): the training diverged; "
                       "load which='best' or retrain")
    model.to(device).eval()
    transform.to(device)
    pool = _read_pool(run_dir / POOL_FILE) if (run_dir / POOL_FILE).is_file() else {}
    info = {"path": str(path), "step": meta.get("step"), "which": which, "data_path": cfg.get("data_path"),
            "seed": cfg.get("seed"), "particle": cfg.get("particle")}
    return Run(run_dir, model_name, geometry, model, transform, encoder, config, pool, device, info)


def _read_pool(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_pool(path)
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        raise RunError(f"{path}: not a readable conditions pool (truncated or corrupt?): {str(exc).splitlines()[0]}") \
            from None
