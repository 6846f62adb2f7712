"""Tests of the conditional WGAN-GP (calosim.models.wgan_gp); CPU, a few seconds each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import Tensor

from calosim.geometry import Geometry, Layer, Material, get_geometry
from calosim.models.layers import gradient_penalty
from calosim.models.wgan_gp import WGANGP, _activate, shape_groups
from toys import prepare

TINY = {"gen_channels": 8, "gen_min_channels": 4, "gen_hidden": 32, "critic_channels": 4, "critic_feat": 8,
        "critic_hidden": 32, "regressor_channels": 4, "latent_dim": 8, "batch_size": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from 2 threads, and on a shared 2-core machine OpenMP spinning
    makes them ~10x slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _stack_geometry(n_layers: int = 3, shape: tuple[int, int] = (8, 8)) -> Geometry:
    mat = Material("W", "Si", x0_mm=3.5, lambda_mm=100.0, moliere_mm=9.0, critical_mev=8.0)
    layers = tuple(Layer(f"l{i}", "cartesian", shape, z_mm=2.0 * i, thickness_mm=2.0, material=mat, cell_mm=(5.0, 5.0))
                   for i in range(n_layers))
    return Geometry("test-stack", layers)


# ---- a minimal TrainContext (identity transform, log-energy condition in column 0) -----------
class _Identity:
    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return x_mev

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x


class _Conditions:
    names = ["energy"]

    def incident_energy(self, cond: Tensor) -> Tensor:
        return 1000.0 * torch.exp(cond[:, :1])  # column 0 = log(E / GeV)


@dataclass
class FakeCtx:
    model: WGANGP
    device: torch.device = torch.device("cpu")
    step: int = 0
    transform: _Identity = field(default_factory=_Identity)
    conditions: _Conditions = field(default_factory=_Conditions)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def __post_init__(self) -> None:
        self.optimizers = self.model.make_optimizers()
        self.schedulers = {k: s.build(self.optimizers[k]) for k, s in self.model.lr_schedules(100).items()}

    def backward_step(self, loss: Tensor, optimizer: str, *, retain_graph: bool = False) -> None:
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        opt.step()
        if optimizer in self.schedulers:
            self.schedulers[optimizer].step()


def _toy_batches(geo: Geometry, cond_dim: int, batch: int = 32, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, cond): Gaussian blobs in every layer whose amplitude grows with the energy."""
    g = torch.Generator().manual_seed(seed)
    cx, cy = (torch.as_tensor(a, dtype=torch.float32) for a in geo.cell_centers())
    while True:
        cond = torch.rand((batch, cond_dim), generator=g) * 2 - 1
        e = 1000.0 * torch.exp(cond[:, :1])
        off = torch.randn((batch, 2), generator=g) * 3
        r2 = (cx - off[:, :1]) ** 2 + (cy - off[:, 1:]) ** 2
        x = e * 0.01 * torch.exp(-r2 / 50.0) * (1 + 0.1 * torch.rand((batch, geo.n_cells), generator=g))
        yield x, cond


# ---- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("geo", [get_geometry("calogan"), get_geometry("lhcb-ecal"), _stack_geometry()],
                         ids=["calogan", "lhcb-ecal", "stack"])
def test_sample_shape_nonnegative(geo: Geometry) -> None:
    torch.manual_seed(0)
    model = WGANGP(geo, 3, TINY).eval()
    x = model.sample(torch.randn(17, 3), torch.Generator().manual_seed(1))
    assert x.shape == (17, geo.n_cells)
    assert torch.isfinite(x).all()
    assert (x >= 0).all()  # floor defaults to 0 (identity transform: a ReLU) until pretrain sees data


def test_shape_groups() -> None:
    assert [(s, ids) for s, ids in shape_groups(get_geometry("calogan"))] == [
        ((3, 96), [0]), ((12, 12), [1]), ((12, 6), [2])]
    assert shape_groups(_stack_geometry(5)) == [((8, 8), [0, 1, 2, 3, 4])]  # one image, layers as channels


def test_gradient_penalty_linear_critic() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, 20, generator=g), torch.randn(64, 20, generator=g)
    w = torch.randn(20, generator=g)
    w = w / w.norm()  # a linear critic with unit-norm weight: ||grad|| = 1 everywhere
    gp1 = gradient_penalty(lambda x: x @ w, real, fake, 10.0, g)
    assert float(gp1) == pytest.approx(0.0, abs=1e-8)
    gp3 = gradient_penalty(lambda x: x @ (3 * w), real, fake, 10.0, g)
    assert float(gp3) == pytest.approx(10.0 * (3 - 1) ** 2, rel=1e-5)


def test_activation_snaps_empty_cells_and_caps() -> None:
    raw = torch.tensor([[-1.0, 0.2, 0.6, 5.0]], requires_grad=True)
    snap, ceil = torch.full((4,), 0.5), torch.full((4,), 2.0)
    h = _activate(raw, snap, ceil, leak=0.1)
    assert h.tolist() == [[0.0, 0.0, 0.6000000238418579, 2.0]]  # empty below the snap, capped above
    h.sum().backward()
    # straight-through leak for empty cells, full gradient for hits, none above the cap
    torch.testing.assert_close(raw.grad, torch.tensor([[0.1, 0.1, 1.0, 0.0]]))


def test_regressor_learns_brightness() -> None:
    """Images whose left/right halves' brightness encode two conditions: R must recover them."""
    torch.manual_seed(0)
    geo = _stack_geometry(1, (8, 8))
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    left, right = left.flatten(), (1 - left).flatten()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(1)
        while True:
            c = torch.rand((64, 2), generator=g) * 2 - 1
            x = (1.5 + c[:, :1]) * left + (1.5 + c[:, 1:]) * right + 0.05 * torch.rand((64, 64), generator=g)
            yield x, c

    model = WGANGP(geo, 2, {**TINY, "regressor_steps": 250, "regressor_lr": 3e-3, "critic_observables": False})
    out = prepare(model, batches(), FakeCtx(model))
    assert out["regressor_val_mse"] < 0.01, out  # variance of U(-1, 1) is 0.33
    assert out["regressor_val_r2"] > 0.95
    assert not any(p.requires_grad for p in model.regressor.parameters())  # frozen
    x, c = next(batches())
    assert float(model.regressor_errors(x, c).mean()) < 0.02


@pytest.mark.parametrize("geo", [get_geometry("calogan"), _stack_geometry()], ids=["calogan", "stack"])
def test_train_step_updates_generator_and_critic(geo: Geometry) -> None:
    torch.manual_seed(0)
    model = WGANGP(geo, 2, {**TINY, "n_critic": 2, "regressor_steps": 3, "regressor_batches_val": 1})
    ctx = FakeCtx(model)
    data = _toy_batches(geo, 2)
    prepare(model, data, ctx)
    assert float(model.x_floor.min()) >= 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, c = next(data)
    logs = model.train_step(x, c, ctx)  # step 0: critic only
    assert all(np.isfinite(v) for k, v in logs.items() if k not in ("loss_generator", "loss_regression"))
    changed = lambda prefix: any(not torch.equal(before[k], v) for k, v in model.state_dict().items()  # noqa: E731
                                 if k.startswith(prefix))
    assert changed("critic.") and not changed("generator.")
    ctx.step = 1
    x, c = next(data)
    logs = model.train_step(x, c, ctx)  # step 1: critic + generator (n_critic = 2)
    assert changed("generator.")
    assert not changed("regressor.")
    assert np.isfinite(logs["loss_generator"]) and np.isfinite(logs["loss_regression"])


def test_rejects_non_per_cell_transform() -> None:
    with pytest.raises(ValueError, match="one value per cell"):
        WGANGP(get_geometry("calogan"), 1, data_dim=507)


def test_end_to_end_train_and_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A few framework steps with the real boxcox transform: pretrain, train, EMA, save, reload, sample."""
    train_mod = pytest.importorskip("calosim.train")
    from calosim.io import ShowerData, write_showers

    geo = _stack_geometry(2, (6, 6))
    x, c = next(_toy_batches(geo, 1, batch=96, seed=3))
    x = torch.where(x > x.mean(), x, torch.zeros_like(x))  # zero cells, as in real showers
    data = ShowerData(x.numpy(), (1000.0 * torch.exp(c)).numpy(), geo)
    path = write_showers(tmp_path / "toy.h5", data)
    cfg = {**TINY, "batch_size": 16, "n_critic": 2, "regressor_steps": 3, "regressor_batches_val": 1,
           "val_every": 0, "val_size": 16, "log_every": 2, "checkpoint_every": 100}
    run_dir = train_mod.train("wgan-gp", path, tmp_path / "run", config=cfg, steps=4, seed=0, progress=False)
    from calosim.runs import load_run

    run = load_run(run_dir)
    assert run.model.config.transform == "boxcox"
    assert torch.isfinite(run.model.x_ceil).all()  # the fitted statistics were saved with the weights
    showers = run.sample({"incident_energies": np.full((10, 1), 2000.0, dtype=np.float32)}, generator=1)
    assert showers.shape == (10, geo.n_cells)
    assert np.isfinite(showers).all() and (showers >= 0).all()
    # empty cells come out as exact zeros although boxcox(0) does not invert to exactly 0 MeV
    assert (showers == 0).any()
