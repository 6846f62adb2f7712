"""The Geant4 engine: geometry mapping (pure), data-set checks, and worker isolation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.simulate import simulate, simulate_to_file
from calosim.simulate.geant4 import DATASETS, slab_layers


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


def test_missing_data_sets_are_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GEANT4_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="set GEANT4_DATA_DIR"):
        simulate("calogan", "e-", 2, energy="1", engine="geant4", seed=1)
    (tmp_path / "G4EMLOW8.8").mkdir()
    monkeypatch.setenv("GEANT4_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="lacks the Geant4 11.4 data directories G4NDL4.7.1"):
        simulate("calogan", "e-", 2, energy="1", engine="geant4", seed=1)


def _empty_tree(root: Path) -> Path:
    for d in DATASETS.values():
        (root / d).mkdir(parents=True)
    return root


def test_geometry_and_particle_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEANT4_DATA_DIR", str(_empty_tree(tmp_path)))
    with pytest.raises(ValueError, match="no Geant4 description"):
        simulate("ild-ecal", "e-", 2, energy="1", engine="geant4", seed=1)
    with pytest.raises(ValueError, match="e-, e\\+ and gamma"):
        simulate("calogan", "pi+", 2, energy="1", engine="geant4", seed=1)


@pytest.mark.parametrize("ensdf, message", [
    (False, "ENSDFSTATE.dat is not found"),
    # with the nuclide table present, the detector (slabs, replicas, scorers), the physics list and
    # the gun are built and the first event starts: the Seltzer-Berger tables are missing
    (True, "brem_SB/br1> is not opened"),
])
def test_a_worker_that_aborts_is_a_clear_error_and_leaves_no_file(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path, ensdf: bool, message: str) -> None:
    # Empty data directories: a fatal G4Exception calls abort() in the worker.
    # The parent survives and names the Geant4 message; the network is never touched because
    # GEANT4_DATA_DIR is set before geant4_pybind is imported (its import would download).
    data = _empty_tree(tmp_path / "data")
    if ensdf:
        (data / "G4ENSDFSTATE3.0" / "ENSDFSTATE.dat").touch()
    monkeypatch.setenv("GEANT4_DATA_DIR", str(data))
    monkeypatch.setenv("CI", "true")
    out = tmp_path / "g4.h5"
    with pytest.raises(RuntimeError, match="Geant4 worker died.*G4Exception.*" + message):
        simulate_to_file(out, "calogan", "e-", 2, energy="1", engine="geant4", seed=1, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
