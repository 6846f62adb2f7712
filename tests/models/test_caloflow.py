"""caloflow: exact flow likelihoods against analytic Gaussians, the student matching the teacher
in distribution after distillation, the preprocessing round trip, the folded sampling path, and
train -> generate -> export -> log-likelihood through the CLI on a tiny file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from calosim.cli import main
from calosim.geometry import get_geometry
from calosim.models.caloflow import (AutoregressiveStack, Preprocessing, distillation_losses,
                                     held_out_log_likelihood, with_sampler)
from toys import write_toy_data

pytestmark = pytest.mark.usefixtures("one_thread")
SLOPE_BOUND = -math.log(1e-3)  # zuko's soft clip of the affine log-scale


def _set_affine(stack: AutoregressiveStack, shift: torch.Tensor, log_scale: torch.Tensor) -> None:
    """Every block the constant map ``y = exp(log_scale) x + shift`` (output weights zeroed)."""
    a = log_scale / (1.0 - log_scale.abs() / SLOPE_BOUND)  # inverse of zuko's soft clip
    with torch.no_grad():
        for blk in stack.blocks:
            last = blk.hyper[-1]
            last.weight.zero_()
            last.bias.copy_(torch.stack([shift, a], 1).flatten())  # (shift_i, scale_i) per feature


@pytest.mark.parametrize("reverse", [False, True])
def test_flow_log_prob_of_a_known_affine_map_is_the_analytic_gaussian(reverse: bool) -> None:
    # two blocks of the constant map u -> s u + b per value; as a MAF (x -> z) or an IAF (z -> x)
    torch.manual_seed(0)
    stack = AutoregressiveStack(3, 1, blocks=2, hidden=8, depth=1, reverse=reverse)
    b, ls = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, -0.7, 1.1])
    _set_affine(stack, b, ls)
    s = torch.exp(ls)
    if reverse:  # x = s (s z + b) + b with z ~ N(0, 1)
        mean, sd = (b + s * b).double().numpy(), (s**2).double().numpy()
    else:  # z = s (s x + b) + b  ->  x = (z - b - s b) / s^2
        mean, sd = (-(b + s * b) / s**2).double().numpy(), (1.0 / s**2).double().numpy()
    x, c = torch.randn(50, 3) * 2, torch.randn(50, 1)
    want = stats.norm.logpdf(x.double().numpy(), mean, sd).sum(1)
    np.testing.assert_allclose(stack.log_prob(x, c).detach().double().numpy(), want, rtol=1e-5, atol=1e-4)


def _fit_by_likelihood(stack: AutoregressiveStack, data: torch.Tensor, c: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(stack.parameters(), lr=lr)
    for _ in range(steps):
        loss = -stack.log_prob(data, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_trained_maf_reaches_the_entropy_of_a_correlated_gaussian() -> None:
    torch.manual_seed(1)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    data = torch.as_tensor(stats.multivariate_normal([1.0, -2.0], cov).rvs(1000, random_state=1), dtype=torch.float32)
    c = torch.zeros(len(data), 1)
    stack = AutoregressiveStack(2, 1, blocks=1, hidden=8, depth=1)  # one affine block can be exactly this Gaussian
    _fit_by_likelihood(stack, data, c, steps=200, lr=3e-2)
    want = stats.multivariate_normal([1.0, -2.0], cov).logpdf(data.double().numpy())
    got = stack.log_prob(data, c).detach().double().numpy()
    assert abs(got.mean() - want.mean()) < 0.03  # nats; the fit is the Gaussian itself
    assert np.corrcoef(got, want)[0, 1] > 0.99


def _banana(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 1, generator=g)
    return torch.cat([a, 0.5 * a**2 + 0.3 * torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)], 1)


def test_distilled_student_matches_the_teacher_in_distribution() -> None:
    torch.manual_seed(2)
    data = _banana(1000, 0)
    c = torch.zeros(len(data), 1)
    teacher = AutoregressiveStack(3, 1, blocks=3, hidden=16, depth=1)
    _fit_by_likelihood(teacher, data, c, steps=150, lr=1e-2)
    teacher.requires_grad_(False)
    # the student's blocks must represent the teacher's inverses as functions of z: a wider MADE
    student = AutoregressiveStack(3, 1, blocks=3, hidden=48, depth=2, reverse=True)
    z_eval = torch.randn(1000, 3, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = teacher.inverse(z_eval, c)  # the teacher's own samples (the slow path)
        before = student(z_eval, c)[0]
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(200):
        losses = distillation_losses(teacher, student, data, c, torch.randn(len(data), 3))
        loss = losses["block"] + losses["x"] + losses["z"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        same_z = student(z_eval, c)[0]
        got = student(torch.randn(1000, 3, generator=torch.Generator().manual_seed(11)), c)[0]
        kl = float(distillation_losses(teacher, student, data, c, z_eval)["kl"])
    # the student is the teacher's sampling map: the same z gives the same point...
    assert float((same_z - ref).abs().median()) < 0.03 < float((before - ref).abs().median())
    # ...so independent draws share the distribution (KS per dimension, and the banana's x1 ~ x0^2 / 2)
    for d in range(3):
        assert stats.ks_2samp(got[:, d].numpy(), ref[:, d].numpy()).pvalue > 1e-3, d
    assert stats.ks_2samp(before[:, 1].numpy(), ref[:, 1].numpy()).pvalue < 1e-6  # untrained: it differed
    r = [np.corrcoef(a[:, 0].numpy() ** 2, a[:, 1].numpy())[0, 1] for a in (got, ref)]
    assert abs(r[0] - r[1]) < 0.05
    assert -0.01 < kl < 0.02  # reverse KL estimate in nats


def test_folded_one_pass_equals_zuko() -> None:
    torch.manual_seed(3)
    stack = AutoregressiveStack(10, 2, blocks=3, hidden=16, depth=2, reverse=True, passes=4)
    x, c = torch.randn(7, 10), torch.randn(7, 2)
    with torch.no_grad():
        torch.testing.assert_close(stack.one_pass()(x, c), stack(x, c)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stack.inverse(stack(x, c)[0], c), x, rtol=1e-4, atol=1e-5)  # `passes` passes suffice


def test_preprocessing_round_trips_and_keeps_zero_cells_empty() -> None:
    geo = get_geometry("calogan")
    g = torch.Generator().manual_seed(4)
    hit = torch.rand(20, geo.n_cells, generator=g) < 0.3
    x = torch.where(hit, 1e-2 + torch.rand(20, geo.n_cells, generator=g) ** 3, torch.zeros(()))
    x[0, geo.layer_slices[2]] = 0.0  # an empty layer stays empty
    prep = Preprocessing(geo.layer_slices, noise=1e-6, alpha=1e-6)
    prep.fit(x, torch.rand(x.shape, generator=g))
    # noise draws within float32 rounding of the level (u ~ 1 - 1e-4) may come back as tiny hits
    y = prep(x, 0.99 * torch.rand(x.shape, generator=g))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.mean(0), torch.zeros(geo.n_cells), atol=0.5, rtol=0)  # standardised (other noise)
    f = torch.stack([x[:, s].sum(1) for s in geo.layer_slices], 1)
    back = prep.inverse(y, f)
    assert torch.equal(back == 0, x == 0)  # zero cells come back exactly empty, hits stay hits
    torch.testing.assert_close(back, x, rtol=3e-3, atol=0.0)  # the noise stays on the hits: noise / v <~ 2e-3
    torch.testing.assert_close(torch.stack([back[:, s].sum(1) for s in geo.layer_slices], 1), f)


def test_train_generate_export_and_log_likelihood_through_the_cli(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    data = write_toy_data(tmp_path / "d.h5", n=60)
    run = tmp_path / "run"
    tiny = ["hidden=16", "blocks=2", "depth=1", "passes=4", "energy_blocks=2", "energy_hidden=8", "teacher_steps=3",
            "batch_size=16", "val_every=0", "threads=1"]
    r = CliRunner()
    res = r.invoke(main, ["train", "-m", "caloflow", "-d", str(data), "-o", str(run), "--steps", "2",
                          *sum((["--set", kv] for kv in tiny), [])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["pretrain"]["teacher_steps"] == 3 and math.isfinite(summary["pretrain"]["nll_cells"])
    teacher = with_sampler(run, tmp_path / "teacher", "teacher")
    for r_dir in (run, teacher):
        out = tmp_path / f"{r_dir.name}.h5"
        res = r.invoke(main, ["generate", "--run", str(r_dir), "-n", "12", "-o", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        onnx = tmp_path / f"{r_dir.name}.onnx"
        assert r.invoke(main, ["export", "--run", str(r_dir), "-o", str(onnx)], catch_exceptions=False).exit_code == 0
        from calosim.runs import load_run
        module = load_run(r_dir).model.export_module()
        z, c = torch.randn(5, int(module.latent_dim)), torch.randn(5, 1)
        got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"z": z.numpy(), "cond": c.numpy()})[0]
        np.testing.assert_allclose(got, module(z, c).detach().numpy(), rtol=1e-3, atol=1e-6)
    ll_t = held_out_log_likelihood(run, data, "teacher", n=20)
    ll_s = held_out_log_likelihood(run, data, "student", n=20)
    assert ll_t["n"] == 20 and math.isfinite(ll_t["loglik"]) and math.isfinite(ll_s["loglik"])
    assert ll_t["loglik_energy"] == pytest.approx(ll_s["loglik_energy"])  # flow I is shared
    assert ll_t["loglik"] != ll_s["loglik"]
