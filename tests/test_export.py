"""ONNX export: the exported graph reproduces the PyTorch generator; a missing extra is named."""

import sys

import numpy as np
import pytest

from calosim.export import export_onnx
from calosim.models import get_model_class, list_models
from calosim.train import train
from toys import write_toy_data

pytestmark = pytest.mark.usefixtures("one_thread")
# short pretraining stages, for the models that have one (keys a model lacks are left out)
SHORT = {"mdn_steps": 20, "regressor_steps": 5, "energy_steps": 20, "teacher_steps": 10}
EXPORTABLE = [n for n in list_models() if get_model_class(n).__module__.startswith("calosim.models.")
              and "export" not in get_model_class(n).contract_exemptions]


@pytest.mark.parametrize("model", EXPORTABLE)
def test_export_matches_torch(tmp_path, model):
    pytest.importorskip("onnxruntime")  # the [export] extra is part of [dev]
    import onnxruntime as ort
    import torch

    from calosim.runs import load_run

    extra = {k: v for k, v in SHORT.items() if k in get_model_class(model).default_config}
    run = train(model, write_toy_data(tmp_path / "d.h5", n=80), tmp_path / "run", steps=2, progress=False,
                config={"batch_size": 16, "val_every": 1000, "log_every": 1, **extra})
    out = export_onnx(run, tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    module = load_run(run).model.export_module().eval()
    z = torch.randn(7, int(module.latent_dim))
    cond = torch.randn(7, load_run(run).model.cond_dim)
    got = sess.run(None, {"z": z.numpy(), "cond": cond.numpy()})[0]
    with torch.no_grad():
        want = module(z, cond).numpy()
    assert got.shape == (7, want.shape[1])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    with pytest.raises(FileExistsError):
        export_onnx(run, out)


def test_missing_extra_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'calosim\[export\]'"):
        export_onnx(tmp_path / "run", tmp_path / "g.onnx")
