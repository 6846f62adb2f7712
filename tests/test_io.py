import h5py
import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.io import ShowerData, ShowerFileError, ShowerWriter, atomic_path, open_showers, read_showers, write_showers


def _data(name="calogan", n=20, seed=0, conditions=True):
    g = get_geometry(name)
    rng = np.random.default_rng(seed)
    showers = rng.gamma(0.3, 10.0, size=(n, g.n_cells)).astype(np.float32)
    showers[showers < 1.0] = 0.0
    e = rng.uniform(1e3, 1e5, size=(n, 1))
    cond = {"pdg": np.full(n, 11), "momentum": rng.normal(size=(n, 3)), "position": rng.normal(size=(n, 2))} if conditions else {}
    ov = rng.random((n, g.n_layers)) if g.overflow else None
    return ShowerData(showers, e, g, cond, ov, {"engine": "test"})


def test_native_round_trip(tmp_path):
    d = _data()
    p = write_showers(tmp_path / "a.h5", d)
    r = read_showers(p)
    np.testing.assert_array_equal(r.showers, d.showers)
    np.testing.assert_array_equal(r.incident_energies, d.incident_energies)
    np.testing.assert_allclose(r.conditions["momentum"], d.conditions["momentum"], rtol=1e-6)
    np.testing.assert_allclose(r.overflow, d.overflow, rtol=1e-6)
    assert r.geometry == d.geometry and r.attrs["engine"] == "test"
    with h5py.File(p) as f:
        assert f["showers"].compression == "gzip" and f["showers"].chunks is not None


def test_calogan_round_trip(tmp_path):
    d = _data(conditions=False)
    p = write_showers(tmp_path / "cg.h5", d, layout="calogan")
    with h5py.File(p) as f:
        assert set(f) == {"energy", "layer_0", "layer_1", "layer_2", "overflow"}
        assert f["layer_0"].shape == (20, 3, 96)
        np.testing.assert_allclose(f["energy"][:].ravel(), d.incident_energies.ravel() / 1000, rtol=1e-6)  # GeV
    r = read_showers(p)
    assert open_showers(p).layout == "calogan"
    np.testing.assert_allclose(r.showers, d.showers, rtol=1e-6)
    np.testing.assert_allclose(r.incident_energies, d.incident_energies, rtol=1e-5)


def test_calochallenge_round_trip_detects_geometry(tmp_path):
    d = _data("calochallenge-1-photons", conditions=False)
    p = write_showers(tmp_path / "cc.h5", d, layout="calochallenge")
    with open_showers(p) as f:
        assert f.layout == "calochallenge" and f.geometry.name == "calochallenge-1-photons"
        r = f.read()
    np.testing.assert_array_equal(r.showers, d.showers)
    with pytest.raises(ShowerFileError, match="calogan"):
        write_showers(tmp_path / "x.h5", d, layout="calogan")


def test_streamed_writer_and_chunked_reads(tmp_path):
    d = _data(n=50)
    with ShowerWriter(tmp_path / "s.h5", d.geometry, conditions=["pdg", "momentum", "position"], overflow=True) as w:
        for lo in range(0, 50, 16):
            s = d.subset(slice(lo, lo + 16))
            w.append(s.showers, s.incident_energies, overflow=s.overflow, **s.conditions)
    with open_showers(tmp_path / "s.h5") as f:
        assert len(f) == 50
        parts = list(f.iter_chunks(13))
    assert [len(p) for p in parts] == [13, 13, 13, 11]
    np.testing.assert_array_equal(ShowerData.concatenate(parts).showers, d.showers)


def test_no_overwrite_and_atomicity(tmp_path):
    d = _data()
    p = write_showers(tmp_path / "a.h5", d)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_showers(p, d)
    write_showers(p, d, overwrite=True)
    # an error half way leaves neither the output nor a temporary file behind
    target = tmp_path / "b.h5"
    with pytest.raises(RuntimeError):
        with ShowerWriter(target, d.geometry) as w:
            w.append(d.showers[:5], d.incident_energies[:5])
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.h5"]
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "c.txt") as tmp:
            tmp.write_text("half")
            raise ValueError
    assert not (tmp_path / "c.txt").exists()


def _write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize(
    "datasets, match",
    [
        ({"showers": np.zeros((3, 368)), "incident_energies": np.ones((2, 1))}, "incident_energies"),
        ({"showers": np.zeros((3, 100)), "incident_energies": np.ones((3, 1))}, "100 voxels"),
        ({"showers": np.full((3, 368), np.nan), "incident_energies": np.ones((3, 1))}, "'showers' contains NaN"),
        ({"showers": -np.ones((3, 368)), "incident_energies": np.ones((3, 1))}, "'showers' must be >= 0"),
        ({"showers": np.zeros((3, 368)), "incident_energies": np.zeros((3, 1))}, "'incident_energies' must be > 0"),
        ({"foo": np.zeros(3)}, "unknown layout"),
        ({"energy": np.ones(3), "layer_0": np.zeros((3, 3, 96)), "layer_1": np.zeros((3, 12, 12)),
          "layer_2": np.zeros((3, 6, 12))}, "'layer_2'"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, datasets, match):
    p = _write_raw(tmp_path / "bad.h5", **datasets)
    with pytest.raises(ShowerFileError, match=match) as exc:
        read_showers(p)
    assert "bad.h5" in str(exc.value)


def test_missing_truncated_and_mismatched_files(tmp_path):
    with pytest.raises(ShowerFileError, match="not found"):
        read_showers(tmp_path / "none.h5")
    p = write_showers(tmp_path / "ok.h5", _data(n=200))
    raw = p.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ShowerFileError, match="trunc.h5"):
        read_showers(tmp_path / "trunc.h5")
    with pytest.raises(ShowerFileError, match="does not match"):
        read_showers(p, geometry="lhcb-ecal")
    with pytest.raises(ShowerFileError, match="unknown condition"):
        ShowerWriter(tmp_path / "w.h5", get_geometry("calogan"), conditions=["spin"])
