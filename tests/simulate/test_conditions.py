import math

import numpy as np
import pytest

from calosim.simulate import PARTICLES, parse_conditions, parse_position, parse_range, resolve_particle
from calosim.simulate.conditions import CANONICAL_PARTICLES, particle_name


def test_fixed_uniform_log_ranges():
    rng = np.random.default_rng(0)
    fixed = parse_range("50", "energy")
    assert fixed.is_fixed and np.all(fixed.sample(5, rng) == 50.0)
    uni = parse_range(" 1:100 ", "energy").sample(20000, rng)
    assert uni.min() >= 1 and uni.max() <= 100
    assert abs(np.median(uni) - 50.5) < 2.0  # uniform: median at the midpoint
    log = parse_range("log:1:100", "energy").sample(20000, rng)
    assert log.min() >= 1 and log.max() <= 100
    assert abs(np.median(log) - 10.0) < 0.7  # log-uniform: median at the geometric mean
    assert parse_range("LOG:2:2", "x").sample(3, rng).tolist() == [2.0, 2.0, 2.0]
    assert parse_range(7, "x").low == 7.0 and parse_range(2.5, "x").low == 2.5


def test_scale_converts_units():
    spec = parse_conditions(energy="10", theta="30", phi="180", position="0")
    rng = np.random.default_rng(1)
    c = spec.sample(4, rng)
    np.testing.assert_allclose(c["energy"], 10_000.0)  # GeV -> MeV
    np.testing.assert_allclose(c["theta"], math.radians(30))
    np.testing.assert_allclose(c["phi"], math.pi)
    assert c["position"].shape == (4, 2)


@pytest.mark.parametrize("text", ["", "abc", "1:", ":5", "1:2:3", "5:1", "log:0:10", "log:-1:5", "log:1", "nan", "1:inf"])
def test_bad_ranges_name_the_quantity(text):
    with pytest.raises(ValueError, match="energy"):
        parse_range(text, "energy (GeV)")


@pytest.mark.parametrize(("kw", "name"), [({"energy": "0"}, "energy"), ({"energy": "-5:10"}, "energy"),
                                          ({"theta": "95"}, "theta"), ({"theta": "-1:10"}, "theta"),
                                          ({"phi": "x"}, "phi"), ({"position": "1,2,3"}, "position")])
def test_condition_limits(kw, name):
    with pytest.raises(ValueError, match=name):
        parse_conditions(**kw)


def test_positions():
    rng = np.random.default_rng(2)
    p = parse_position("0").sample(3, rng)
    assert p.shape == (3, 2) and not p.any()
    p = parse_position("-20:20").sample(5000, rng)
    assert p.min() >= -20 and p.max() <= 20
    assert abs(np.corrcoef(p[:, 0], p[:, 1])[0, 1]) < 0.05  # x and y independent
    p = parse_position("5,-3").sample(2, rng)
    np.testing.assert_array_equal(p, [[5, -3], [5, -3]])
    p = parse_position("-20:20, 7").sample(100, rng)
    assert np.all(p[:, 1] == 7) and p[:, 0].std() > 5
    with pytest.raises(ValueError, match="position"):
        parse_position("1;2")


def test_independent_streams():
    # Changing the theta spec must not change the energies drawn for the same stream.
    a = parse_conditions(energy="1:100", theta="0").sample(10, np.random.default_rng(3))
    b = parse_conditions(energy="1:100", theta="0:30").sample(10, np.random.default_rng(3))
    np.testing.assert_array_equal(a["energy"], b["energy"])
    assert not np.array_equal(a["theta"], b["theta"])


def test_particles():
    assert PARTICLES["e-"] == 11 and PARTICLES["e+"] == -11 and PARTICLES["gamma"] == 22
    assert PARTICLES["pi+"] == 211 and PARTICLES["pi-"] == -211
    assert resolve_particle("photon") == 22 and resolve_particle("Electron") == 11
    assert resolve_particle("positron") == -11 and resolve_particle(-211) == -211 and resolve_particle("211") == 211
    assert particle_name(22) == "gamma"
    with pytest.raises(ValueError) as exc:
        resolve_particle("muon")
    msg = str(exc.value)
    assert "muon" in msg and all(name in msg for name in CANONICAL_PARTICLES)
    with pytest.raises(ValueError, match="valid"):
        resolve_particle(13)
