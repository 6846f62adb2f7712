"""Data-parallel training: 2 CPU processes under torchrun (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from calosim.train.checkpoint import load_tensors
from toys import write_toy_data

WORKER = r'''
import json
import sys
import torch
from safetensors.torch import save_file
from toys import ToyGAN  # registers the toy model
from calosim.train.loop import Trainer

data, out, dump, model, config = sys.argv[1:6]
t = Trainer(model, data, out, steps=12, progress=False, config=json.loads(config))
try:
    t.run()
    state = {"model/" + k: v.contiguous().clone() for k, v in t.model.state_dict().items()}
    state.update({"ema/" + k: v.contiguous().clone() for k, v in t.ema.state_dict().items()})
    save_file(state, f"{dump}/rank{t.env.rank}.safetensors", metadata={"world": str(t.env.world_size), "batch": str(t.batch)})
finally:
    t.close()
'''


def _torchrun() -> str | None:
    exe = Path(sys.executable).with_name("torchrun")
    return str(exe) if exe.exists() else shutil.which("torchrun")


# wgan-gp: its regressor is pretrained before the main loop; every one of those steps must be
# all-reduced too, and the statistics fitted on each rank's own batches made identical
WGAN_TINY = {"gen_channels": 4, "gen_min_channels": 4, "gen_hidden": 16, "critic_channels": 4, "critic_feat": 8,
             "critic_hidden": 16, "critic_max_channels": 8, "regressor_channels": 4, "latent_dim": 8,
             "regressor_steps": 6, "regressor_batches_val": 1, "transform": "scale"}


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not available")
@pytest.mark.parametrize("model,config", [("_test_toy_gan", {}), ("wgan-gp", WGAN_TINY)], ids=["toy", "wgan-gp"])
def test_two_ranks_identical_weights(tmp_path: Path, model: str, config: dict) -> None:
    data = write_toy_data(tmp_path / "d.h5", n=200)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cfg = json.dumps({"batch_size": 32, "checkpoint_every": 6, "val_every": 0, "val_size": 16, **config})
    cmd = [_torchrun(), "--standalone", "--nproc_per_node", "2", str(script), str(data), str(tmp_path / "run"),
           str(tmp_path), model, cfg]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, _ = load_tensors(tmp_path / "rank0.safetensors")
    b, _ = load_tensors(tmp_path / "rank1.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if model == "wgan-gp":  # the regressor was trained (it moved from its initial weights), identically
        from calosim.geometry import get_geometry
        from calosim.models.wgan_gp import WGANGP

        torch.manual_seed(0)  # as the Trainer seeds the initial weights
        init = WGANGP(get_geometry("calogan"), 1, {**json.loads(cfg)}).state_dict()
        reg = [k for k in init if k.startswith("regressor.") and init[k].is_floating_point()]
        assert reg and any(not torch.equal(init[k], a["model/" + k]) for k in reg)
        _, meta = load_tensors(tmp_path / "run/checkpoints/last.safetensors")
        assert meta["pretrain_done"] and meta["statistics_done"] and "regressor" in meta["sched"]
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_size"] == 32 and summary["steps"] == 12
    final, _ = load_tensors(run / "model.safetensors")
    for k, v in a.items():  # rank 0 wrote the EMA weights it ended with
        if k.startswith("ema/"):
            assert torch.equal(final["model/" + k[4:]], v)
    _, meta = load_tensors(run / "checkpoints/last.safetensors")
    assert len(meta["rng"]) == 2  # per-rank RNG states, for exact DDP resume
