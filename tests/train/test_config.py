"""Typed configs: unknown keys and bad values are refused with one line naming the key; TOML,
``--set`` and a run's ``config.json`` all go through the one validator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from calosim.geometry import Geometry, Layer, Material
from calosim.models import build_model, get_model_class
from calosim.models.config import validate_config
from calosim.runs import RunError, load_run
from calosim.train import parse_overrides, resolve_config, train
from toys import write_toy_data

pytestmark = pytest.mark.usefixtures("one_thread")
Spots = get_model_class("spots")


def test_defaults_resolve_to_the_models_recipe() -> None:
    cfg = resolve_config(Spots.Config)
    assert (cfg.steps, cfg.batch_size, cfg.transform, cfg.final_weights, cfg.ema) == (3000, 256, "scale", "best", 0.999)
    assert Spots.default_config["mdn_steps"] == 2000  # the derived dict view


def test_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"config: unknown key 'learning_rate'; valid keys: .*\blr\b.*mdn_steps"):
        resolve_config(Spots.Config, config={"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"unknown key 'mdn_step' \(did you mean 'mdn_steps'\?\)"):
        resolve_config(Spots.Config, config=parse_overrides(["mdn_step=5"]))


@pytest.mark.parametrize("item,message", [
    ("hidden=1e9", r"'hidden' must be an integer, got 1000000000.0"),
    ("hidden=-4", r"'hidden' must be >= 1, got -4"),
    ("hidden=1000000000", r"'hidden' must be <= 8192"),
    ("mdn_components=0", r"'mdn_components' must be >= 1, got 0"),
    ("lr=[1,2]", r"'lr' must be a number, got \[1, 2\]"),
    ("transform=log", r"'transform' must be \"scale\" or \"identity\", got \"log\""),
    ("centroids=1", r"'centroids' must be true/false, got 1"),
])
def test_bad_set_values_name_the_key(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(Spots.Config, config=parse_overrides([item]))


def test_set_values_convert_losslessly() -> None:
    cfg = resolve_config(get_model_class("calogan").Config, config=parse_overrides(
        ["lr_g=1", "betas=[0.0, 0.99]", "mirror=false", "energy_response=0.9", "conditions=energy,pdg"]))
    assert cfg.lr_g == 1.0 and isinstance(cfg.lr_g, float) and cfg.betas == (0.0, 0.99) and cfg.mirror is False
    assert cfg.energy_response == 0.9 and cfg.conditions == ["energy", "pdg"]
    with pytest.raises(ValueError, match="'steps' or 'epochs', not both"):
        resolve_config(Spots.Config, config={"steps": 3, "epochs": 2})
    assert resolve_config(Spots.Config, config={"epochs": 2}).steps is None  # epochs replace the default steps


def test_toml_errors_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[train]\nhidden = "wide"\n')
    with pytest.raises(ValueError, match=r"c\.toml: 'hidden' must be an integer, got \"wide\""):
        resolve_config(Spots.Config, config_file=f)
    f.write_text("learning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"c\.toml: unknown key 'learning_rate'"):
        resolve_config(Spots.Config, config_file=f)


def test_cross_field_rule_in_the_config() -> None:
    with pytest.raises(ValueError, match="calogan: layer_energies='mdn' needs a transform linear in the cells"):
        validate_config(get_model_class("calogan").Config, {"transform": "boxcox"})


def test_huge_geometry_is_refused_before_allocating() -> None:
    mat = Material("Pb", "LAr", x0_mm=20.0, lambda_mm=400.0, moliere_mm=40.0, critical_mev=10.0)
    geo = Geometry("huge", (Layer("a", "cartesian", (3000, 3000), z_mm=0.0, thickness_mm=50.0, material=mat,
                                  cell_mm=(1.0, 1.0)),))
    with pytest.raises(ValueError, match=r"model 'spots' on geometry 'huge' \(9000000 cells\) needs .* GiB"):
        build_model(Spots, geo, 1, {"hidden": 4096})


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cfg")
    return train("_test_toy_gan", write_toy_data(tmp / "d.h5", n=60), tmp / "run", steps=2, progress=False,
                 config={"val_every": 0})


def test_run_config_json_is_validated(run: Path, tmp_path: Path) -> None:
    bad = _copy_run(run, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "config": "abc"}))
    with pytest.raises(RunError, match=r"config\.json: 'config' must be a table of keys and values, got \"abc\""):
        load_run(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "hidden": -4}}))
    with pytest.raises(ValueError, match=r"config\.json: 'hidden' must be >= 1, got -4"):
        load_run(bad)


def test_corrupt_pool_and_nan_weights_are_one_line_errors(run: Path, tmp_path: Path) -> None:
    from calosim.train.checkpoint import load_tensors, save_tensors

    bad = _copy_run(run, tmp_path / "pool")
    (bad / "conditions_pool.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(RunError, match=r"conditions_pool\.safetensors: not a readable conditions pool"):
        load_run(bad)
    nan = _copy_run(run, tmp_path / "nan")
    tensors, meta = load_tensors(nan / "model.safetensors")
    key = next(k for k in tensors if k.startswith("model/gen."))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_tensors(nan / "model.safetensors", tensors, meta)
    with pytest.raises(RunError, match=r"model\.safetensors: weights hold NaN \(gen\..*the training diverged"):
        load_run(nan)
