"""Scale-out: --workers, --shard + merge, --dask give bit-identical files; failures are one clear line."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from toys import write_toy_data

from calosim.cli import main
from calosim.generate import GEN_BLOCK, generate
from calosim.geometry import get_geometry
from calosim.io import ShowerData, read_showers, write_showers
from calosim.scaleout import EngineError, merge, parse_shard, shard_blocks
from calosim.simulate import ENGINES, BLOCK, register_engine, simulate, simulate_to_file
from calosim.simulate.mc import MCEngine
from calosim.train import train

N = 1300  # 3 blocks of 512 (the last partial)
SIM = dict(energy="1:20", theta="0:10", seed=3)
FIELDS = ("showers", "incident_energies", "overflow", "pdg", "momentum", "position", "theta", "phi")


def assert_same_file(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert set(fa) == set(fb)
        for k in fa:
            np.testing.assert_array_equal(fa[k][()], fb[k][()], err_msg=k)


class _FailingEngine(MCEngine):
    """The mc engine, whose third block (counted over all instances) raises like Geant4 does."""

    name = "_test_fail"
    calls = 0
    lock = threading.Lock()

    def simulate_block(self, *a, **k):  # type: ignore[no-untyped-def]
        with _FailingEngine.lock:
            _FailingEngine.calls += 1
            fail = _FailingEngine.calls == 3
        if fail:
            raise RuntimeError("Geant4 worker: G4Exception boom in G4Navigator")
        return super().simulate_block(*a, **k)


if "_test_fail" not in ENGINES:
    register_engine("_test_fail")(_FailingEngine)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_to_file(tmp_path_factory.mktemp("full") / "full.h5", "calogan", "e+", N, progress=False, **SIM)


def test_shard_arithmetic() -> None:
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="K/N"):
            parse_shard(bad)
    nb = 10
    ranges = [shard_blocks((k, 4), nb) for k in range(4)]
    assert [(r.start, r.stop) for r in ranges] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert list(shard_blocks((0, 5), 3)) == [] and list(shard_blocks((4, 5), 3)) == [2]  # more shards than blocks: empty shards are fine


def test_workers_give_the_same_file(full: Path, tmp_path: Path) -> None:
    two = simulate_to_file(tmp_path / "w2.h5", "calogan", "e+", N, progress=False, workers=2, chunk=600, **SIM)
    assert_same_file(full, two)
    mem = simulate("calogan", "e+", N, workers=2, **SIM)
    np.testing.assert_array_equal(mem.showers, read_showers(full).showers)


def test_shards_merge_into_the_full_run(full: Path, tmp_path: Path) -> None:
    parts = [simulate_to_file(tmp_path / f"p{k}.h5", "calogan", "e+", N, progress=False, shard=f"{k}/3", **SIM)
             for k in range(3)]
    with h5py.File(parts[1]) as f:
        a = dict(f.attrs)
        assert (a["shard_index"], a["shard_count"], a["block_start"], a["block_stop"], a["n_total"]) == (1, 3, 1, 2, N)
        assert a["seed"] == 3 and a["engine"] == "mc" and a["energy_spec_gev"] and "geometry" in a
        assert len(f["showers"]) == BLOCK
    out = merge(reversed(parts), tmp_path / "all.h5")  # any order on the command line
    assert_same_file(full, out)
    assert read_showers(out).attrs["merged_shards"] == 3 and "shard_index" not in read_showers(out).attrs
    with pytest.raises(FileExistsError):
        merge(parts, out)
    # the CLI, including the workers + shard combination
    r = CliRunner()
    cli_parts = []
    for k in range(3):
        p = tmp_path / f"c{k}.h5"
        res = r.invoke(main, ["simulate", "-p", "e+", "-e", "1:20", "--theta", "0:10", "-n", str(N), "--seed", "3",
                              "--shard", f"{k}/3", "--workers", "2", "-o", str(p)])
        assert res.exit_code == 0, res.output
        cli_parts.append(str(p))
    assert f"shard 2/3: {N - 2 * BLOCK} of {N}" in res.output
    res = r.invoke(main, ["merge", *cli_parts, "-o", str(tmp_path / "c.h5")])
    assert res.exit_code == 0, res.output
    assert_same_file(full, tmp_path / "c.h5")


def test_merge_errors_name_the_file_and_attribute(tmp_path: Path, full: Path) -> None:
    kw = dict(progress=False, energy="1:20", theta="0:10")
    p0, p1, p2 = (simulate_to_file(tmp_path / f"p{k}.h5", "calogan", "e+", N, shard=f"{k}/3", seed=3, **kw)
                  for k in range(3))
    other = simulate_to_file(tmp_path / "seed4.h5", "calogan", "e+", N, shard="2/3", seed=4, **kw)
    r = CliRunner()
    cases = [([p0, p1], ["shard(s) 2/3 missing"]),
             ([p0, p1, p1, p2], ["p1.h5", "'shard_index' 1/3 duplicates"]),
             ([p0, p1, other], ["seed4.h5", "attribute 'seed' is 4", "p0.h5"]),
             ([p0, p1, full], ["full.h5", "'shard_index' missing"])]
    for files, words in cases:
        res = r.invoke(main, ["merge", *map(str, files), "-o", str(tmp_path / "m.h5")])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
        for w in words:
            assert w in res.output, (w, res.output)
        assert not (tmp_path / "m.h5").exists()
    bad = simulate_to_file(tmp_path / "gamma.h5", "calogan", "gamma", N, shard="2/3", seed=3, **kw)
    with pytest.raises(ValueError, match="gamma.h5: attribute 'particle'"):
        merge([p0, p1, bad], tmp_path / "m.h5")


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_block_is_one_line_and_leaves_nothing(tmp_path: Path, workers: int) -> None:
    _FailingEngine.calls = 0
    out = tmp_path / "x.h5"
    res = CliRunner().invoke(main, ["simulate", "--engine", "_test_fail", "-n", str(4 * BLOCK), "--workers",
                                    str(workers), "--shard", "0/1", "-o", str(out)])
    assert res.exit_code == 2, res.output
    msg = [line for line in res.output.splitlines() if "Error" in line]  # (the progress bar is also on stderr)
    assert len(msg) == 1 and msg[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    assert "shard 0/1, block" in msg[0] and "engine '_test_fail'" in msg[0] and "G4Exception boom" in msg[0]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
    _FailingEngine.calls = 0
    with pytest.raises(EngineError, match=r"block \d \(showers \d+:\d+\)"):
        simulate("calogan", "e+", 4 * BLOCK, engine="_test_fail", workers=workers)


def test_dask_without_the_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails as if not installed
    res = CliRunner().invoke(main, ["simulate", "-n", "10", "--dask", "tcp://127.0.0.1:1", "-o", str(tmp_path / "d.h5")])
    assert res.exit_code == 2 and "calosim[dask]" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as c:
        yield c.scheduler_address


def test_dask_gives_the_same_file(full: Path, tmp_path: Path, cluster: str) -> None:
    out = simulate_to_file(tmp_path / "d.h5", "calogan", "e+", N, progress=False, dask=cluster, **SIM)
    assert_same_file(full, out)
    res = CliRunner().invoke(main, ["simulate", "-p", "e+", "-e", "1:20", "--theta", "0:10", "-n", str(N), "--seed",
                                    "3", "--shard", "1/3", "--dask", cluster, "-o", str(tmp_path / "s1.h5")])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read_showers(tmp_path / "s1.h5").showers, read_showers(full).showers[BLOCK:2 * BLOCK])
    _FailingEngine.calls = 0
    with pytest.raises(EngineError, match="G4Exception boom"):
        simulate_to_file(tmp_path / "f.h5", "calogan", "e+", 4 * BLOCK, progress=False, dask=cluster, engine="_test_fail")
    assert not (tmp_path / "f.h5").exists() and not list(tmp_path.glob(".f.h5*"))


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gen")
    data = read_showers(write_toy_data(d / "raw.h5", n=120, conditions=True))
    geo = dataclasses.replace(get_geometry("calogan"), name="calogan-thr", threshold_mev=0.5)
    path = write_showers(d / "t.h5", ShowerData(data.showers, data.incident_energies, geo,
                                                 {"pdg": data.conditions["pdg"]}))
    import torch

    torch.set_num_threads(1)
    return train("_test_toy_gan", path, d / "run", steps=2, progress=False,
                 config={"conditions": ["energy", "pdg"], "transform": "scale"})


@pytest.mark.parametrize("source", ["energy", "reference"])
def test_generate_shards_merge_into_the_full_run(run: Path, tmp_path: Path, source: str) -> None:
    n = 2 * GEN_BLOCK + 100
    kw: dict = dict(energy="log:2:50", particle="e-") if source == "energy" else dict(conditions_from=None)
    if source == "reference":
        kw["conditions_from"] = simulate_to_file(tmp_path / "ref.h5", "calogan", "e-", 700, progress=False, seed=5)
    full = generate(run, tmp_path / "full.h5", n, batch=300, seed=2, progress=False, **kw)
    parts = [generate(run, tmp_path / f"g{k}.h5", n, batch=300, seed=2, progress=False, shard=(k, 2), **kw)
             for k in range(2)]
    assert [len(read_showers(p)) for p in parts] == [GEN_BLOCK, GEN_BLOCK + 100]
    assert_same_file(full, merge(parts, tmp_path / "m.h5"))
    other = generate(run, tmp_path / "o.h5", n, batch=300, seed=3, progress=False, shard=(1, 2), **kw)
    with pytest.raises(ValueError, match="o.h5: attribute 'seed'"):
        merge([parts[0], other], tmp_path / "m2.h5")


def test_generate_on_dask_and_cli(run: Path, tmp_path: Path, cluster: str) -> None:
    n = GEN_BLOCK + 50
    full = generate(run, tmp_path / "full.h5", n, energy="5", seed=1, progress=False)
    assert_same_file(full, generate(run, tmp_path / "d.h5", n, energy="5", seed=1, progress=False, dask=cluster))
    r = CliRunner()
    for k in range(2):
        res = r.invoke(main, ["generate", "--run", str(run), "-n", str(n), "-e", "5", "--seed", "1", "--shard",
                              f"{k}/2", "-o", str(tmp_path / f"c{k}.h5")])
        assert res.exit_code == 0, res.output
    res = r.invoke(main, ["merge", str(tmp_path / "c0.h5"), str(tmp_path / "c1.h5"), "-o", str(tmp_path / "c.h5")])
    assert res.exit_code == 0, res.output
    assert_same_file(full, tmp_path / "c.h5")


def test_new_commands_have_help() -> None:
    r = CliRunner()
    for cmd, words in [("simulate", ["--workers", "--shard", "--dask"]), ("generate", ["--shard", "--dask"]),
                       ("merge", ["--overwrite"]), ("geant4-data", ["--build", "--where", "--path"])]:
        res = r.invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and all(w in res.output for w in words), (cmd, res.output)
