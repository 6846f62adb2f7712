"""Classifier two-sample test: chance level for equal samples, near 1 for separated ones."""

import numpy as np
import pytest
import torch

from calosim.metrics.classifier import classifier_two_sample_test, lowlevel_features

SMALL = {"n_folds": 4, "epochs": 8, "hidden": (32, 32), "batch": 256, "patience": 2, "lr": 1e-3}


def _correlated(n, d, rng, shift=0.0):
    a = np.linalg.cholesky(0.5 * np.eye(d) + 0.5)  # unit variances, correlation 0.5
    return rng.standard_normal((n, d)) @ a.T + shift


def test_same_distribution_gives_chance_auc():
    rng = np.random.default_rng(0)
    ref, gen = _correlated(12_000, 8, rng), _correlated(10_000, 8, rng)
    r = classifier_two_sample_test(ref, gen, seed=1, **SMALL)
    # 10k test events per class in total: AUC spread over seeds measured ~0.006
    assert abs(r["auc"] - 0.5) < 0.03
    assert r["auc_err"] < 0.03
    assert 0.0 <= r["jsd"] < 0.02
    assert r["n_ref"] == 12_000 and r["n_gen"] == 10_000 and r["n_used"] == 10_000
    assert len(r["folds"]) == 4
    assert sum(f["n_test"] for f in r["folds"]) == 2 * 10_000  # every event tested once


def test_shifted_distribution_is_separated():
    rng = np.random.default_rng(1)
    # Bayes AUC = Phi(|d|/2) with Mahalanobis |d| = 1.0 * sqrt(8 / (1 + 7 * 0.5)) ... plus
    # a per-feature shift of 1 sigma in uncorrelated directions: clearly separable
    ref = rng.standard_normal((3000, 8))
    gen = rng.standard_normal((3000, 8)) + 1.0  # Bayes AUC = Phi(sqrt(8)/sqrt(2)) = 0.977
    r = classifier_two_sample_test(ref, gen, seed=2, return_predictions=True, **SMALL)
    assert r["auc"] > 0.95
    assert r["jsd"] > 0.4
    assert r["prob"].shape == (6000,) and r["label"].shape == (6000,)
    assert r["prob"][r["label"] == 1].mean() > r["prob"][r["label"] == 0].mean() + 0.5


def test_reproducible_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    ref, gen = rng.standard_normal((1200, 5)), rng.standard_normal((1500, 5)) + 0.3
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = classifier_two_sample_test(ref, gen, seed=7, n_threads=1, **SMALL)
    after = torch.rand(3)
    b = classifier_two_sample_test(ref, gen, seed=7, n_threads=1, **SMALL)
    assert torch.equal(before, after)
    assert a["auc"] == b["auc"] and a["jsd"] == b["jsd"]
    assert [f["auc"] for f in a["folds"]] == [f["auc"] for f in b["folds"]]
    c = classifier_two_sample_test(ref, gen, seed=8, n_threads=1, **SMALL)
    assert c["auc"] != a["auc"]


def test_lowlevel_features():
    showers = np.array([[1.0, 3.0, 0.0], [0.0, 50.0, 50.0]], dtype=np.float32)
    e_inc = np.array([[10.0], [1000.0]])
    x = lowlevel_features(showers, e_inc)
    assert x.shape == (2, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.1, 0.3, 0.0, 1.0], [0.0, 0.05, 0.05, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(lowlevel_features(showers, e_inc.ravel()), x)
    with pytest.raises(ValueError, match="incident_energies"):
        lowlevel_features(showers, np.ones((3, 1)))
    with pytest.raises(ValueError, match="> 0"):
        lowlevel_features(showers, np.array([[1.0], [0.0]]))


def test_input_validation():
    ok = np.zeros((100, 3))
    bad = ok.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"generated.*non-finite.*\[2\]"):
        classifier_two_sample_test(ok, bad)
    with pytest.raises(ValueError, match="dimension"):
        classifier_two_sample_test(ok, np.zeros((100, 4)))
    with pytest.raises(ValueError, match="at least"):
        classifier_two_sample_test(ok[:20], ok[:20])


def test_auc_err_covers_the_spread_between_seeds():
    # identical distributions, one data set, four seeds: auc_err (std over folds) must not be
    # smaller than the AUC's spread between seeds (std/sqrt(k) was, by ~2x on such toys)
    tiny = {"n_folds": 4, "epochs": 4, "hidden": (16,), "batch": 128, "patience": 2, "lr": 3e-3, "n_threads": 1}
    rng = np.random.default_rng(3)
    ref, gen = rng.standard_normal((400, 4)), rng.standard_normal((400, 4))
    runs = [classifier_two_sample_test(ref, gen, seed=s, **tiny) for s in range(4)]
    aucs = np.array([r["auc"] for r in runs])
    errs = np.array([r["auc_err"] for r in runs])
    assert np.all(np.abs(aucs - 0.5) < 3 * errs)
    assert errs.mean() >= aucs.std(ddof=1)
    for r in runs:  # the error is the plain std of the per-fold AUCs
        assert r["auc_err"] == pytest.approx(np.std([f["auc"] for f in r["folds"]], ddof=1))
    rep = classifier_two_sample_test(ref, gen, seed=0, n_repeats=2, **tiny)
    assert len(rep["folds"]) == 8 and {f["repeat"] for f in rep["folds"]} == {0, 1}
    assert [f["auc"] for f in rep["folds"][:4]] == [f["auc"] for f in runs[0]["folds"]]  # repeat 0 = n_repeats=1
