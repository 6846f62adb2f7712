"""Shared test set-up: the tests folder is importable (``toys``), and a fixture for tiny models."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster and does not fight other processes for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No official Geant4 data: the engine builds and uses the stand-in tree in a private cache.

    ``CI=true`` as on CI machines, where geant4-pybind would download without asking: the
    engine must not let it (its environment is set before the import).
    """
    from calosim.simulate.g4data import DATASETS, build_standin

    for k in [*DATASETS, "GEANT4_DATA_DIR"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CALOSIM_CACHE", str(tmp_path_factory.getbasetemp() / "calosim-cache"))
    monkeypatch.setenv("CI", "true")
    return build_standin()
