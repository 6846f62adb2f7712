"""Memorisation and diversity checks on samples built to copy / collapse / be independent."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from calosim.metrics.memorization import (
    diversity,
    memorization_test,
    nearest_neighbour_distances,
)


def _showers(n, rng, d=40):
    # shower-like: non-negative cells, many zeros, an exponential longitudinal-ish profile
    profile = np.exp(-np.arange(d) / 8.0)
    return rng.gamma(1.5, 1.0, (n, d)) * profile * (rng.random((n, d)) < 0.7) * rng.uniform(50, 100, (n, 1))


def test_nearest_neighbour_matches_brute_force():
    rng = np.random.default_rng(0)
    q, t = rng.random((300, 7)), rng.random((500, 7))
    ref = cdist(q, t)
    dist, idx = nearest_neighbour_distances(q, t, transform="none", chunk=64, return_index=True)
    np.testing.assert_allclose(dist, ref.min(axis=1), rtol=1e-10)
    np.testing.assert_array_equal(idx, ref.argmin(axis=1))
    # "sum" normalises each event first: scaled copies are at distance 0
    d0 = nearest_neighbour_distances(3.0 * t[:50] + 0.0, t + 1e-300, transform="sum")
    assert np.all(d0 < 1e-9)
    with pytest.raises(ValueError, match="non-finite"):
        nearest_neighbour_distances(np.full((2, 7), np.nan), t)


def test_copies_of_training_are_flagged():
    rng = np.random.default_rng(1)
    train, held = _showers(3000, rng), _showers(1000, rng)
    copies = train[rng.choice(3000, 1000, replace=False)]
    r = memorization_test(train, copies, held)
    assert r["ratio"] < 0.05 and r["flagged"]
    assert r["frac_close"] == 1.0 and r["frac_exact"] == 1.0
    assert r["gen_to_train"].shape == (1000,) and r["heldout_to_train"].shape == (1000,)
    # a model copying only 30% of the time is still caught by the close fraction
    mixed = np.concatenate([copies[:300], _showers(700, rng)])
    m = memorization_test(train, mixed, held)
    assert m["flagged"] and m["frac_close"] > 0.25


def test_independent_sample_is_not_flagged():
    rng = np.random.default_rng(2)
    train, held, gen = _showers(3000, rng), _showers(1000, rng), _showers(1000, rng)
    r = memorization_test(train, gen, held)
    assert r["ratio"] == pytest.approx(1.0, abs=0.1)
    assert abs(r["ratio"] - 1.0) < 4 * r["ratio_err"] + 0.02
    assert r["frac_close"] < 0.04 and r["expected_frac"] == 0.01
    assert not r["flagged"]


def test_diversity_detects_collapse():
    rng = np.random.default_rng(3)
    ref, gen = _showers(2000, rng), _showers(2000, rng)
    healthy = diversity(gen, ref)
    assert healthy["ratio"] == pytest.approx(1.0, abs=0.05)
    assert healthy["nn_ratio"] == pytest.approx(1.0, abs=0.1)
    assert healthy["duplicate_fraction"] == 0.0
    # only 10 distinct showers, repeated: far apart, so the pairwise mean barely moves,
    # but every event has an exact duplicate
    dup = np.repeat(gen[:10], 200, axis=0)
    d = diversity(dup, ref)
    assert d["nn_ratio"] < 0.01 and d["duplicate_fraction"] == 1.0
    # global collapse: everything close to the mean shower
    mean_like = ref.mean(axis=0) * (1 + 0.01 * rng.standard_normal((2000, ref.shape[1])))
    c = diversity(mean_like, ref)
    assert c["ratio"] < 0.2 and c["nn_ratio"] < 0.2
    assert c["pairwise_gen"].ndim == 1 and c["nn_gen"].shape == (2000,)


def test_exact_copies_are_memorisation_not_under_dispersion():
    rng = np.random.default_rng(4)
    train, held = _showers(2000, rng), _showers(800, rng)
    r = memorization_test(train, train[rng.choice(2000, 800, replace=False)], held)
    assert r["memorization"] and r["flagged"] and not r["under_dispersion"]
    assert r["diagnosis"] == "memorisation"
    assert r["copy_ratio"] < 0.05 and r["ratio_unseen"] == pytest.approx(1.0, abs=0.1)
    assert r["spread_ratio"] == pytest.approx(1.0, abs=0.05)


def test_shrunk_samples_are_under_dispersion_not_memorisation():
    """Showers pulled towards the mean shower (no copies): close to every real shower, seen or not."""
    rng = np.random.default_rng(5)
    train, held, fresh = _showers(2000, rng), _showers(800, rng), _showers(800, rng)
    mean = train.mean(axis=0)
    shrunk = mean + 0.7 * (fresh - mean)
    r = memorization_test(train, shrunk, held)
    assert r["frac_exact"] == 0.0 and r["ratio"] < 0.95 and r["frac_close"] > 0.03  # what used to be "memorising"
    assert r["under_dispersion"] and not r["memorization"] and not r["flagged"]
    assert r["diagnosis"] == "under-dispersion"
    assert r["copy_ratio"] == pytest.approx(1.0, abs=0.1) and r["spread_ratio"] < 0.8


def test_evaluate_reports_the_two_diagnoses_separately(tmp_path):
    from calosim.geometry import get_geometry
    from calosim.io import ShowerData
    from calosim.metrics.evaluate import evaluate

    g = get_geometry("calogan")
    rng = np.random.default_rng(6)

    def sample(n):
        e = rng.uniform(1e4, 5e4, (n, 1))
        x = rng.gamma(1.0, 1.0, (n, g.n_cells)) * np.exp(-np.arange(g.n_cells) / 100.0)
        return ShowerData((x * 0.9 * e / x.sum(1, keepdims=True)).astype(np.float32), e, g)

    train, ref, fresh = sample(600), sample(600), sample(300)
    shape = fresh.showers / fresh.showers.sum(1, keepdims=True)
    mean = (train.showers / train.showers.sum(1, keepdims=True)).mean(0)
    shrunk = ShowerData(((mean + 0.6 * (shape - mean)) * 0.9 * fresh.incident_energies).astype(np.float32),
                        fresh.incident_energies, g)
    m = evaluate(ref, [train.subset(slice(0, 300)), shrunk], names=["copies", "shrunk"], train=train,
                 out_dir=tmp_path / "r", plots=False, classifier=False, fpd=False, n_boot=5, progress=False)
    copies, under = (s["memorization"] for s in m["samples"])
    assert copies["diagnosis"] == "memorisation" and under["diagnosis"] == "under-dispersion"
    w_copies, w_under = (s["warnings"] for s in m["samples"])
    assert any(w.startswith("memorisation") for w in w_copies) and not any("under-dispersion" in w for w in w_copies)
    assert any(w.startswith("under-dispersion") for w in w_under) and not any(w.startswith("memorisation")
                                                                             for w in w_under)
    html = (tmp_path / "r" / "index.html").read_text()
    assert "memorisation (copies / near-copies of training showers): YES" in html
    assert "under-dispersion (showers too close to the typical one): YES" in html
