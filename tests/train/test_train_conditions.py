"""Condition encoder and raw-condition sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calosim.geometry import get_geometry
from calosim.io import ShowerData
from calosim.train.conditions import (ConditionEncoder, make_pool, parse_energy_spec, particle_pdg,
                                      sample_conditions)


def _raw(n: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(np.log(1e3), np.log(1e5), (n, 1)))
    d = rng.normal(size=(n, 3)) * [0.05, 0.05, 1]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return {"incident_energies": e, "pdg": rng.choice([22, 11, -11], n), "momentum": d * e,
            "position": rng.normal(0, 5, (n, 2)), "theta": rng.uniform(0.1, 0.3, n), "phi": rng.uniform(-3, 3, n)}


def test_energy_only_round_trip() -> None:
    raw = _raw()
    enc = ConditionEncoder(["energy"]).fit(raw)
    c = enc.encode(raw)
    assert c.shape == (500, 1) and enc.cond_dim == 1 and enc.columns == ["log_energy"]
    assert c.min() >= -1 - 1e-6 and c.max() <= 1 + 1e-6
    assert c.min() < -0.99 and c.max() > 0.99
    e = enc.incident_energy(c)
    np.testing.assert_allclose(e.numpy(), raw["incident_energies"], rtol=2e-6)


def test_all_conditions_layout_and_json() -> None:
    raw = _raw()
    enc = ConditionEncoder(["pdg", "energy", "momentum", "position", "theta", "phi"]).fit(raw)
    assert enc.names[0] == "energy"  # energy is always column 0
    assert enc.pdgs == [-11, 11, 22]
    assert enc.cond_dim == 1 + 3 + 3 + 2 + 1 + 1
    s = enc.slices
    assert s["pdg"] == slice(1, 4) and s["momentum"] == slice(4, 7) and s["phi"] == slice(10, 11)
    c = enc.encode(raw)
    onehot = c[:, s["pdg"]]
    assert torch.all(onehot.sum(1) == 1)
    assert np.all(onehot.argmax(1).numpy() == np.searchsorted([-11, 11, 22], raw["pdg"]))
    mom = c[:, s["momentum"]]
    torch.testing.assert_close(mom.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(mom.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    enc2 = ConditionEncoder.from_json(enc.to_json())
    torch.testing.assert_close(enc2.encode(raw), c)
    np.testing.assert_allclose(enc2.incident_energy(c).numpy(), raw["incident_energies"], rtol=2e-6)


def test_encode_showerdata_and_errors() -> None:
    geo = get_geometry("calogan")
    raw = _raw(50)
    data = ShowerData(np.zeros((50, geo.n_cells)), raw["incident_energies"], geo, {"pdg": raw["pdg"]})
    enc = ConditionEncoder(["energy", "pdg"]).fit(data)
    assert enc.encode(data).shape == (50, 4)
    with pytest.raises(ValueError, match="not in the training data"):
        enc.encode({"incident_energies": np.ones((2, 1)), "pdg": np.array([211, 22])})
    with pytest.raises(ValueError, match="not present"):
        ConditionEncoder(["energy", "momentum"]).fit(data)
    with pytest.raises(ValueError, match="unknown condition"):
        ConditionEncoder(["energy", "spin"])


def test_single_energy_encodes_to_zero() -> None:
    raw = {"incident_energies": np.full((10, 1), 5e4)}
    enc = ConditionEncoder().fit(raw)
    c = enc.encode(raw)
    assert torch.all(c == 0)
    np.testing.assert_allclose(enc.incident_energy(c).numpy(), raw["incident_energies"], rtol=1e-6)


def test_parse_energy_spec() -> None:
    rng = np.random.default_rng(0)
    assert np.all(parse_energy_spec("50")(5, rng) == 50)
    u = parse_energy_spec("1:100")(10000, rng)
    assert u.min() >= 1 and u.max() <= 100 and abs(u.mean() - 50.5) < 2
    lg = parse_energy_spec("log:1:100")(10000, rng)
    assert lg.min() >= 1 and lg.max() <= 100 and abs(np.median(lg) - 10) < 1
    assert set(parse_energy_spec("10,20")(100, rng)) == {10.0, 20.0}
    for bad in ("abc", "0", "5:1", "log:0:10", "-3"):
        with pytest.raises(ValueError, match="energy spec"):
            parse_energy_spec(bad)


def test_sample_conditions() -> None:
    raw = _raw()
    enc = ConditionEncoder(["energy", "pdg", "momentum"]).fit(raw)
    pool = make_pool(raw, 100, seed=0)
    assert len(pool["incident_energies"]) == 100
    out = sample_conditions(64, None, None, 0, encoder=enc, pool=pool)
    assert set(out) == {"incident_energies", "pdg", "momentum"}
    assert out["incident_energies"].shape == (64, 1)
    assert set(out["pdg"].tolist()) <= {22, 11, -11}
    out2 = sample_conditions(64, "log:2:20", "photon", np.random.default_rng(1), encoder=enc, pool=pool)
    assert np.all(out2["pdg"] == 22)
    e = out2["incident_energies"].ravel()
    assert e.min() >= 2000 and e.max() <= 20000
    np.testing.assert_allclose(np.linalg.norm(out2["momentum"], axis=1), e, rtol=1e-4)  # rescaled to the new energy
    assert enc.encode(out2).shape == (64, enc.cond_dim)
    with pytest.raises(ValueError, match="no stored training sample"):
        sample_conditions(4, "10", None, 0, encoder=enc, pool={})
    assert particle_pdg("e-") == 11 and particle_pdg("pi+") == 211 and particle_pdg(-11) == -11
    with pytest.raises(ValueError, match="unknown particle"):
        particle_pdg("graviton")


def test_direction_is_the_transverse_unit_vector_without_a_phi_seam() -> None:
    """Known answers: theta = 0 encodes the same whatever phi is; phi = 0 and 2 pi encode alike;
    before standardising the columns are (sin t cos p, sin t sin p)."""
    raw = _raw()
    enc = ConditionEncoder(["energy", "direction"]).fit(raw)
    assert enc.columns == ["log_energy", "direction_x", "direction_y"] and enc.cond_dim == 3
    c = enc.encode(raw)[:, enc.slices["direction"]].double().numpy()
    want = np.stack([np.sin(raw["theta"]) * np.cos(raw["phi"]), np.sin(raw["theta"]) * np.sin(raw["phi"])], 1)
    np.testing.assert_allclose(c * enc.std["direction"] + enc.mean["direction"], want, atol=1e-6)
    probe = {"incident_energies": np.full((4, 1), 1e4), "theta": np.array([0.0, 0.0, 0.2, 0.2]),
             "phi": np.array([0.0, 2.0, 0.0, 2 * np.pi])}
    d = enc.encode(probe)
    torch.testing.assert_close(d[0], d[1])  # normal incidence: phi does not matter
    torch.testing.assert_close(d[2], d[3], atol=1e-5, rtol=0)  # no seam at phi = 0 / 2 pi
    with pytest.raises(ValueError, match="direction needs"):
        ConditionEncoder(["energy", "direction"]).fit({"incident_energies": raw["incident_energies"],
                                                        "theta": raw["theta"]})
    pool = make_pool(raw, 100, seed=0)
    out = sample_conditions(16, "10", None, 0, encoder=enc, pool=pool)
    assert {"theta", "phi"} <= set(out) and "direction" not in out  # raw keys, drawn jointly
    assert enc.encode(out).shape == (16, 3)
