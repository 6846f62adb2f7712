"""The evaluation's report directory and its defects: overwrite, interrupted runs, unwritable
output, gross response mismatch, the voxel cut, the geometry option and the CLI options."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calosim.cli import main
from calosim.geometry import get_geometry
from calosim.io import ShowerData, write_showers
from calosim.metrics.evaluate import evaluate
from calosim.metrics.options import EvaluateOptions, cli_fields
from calosim.metrics.report import format_terminal_table

FAST = {"classifier": False, "fpd": False, "n_boot": 5, "progress": False}


def _toy(n: int, seed: int, scale: float = 0.9, geo: str = "calogan") -> ShowerData:
    """Showers whose total energy is ``scale`` x E_inc (10-50 GeV)."""
    g = get_geometry(geo)
    rng = np.random.default_rng(seed)
    e = rng.uniform(1e4, 5e4, (n, 1))
    x = rng.gamma(1.0, 1.0, (n, g.n_cells)) * np.exp(-np.arange(g.n_cells) / 100.0)
    return ShowerData((x * scale * e / x.sum(1, keepdims=True)).astype(np.float32), e, g)


def _files(tmp_path: Path, n: int = 300) -> tuple[Path, Path]:
    return (write_showers(tmp_path / "ref.h5", _toy(n, 0)), write_showers(tmp_path / "gen.h5", _toy(n, 1)))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_existing_report_needs_overwrite_and_is_replaced_whole(tmp_path):
    ref, gen = _files(tmp_path)
    out = tmp_path / "report"
    evaluate(ref, gen, out_dir=out, plots=["response"], **FAST)
    (out / "obs_stale.png").write_bytes(b"old plot")  # a plot of an earlier run with other samples
    before = (out / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match=r"report/(index\.html|metrics\.json): exists; pass --overwrite"):
        evaluate(ref, gen, out_dir=out, plots=["response"], **FAST)
    assert (out / "metrics.json").read_text() == before
    m = evaluate(ref, gen, out_dir=out, plots=["response"], overwrite=True, seed=1, **FAST)
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1 == m["seed"]
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "metrics.json", "response.png"]
    assert _leftovers(tmp_path) == []


def test_user_files_are_never_replaced(tmp_path):
    ref, gen = _files(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my home page")
    with pytest.raises(FileExistsError, match=r"site/index\.html: exists; pass --overwrite"):
        evaluate(ref, gen, out_dir=site, plots=False, **FAST)
    (site / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt: the report directory .* not part of a calosim report"):
        evaluate(ref, gen, out_dir=site, plots=False, overwrite=True, **FAST)
    assert (site / "index.html").read_text() == "my home page" and (site / "notes.txt").exists()
    # an empty directory is fine without --overwrite
    (tmp_path / "empty").mkdir()
    evaluate(ref, gen, out_dir=tmp_path / "empty", plots=False, **FAST)
    assert (tmp_path / "empty" / "metrics.json").exists()


def test_interrupted_evaluate_leaves_the_old_report(tmp_path, monkeypatch):
    ref, gen = _files(tmp_path)
    out = tmp_path / "report"
    evaluate(ref, gen, out_dir=out, plots=["response"], **FAST)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    import calosim.metrics.report as report

    def killed(*a, **k):  # the plots are written, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(ref, gen, out_dir=out, plots=["response"], overwrite=True, seed=7, **FAST)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # no new PNG beside the old metrics.json
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_output_fails_before_any_work(tmp_path, monkeypatch, where):
    ref, gen = _files(tmp_path, 50)
    (tmp_path / "plain.txt").write_text("x")
    out = tmp_path / "plain.txt" / "report" if where == "file" else Path("/proc/calosim_report")

    def no_work(*a, **k):
        raise AssertionError("scanned before checking the output")

    monkeypatch.setattr(sys.modules["calosim.metrics.evaluate"], "scan_source", no_work)
    with pytest.raises(OSError, match="cannot write the report there"):
        evaluate(ref, gen, out_dir=out, **FAST)
    res = CliRunner().invoke(main, ["evaluate", "-r", str(ref), "-g", str(gen), "-o", str(out), "--no-classifier"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "cannot write the report there" in lines[0] and "Traceback" not in res.output


def test_gross_response_mismatch_is_warned(tmp_path):
    ref = _toy(400, 0)
    off = _toy(400, 1, scale=4.5)  # 5x the reference's response
    m = evaluate(ref, [off, _toy(400, 2)], names=["off", "fine"], out_dir=tmp_path / "r", plots=False, **FAST)
    w_off, w_fine = (s["warnings"] for s in m["samples"])
    assert any("energy response grossly off" in w and "5x the reference" in w for w in w_off), w_off
    assert not any("response" in w for w in w_fine)
    assert "energy response grossly off" in format_terminal_table(m)
    assert "energy response grossly off" in (tmp_path / "r" / "index.html").read_text()


def test_voxel_cut_is_applied_with_the_geometry_default_and_settable(tmp_path):
    geo = get_geometry("calochallenge-1-photons")
    assert geo.readout_threshold_mev == 1.0
    ref = _toy(300, 0, geo=geo.name)
    ref.showers[ref.showers < 1.0] = 0.0
    noisy = ShowerData(ref.showers + np.float32(0.5) * (ref.showers == 0), ref.incident_energies, geo)  # sub-cut noise
    m = evaluate(ref, noisy, **FAST)
    assert m["threshold_mev"] == 1.0
    occ = [v["separation_power"] for k, v in m["samples"][0]["observables"].items()
           if k.startswith(("occupancy", "sparsity"))]
    assert occ and max(occ) < 1e-9  # below the cut the noise is invisible
    m0 = evaluate(ref, noisy, threshold=0.0, **FAST)
    occ0 = [v["separation_power"] for k, v in m0["samples"][0]["observables"].items()
            if k.startswith(("occupancy", "sparsity"))]
    assert m0["threshold_mev"] == 0.0 and max(occ0) > 0.5
    with pytest.raises(ValueError, match=r"threshold \(--threshold\)"):
        EvaluateOptions(threshold=-1)


def test_cli_geometry_xml_and_threshold(tmp_path):
    """A CaloChallenge file evaluated with the binning XML as --geometry (as `simulate` takes it)."""
    import calosim

    xml = Path(calosim.__file__).parent / "data" / "binning_dataset_1_photons.xml"
    geo = get_geometry("calochallenge-1-photons")
    ref = write_showers(tmp_path / "ref.h5", _toy(200, 0, geo=geo.name), layout="calochallenge")
    gen = write_showers(tmp_path / "gen.h5", _toy(200, 1, geo=geo.name), layout="calochallenge")
    res = CliRunner().invoke(main, ["evaluate", "-r", str(ref), "-g", str(gen), "-o", str(tmp_path / "r"),
                                    "--no-classifier", "--no-plots", "--geometry", str(xml), "--threshold", "2.5"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["threshold_mev"] == 2.5 and m["samples"][0]["n"] == 200
    again = CliRunner().invoke(main, ["evaluate", "-r", str(ref), "-g", str(gen), "-o", str(tmp_path / "r"),
                                      "--no-classifier", "--no-plots"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_cli_options_are_the_dataclass_fields():
    """The CLI's evaluate options are generated from EvaluateOptions: one list, not three."""
    import click

    cmd = main.commands["evaluate"]
    cmd.get_params(click.Context(cmd))  # the generated options are added on first use
    params = {p.name for p in cmd.params if isinstance(p, click.Option)}
    inputs = {"reference", "generated", "names", "train_file", "out"}
    assert params - inputs == {f[0] for f in cli_fields()}
    assert {"classifier", "threshold", "overwrite", "geometry", "seed", "max_showers"} <= params
    with pytest.raises(TypeError, match="unknown option.*n_bot.*valid:.*n_boot"):
        evaluate(_toy(10, 0), _toy(10, 1), n_bot=3)


def test_report_directory_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        evaluate(_toy(100, 0), _toy(100, 1), out_dir=tmp_path / "r", plots=False, **FAST)
    finally:
        os.umask(old)
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o755


def test_symlinked_report_directory_is_replaced_at_its_target(tmp_path):
    ref, gen = _toy(100, 0), _toy(100, 1)
    target = tmp_path / "real"
    evaluate(ref, gen, out_dir=target, plots=False, **FAST)
    (tmp_path / "link").symlink_to(target)
    evaluate(ref, gen, out_dir=tmp_path / "link", plots=False, overwrite=True, seed=3, **FAST)
    assert (tmp_path / "link").is_symlink() and json.loads((target / "metrics.json").read_text())["seed"] == 3
    assert _leftovers(tmp_path) == []


def test_bad_option_values_are_one_line_errors(tmp_path):
    for bad, words in ((["--max-showers", "0"], "max_showers (--max-showers) must be a positive"),
                       (["--threshold", "-2"], "threshold (--threshold) must be a finite voxel cut >= 0 MeV")):
        res = CliRunner().invoke(main, ["evaluate", "-r", "a.h5", "-g", "b.h5", "-o", str(tmp_path / "r"), *bad])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_scan_is_immutable():
    from dataclasses import FrozenInstanceError

    from calosim.metrics.scan import scan

    s = scan(_toy(20, 0), name="x", max_subset=5)
    with pytest.raises(FrozenInstanceError):
        s.n = 3
    assert s.sub_showers.shape == (5, 504) and s.without_subset().sub_showers.shape == (0, 504) and s.n == 20


def test_fpd_convention_is_recorded_and_shown(tmp_path):
    ref, gen = _toy(300, 0), _toy(300, 1)
    fast = {**FAST, "fpd": True}
    m = evaluate(ref, gen, fpd_convention="challenge", out_dir=tmp_path / "r", plots=False, **fast)
    s = m["samples"][0]
    assert s["fpd"]["convention"] == s["kpd"]["convention"] == "challenge"
    assert "FPD x10^3 (challenge)" in format_terminal_table(m, width=400)
    assert "FPD x10^3 (challenge)" in (tmp_path / "r" / "index.html").read_text()
    assert evaluate(ref, gen, **fast)["samples"][0]["fpd"]["convention"] == "calosim"
    with pytest.raises(ValueError, match="fpd_convention must be one of calosim, challenge"):
        EvaluateOptions(fpd_convention="jetnet")
