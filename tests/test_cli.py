"""The CLI is a thin layer: these tests check wiring, messages and that bad input writes nothing."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from calosim.cli import main
from calosim.io import read_showers


@pytest.fixture()
def runner():
    return CliRunner()


def test_help_documents_every_command(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ["simulate", "train", "generate", "evaluate", "bench", "export", "demo", "info", "geometries", "models"]:
        assert cmd in res.output
        sub = runner.invoke(main, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, cmd


def test_geometries_lists_presets(runner):
    res = runner.invoke(main, ["geometries"])
    assert res.exit_code == 0
    assert "calogan" in res.output and "calochallenge-2" in res.output
    js = json.loads(runner.invoke(main, ["geometries", "--json"]).output)
    assert len(js["calogan"]["layers"]) == 3


def test_simulate_then_info(runner, tmp_path):
    out = tmp_path / "e.h5"
    res = runner.invoke(main, ["simulate", "-g", "calogan", "-p", "e+", "-e", "10:20", "-n", "50", "--seed", "3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    d = read_showers(out)
    assert d.showers.shape == (50, 504)
    assert 10e3 <= d.incident_energies.min() and d.incident_energies.max() <= 20e3
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0
    assert "showers: 50" in info.output and "e+: 50" in info.output and "layer_1" in info.output
    # same seed -> identical file contents
    out2 = tmp_path / "e2.h5"
    runner.invoke(main, ["simulate", "-g", "calogan", "-p", "e+", "-e", "10:20", "-n", "50", "--seed", "3", "-o", str(out2)])
    np.testing.assert_array_equal(read_showers(out2).showers, d.showers)
    # no silent overwrite
    again = runner.invoke(main, ["simulate", "-n", "5", "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["-g", "nope"], ["unknown geometry", "calogan"]),
        (["-p", "muon"], ["e+", "pi+"]),
        (["-e", "abc"], ["energy"]),
        (["-n", "0"], ["-n"]),
    ],
)
def test_bad_simulate_arguments_write_nothing(runner, tmp_path, args, words):
    out = tmp_path / "x.h5"
    res = runner.invoke(main, ["simulate", "-o", str(out), "-n", "5", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_info_on_bad_file_is_one_line(runner, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    res = runner.invoke(main, ["info", str(bad)])
    assert res.exit_code == 2 and "bad.h5" in res.output and "Traceback" not in res.output


def test_demo_unknown_model_lists_the_valid_ones(runner, tmp_path):
    res = runner.invoke(main, ["demo", "--model", "nope", "-o", str(tmp_path / "d")])
    assert res.exit_code != 0
    assert "unknown model 'nope'" in res.output and "spots" in res.output
    assert not (tmp_path / "d").exists()  # nothing simulated before the check
