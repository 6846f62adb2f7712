"""The Geant4 engine: geometry mapping (pure), data-set checks, and worker isolation."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.simulate import simulate, simulate_to_file
from calosim.simulate.g4data import DATASETS
from calosim.simulate.geant4 import Geant4Engine, slab_layers


def test_calogan_slabs_map_to_the_readout_depths() -> None:
    # 80 x (2 mm Pb + 4 mm LAr); readout layers 90 / 347 / 43 mm deep; a slab belongs to the
    # layer holding its centre (centres at 4, 10, ..., 478 mm).
    geo = get_geometry("calogan")
    counts = np.bincount(slab_layers(geo), minlength=3)
    assert counts.tolist() == [15, 58, 7]
    assert geo.sampling is not None and geo.sampling.depth_mm == pytest.approx(geo.depth_mm)


# Never import geant4_pybind here: without GEANT4_DATA_DIR its import offers to download data.
if importlib.util.find_spec("geant4_pybind") is None:
    pytest.skip("needs the extra calosim[geant4]", allow_module_level=True)


def test_geometry_and_particle_checks(standin: Path) -> None:
    with pytest.raises(ValueError, match="no Geant4 description"):
        simulate("cms-towers", "e-", 2, energy="1", engine="geant4", seed=1)
    # pions are simulated now (tests/simulate/test_geant4_hadrons.py); other particles are refused
    geo = get_geometry("calogan")
    eng = Geant4Engine()
    with pytest.raises(ValueError, match="cannot shoot PDG id 2112"):
        eng.simulate_block(geo, 2112, np.ones(1), np.zeros(1), np.zeros(1), np.zeros((1, 2)), np.random.default_rng(1))
    eng.close()


def test_incomplete_official_data_falls_back_to_the_standin(standin: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    # A GEANT4_DATA_DIR without the official files is not trusted: the stand-in is used, and said so.
    for d in DATASETS.values():
        (tmp_path / d).mkdir()
    monkeypatch.setenv("GEANT4_DATA_DIR", str(tmp_path))
    data = simulate("calogan", "e-", 2, energy="1", engine="geant4", seed=1)
    assert data.attrs["engine_label"] == "Geant4 11.4.1 with stand-in data"
    assert str(standin) in data.attrs["data_source"]


def test_em_showers_at_1_gev(standin: Path) -> None:
    """A few real showers per particle: full response (cells + overflow) at the EM scale, reproducible."""
    geo = get_geometry("calogan")
    for particle in ("e-", "e+", "gamma"):
        data = simulate(geo, particle, 4, energy="1", engine="geant4", seed=3)
        total = data.showers.sum(1) + data.overflow.sum(1)
        response = total / data.incident_energies[:, 0]
        # sampling fluctuations at 1 GeV: sigma/E ~ 10 %; leakage out of 30 X0 is negligible
        assert np.all((response > 0.6) & (response < 1.4)), (particle, response)
        assert data.showers[:, geo.layer_slices[0]].sum() > 0
    again = simulate(geo, "gamma", 4, energy="1", engine="geant4", seed=3)
    np.testing.assert_array_equal(again.showers, data.showers)
    assert data.attrs["engine"] == "geant4" and data.attrs["physics_list"].startswith("G4EmStandardPhysics")
    assert data.attrs["energy_scale"] == "em-scale"


def test_cells_are_where_the_particle_hits(standin: Path) -> None:
    # Cell index = row * nx + column, as in calosim's flat layout: off-centre showers have their
    # energy-weighted centroid at the impact point (a cell centre of layer 1; layer 0 has 5 mm strips in x).
    geo = get_geometry("calogan")
    data = simulate(geo, "e-", 4, energy="2", position="20,-60", engine="geant4", seed=4)
    xs, ys = geo.cell_centers()
    for i, sl in enumerate(geo.layer_slices[:2]):
        e = data.showers[:, sl].sum(0)
        cx, cy = (xs[sl] * e).sum() / e.sum(), (ys[sl] * e).sum() / e.sum()
        assert cx == pytest.approx(20, abs=3), (i, cx)
        if i == 1:                                   # layer 0 has one 160 mm row band per 3 in y
            assert cy == pytest.approx(-60, abs=3), (i, cy)


def test_workers_give_the_same_file(standin: Path, tmp_path: Path) -> None:
    one = simulate("calogan", "e+", 6, energy="1:2", engine="geant4", seed=5)
    two = simulate("calogan", "e+", 6, energy="1:2", engine="geant4", seed=5, workers=2, chunk=3)
    np.testing.assert_array_equal(one.showers, two.showers)
    np.testing.assert_array_equal(one.incident_energies, two.incident_energies)


_GUARD = r"""
import os, socket, urllib.request
def _blocked(*a, **k):
    with open(os.environ["CALOSIM_NET_LOG"], "a") as f:
        f.write(f"{os.getpid()} {a!r}\n")
    raise OSError("network access blocked by the test")
socket.socket.connect = _blocked
socket.create_connection = _blocked
urllib.request.urlopen = _blocked
urllib.request.urlretrieve = _blocked
"""


def test_the_worker_never_touches_the_network(standin: Path, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    # Every Python process started from here (the spawned Geant4 worker too) loads this
    # sitecustomize, which logs and refuses any connection; CI=true would download without asking.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_GUARD)
    log = tmp_path / "net.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CALOSIM_NET_LOG", str(log))
    monkeypatch.setenv("HOME", str(tmp_path))          # a download would land in $HOME/.geant4_pybind
    data = simulate("calogan", "gamma", 2, energy="1", engine="geant4", seed=2)
    assert data.showers.sum() > 0
    assert not log.exists(), log.read_text()
    assert not (tmp_path / ".geant4_pybind").exists()
    # the guard works: a direct attempt from a child process is logged
    subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                   capture_output=True, check=False)
    assert log.exists()


def test_a_worker_that_aborts_is_a_clear_error_and_leaves_no_file(standin: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    # A damaged tree (a Seltzer-Berger table removed; the stamp still says complete): Geant4's fatal
    # G4Exception calls abort() in the worker. The parent survives and names the Geant4 message.
    broken = tmp_path / "broken"
    shutil.copytree(standin, broken)
    (broken / DATASETS["G4LEDATA"] / "brem_SB" / "br82").unlink()
    monkeypatch.setenv("CALOSIM_CACHE", str(tmp_path))
    broken.rename(tmp_path / standin.name)
    out = tmp_path / "g4.h5"
    with pytest.raises(RuntimeError, match="Geant4 worker died.*G4Exception.*brem_SB/br82> is not opened"):
        simulate_to_file(out, "calogan", "e-", 2, energy="1", engine="geant4", seed=1, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
