"""Resuming after a kill reproduces an uninterrupted run bit for bit (CPU, same seed)."""

from __future__ import annotations


import json
from pathlib import Path

import pytest
import torch

from calosim.train import train
from calosim.train.checkpoint import load_tensors
from toys import ToyGAN, write_toy_data  # the toy model and data of the loop tests

pytestmark = pytest.mark.usefixtures("one_thread")



def _metrics(run: Path) -> list[dict]:
    out = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(ln)
        out.append({"step": d["step"], "loss": d.get("loss"), "val": {k: v for k, v in d.get("val", {}).items() if k != "time_s"}})
    return out


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "d.h5", n=240, seed=3)
    cfg = {"checkpoint_every": 7, "val_every": 8, "log_every": 4}
    full = train("_test_toy_gan", data, tmp_path / "full", steps=25, config=cfg, progress=False, seed=5)

    ToyGAN.crash_at = 17  # "killed" during step 17; last checkpoint is at step 14
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train("_test_toy_gan", data, tmp_path / "cut", steps=25, config=cfg, progress=False, seed=5)
    finally:
        ToyGAN.crash_at = None
    _, meta = load_tensors(tmp_path / "cut/checkpoints/last.safetensors")
    assert meta["step"] == 14
    assert not (tmp_path / "cut/model.safetensors").exists()
    cut = train("_test_toy_gan", data, tmp_path / "cut", steps=25, config=cfg, progress=False, seed=5, resume=True)

    a, ma = load_tensors(full / "checkpoints/last.safetensors")
    b, mb = load_tensors(cut / "checkpoints/last.safetensors")
    assert set(a) == set(b)
    for k in a:  # model, EMA, both Adam states and every RNG state
        assert torch.equal(a[k], b[k]), k
    assert ma["optim"] == mb["optim"] and ma["rng"] == mb["rng"] and ma["step"] == mb["step"] == 25
    fa, _ = load_tensors(full / "model.safetensors")
    fb, _ = load_tensors(cut / "model.safetensors")
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert _metrics(full) == _metrics(cut)  # the log was cut back to step 14 and redone identically
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["resumed_from"] == 14 and summary["steps_this_session"] == 11


def test_resume_refuses_changed_config(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "d.h5", n=100)
    train("_test_toy_gan", data, tmp_path / "r", steps=4, progress=False)
    with pytest.raises(ValueError, match="differ"):
        train("_test_toy_gan", data, tmp_path / "r", steps=8, progress=False, resume=True, config={"lr": 0.1})
    with pytest.raises(ValueError, match="seed"):
        train("_test_toy_gan", data, tmp_path / "r", steps=8, progress=False, resume=True, seed=1)
    out = train("_test_toy_gan", data, tmp_path / "r", steps=8, progress=False, resume=True)  # longer run: allowed
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 8


def _files(run: Path) -> dict[str, bytes]:
    return {f: (run / f).read_bytes() for f in ("config.json", "versions.json")}


def test_resume_refuses_changed_data_and_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "d.h5", n=100, seed=1)
    run = train("_test_toy_gan", data, tmp_path / "r", steps=4, progress=False)
    before = _files(run)
    data.unlink()
    write_toy_data(data, n=100, seed=2)  # same path and size, other showers
    with pytest.raises(ValueError, match=r"the data at .*d\.h5 changed since the run started"):
        train("_test_toy_gan", data, run, steps=8, progress=False, resume=True)
    assert _files(run) == before
    data.unlink()
    write_toy_data(data, n=100, seed=1)  # the original content again
    (run / "checkpoints/last.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        train("_test_toy_gan", data, run, steps=8, progress=False, resume=True)
    assert _files(run) == before  # a failed resume rewrote neither file


def test_failed_fresh_train_leaves_nothing(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "d.h5", n=60)
    ToyGAN.crash_at = 0  # fails after the run directory and its first files were written
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train("_test_toy_gan", data, tmp_path / "new", steps=5, progress=False)
    finally:
        ToyGAN.crash_at = None
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):  # a setup failure too
        train("_test_toy_gan", data, tmp_path / "new", steps=5, progress=False, config={"learning_rate": 0.1})
    assert not (tmp_path / "new").exists()


def test_one_train_per_run_directory(tmp_path: Path) -> None:
    from calosim.train.checkpoint import RunError, lock_run_dir

    data = write_toy_data(tmp_path / "d.h5", n=60)
    lock, created = lock_run_dir(tmp_path / "busy")  # another train holds the directory
    try:
        with pytest.raises(RunError, match="another train is writing to this run directory"):
            train("_test_toy_gan", data, tmp_path / "busy", steps=2, progress=False)
        assert (tmp_path / "busy/.lock").is_file() and created  # its lock was left alone
    finally:
        lock.release()
    run = train("_test_toy_gan", data, tmp_path / "busy", steps=2, progress=False)  # free again
    assert not (run / ".lock").exists() and (run / "model.safetensors").is_file()
