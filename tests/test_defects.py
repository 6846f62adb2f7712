"""Regression tests for the defects found by trying calosim as a new user (issue 10, section 4).

Each test reproduces one reported defect at a tiny size and checks the fixed behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from toys import write_toy_data  # noqa: E402

from calosim.cli import main  # noqa: E402
from calosim.geometry import get_geometry, resolve_geometry  # noqa: E402
from calosim.io import ShowerData, ShowerFileError, read_showers, write_showers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")
#: A directory no file can be created in, even as root (sysfs): stands in for read-only/immutable.
UNWRITABLE = Path("/sys")


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def _one_line_error(code: int, out: str) -> str:
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [l for l in out.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def eplus_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run trained on e+ only (pdg in the file, the model not conditioned on it)."""
    from calosim.train import train

    d = tmp_path_factory.mktemp("eplus")
    data = read_showers(write_toy_data(d / "raw.h5", n=120, conditions=True))
    data.conditions["pdg"] = np.full(len(data), -11, np.int32)
    path = write_showers(d / "eplus.h5", data)
    return train("_test_toy_gan", path, d / "run", steps=4, progress=False,
                 config={"conditions": ["energy"], "transform": "scale", "threads": 1})


# ---------------------------------------------------------------------------------------------
def test_python_dash_m_calosim_runs() -> None:
    res = subprocess.run([sys.executable, "-m", "calosim", "--version"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert res.returncode == 0 and "calosim, version" in res.stdout


def test_one_particle_table() -> None:
    from calosim.simulate.conditions import PARTICLES, particle_pdg, resolve_particle

    # the names `simulate` accepts resolve identically for labels (generate, train, info)
    for name, pdg in PARTICLES.items():
        assert particle_pdg(name) == pdg
    assert resolve_particle("pion+") == particle_pdg("pion+") == particle_pdg("pi+") == 211
    assert particle_pdg("muon") == 13
    with pytest.raises(ValueError, match="cannot be simulated 'muon'"):
        resolve_particle("muon")
    with pytest.raises(ValueError, match="unknown particle 'graviton'"):
        particle_pdg("graviton")


def test_generate_accepts_simulate_names_and_refuses_untrained_particles(eplus_run: Path, tmp_path: Path) -> None:
    code, out = _cli("generate", "--run", str(eplus_run), "-n", "8", "-p", "positron", "-o", str(tmp_path / "a.h5"))
    assert code == 0, out
    assert np.all(read_showers(tmp_path / "a.h5").conditions["pdg"] == -11)
    for p in ("muon", "pi+", "pion+"):  # were written as mislabelled e+ showers
        line = _one_line_error(*_cli("generate", "--run", str(eplus_run), "-n", "8", "-p", p,
                                     "-o", str(tmp_path / f"{p}.h5")))
        assert "not in the training data" in line and "e+" in line
        assert not (tmp_path / f"{p}.h5").exists()


def test_generate_warns_outside_the_training_energy_range(eplus_run: Path, tmp_path: Path) -> None:
    code, out = _cli("generate", "--run", str(eplus_run), "-n", "4", "-e", "1e6", "-o", str(tmp_path / "far.h5"))
    assert code == 0 and "Warning:" in out and "training range" in out, out
    code, out = _cli("generate", "--run", str(eplus_run), "-n", "4", "-e", "10", "-o", str(tmp_path / "in.h5"))
    assert code == 0 and "Warning" not in out, out
    ref = ShowerData(np.zeros((3, 504)), np.full(3, 5e6), get_geometry("calogan"))  # 5 TeV
    write_showers(tmp_path / "ref.h5", ref)
    code, out = _cli("generate", "--run", str(eplus_run), "-n", "4", "--conditions-from", str(tmp_path / "ref.h5"),
                     "-o", str(tmp_path / "far2.h5"))
    assert code == 0 and "training range" in out and "ref.h5" in out, out


def test_generate_threads_and_run_setting(eplus_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen: list[int] = []
    from calosim.runs import Run

    orig = Run.sample

    def spy(self, *a, **k):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return orig(self, *a, **k)

    monkeypatch.setattr(Run, "sample", spy)
    torch.set_num_threads(2)
    try:
        assert _cli("generate", "--run", str(eplus_run), "-n", "4", "-o", str(tmp_path / "a.h5"))[0] == 0
        assert seen[-1] == 1  # the run's `threads = 1`
        assert torch.get_num_threads() == 2  # restored afterwards
        assert _cli("generate", "--run", str(eplus_run), "-n", "4", "--threads", "2", "-o", str(tmp_path / "b.h5"))[0] == 0
        assert seen[-1] == 2
    finally:
        torch.set_num_threads(1)
    _one_line_error(*_cli("generate", "--run", str(eplus_run), "-n", "4", "--threads", "0", "-o", str(tmp_path / "c.h5")))


# ---------------------------------------------------------------------------------------------
def test_one_geometry_resolver_for_every_command(tmp_path: Path) -> None:
    import calosim

    xml = Path(calosim.__file__).parent / "data" / "binning_dataset_1_photons.xml"
    g = resolve_geometry(xml)
    assert g.n_cells == 368
    geo_json = tmp_path / "my.json"
    geo_json.write_text(get_geometry("calogan").to_json())
    assert resolve_geometry(str(geo_json)) == get_geometry("calogan")
    # a CaloChallenge file whose binning is not a preset: 368 voxels, cells renamed
    data = ShowerData(np.ones((4, 368)), np.full(4, 1e3), g)
    cc = write_showers(tmp_path / "cc.h5", data, layout="calochallenge")
    code, out = _cli("info", str(cc), "--geometry", str(xml))
    assert code == 0 and "showers: 4" in out, out
    sim = tmp_path / "s.h5"
    assert _cli("simulate", "-g", str(geo_json), "-n", "3", "-o", str(sim))[0] == 0
    assert _cli("info", str(sim), "-g", str(geo_json))[0] == 0
    for bad, words in [(tmp_path / "bad.json", "not valid geometry JSON"), (tmp_path / "none.json", "not found"),
                       (tmp_path / "bad.xml", "XML")]:
        if bad.name != "none.json":
            bad.write_text("{not json" if bad.suffix == ".json" else "<nope")
        for cmd in (["simulate", "-n", "2", "-o", str(tmp_path / "x.h5")], ["info", str(sim)],
                    ["train", "-m", "spots", "-d", str(sim), "-o", str(tmp_path / "run")]):
            line = _one_line_error(*_cli(*cmd, "-g", str(bad)))
            assert str(bad) in line and words in line, line


def test_unknown_binning_error_names_real_options(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["showers"] = np.zeros((2, 7), np.float32)
        f["incident_energies"] = np.ones((2, 1), np.float32)
    line = _one_line_error(*_cli("info", str(tmp_path / "odd.h5")))
    assert "--geometry FILE.xml" in line and "--binning" not in line


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [
    ["simulate", "-n", "3"],
    ["bench", "--run", "{run}", "--no-reference", "--no-geant4", "--json"],
    ["generate", "--run", "{run}", "-n", "3"],
    ["export", "--run", "{run}"],
    ["merge", "{file}"],
])
def test_unwritable_output_is_one_line_before_work(cmd: list[str], eplus_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import calosim.bench

    def no_timing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the output must be checked before the work")

    monkeypatch.setattr(calosim.bench, "bench", no_timing)
    f = write_toy_data(tmp_path / "t.h5", n=4)
    args = [a.replace("{run}", str(eplus_run)).replace("{file}", str(f)) for a in cmd]
    if cmd[0] != "bench":
        args.append("-o")
    line = _one_line_error(*_cli(*args, str(UNWRITABLE / "out.h5")))
    assert "/sys" in line and "cannot write" in line


def test_unwritable_demo_and_train_dirs(tmp_path: Path) -> None:
    line = _one_line_error(*_cli("demo", "--quick", "-o", str(UNWRITABLE / "demo")))
    assert "cannot write" in line
    f = write_toy_data(tmp_path / "t.h5", n=4)
    line = _one_line_error(*_cli("train", "-m", "spots", "-d", str(f), "-o", str(UNWRITABLE / "run")))
    assert "cannot write" in line


def test_oserror_becomes_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import calosim.simulate

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device", str(tmp_path / "x.h5"))

    monkeypatch.setattr(calosim.simulate, "simulate_to_file", full)
    line = _one_line_error(*_cli("simulate", "-n", "2", "-o", str(tmp_path / "x.h5")))
    assert "No space left on device" in line and "x.h5" in line


def test_bench_json_does_not_clobber(eplus_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import calosim.bench

    monkeypatch.setattr(calosim.bench, "bench", lambda *a, **k: [{"model": "x", "batch": 1, "ms_per_shower": 1.0}])
    victim = write_toy_data(tmp_path / "victim.h5", n=4)
    line = _one_line_error(*_cli("bench", "--run", str(eplus_run), "--json", str(victim)))
    assert "--overwrite" in line
    assert len(read_showers(victim)) == 4  # still a shower file
    assert _cli("bench", "--run", str(eplus_run), "--json", str(victim), "--overwrite")[0] == 0
    assert json.loads(victim.read_text())["rows"][0]["model"] == "x"


def test_demo_refuses_to_replace_files_and_negative_seed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    line = _one_line_error(*_cli("demo", "--quick", "-o", str(tmp_path)))
    assert "--overwrite" in line and "data" in line
    code, out = _cli("demo", "--quick", "--seed", "-1", "-o", str(tmp_path / "d2"))
    assert code == 2 and "-100" not in out and "-1" in out and "Traceback" not in out


def test_exclusive_create_and_lock(tmp_path: Path) -> None:
    from calosim.io import atomic_path

    p = tmp_path / "o.h5"
    with atomic_path(p) as tmp:
        tmp.write_text("first")
        # a second writer of the same output fails at once (lock) ...
        with pytest.raises(FileExistsError, match="another process"):
            with atomic_path(p):
                pass
    assert p.read_text() == "first"
    # ... and a file that appears while a run writes is never replaced without overwrite
    with pytest.raises(FileExistsError, match="appeared"):
        with atomic_path(tmp_path / "q.h5") as tmp:
            tmp.write_text("mine")
            (tmp_path / "q.h5").write_text("theirs")
    assert (tmp_path / "q.h5").read_text() == "theirs"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.h5", "q.h5"]  # no temp or lock files left


def test_outputs_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert _cli("simulate", "-n", "2", "-o", str(tmp_path / "a.h5"))[0] == 0
        assert (tmp_path / "a.h5").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert _cli("simulate", "-n", "2", "-o", str(tmp_path / "b.h5"))[0] == 0
        assert (tmp_path / "b.h5").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_run_directory_files_honour_the_umask(eplus_run: Path) -> None:
    """safetensors replaces the temporary file it is given: model, pool and checkpoints were 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in eplus_run.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o666 & ~mask for p in files}


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--device", "banana"], "not a torch device"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--threads", "0"], "--threads"),
])
def test_bench_and_generate_device_and_threads(args: list[str], words: str, eplus_run: Path, tmp_path: Path) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for cmd in (["bench", "--run", str(eplus_run), "--no-reference", "--no-geant4"],
                ["generate", "--run", str(eplus_run), "-n", "2", "-o", str(tmp_path / "g.h5")]):
        code, out = _cli(*cmd, *args)
        assert code == 2 and words in out and "Traceback" not in out, out


def _h5(path: Path, **datasets: object) -> Path:
    geo = get_geometry("calogan")
    with h5py.File(path, "w") as f:
        f.attrs["calosim_layout"] = "native"
        f.attrs["geometry"] = geo.to_json()
        for k, v in datasets.items():
            if isinstance(v, str):
                f.create_group(k)
            else:
                f[k] = v
    return path


@pytest.mark.parametrize("datasets, attrs, words", [
    ({"showers": "group", "incident_energies": np.ones((2, 1))}, {}, "'showers' is an HDF5 group"),
    ({"incident_energies": np.ones((2, 1))}, {}, "no dataset 'showers'"),
    ({"showers": np.zeros((2, 504)), "incident_energies": np.ones((2, 2))}, {}, "shape (2, 2), expected (2,) or (2, 1)"),
    ({"showers": np.zeros((2, 504)), "incident_energies": np.ones((2, 1))}, {"geometry": 7}, "'geometry' is a int"),
    ({"showers": np.zeros((2, 504), complex), "incident_energies": np.ones((2, 1))}, {}, "complex"),
    ({"showers": np.zeros((2, 504), bool), "incident_energies": np.ones((2, 1))}, {}, "bool"),
    ({"showers": np.full((2, 504), 3e38, np.float32), "incident_energies": np.ones((2, 1))}, {}, "plausible"),
    ({"showers": np.zeros((2, 504)), "incident_energies": np.ones((2, 1)), "pdg": np.array([0.5, 11])}, {},
     "integer PDG"),
])
def test_bad_files_name_file_and_field(datasets: dict, attrs: dict, words: str, tmp_path: Path) -> None:
    p = _h5(tmp_path / "bad.h5", **datasets)
    if attrs:
        with h5py.File(p, "a") as f:
            f.attrs.update(attrs)
    with pytest.raises(ShowerFileError) as exc:
        read_showers(p)
    assert str(p) in str(exc.value) and words in str(exc.value)
    line = _one_line_error(*_cli("info", str(p)))
    assert words in line


def test_simulate_refuses_runs_the_disk_cannot_hold(tmp_path: Path) -> None:
    line = _one_line_error(*_cli("simulate", "-n", str(10**12), "-o", str(tmp_path / "huge.h5")))
    assert "GB" in line and "free" in line
    assert list(tmp_path.iterdir()) == []


def test_discrete_energy_spectrum(tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    assert _cli("simulate", "-e", "discrete:2,8", "-n", "40", "-o", str(out))[0] == 0
    assert set(np.unique(read_showers(out).incident_energies)) == {2000.0, 8000.0}
    from calosim.simulate.conditions import SPECTRA, parse_conditions

    e = parse_conditions(energy="calochallenge-1").energy
    assert len(SPECTRA["calochallenge-1"]) == 15 and e.low == 0.256 and e.high == 4194.304  # 2^8 ... 2^22 MeV
    assert "discrete:" in CliRunner().invoke(main, ["simulate", "--help"]).output


def test_calochallenge_layout_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from calosim.io import ShowerWriter

    sizes: list[int] = []
    orig = ShowerWriter.append

    def spy(self, showers, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        sizes.append(len(showers))
        return orig(self, showers, *a, **k)

    monkeypatch.setattr(ShowerWriter, "append", spy)
    from calosim.simulate import simulate, simulate_to_file

    p = simulate_to_file(tmp_path / "cc.h5", "calochallenge-1-photons", "gamma", 1100, chunk=512, seed=2,
                         progress=False, layout="calochallenge")
    assert sizes == [512, 512, 76]  # chunk by chunk, not all in memory
    with h5py.File(p) as f:
        assert set(f) == {"showers", "incident_energies"}
    ref = simulate("calochallenge-1-photons", "gamma", 1100, seed=2)
    np.testing.assert_array_equal(read_showers(p).showers, ref.showers)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_removes_temp_files_and_exits_nonzero(sig: int, code: int, tmp_path: Path) -> None:
    out = tmp_path / "big.h5"
    proc = subprocess.Popen([sys.executable, "-m", "calosim", "simulate", "-n", "2000000", "-o", str(out)],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err and b"Interrupted" in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor temp or lock files


def test_simulator_applies_the_readout_threshold() -> None:
    from calosim.simulate import BLOCK, READOUT_FLOOR_MEV, block_rngs, get_engine, parse_conditions, simulate

    for name in ("calochallenge-1-photons", "ild-hcal"):  # 1 MeV cut; no cut (the 1 eV floor)
        geo = get_geometry(name)
        thr = max(geo.readout_threshold_mev, READOUT_FLOOR_MEV)
        s = simulate(geo, "gamma", 60, energy="1:50", seed=4).showers
        assert np.all((s == 0) | (s >= thr)), name
        # the engine's own output above the threshold is unchanged, cell for cell
        spec = parse_conditions("1:50")
        rc, rp = block_rngs(4, 0)
        c = spec.sample(60, rc)
        raw, _ = get_engine("mc").simulate_block(geo, 22, c["energy"], c["theta"], c["phi"], c["position"], rp)
        assert BLOCK >= 60 and (raw[(raw > 0) & (raw < thr)]).size > 0
        np.testing.assert_array_equal(s, np.where(raw < thr, 0, raw))


def test_generate_applies_the_readout_threshold(eplus_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from calosim.generate import generate
    from calosim.runs import Run

    orig = Run.sample
    monkeypatch.setattr(Run, "sample", lambda self, *a, **k: orig(self, *a, **k) * 0 + 0.3)  # all cells 0.3 MeV
    import calosim.generate as gen_mod

    real_load = gen_mod.load_run

    def load(*a, **k):  # noqa: ANN002, ANN003, ANN202
        run = real_load(*a, **k)
        run.geometry = dataclasses.replace(run.geometry, readout_threshold_mev=0.5)
        return run

    monkeypatch.setattr(gen_mod, "load_run", load)
    out = generate(eplus_run, tmp_path / "g.h5", 5, progress=False)
    assert np.all(read_showers(out).showers == 0)


def test_generate_refuses_runs_the_disk_cannot_hold(eplus_run: Path, tmp_path: Path) -> None:
    line = _one_line_error(*_cli("generate", "--run", str(eplus_run), "-n", str(10**12), "-o", str(tmp_path / "g.h5")))
    assert "GB" in line and "free" in line


def test_interrupt_handlers_come_before_the_heavy_imports() -> None:
    """Installed after numpy/h5py (0.2-1 s on a busy machine), an early Ctrl-C was click's "Aborted!"
    (exit 1), and one sent to a background job (SIGINT ignored until then) was lost: exit 0."""
    code = ("import sys, runpy, calosim.interrupts as it\n"
            "orig = it.install_interrupt_handlers\n"
            "def spy():\n"
            "    orig(); print('loaded:', sorted(m for m in ('click', 'numpy', 'h5py', 'torch') if m in sys.modules))\n"
            "it.install_interrupt_handlers = spy\n"
            "sys.argv = ['calosim', '--version']\n"
            "runpy.run_module('calosim', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": SRC})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "loaded: []", res.stdout


def _catches_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_ctrl_c_at_start_up_is_not_swallowed(tmp_path: Path) -> None:
    """SIGINT the moment the handler exists (still importing the CLI), to a job whose SIGINT was ignored."""
    proc = subprocess.Popen([sys.executable, "-m", "calosim", "simulate", "-n", "2000000", "-o", str(tmp_path / "o.h5")],
                            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None and not _catches_sigint(proc.pid):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"Interrupted" in err and b"Aborted" not in err
    assert list(tmp_path.iterdir()) == []


def test_two_simulate_runs_to_one_path(tmp_path: Path) -> None:
    from calosim.io import atomic_path

    out = tmp_path / "same.h5"
    with atomic_path(out) as tmp:  # the first run is still writing
        tmp.write_text("first")
        line = _one_line_error(*_cli("simulate", "-n", "2", "-o", str(out)))
    assert "another process is writing this output" in line and "same.h5" in line
    assert out.read_text() == "first"  # the second run wrote nothing


def test_corrupt_run_files_via_the_cli(eplus_run: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from calosim.train.checkpoint import load_tensors, save_tensors

    def broken(name: str) -> Path:
        return Path(shutil.copytree(eplus_run, tmp_path / name))

    pool, cfg, nan = broken("pool"), broken("cfg"), broken("nan")
    (pool / "conditions_pool.safetensors").write_bytes(b"\x00garbage")
    c = json.loads((cfg / "config.json").read_text())
    (cfg / "config.json").write_text(json.dumps({**c, "config": "abc"}))
    tensors, meta = load_tensors(nan / "model.safetensors")
    key = next(iter(tensors))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_tensors(nan / "model.safetensors", tensors, meta)
    for run, words in ((pool, "conditions_pool.safetensors: not a readable conditions pool"),
                       (cfg, "config.json: 'config' must be a table"), (nan, "model.safetensors: weights hold NaN")):
        for cmd in (["generate", "--run", str(run), "-n", "2", "-o", str(tmp_path / "g.h5")],
                    ["export", "--run", str(run), "-o", str(tmp_path / "m.onnx")],
                    ["bench", "--run", str(run), "--no-reference", "--no-geant4"]):
            assert words in _one_line_error(*_cli(*cmd)), cmd
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "m.onnx").exists()


def test_train_device_is_checked_before_the_run_directory(tmp_path: Path) -> None:
    f = write_toy_data(tmp_path / "t.h5", n=4)
    for dev, words in (("banana", "not a torch device"), ("cuda:7", "CUDA")):
        line = _one_line_error(*_cli("train", "-m", "_test_toy_gan", "-d", str(f), "-o", str(tmp_path / "run"),
                                     "--device", dev))
        assert words in line
    assert not (tmp_path / "run").exists()


def test_train_on_a_binning_xml(tmp_path: Path) -> None:
    """A plain CaloChallenge file (no attributes) with the binning XML: train, then generate in that binning."""
    import calosim

    xml = Path(calosim.__file__).parent / "data" / "binning_dataset_1_photons.xml"
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "cc.h5", "w") as f:
        f["showers"] = rng.gamma(0.5, 10.0, (64, 368)).astype(np.float32)
        f["incident_energies"] = np.full((64, 1), 1e4, np.float32)
    code, out = _cli("train", "-m", "_test_toy_gan", "-d", str(tmp_path / "cc.h5"), "-g", str(xml),
                     "-o", str(tmp_path / "run"), "--steps", "2", "--set", "val_every=0", "--set", "transform=scale")
    assert code == 0, out
    assert _cli("generate", "--run", str(tmp_path / "run"), "-n", "3", "-o", str(tmp_path / "g.h5"))[0] == 0
    assert read_showers(tmp_path / "g.h5").showers.shape == (3, 368)


def test_energy_mdn_scales_to_many_layers() -> None:
    """spots on calochallenge-2 (45 layers, an MDN over 90 numbers) did not finish pretraining in
    34 minutes: the Cholesky factor was placed by dense 0/1 matmuls, O(d^4) flop and memory."""
    import torch

    from calosim.models.energy import EnergyMDN

    small = EnergyMDN(3, 4, 2, 8)
    cond = torch.randn(5, 3)
    o = small.net(cond).view(5, 2, -1)
    _, _, tril, log_diag = small.params(cond)
    rows, cols = torch.tril_indices(4, 4, -1)
    want = torch.diag_embed(torch.exp(log_diag))
    want[:, :, rows, cols] = o[..., 1 + 8:]
    assert torch.equal(tril, want)  # diagonal exp(log_diag), strictly lower as given, upper 0
    assert "place" not in small.state_dict()  # derived, not stored in run files
    big = EnergyMDN(1, 90, 10, 64)
    t0 = time.perf_counter()
    loss = -big.log_prob(torch.randn(64, 90), torch.randn(64, 1)).mean()
    loss.backward()
    assert time.perf_counter() - t0 < 5.0  # was ~25 s a step (3e11 flop)
    assert sum(b.numel() for b in big.buffers()) < 10_000  # the two placement matrices were 33 M floats
