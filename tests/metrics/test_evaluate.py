"""End-to-end tests of calosim.metrics.evaluate (small samples, a few seconds each)."""

import json
import re

import numpy as np
import pytest

from calosim.geometry import get_geometry
from calosim.io import ShowerData, ShowerFileError, write_showers
from calosim.metrics.evaluate import evaluate
from calosim.metrics.report import format_terminal_table

SAMPLE_KEYS = {"name", "file", "n", "classifier", "fpd", "kpd", "observables", "mean_separation_power",
               "mean_separation_power_err", "mean_separation_power_null", "worst_observables", "conditions",
               "response", "memorization", "warnings"}
OBS_KEYS = {"separation_power", "chi2", "w1", "ks", "separation_power_err", "chi2_err", "w1_err", "ks_err"}
FAST_CLF = {"n_folds": 2, "epochs": 5, "hidden": (128, 128), "patience": 2, "lr": 3e-3}


def _sim(geo, particle, n, seed):
    """Simulated showers; a synthetic stand-in if the simulator is unavailable."""
    try:
        from calosim.simulate import simulate
    except ImportError:  # pragma: no cover - only before calosim.simulate exists
        return _synthetic(geo, particle, n, seed)
    return simulate(geo, particle, n, energy="10:50", seed=seed)


def _synthetic(geo, particle, n, seed):
    g = get_geometry(geo) if isinstance(geo, str) else geo
    rng = np.random.default_rng(seed)
    e = rng.uniform(1e4, 5e4, (n, 1))
    narrow = particle in ("e+", "e-", "gamma")
    prof = np.exp(-np.arange(g.n_cells) / (g.n_cells / (8 if narrow else 2)))
    x = rng.gamma(2.0 if narrow else 0.5, 1.0, (n, g.n_cells)) * prof
    x *= (e * (0.95 if narrow else 0.3)) / x.sum(1, keepdims=True)
    return ShowerData(x.astype(np.float32), e, g)


def _check_schema(m, n_samples):
    assert m["schema_version"] == 1
    assert {"reference", "samples", "timings", "geometry", "seed"} <= set(m)
    assert {"file", "n"} <= set(m["reference"])
    assert len(m["samples"]) == n_samples
    for s in m["samples"]:
        assert SAMPLE_KEYS <= set(s), SAMPLE_KEYS - set(s)
        assert len(s["worst_observables"]) == 3
        for k, v in s["observables"].items():
            assert OBS_KEYS <= set(v), k
        r = s["response"]
        assert {"edges", "has_reference", "reference", "generated", "e_mean"} <= set(r)
        assert {"mean", "mean_err", "resolution", "resolution_err", "n"} <= set(r["generated"])
    assert {"reference_scan", "samples", "total"} <= set(m["timings"])


def test_same_distribution_vs_different_particle(tmp_path):
    ref = _sim("calogan", "e+", 3000, seed=1)
    same = _sim("calogan", "e+", 3000, seed=2)
    pion = _sim("calogan", "pi+", 3000, seed=3)
    # classifier on 3000 vs 3000: the null AUC spread is ~0.01, well inside the 0.05 tolerance
    m = evaluate(ref, [same, pion], names=["same", "pion"], out_dir=tmp_path, seed=0, progress=False,
                 classifier_kwargs=FAST_CLF, n_boot=50)
    _check_schema(m, 2)
    s_same, s_pion = m["samples"]
    # same distribution: every separation power consistent with its noise floor
    for k, v in s_same["observables"].items():
        if v["separation_power_err"] is None:
            continue
        excess = v["separation_power"] - v["separation_power_null"]
        assert excess < 5 * v["separation_power_err"] + 0.005, (k, v)
    assert s_same["mean_separation_power"] < 2 * s_same["mean_separation_power_null"] + 0.005
    assert s_pion["mean_separation_power"] > 0.2
    assert abs(s_same["classifier"]["low"]["auc"] - 0.5) < 0.05
    assert abs(s_same["classifier"]["high"]["auc"] - 0.5) < 0.05
    assert s_pion["classifier"]["low"]["auc"] > 0.95 and s_pion["classifier"]["high"]["auc"] > 0.95
    # response: e+ close to 1 per bin, pions well below, all bins have reference showers
    assert all(s_same["response"]["has_reference"])
    gm = np.array(s_pion["response"]["generated"]["mean"], dtype=float)
    rm = np.array(s_pion["response"]["reference"]["mean"], dtype=float)
    assert np.all(gm < rm)

    # files: metrics.json (strict JSON, same content), plots, offline HTML
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["samples"][1]["worst_observables"] == s_pion["worst_observables"]
    html = (tmp_path / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all("://" not in r and not r.startswith("/") for r in refs), refs
    for r in refs:
        assert (tmp_path / r).exists(), r
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert any(r.startswith("obs_") for r in refs) and "response.png" in refs and "classifier_scores.png" in refs
    assert "AUC" in html and "same" in html and "pion" in html
    table = format_terminal_table(m)
    assert "same" in table and "pion" in table and "AUC" in table


@pytest.mark.parametrize("geo,layout", [("calogan", "native"), ("calogan", "calogan"),
                                        ("calochallenge-1-photons", "calochallenge"),
                                        ("calochallenge-2", "calochallenge")])
def test_file_layouts(tmp_path, geo, layout):
    n = 400
    ref = _sim(geo, "e-", n, seed=5)
    gen = _sim(geo, "e-", n, seed=6)
    pr = write_showers(tmp_path / "ref.h5", ref, layout=layout)
    pg = write_showers(tmp_path / "gen.h5", gen, layout=layout)
    m = evaluate(pr, [pg], classifier=False, progress=False, n_boot=20, out_dir=tmp_path / "out", plots=False)
    _check_schema(m, 1)
    s = m["samples"][0]
    assert s["name"] == "gen" and s["n"] == n and m["reference"]["file"] == str(pr)
    assert s["classifier"] is None and s["mean_separation_power"] < 0.2
    if geo.startswith("calochallenge"):
        lab = get_geometry(geo).meta["layer_ids"]
        assert f"E_layer_{lab[-1]}" in s["observables"]
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "index.html").exists()


def test_polar_plots(tmp_path):
    from calosim.metrics.blocks import SampleResult
    from calosim.metrics.plots import (
        EvaluationContext,
        plot_lateral_profiles,
        plot_mean_images,
        plot_profiles,
    )
    from calosim.metrics.scan import scan

    geo = get_geometry("calochallenge-1-pions")
    ref, gen = scan(_sim(geo, "pi+", 200, 1), name="reference"), scan(_sim(geo, "pi+", 200, 2), name="gen")
    ctx = EvaluationContext(geo, ref, [SampleResult(scan=gen, entry={})])
    for fig in (plot_mean_images(ctx, gen, tmp_path / "images_gen.png"), plot_profiles(ctx, tmp_path / "profiles.png"),
                plot_lateral_profiles(ctx, "x", tmp_path / "profiles_x.png")):
        path, caption, section = fig  # a (path, caption, section) record: the report needs no file-name parsing
        assert section == "plots" and path.exists() and path.stat().st_size > 10_000 and len(caption) > 40
    assert "gen" in plot_mean_images(ctx, gen, tmp_path / "images_gen.png").caption


def test_geometry_mismatch_is_a_clear_error(tmp_path):
    a = _synthetic("calogan", "e+", 50, 0)
    b = _synthetic("ild-ecal", "e+", 50, 1)
    pa = write_showers(tmp_path / "a.h5", a)
    pb = write_showers(tmp_path / "b.h5", b)
    with pytest.raises(ShowerFileError, match=r"b\.h5.*'ild-ecal'.*does not match the reference.*'calogan'"):
        evaluate(pa, [pb], classifier=False, progress=False)
    with pytest.raises(ShowerFileError, match="does not match"):
        evaluate(a, [b], classifier=False, progress=False)


def test_memorization_and_max_showers(tmp_path):
    pytest.importorskip("calosim.metrics.memorization")
    train = _synthetic("calogan", "e+", 600, 10)
    ref = _synthetic("calogan", "e+", 600, 11)
    copied = train.subset(slice(0, 300))  # a "model" that returns training showers
    m = evaluate(ref, [copied], train=train, classifier=False, progress=False, n_boot=10, max_showers=500,
                 out_dir=tmp_path, plots=["nn_distances"], fpd=False)
    s = m["samples"][0]
    assert m["reference"]["n"] == 500 and s["n"] == 300
    mem = s["memorization"]
    assert mem["flagged"] and mem["frac_exact"] == 1.0 and mem["ratio"] < 0.1
    assert "gen_to_train" not in mem  # arrays are not in the JSON
    assert (tmp_path / "nn_distances.png").exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["nn_distances.png"]
    # an independent sample is not flagged
    m = evaluate(ref, [_synthetic("calogan", "e+", 300, 12)], train=train, classifier=False, progress=False,
                 n_boot=10, fpd=False)
    assert not m["samples"][0]["memorization"]["flagged"]


def test_response_flags_energies_outside_reference(tmp_path):
    g = get_geometry("calogan")
    rng = np.random.default_rng(0)

    def sample(e_lo, e_hi, n):
        e = rng.uniform(e_lo, e_hi, (n, 1))
        x = rng.gamma(1.0, 1.0, (n, g.n_cells)) * np.exp(-np.arange(g.n_cells) / 100.0)
        return ShowerData((x * 0.9 * e / x.sum(1, keepdims=True)).astype(np.float32), e, g)

    m = evaluate(sample(1e4, 5e4, 800), [sample(1e4, 1e5, 800)], classifier=False, progress=False, n_boot=10)
    r = m["samples"][0]["response"]
    edges = np.array(r["edges"])
    assert edges[0] < 1.1e4 and edges[-1] > 0.99e5  # bins span both samples
    has = np.array(r["has_reference"])
    centre = 0.5 * (edges[1:] + edges[:-1])
    assert has[centre < 4.5e4].all() and not has[centre > 5.5e4].any()
    assert np.all(np.array(r["in_reference_range"])[centre > 5.5e4] == False)
    gen_mean = np.array(r["generated"]["mean"], dtype=float)
    assert np.allclose(gen_mean, 0.9, atol=1e-3)  # defined where only the generated sample has showers
    assert all(v is None for v, h in zip(r["reference"]["mean"], has) if not h)
    assert any("no reference showers" in w for w in m["samples"][0]["warnings"])
