"""Per-observable distances: values known by construction."""

import time

import numpy as np
import pytest
import scipy.stats

from calosim.metrics.distances import (
    chi2_distance,
    compare_observable,
    compare_observables,
    ks_statistic,
    reference_bins,
    separation_power,
    wasserstein1,
)


def test_hand_computed_histogram():
    # bins [-0.5, 0.5), [0.5, 1.5]: p = (1/2, 1/2), q = (1/4, 3/4)
    ref, gen = np.array([0, 0, 1, 1.0]), np.array([0, 1, 1, 1.0])
    expected = 0.5 * (0.25**2 / 0.75 + 0.25**2 / 1.25)  # = 1/15
    assert separation_power(ref, gen, bins=[-0.5, 0.5, 1.5]) == pytest.approx(expected)
    assert chi2_distance(ref, gen, bins=[-0.5, 0.5, 1.5]) == pytest.approx(2 * expected)
    # automatic binning: two distinct values -> one bin centred on each, same result
    assert np.allclose(reference_bins(ref), [-0.5, 0.5, 1.5])
    assert separation_power(ref, gen) == pytest.approx(expected)
    # KS: F_ref(0) = 1/2, F_gen(0) = 1/4; W1 = |mean difference| = 1/4 (unnormalised)
    assert ks_statistic(ref, gen) == pytest.approx(0.25)
    assert wasserstein1(ref, gen, normalise=False) == pytest.approx(0.25)
    assert wasserstein1(ref, gen) == pytest.approx(0.25 / np.std(ref))


def test_identical_arrays_give_zero():
    x = np.random.default_rng(0).exponential(size=5000)
    r = compare_observable(x, x.copy(), rng=0)
    assert r["separation_power"] == 0 and r["chi2"] == 0 and r["ks"] == 0 and r["w1"] == 0


@pytest.mark.parametrize("offset", [10.0, -10.0])
def test_disjoint_samples(offset):
    rng = np.random.default_rng(1)
    ref, gen = rng.random(20_000), rng.random(30_000) + offset
    r = compare_observable(ref, gen, rng=0)
    assert r["separation_power"] == pytest.approx(1.0)
    assert r["chi2"] == pytest.approx(2.0)
    assert r["ks"] == pytest.approx(1.0)
    assert r["separation_power_err"] == pytest.approx(0.0, abs=1e-12)
    assert r["w1"] == pytest.approx(abs(offset) / np.std(ref), rel=0.01)


def test_generated_in_a_gap_of_the_reference():
    rng = np.random.default_rng(2)
    ref = np.concatenate([rng.random(5000), rng.random(5000) + 9.0])  # [0,1] u [9,10]
    gen = rng.random(5000) * 0.1 + 5.0  # only in the empty middle bins
    assert separation_power(ref, gen) == pytest.approx(1.0)


def test_same_distribution_consistent_with_noise_floor():
    rng = np.random.default_rng(3)
    # many exact zeros and a log-spread positive part, different sample sizes
    def sample(n):
        return rng.lognormal(0.0, 2.0, n) * (rng.random(n) < 0.6)

    ref, gen = sample(100_000), sample(80_000)
    r = compare_observable(ref, gen, rng=4)
    assert r["separation_power"] < 1e-3
    for k in ("separation_power", "chi2", "ks", "w1"):
        assert r[f"{k}_err"] > 0
        # the measured value is at the finite-sample floor expected for equal distributions
        assert abs(r[k] - r[f"{k}_null"]) < 3 * r[f"{k}_err"], k
    assert r["n_ref"] == 100_000 and r["n_gen"] == 80_000


def test_matches_scipy_for_unbinned_metrics():
    rng = np.random.default_rng(5)
    ref = np.concatenate([np.zeros(300), rng.gamma(2.0, 3.0, 2000)])
    gen = np.concatenate([np.zeros(500), rng.gamma(2.2, 3.0, 1500)])
    ks = scipy.stats.ks_2samp(ref, gen).statistic
    w = scipy.stats.wasserstein_distance(ref, gen)
    assert ks_statistic(ref, gen) == pytest.approx(ks, abs=1e-12)
    r = compare_observable(ref, gen, rng=0, normalise_w1=False)
    assert r["ks"] == pytest.approx(ks, abs=1e-12)
    assert r["w1"] == pytest.approx(w, rel=1e-10)
    assert compare_observable(ref, gen, rng=0)["w1"] == pytest.approx(w / np.std(ref), rel=1e-10)


def test_w1_normalised_shift_of_one_sigma():
    rng = np.random.default_rng(6)
    ref, gen = rng.normal(5.0, 2.0, 50_000), rng.normal(7.0, 2.0, 50_000)
    assert wasserstein1(ref, gen) == pytest.approx(1.0, abs=0.03)
    assert wasserstein1(ref, gen, normalise=False) == pytest.approx(2.0, abs=0.06)


def test_bootstrap_error_matches_sample_to_sample_spread():
    rng = np.random.default_rng(7)
    vals, errs = [], []
    for i in range(25):
        ref, gen = rng.normal(0, 1, 20_000), rng.normal(0.1, 1, 20_000)
        r = compare_observable(ref, gen, rng=i)
        vals.append([r["separation_power"], r["ks"], r["w1"]])
        errs.append([r["separation_power_err"], r["ks_err"], r["w1_err"]])
    ratio = np.mean(errs, axis=0) / np.std(vals, axis=0, ddof=1)
    assert np.all((ratio > 0.6) & (ratio < 1.7)), ratio


def test_reference_bins_special_cases():
    # constant reference: one narrow bin; equal constant -> 0, any other value -> 1
    c = np.full(1000, 3.0)
    e = reference_bins(c)
    assert len(e) == 2 and e[0] < 3.0 < e[1]
    assert separation_power(c, c) == 0.0
    assert separation_power(c, np.full(10, 3.5)) == pytest.approx(1.0)
    # log-spread data with exact zeros: zero bin then geometric bins, covering the reference
    rng = np.random.default_rng(8)
    x = 10 ** rng.uniform(-3, 3, 10_000) * (rng.random(10_000) < 0.5)
    e = reference_bins(x, n_bins=40)
    assert e[0] == 0.0 and e[-1] >= x.max() and len(e) == 41
    ratios = e[2:-1] / e[1:-2]
    assert np.allclose(ratios[1:-1], ratios[1])  # geometric spacing of the inner bins
    # linear data with an outlier: the bulk is not squeezed into one bin
    y = np.concatenate([rng.normal(size=10_000), [1e6]])
    e = reference_bins(y, n_bins=50)
    assert e[-1] == 1e6 and e[-2] < 5 and np.all(np.diff(e) > 0)
    assert reference_bins(y, n_bins=50, log=False).size == 51


def test_non_finite_values_raise_with_observable_name():
    ok = np.ones(10)
    bad = ok.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="E_layer_3"):
        compare_observable(ok, bad, name="E_layer_3")
    with pytest.raises(ValueError, match="reference.*inf|inf.*reference|non-finite"):
        separation_power(np.array([1.0, np.inf]), ok)
    with pytest.raises(ValueError, match="E_tot"):
        compare_observables({"E_tot": bad}, {"E_tot": ok})
    with pytest.raises(ValueError, match="empty"):
        ks_statistic(np.array([]), ok)


def test_compare_observables_reproducible_and_fast():
    rng = np.random.default_rng(9)
    ref = {f"o{i}": rng.gamma(2.0, 1.0, 100_000) for i in range(10)}
    gen = {f"o{i}": rng.gamma(2.0, 1.05, 100_000) for i in range(10)}
    t = time.perf_counter()
    a = compare_observables(ref, gen, rng=11)
    elapsed = time.perf_counter() - t
    b = compare_observables(ref, gen, rng=11)
    assert a == b
    assert set(a["o0"]) >= {f"{k}{s}" for k in ("separation_power", "chi2", "w1", "ks") for s in ("", "_err")}
    # ~30 ms per 100k-vs-100k observable on an idle core; generous bound for loaded CI machines
    assert elapsed < 10.0
