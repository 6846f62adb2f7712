"""FPD / KPD: zero for equal distributions, analytic value for shifted Gaussians."""

import numpy as np
import pytest

from calosim.metrics.fpd import (
    frechet_distance,
    frechet_physics_distance,
    kernel_physics_distance,
)


def test_frechet_distance_analytic():
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(mu1, np.eye(d), mu2, np.eye(d)) == pytest.approx(1 + 4 + 0.25)
    # diagonal covariances: sum_i (s1_i - s2_i)^2 for the covariance part
    s1, s2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 4.0])
    fd = frechet_distance(mu1, np.diag(s1**2), mu1, np.diag(s2**2))
    assert fd == pytest.approx(np.sum((s1 - s2) ** 2))
    assert frechet_distance(mu2, np.diag(s1), mu2, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


def test_fpd_same_distribution_consistent_with_zero():
    rng = np.random.default_rng(0)
    cov = 0.6 * np.eye(5) + 0.4
    ref = rng.multivariate_normal(np.arange(5.0), cov, 30_000) * [1, 10, 100, 1, 0.1]
    gen = rng.multivariate_normal(np.arange(5.0), cov, 25_000) * [1, 10, 100, 1, 0.1]
    value, err = frechet_physics_distance(ref, gen, seed=1, num_batches=10)
    assert err > 0
    assert abs(value) < 3 * err + 2e-4
    assert abs(value) < 2e-3


def test_fpd_shifted_gaussians_match_analytic_value():
    rng = np.random.default_rng(1)
    d = 4
    ref = rng.standard_normal((30_000, d))
    gen = rng.standard_normal((30_000, d)) + 0.3
    value, err = frechet_physics_distance(ref, gen, seed=2, num_batches=10)
    expected = d * 0.3**2  # |delta mu|^2 (identity covariances; reference std ~1)
    assert value == pytest.approx(expected, abs=3 * err + 0.01)
    assert value > 10 * err


def test_kpd_same_and_shifted():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((8_000, 6)) * 3.0 + 1.0
    same = rng.standard_normal((8_000, 6)) * 3.0 + 1.0
    shifted = same + 1.5  # half a standard deviation in every feature
    v0, e0 = kernel_physics_distance(ref, same, seed=3, batch_size=2000)
    v1, e1 = kernel_physics_distance(ref, shifted, seed=3, batch_size=2000)
    assert e0 > 0 and abs(v0) < 3 * e0
    assert v1 > 10 * e1 and v1 > 100 * abs(v0)


def test_kpd_unbiased_estimator_by_hand():
    # tiny case against the explicit double sums of k(x, y) = (x.y/d + 1)^3
    from calosim.metrics.fpd import _mmd2_unbiased

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    kxx = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    kyy = np.mean([k(y[i], y[j]) for i in range(4) for j in range(4) if i != j])
    kxy = np.mean([k(a, b) for a in x for b in y])
    assert _mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy)


def test_fpd_input_validation():
    ok = np.zeros((100, 3))
    bad = np.ones((100, 3))
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="generated.*non-finite"):
        frechet_physics_distance(ok, bad)
    with pytest.raises(ValueError, match="dimension"):
        kernel_physics_distance(ok, np.zeros((100, 2)))
    with pytest.raises(ValueError, match="too few"):
        frechet_physics_distance(np.zeros((12, 10)), np.zeros((12, 10)))


def test_challenge_convention_known_answers():
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((20_000, 3)) + 5.0
    same = rng.standard_normal((20_000, 3)) + 5.0
    shifted = rng.standard_normal((20_000, 3)) + 5.3
    kw = {"min_samples": 2_000, "max_samples": 5_000, "num_batches": 5, "num_points": 4, "convention": "challenge"}
    v0, e0 = frechet_physics_distance(ref, same, seed=1, **kw)
    v1, e1 = frechet_physics_distance(ref, shifted, seed=1, **kw)
    top = np.abs(ref).max(axis=0)  # jetnet scales every feature by the reference's max |x|
    expected = 1e3 * np.sum((0.3 / top) ** 2)  # equal covariances: only |delta mu|^2, in units of 1e-3
    assert v0 >= 0 and v0 < 0.05 * expected  # the fit's intercept is bounded at 0, as in jetnet
    assert v1 == pytest.approx(expected, rel=0.15) and e1 > 0
    # the same numbers in the calosim convention are not scaled by 1e3 nor by max |x|
    c1, _ = frechet_physics_distance(ref, shifted, seed=1, min_samples=2_000, max_samples=5_000, num_batches=5)
    assert c1 == pytest.approx(3 * 0.3**2, rel=0.15)
    k0, ke0 = kernel_physics_distance(ref, same, seed=2, num_batches=5, batch_size=1_000, convention="challenge")
    k1, ke1 = kernel_physics_distance(ref, shifted, seed=2, num_batches=5, batch_size=1_000, convention="challenge")
    assert abs(k0) < 3 * ke0 + 1e-6 and k1 > 5 * ke1 and k1 > 20 * abs(k0)
    with pytest.raises(ValueError, match="convention"):
        kernel_physics_distance(ref, same, convention="jetnet")
