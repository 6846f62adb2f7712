"""bench(): row format, table and JSON output, graceful absence of the reference simulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from toys import write_toy_data  # noqa: E402  (toy model + data of the training tests)

from calosim.bench import bench, format_table, write_json  # noqa: E402
from calosim.train import train  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bench")
    return train("_test_toy_gan", write_toy_data(d / "d.h5", n=60), d / "run", steps=2, progress=False)


def _check_rows(rows: list[dict], batches: tuple[int, ...]) -> None:
    assert [r["batch"] for r in rows] == list(batches)
    for r in rows:
        assert {"model", "device", "batch", "ms_per_shower", "reference_ms_per_shower", "speedup"} <= set(r)
        assert r["model"] == "_test_toy_gan" and r["device"] == "cpu"
        assert r["ms_per_shower"] > 0 and r["n_showers"] >= 3 * r["batch"]


def test_bench_without_reference_simulator(run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "calosim.simulate", None)  # import fails as if not installed
    rows = bench([run], batches=(1, 8), n_showers=32, min_time=0.01)
    _check_rows(rows, (1, 8))
    assert all(r["reference_ms_per_shower"] is None and r["speedup"] is None for r in rows)
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "device", "batch"] and len(lines) == 4
    assert lines[2].split()[-2:] == ["-", "-"]
    out = write_json(rows, tmp_path / "b.json")
    doc = json.loads(out.read_text())
    assert doc["rows"] == json.loads(json.dumps(rows)) and "torch" in doc["environment"]


def test_bench_with_reference(run: Path) -> None:
    pytest.importorskip("calosim.simulate")
    rows = bench(run, batches=(4,), n_showers=8, min_time=0.01, reference_n=10)
    _check_rows(rows, (4,))
    r = rows[0]
    if r["reference_ms_per_shower"] is not None:  # None only if the simulator rejects the geometry
        assert r["reference_ms_per_shower"] > 0
        assert r["speedup"] == pytest.approx(r["reference_ms_per_shower"] / r["ms_per_shower"])
    assert "_test_toy_gan" in format_table(rows)



def test_bench_rows_carry_a_geant4_column(run: Path) -> None:
    # Geant4 not timed: the column is empty and the table says "-"
    rows = bench(run, batches=(4,), n_showers=8, min_time=0.01, reference=False, geant4=False)
    assert rows[0]["geant4_ms_per_shower"] is None and rows[0]["speedup_vs_geant4"] is None
    header, _, line = format_table(rows).splitlines()
    assert header.endswith("Geant4 ms/shower  speedup vs Geant4") and line.split()[-2:] == ["-", "-"]


@pytest.mark.skipif(not __import__("calosim.bench", fromlist=["x"]).geant4_available(),
                    reason="needs the extra calosim[geant4]")
def test_geant4_reference_time(standin: Path) -> None:
    from types import SimpleNamespace

    from calosim.bench import reference_ms
    from calosim.geometry import get_geometry
    fake = SimpleNamespace(geometry=get_geometry("calogan"), particle_pdgs=[11], info={},
                           conditions=SimpleNamespace(energy_range_mev=(1000.0, 1000.0)))
    ms = reference_ms(fake, n=4, engine="geant4")   # type: ignore[arg-type]
    assert ms is not None and 1.0 < ms < 5000.0     # a 1 GeV shower takes tens of ms on one core
