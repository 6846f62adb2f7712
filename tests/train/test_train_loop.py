"""The training loop on a tiny toy model: run directory contents, config precedence, pretrain,
load_run + sampling, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calosim.runs import RunError, load_run
from calosim.train import train
from calosim.train.checkpoint import load_tensors

from toys import ToyPretrain, write_toy_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("data") / "toy.h5")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    return train("_test_toy_gan", data, tmp_path_factory.mktemp("runs") / "run", steps=20, progress=False)


def test_run_dir_contents(run: Path, data: Path) -> None:
    for f in ("config.json", "versions.json", "metrics.jsonl", "model.safetensors", "train_summary.json",
              "checkpoints/last.safetensors", "checkpoints/best.safetensors", "preprocessing.safetensors",
              "conditions_pool.safetensors"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "_test_toy_gan" and cfg["config"]["transform"] == "log" and cfg["config"]["lr"] == 2e-3
    assert cfg["geometry"]["name"] == "calogan" and cfg["conditions"] == ["energy"]
    assert cfg["data_path"] == str(data.resolve()) and cfg["n_train"] + cfg["n_val"] == 240 and cfg["n_val"] == 24
    ver = json.loads((run / "versions.json").read_text())
    for k in ("python", "torch", "numpy", "calosim", "git_commit", "command", "seed"):
        assert k in ver, k
    assert "host" not in json.dumps(ver).lower()
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [5, 10, 15, 20]
    assert all({"d", "g"} <= set(ln["loss"]) and ln["showers_per_s"] > 0 for ln in lines)
    vals = [ln["val"] for ln in lines if "val" in ln]
    assert len(vals) == 2 and all(0 <= v["score"] <= 1 and "sp_etot_ratio" in v and "sp_frac_2" in v for v in vals)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 20 and summary["best_step"] in (10, 20) and summary["ms_per_step"] > 0
    tensors, meta = load_tensors(run / "checkpoints/last.safetensors")
    assert meta["step"] == 20 and {"gen", "disc"} == set(meta["optim"])
    assert any(k.startswith("ema/gen.") for k in tensors) and "rng/0/torch" in tensors


def test_model_file_holds_ema_weights(run: Path) -> None:
    final, meta = load_tensors(run / "model.safetensors")
    last, _ = load_tensors(run / "checkpoints/last.safetensors")
    for k, v in last.items():
        if k.startswith("ema/"):
            assert torch.equal(final["model/" + k[4:]], v)
    assert any(k.startswith("transform/") for k in final) and meta["conditions"]["names"] == ["energy"]


def test_load_run_and_sample(run: Path) -> None:
    r = load_run(run)
    assert r.geometry.name == "calogan" and r.conditions.cond_dim == 1
    cond = {"incident_energies": np.full((300, 1), 2e4)}
    a = r.sample(cond, generator=3, batch=128)
    b = r.sample(cond, generator=3, batch=128)
    assert a.shape == (300, 504) and a.dtype == np.float32 and np.all(a >= 0) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.array_equal(a, r.sample(cond, generator=4))
    best = load_run(run, which="best")
    assert best.sample(cond, generator=1).shape == (300, 504)


def test_load_run_errors(tmp_path: Path, run: Path) -> None:
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "missing")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match="corrupt"):
        load_run(bad)
    (bad / "config.json").write_text("{")
    with pytest.raises(RunError, match="not valid JSON"):
        load_run(bad)
    (bad / "model.safetensors").unlink()
    (bad / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(RunError, match="training did not finish"):
        load_run(bad)


def test_refuses_non_empty_dir(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        train("_test_toy_gan", data, out, steps=2, progress=False)
    with pytest.raises(ValueError, match="not empty"):
        train("_test_toy_gan", data, out, steps=2, progress=False, resume=True)
    train("_test_toy_gan", data, out, steps=2, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # overwrite clears only run files
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2


def test_config_precedence_and_epochs(tmp_path: Path, data: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('hidden = 8\nlr = 1e-3\ntransform = "scale"\n[train]\nbatch_size = 16\n')
    out = train("_test_toy_gan", data, tmp_path / "r", config_file=toml, config={"hidden": 12}, epochs=1,
                progress=False, val_fraction=0.25)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["hidden"] == 12 and cfg["config"]["lr"] == 1e-3 and cfg["config"]["transform"] == "scale"
    assert cfg["n_val"] == 60 and cfg["total_steps"] == 180 // 16 == cfg["steps_per_epoch"]


def test_pretrain_runs_once_and_conditions(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "c.h5", n=120, conditions=True)
    ToyPretrain.pretrain_calls = 0
    cfg = {"conditions": ["energy", "pdg", "momentum", "position"], "transform": "layer-norm"}
    out = train("_test_toy_pretrain", data, tmp_path / "r", steps=10, config=cfg, progress=False)
    assert ToyPretrain.pretrain_calls == 1
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert "pretrain" in lines[0]
    train("_test_toy_pretrain", data, tmp_path / "r", steps=15, config=cfg, progress=False, resume=True)
    assert ToyPretrain.pretrain_calls == 1  # done-flag restored from the checkpoint
    r = load_run(out)
    assert r.conditions.columns == ["log_energy", "pdg=11", "pdg=22", "momentum_x", "momentum_y", "momentum_z",
                                    "position_x", "position_y"]
    assert r.transform.out_dim == 504 + 3
    from calosim.train import sample_conditions

    raw = sample_conditions(50, "10", "photon", 0, encoder=r.conditions, pool=r.pool)
    assert r.sample(raw).shape == (50, 504)


def test_calogan_layout_input(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "cg.h5", n=80, layout="calogan")
    out = train("_test_toy_gan", data, tmp_path / "r", steps=3, progress=False, config={"transform": "boxcox"})
    assert load_run(out).sample({"incident_energies": np.full((5, 1), 1e4)}).shape == (5, 504)




def test_validation_observables_on_a_hand_made_shower() -> None:
    """Two equal deposits 2 cells apart in a row of the 12x12 layer: width = one cell pitch."""
    from calosim.geometry import get_geometry
    from calosim.train.loop import validation_observables

    geo = get_geometry("calogan")
    lay = geo.layers[1]
    x = np.zeros((1, geo.n_cells))
    s = geo.layer_slices[1]
    row = 5 * lay.shape[1]
    x[0, s.start + row + 3] = x[0, s.start + row + 5] = 500.0  # cells 3 and 5 of row 5
    x[0, geo.layer_slices[0].start] = 1000.0
    obs = validation_observables(x, np.array([[4000.0]]), geo)
    assert obs["etot_ratio"][0] == pytest.approx(0.5)
    assert obs["frac_0"][0] == pytest.approx(0.5) and obs["frac_1"][0] == pytest.approx(0.5)
    assert obs["occupancy_1"][0] == pytest.approx(2 / 144) and obs["occupancy_2"][0] == 0.0
    assert obs["width_1"][0] == pytest.approx(lay.cell_mm[1])  # +-1 pitch around the centroid
    assert obs["width_0"][0] == 0.0 and obs["width_2"][0] == 0.0


def test_final_weights_best_writes_the_best_validation_model(tmp_path: Path, data: Path) -> None:
    """final_weights='best': model.safetensors holds the EMA weights of the best checkpoint."""
    out = train("_test_toy_gan", data, tmp_path / "r", steps=20, progress=False,
                config={"val_every": 5, "final_weights": "best"})
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_weights_step"] == summary["best_step"]
    final, meta = load_tensors(out / "model.safetensors")
    best, _ = load_tensors(out / "checkpoints" / "best.safetensors")
    assert meta["step"] == summary["best_step"]
    ema = {k[4:]: v for k, v in best.items() if k.startswith("ema/")}
    assert ema  # the toy keeps an EMA of its generator
    for k, v in ema.items():
        torch.testing.assert_close(final["model/" + k], v)


def test_bad_final_weights_fails_before_training(tmp_path: Path, data: Path) -> None:
    with pytest.raises(ValueError, match="final_weights"):
        train("_test_toy_gan", data, tmp_path / "r", steps=5, progress=False, config={"final_weights": "middle"})
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
