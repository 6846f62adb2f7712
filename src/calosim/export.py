"""ONNX export of a trained generator (extra ``calosim[export]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io import atomic_path, check_writable

__all__ = ["export_onnx"]


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the 'export' extra: pip install 'calosim[export]' (missing {module})") from None


def export_onnx(run_dir: str | Path, out: str | Path, *, overwrite: bool = False, check: bool = True) -> Path:
    """Write the run's generator ``f(z, cond) -> x`` (preprocessed space) as ONNX.

    The graph takes ``z`` (B, latent) and encoded ``cond`` (B, cond_dim) with a dynamic batch
    axis. With ``check``, onnxruntime output is compared with PyTorch on a random batch.
    """
    _require("onnx")
    check_writable(out, overwrite=overwrite)  # before loading and tracing the model
    from .runs import load_run

    run = load_run(run_dir)
    module = run.model.export_module().eval()
    latent = int(module.latent_dim)  # part of the model contract (models/base.py)
    z = torch.randn(4, latent)
    cond = torch.zeros(4, run.model.cond_dim)
    out = Path(out)
    with atomic_path(out, overwrite=overwrite, suffix=".onnx") as tmp:
        torch.onnx.export(module, (z, cond), str(tmp), input_names=["z", "cond"], output_names=["x"],
                          dynamic_axes={"z": {0: "batch"}, "cond": {0: "batch"}, "x": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        if check:
            _require("onnxruntime")
            import onnxruntime as ort

            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"z": z.numpy(), "cond": cond.numpy()})[0]
            with torch.no_grad():
                want = module(z, cond).numpy()
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                raise RuntimeError(f"ONNX output differs from PyTorch (max |diff| {np.abs(got - want).max():.2e})")
    return out
