"""generate(): sampling a toy run into a valid shower file with bounded memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from toys import write_toy_data  # noqa: E402  (toy model + data of the training tests)

from calosim.generate import generate  # noqa: E402
from calosim.geometry import get_geometry  # noqa: E402
from calosim.io import ShowerData, ShowerWriter, read_showers, write_showers  # noqa: E402
from calosim.train import train  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run on a calogan variant with a 0.5 MeV readout threshold, conditioned on the particle."""
    d = tmp_path_factory.mktemp("gen")
    src = write_toy_data(d / "raw.h5", n=160, conditions=True)
    data = read_showers(src)
    geo = dataclasses.replace(get_geometry("calogan"), name="calogan-thr", threshold_mev=0.5)
    data = ShowerData(data.showers, data.incident_energies, geo, {"pdg": data.conditions["pdg"]})
    path = write_showers(d / "thr.h5", data)
    return train("_test_toy_gan", path, d / "run", steps=6, progress=False,
                 config={"conditions": ["energy", "pdg"], "transform": "scale"})


def test_generate_file_valid(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    orig = ShowerWriter.append

    def spy(self: ShowerWriter, showers: np.ndarray, *a: object, **k: object) -> None:
        sizes.append(len(showers))
        orig(self, showers, *a, **k)

    monkeypatch.setattr(ShowerWriter, "append", spy)
    out = generate(run, tmp_path / "g.h5", 700, energy="log:2:50", particle="e-", batch=256, seed=1, progress=False)
    assert sizes == [256, 256, 188]  # streamed in chunks: memory bounded by `batch`
    g = read_showers(out)
    assert g.showers.shape == (700, 504) and g.geometry.threshold_mev == 0.5
    s = g.showers
    assert np.all(np.isfinite(s)) and np.all(s >= 0)
    assert np.all((s == 0) | (s >= 0.5))  # threshold respected
    e = g.incident_energies.ravel()
    assert e.min() >= 2000 and e.max() <= 50000
    assert np.all(g.conditions["pdg"] == 11)
    assert g.attrs["model"] == "_test_toy_gan" and g.attrs["seed"] == 1 and g.attrs["generator_run"] == str(run.resolve())
    again = generate(run, tmp_path / "g2.h5", 700, energy="log:2:50", particle="e-", batch=256, seed=1, progress=False)
    np.testing.assert_array_equal(read_showers(again).showers, s)  # seeded
    with pytest.raises(FileExistsError):
        generate(run, out, 10, progress=False)


def test_generate_defaults_and_reference(run: Path, tmp_path: Path) -> None:
    out = generate(run, tmp_path / "d.h5", 50, progress=False)  # conditions from the training distribution
    g = read_showers(out)
    assert set(g.conditions) == {"pdg"} and set(np.unique(g.conditions["pdg"])) <= {11, 22}
    assert g.incident_energies.min() >= 1000 * 0.999 and g.incident_energies.max() <= 1e5 * 1.001
    ref = read_showers(generate(run, tmp_path / "ref.h5", 40, progress=False, seed=3))
    out = generate(run, tmp_path / "c.h5", 100, conditions_from=tmp_path / "ref.h5", batch=16, progress=False)
    g = read_showers(out)
    np.testing.assert_array_equal(g.incident_energies[:40], ref.incident_energies)
    np.testing.assert_array_equal(g.incident_energies[40:80], ref.incident_energies)  # cycled
    np.testing.assert_array_equal(g.conditions["pdg"][80:], ref.conditions["pdg"][:20])


def test_generate_errors(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in the training data"):
        generate(run, tmp_path / "x.h5", 5, particle="pi+", progress=False)
    with pytest.raises(ValueError, match="energy spec"):
        generate(run, tmp_path / "x.h5", 5, energy="lots", progress=False)
    with pytest.raises(ValueError, match="n must be"):
        generate(run, tmp_path / "x.h5", 0, progress=False)
    assert not (tmp_path / "x.h5").exists()
