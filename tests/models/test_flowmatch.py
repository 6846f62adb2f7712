"""flowmatch: the ODE solvers against an exact flow, flow matching and reflow on a 2-D toy,
the teacher/student stages of the model, and the CLI on a tiny file."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from calosim.models.flowmatch import FlowMatch, VectorField, _layer, cfm_loss, fixed_step_solve, odeint_solve
from toys import FakeConditions, FakeCtx, two_layer_geometry, write_toy_data

pytestmark = pytest.mark.usefixtures("one_thread")

M, S = 2.0, 0.3  # the exact OT flow from N(0, 1) to N(M, S^2)


def _gaussian_field(t: Tensor, x: Tensor) -> Tensor:
    """Marginal field of the linear path between N(0, 1) and N(M, S^2) (independent coupling):
    x_t = t M + sigma_t z, sigma_t^2 = (1 - t)^2 + t^2 S^2, so x(1) = M + S z exactly."""
    sig = torch.sqrt((1 - t) ** 2 + (t * S) ** 2)
    dsig = (-(1 - t) + t * S * S) / sig
    return M + dsig / sig * (x - t * M)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_ode_error_falls_with_the_number_of_steps_at_the_solver_order(solver: str, order: int) -> None:
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    exact = M + S * z
    err = {}
    for n in (2, 8, 16, 32, 64):
        got = odeint_solve(_gaussian_field, z, solver, n)
        torch.testing.assert_close(fixed_step_solve(_gaussian_field, z, solver, n), got)  # export path == sample path
        err[n] = float((got - exact).abs().max())
    assert err[2] > err[8] > err[32]
    # error ~ n^-order at large n (the midpoint rule's h^2 term happens to cancel at s = 1 on
    # this linear flow: it converges at order 3 here, never below its order 2)
    observed = math.log(err[16] / err[64]) / math.log(4)
    assert order - 0.4 < observed < order + 1.1, (solver, err, observed)


def test_adaptive_dopri5_meets_its_tolerance_and_has_no_fixed_graph() -> None:
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    got = odeint_solve(_gaussian_field, z, "dopri5", 1, rtol=1e-8, atol=1e-8)
    assert float((got - (M + S * z)).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="no fixed-step graph"):
        fixed_step_solve(_gaussian_field, z, "dopri5", 4)


def test_layer_keeps_the_n_largest_cells_and_the_layer_energy() -> None:
    y = torch.log(torch.tensor([[0.1, 0.5, 0.2, 0.05, 0.15], [0.3, 0.1, 0.2, 0.3, 0.1]]))
    x = _layer(y, torch.tensor([10.0, 0.0]), torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(x[0], torch.tensor([0.0, 5.0, 2.0, 0.0, 1.5]) / 0.85 * 1.0)
    assert not x[1].any()  # no hits: an empty layer


# ------------------------------------------------------------------------------------------
# a 2-D Gaussian mixture: 30 % at (-2, 0), 70 % at (2, 1), component std 0.4
_W, _MU, _SD = 0.3, torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 0.4


def _mixture(n: int, g: torch.Generator) -> Tensor:
    k = (torch.rand(n, generator=g) > _W).long()
    return _MU[k] + _SD * torch.randn(n, 2, generator=g)


def _moments() -> tuple[Tensor, Tensor]:
    mean = _W * _MU[0] + (1 - _W) * _MU[1]
    d = _MU - mean
    cov = _SD**2 * torch.eye(2) + _W * torch.outer(d[0], d[0]) + (1 - _W) * torch.outer(d[1], d[1])
    return mean, cov


def _fit(field: VectorField, pairs: tuple[Tensor, Tensor] | None, steps: int, grid: int | None = None) -> None:
    """Flow matching on fresh mixture draws (``pairs`` None) or on fixed couplings ``(z, x1)``."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    c = torch.zeros(256, 0)
    for _ in range(steps):
        if pairs is None:
            x1, z = _mixture(256, g), torch.randn(256, 2, generator=g)
        else:
            i = torch.randint(0, len(pairs[0]), (256,), generator=g)
            z, x1 = pairs[0][i], pairs[1][i]
        s = torch.rand(256, 1, generator=g)
        if grid is not None:  # half of the times on the student's sampling grid
            s = torch.where(torch.rand(256, 1, generator=g) < 0.5, torch.randint(0, grid, (256, 1), generator=g) / grid, s)
        loss = cfm_loss(field, z, x1, c, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@pytest.fixture(scope="module")
def teacher() -> VectorField:
    torch.manual_seed(0)
    field = VectorField(2, 0, 48, 2, n_freq=4)
    _fit(field, None, 400)
    return field.eval().requires_grad_(False)


def _sample(field: VectorField, z: Tensor, solver: str, n: int) -> Tensor:
    with torch.no_grad():
        return odeint_solve(field.at(torch.zeros(len(z), 0)), z, solver, n)


def test_flow_matching_recovers_the_moments_of_a_gaussian_mixture(teacher: VectorField) -> None:
    x = _sample(teacher, torch.randn(4000, 2, generator=torch.Generator().manual_seed(2)), "midpoint", 16)
    mean, cov = _moments()
    torch.testing.assert_close(x.mean(0), mean, atol=0.12, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.25, rtol=0.1)
    assert abs(float((x[:, 0] > 0).float().mean()) - (1 - _W)) < 0.04  # the mode weights


def test_reflow_one_step_student_matches_the_full_sampler(teacher: VectorField) -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4096, 2, generator=g)
    pairs = (z, _sample(teacher, z, "midpoint", 16))
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    _fit(student, pairs, 300, grid=1)
    student.eval()
    z_new = torch.randn(4000, 2, generator=g)
    full = _sample(teacher, z_new, "midpoint", 16)
    one = _sample(student, z_new, "euler", 1)
    naive = _sample(teacher, z_new, "euler", 1)  # the teacher's own single step: curved paths
    err_student, err_naive = float((one - full).norm(dim=1).mean()), float((naive - full).norm(dim=1).mean())
    assert err_student < 0.3 < err_naive and err_student < err_naive / 3, (err_student, err_naive)
    torch.testing.assert_close(one.mean(0), full.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(one.T), torch.cov(full.T), atol=0.25, rtol=0.1)
    assert abs(float((one[:, 0] > 0).float().mean()) - float((full[:, 0] > 0).float().mean())) < 0.03


# ------------------------------------------------------------------------------------------
def _showers(geo, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    e = torch.exp(torch.empty(n, 1).uniform_(math.log(1e3), math.log(1e5), generator=g))
    w = torch.rand(n, geo.n_cells, generator=g) ** 4 * (torch.rand(n, geo.n_cells, generator=g) < 0.5)
    return 0.9 * e * w / w.sum(1, keepdim=True), FakeConditions.encode(e)


def test_teacher_then_student_stages_and_sampler_choice() -> None:
    geo = two_layer_geometry()
    torch.manual_seed(0)
    model = FlowMatch(geo, 1, {"transform": "identity", "hidden": 16, "depth": 1, "teacher_steps": 2,
                               "reflow_pairs": 40, "reflow_conditions": 16, "n_steps": 2, "mdn_steps": 0})
    ctx = FakeCtx(model, total_steps=4)
    g = torch.Generator().manual_seed(0)
    model.fit_statistics(*_showers(geo, 16, g), ctx)
    assert 0 < float(model.delta) < 1 and model.pool_cond.shape == (16, 1)
    for step in range(2):  # teacher steps: the student mirrors the teacher
        ctx.step = step
        assert "loss_teacher" in model.train_step(*_showers(geo, 16, g), ctx)
        for p, q in zip(model.student.parameters(), model.teacher.parameters()):
            assert torch.equal(p, q)
    assert not model.uses_student()
    teacher = copy.deepcopy(model.teacher.state_dict())
    ctx.step = 2
    assert "loss_student" in model.train_step(*_showers(geo, 16, g), ctx)
    assert model._pairs is not None and model._pairs[0].shape == (40, geo.n_cells)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher.items())  # frozen teacher
    assert model.uses_student() and bool(model.distilled)
    cond = FakeConditions.encode(torch.full((5, 1), 1e4))
    student_x = model.eval().sample(cond, torch.Generator().manual_seed(1))
    model.config.sampler = "full"
    assert not model.uses_student()
    assert not torch.equal(model.sample(cond, torch.Generator().manual_seed(1)), student_x)
    for layer in geo.layer_slices:  # layer energies come from the MDN, not the field: the same for both
        torch.testing.assert_close(model.sample(cond, torch.Generator().manual_seed(1))[:, layer].sum(1),
                                   student_x[:, layer].sum(1))
    model.config.solver = "dopri5"
    with pytest.raises(ValueError, match="solver 'dopri5' is adaptive and has no fixed graph"):
        model.export_module()
    assert torch.isfinite(model.sample(cond, torch.Generator().manual_seed(1))).all()


def test_cli_train_and_generate_on_a_tiny_file(tmp_path) -> None:
    from calosim.cli import main
    from calosim.io import read_showers
    from calosim.runs import load_run

    data = write_toy_data(tmp_path / "d.h5", n=120)
    sets = {"hidden": 16, "depth": 1, "teacher_steps": 3, "mdn_steps": 3, "reflow_pairs": 32, "reflow_conditions": 32,
            "n_steps": 2, "batch_size": 32, "val_every": 0, "threads": 1}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--model", "flowmatch", "--data", str(data), "--out", str(tmp_path / "run"),
                               "--steps", "5", *args])
    assert res.exit_code == 0, res.output
    assert bool(load_run(tmp_path / "run").model.distilled)
    res = runner.invoke(main, ["generate", "--run", str(tmp_path / "run"), "-n", "12", "-o", str(tmp_path / "g.h5")])
    assert res.exit_code == 0, res.output
    gen = read_showers(tmp_path / "g.h5")
    assert gen.showers.shape == (12, 504) and np.isfinite(gen.showers).all() and (gen.showers >= 0).all()
    assert (gen.showers.sum(1) > 0).all()
