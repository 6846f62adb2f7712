"""The calogan model: locally-connected layer, shapes, non-negativity, folding, train step,
energy loss, export, and a tiny end-to-end run through the training framework."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calosim.geometry import Geometry, get_geometry
from calosim.models.calogan import CaloGAN, _gumbel
from calosim.models.layers import LocallyConnected2d, from_flat, to_flat
from calosim.features import hit_counts
from calosim.features import layer_energies as layer_sums
from calosim.models.energy import EnergyMDN, energy_fractions, energy_vector
from toys import FakeConditions, FakeCtx, IdentityTransform, two_layer_geometry

# the seed's design (G draws every cell); the MDN tests below switch layer_energies to "mdn"
SMALL = {"latent_dim": 8, "g_channels": (3, 3, 3), "d_channels": (4, 2), "d_hidden": 8, "mbd_kernels": 3,
         "layer_energies": "generator", "output_activation": "relu", "mirror": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster and does not fight other processes for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FractionTransform:
    """Like the framework's 'scale': x = E_cell / E_inc."""

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return x_mev / e_inc

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x * e_inc


def fake_batch(geo: Geometry, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sparse non-negative showers summing to 0.9 E_inc, E_inc log-uniform in 1-100 GeV (MeV)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.empty(n, 1).uniform_(math.log(1e3), math.log(1e5), generator=g))
    w = torch.rand(n, geo.n_cells, generator=g) ** 4 * (torch.rand(n, geo.n_cells, generator=g) < 0.4)
    x = 0.9 * e * w / w.sum(1, keepdim=True)
    return x, FakeConditions.encode(e)


def make(geo: Geometry, cond_dim: int = 1, **cfg: Any) -> CaloGAN:
    torch.manual_seed(0)
    return CaloGAN(geo, cond_dim, {**SMALL, **cfg})


def first_step(model: CaloGAN, x: Tensor, cond: Tensor, ctx: Any) -> dict[str, float]:
    """What the framework does on a fresh run: fit the statistics on a batch, then train on it."""
    model.fit_statistics(x, cond, ctx)
    return model.train_step(x, cond, ctx)


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,shape", [((2, 2), (4, 6)), ((1, 2), (1, 5)), ((3, 2), (5, 4)), ((2, 1), (3, 1))])
def test_locally_connected_matches_naive(kernel: tuple[int, int], shape: tuple[int, int]) -> None:
    torch.manual_seed(1)
    h, w = shape
    kh, kw = kernel
    lc = LocallyConnected2d(3, 2, h * w + kw - 1, w, kernel)
    nn.init.normal_(lc.bias)
    img = torch.randn(5, 3, h, w)
    got = from_flat(lc(to_flat(img, kw - 1)), (h - kh + 1, w - kw + 1), w)
    want = torch.zeros(5, 2, h - kh + 1, w - kw + 1)
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            wt = lc.weight[:, i * w + j].view(kh, kw, 2, 3)  # (dy, dx, out, in)
            patch = img[:, :, i:i + kh, j:j + kw]  # (B, in, dy, dx)
            want[:, :, i, j] = torch.einsum("bcyx,yxoc->bo", patch, wt) + lc.bias[i * w + j, :, 0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geo", [get_geometry("calogan"), two_layer_geometry()], ids=["calogan", "two-layer"])
def test_sample_shape_and_nonnegative(geo: Geometry) -> None:
    model = make(geo)
    cond = FakeConditions.encode(torch.full((17, 1), 5e3))
    x = model.sample(cond, torch.Generator().manual_seed(0))
    assert x.shape == (17, geo.n_cells)
    assert torch.isfinite(x).all() and (x >= 0).all()
    assert model.training  # sample() restores the mode it found
    again = model.sample(cond, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again)


def test_particle_condition() -> None:
    geo = two_layer_geometry()
    model = make(geo, cond_dim=3)
    cond = torch.cat([FakeConditions.encode(torch.full((6, 1), 2e4)), F.one_hot(torch.arange(6) % 2, 2).float()], 1)
    x = model.sample(cond)
    assert x.shape == (6, geo.n_cells) and (x >= 0).all() and (x > 0).any()


@pytest.mark.parametrize("transform", [IdentityTransform(), FractionTransform()], ids=["identity", "fraction"])
def test_exp_output_floor_is_calibrated_in_mev(transform: Any) -> None:
    """The exp output zeroes cells below a fixed energy in MeV, whatever E_inc and transform."""
    geo = get_geometry("calogan")
    model = make(geo, output_activation="exp", init_gain=0.5)
    x_mev, cond = fake_batch(geo, 64)
    e = FakeConditions().incident_energy(cond)
    first_step(model, transform.forward(x_mev, e), cond, FakeCtx(model, transform=transform))
    floor_mev = float(torch.quantile(x_mev[x_mev > 0], 0.01))
    g = model.generator
    cond_test = FakeConditions.encode(torch.tensor([[1e3], [1e4], [1e5]]))
    floor = torch.exp(model.floor_ab[0] + model.floor_ab[1] * cond_test[:, 0])
    want = transform.forward(torch.full((3, 1), floor_mev), FakeConditions().incident_energy(cond_test))[:, 0]
    torch.testing.assert_close(floor, want, rtol=1e-4, atol=0.0)
    assert (model.sample(cond_test) >= 0).all()
    with torch.no_grad():
        for b in g.log_bias:
            b.fill_(-60.0)  # everything below the floor: exact zeros
    assert (model.sample(cond_test) == 0).all()


def test_eval_folding_matches_unfolded_layers() -> None:
    """Eval mode folds dense+conv and the batch norms: must equal the plain layer sequence."""
    model = make(get_geometry("calogan"))
    lagan = model.generator.lagans[0]
    for bn in (lagan.bn1, lagan.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    lagan.eval()
    h = torch.randn(9, lagan.dense.in_features)
    img = lagan.conv(lagan.dense(h).view(9, lagan.c0, *lagan.grid))
    x = lagan.bn1(F.leaky_relu(to_flat(img, lagan.tail), 0.2))
    x = lagan.lc2(lagan.bn2(F.leaky_relu(lagan.lc1(x), 0.2)))
    want = from_flat(x, lagan.shape, lagan.grid[1])[:, 0].permute(1, 2, 0)
    with torch.no_grad():
        torch.testing.assert_close(lagan(h), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["ns", "wgan-gp"])
def test_train_step_changes_weights(loss: str) -> None:
    geo = get_geometry("calogan")
    model = make(geo, loss=loss)
    ctx = FakeCtx(model)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    x, cond = fake_batch(geo, 16)
    out = first_step(model, x, cond, ctx)
    assert set(out) >= {"loss_d", "loss_g", "loss_e"} and all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
    assert abs(float(model.discriminator.response) - 0.9) < 1e-4  # calibrated on the real batch


class _FixedSumGenerator(nn.Module):
    """Stand-in generator whose showers sum to ``fraction * E_inc`` by construction."""

    def __init__(self, n_cells: int, fraction: float) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_cells))
        self.fraction, self.latent_dim = fraction, 4

    def forward(self, z: Tensor, cond: Tensor, floor_ab: Tensor | None = None, f: Tensor | None = None,
                n: Tensor | None = None) -> Tensor:
        e = FakeConditions().incident_energy(cond)
        return self.fraction * e * torch.softmax(self.logits + 0 * z[:, :1], 1)


def test_energy_loss_prefers_energy_conserving_generator() -> None:
    geo = two_layer_geometry()
    x, cond = fake_batch(geo, 32)
    e = FakeConditions().incident_energy(cond)
    losses = {}
    for frac in (1.0, 0.6):
        model = make(geo, energy_response=1.0)
        model.generator = _FixedSumGenerator(geo.n_cells, frac)
        losses[frac] = first_step(model, x, cond, FakeCtx(model))["loss_e"]
    assert losses[1.0] < 1e-5 < losses[0.6]
    assert abs(losses[0.6] - 0.4) < 1e-4
    # the static form, with a detector response: sum = 0.9 E_inc is exact when response = 0.9
    assert float(CaloGAN.energy_loss(x, e, 0.9)) < 1e-5 < float(CaloGAN.energy_loss(x, e, 1.0))


def test_rejects_bad_config() -> None:
    geo = two_layer_geometry()
    with pytest.raises(ValueError, match="loss"):
        make(geo, loss="lsgan")
    with pytest.raises(ValueError, match="data_dim"):
        CaloGAN(geo, 1, SMALL, data_dim=geo.n_cells + geo.n_layers)  # the layer-norm transform


@pytest.mark.parametrize("mode", ["generator", "mdn"])
def test_end_to_end_tiny_training(tmp_path: Path, mode: str) -> None:
    """A few steps through calosim.train on tiny simulated data (with "mdn": pretraining the
    energy network first), then sampling from the run."""
    train_mod = pytest.importorskip("calosim.train")
    from calosim.simulate import simulate_to_file

    path = simulate_to_file(tmp_path / "e.h5", "calogan", "e+", 96, energy="1:100", seed=1)
    run_dir = train_mod.train("calogan", path, tmp_path / "run", steps=3, progress=False,
                              config={**(MDN if mode == "mdn" else SMALL), "batch_size": 16, "val_size": 16,
                                      "val_every": 0, "log_every": 1, "checkpoint_every": 10})
    assert ("mdn_nll" in (run_dir / "train_summary.json").read_text()) == (mode == "mdn")
    from calosim.runs import load_run

    run = load_run(run_dir)
    ref = {"incident_energies": np.array([[2e3], [5e4]])}
    showers = run.sample(ref, generator=0)
    assert showers.shape == (2, 504) and np.isfinite(showers).all() and (showers >= 0).all()


# ------------------------------------------------------------------------------------------
# layer_energies="mdn": energy vector, mixture-density network, normalised shapes
# ------------------------------------------------------------------------------------------
MDN = {**SMALL, "layer_energies": "mdn", "output_activation": "exp", "transform": "scale", "mirror": "auto",
       "mdn_components": 3, "mdn_hidden": 16, "mdn_steps": 5, "mdn_batches": 1}


def test_energy_vector_round_trip_with_empty_layers() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.rand(200, 3, generator=g, dtype=torch.float64)
    f[:20, 2] = 0.0  # empty last layer
    f[20:40, 0] = 0.0  # empty first layer
    t = energy_vector(f)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t[:, 0], torch.log(f.sum(1)))  # t_0 is the log response
    back = energy_fractions(t)
    torch.testing.assert_close(back, f, rtol=1e-5, atol=1e-5 * float(f.sum(1).max()))
    assert (back >= 0).all()


def test_mdn_learns_a_known_conditional_gaussian() -> None:
    """t | c ~ N((2c, -c), [[1, .8], [.8, 1]] * 0.09): the fitted density reaches the true entropy
    and its samples have the true conditional mean and covariance."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    chol = 0.3 * torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    def draw(n: int) -> tuple[Tensor, Tensor]:
        c = torch.rand(n, 1, generator=g) * 2 - 1
        return torch.cat([2 * c, -c], 1) + torch.randn(n, 2, generator=g) @ chol.t(), c
    mdn = EnergyMDN(1, 2, components=2, hidden=32)
    opt = torch.optim.Adam(mdn.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for _ in range(800):
        t, c = draw(512)
        loss = -mdn.log_prob(t, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    t, c = draw(20_000)
    with torch.no_grad():
        nll = -float(mdn.log_prob(t, c).mean())
        entropy = 0.5 * 2 * (1 + math.log(2 * math.pi)) + float(torch.log(torch.diagonal(chol)).sum())
        assert abs(nll - entropy) < 0.05
        c0 = torch.full((20_000, 1), 0.5)
        s = mdn.sample(c0, torch.randn(20_000, 3, generator=g))
    torch.testing.assert_close(s.mean(0), torch.tensor([1.0, -0.5]), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(s.t()), chol @ chol.t(), atol=0.01, rtol=0)


def test_mdn_mode_layer_sums_follow_the_energy_network() -> None:
    """G draws normalised shapes: every generated layer sums to the sampled layer energy."""
    geo = get_geometry("calogan")
    model = make(geo, **MDN)
    x_mev, cond = fake_batch(geo, 64)
    e = FakeConditions().incident_energy(cond)
    ctx = FakeCtx(model, transform=FractionTransform())
    x = FractionTransform().forward(x_mev, e)
    model.fit_statistics(x, cond, ctx)
    model.pretrain(iter(lambda: (x, cond), None), ctx)
    out = model.train_step(x, cond, ctx)
    assert all(math.isfinite(v) for v in out.values())
    z = model.latent(64, torch.Generator().manual_seed(2))
    n = model.generator.latent_dim
    with torch.no_grad():
        t = model.energy.sample(cond, z[:, n:n + 1 + 2 * geo.n_layers]) * model.t_std + model.t_mean
        f = energy_fractions(t[:, :geo.n_layers])
        hits = torch.minimum(torch.floor(torch.exp(t[:, geo.n_layers:])), model.n_cells_per_layer)
        model.generator.eval()
        gen = model.export_module()(z, cond)
    assert (gen >= 0).all() and torch.isfinite(gen).all()
    torch.testing.assert_close(layer_sums(gen, geo), f, rtol=1e-4, atol=1e-7)
    # cells are either exactly 0 or at least the calibrated floor
    floor = torch.exp(model.floor_ab[0] + model.floor_ab[1] * cond[:, 0])[:, None]
    assert ((gen == 0) | (gen >= floor * (1 - 1e-5))).all()
    # exactly the sampled number of hits, as far as the layer energy allows (>= 1 per non-empty layer)
    k = torch.minimum(hits, torch.floor(f / floor)).clamp_min(1)
    torch.testing.assert_close(hit_counts(gen, geo), k)


def test_mdn_mode_teacher_forcing_matches_real_layer_energies() -> None:
    """In training, fake showers share the real batch's layer energies (D judges shapes only)."""
    geo = two_layer_geometry()
    model = make(geo, **MDN)
    x_mev, cond = fake_batch(geo, 32)
    x = FractionTransform().forward(x_mev, FakeConditions().incident_energy(cond))
    model.fit_statistics(x, cond, FakeCtx(model, transform=FractionTransform()))
    with torch.no_grad():
        g_cond = torch.cat([cond, model.standardised_energy(x)], 1)
        fake = model.generator(torch.randn(32, model.generator.latent_dim), g_cond, model.floor_ab, layer_sums(x, geo),
                               hit_counts(x, geo))
    torch.testing.assert_close(layer_sums(fake, geo), layer_sums(x, geo), rtol=1e-4, atol=1e-7)
    # and so do the hit counts, wherever the layer energy allows one floor per real hit
    floor = torch.exp(model.floor_ab[0] + model.floor_ab[1] * cond[:, 0])[:, None]
    allowed = torch.minimum(hit_counts(x, geo), torch.floor(layer_sums(x, geo) / floor)).clamp_min(1)
    torch.testing.assert_close(hit_counts(fake, geo), allowed)


def test_mdn_mode_export_equals_sample_and_rejects_nonlinear_transform() -> None:
    geo = get_geometry("calogan")
    model = make(geo, **MDN)
    want = model.sample(FakeConditions.encode(torch.full((5, 1), 3e4)), torch.Generator().manual_seed(3))
    z = model.latent(5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.export_module()(z, FakeConditions.encode(torch.full((5, 1), 3e4)))
    torch.testing.assert_close(got, want)
    # energies and hits, then two reflection signs
    assert model.latent_dim == model.generator.latent_dim + 1 + 2 * geo.n_layers + 2
    with pytest.raises(ValueError, match="linear"):
        make(geo, **{**MDN, "transform": "boxcox"})



def test_hit_layer_gradients_are_finite_for_empty_and_full_layers() -> None:
    """An empty layer (f below the floor: k = 0) and a saturated one (k = P) give finite gradients."""
    geo = two_layer_geometry()
    g = make(geo, **MDN).generator
    x = torch.randn(35, 4, requires_grad=True)
    f = torch.tensor([0.0, 5e-6, 0.3, 0.5])  # empty, below the floor, normal, normal
    n = torch.tensor([3.0, 2.0, 10.0, 35.0])
    floor = torch.full((4,), 1e-5)
    out = g._with_hits(x, f, n, floor)
    torch.testing.assert_close(out.sum(0), torch.tensor([0.0, 0.0, 0.3, 0.5]))
    assert (out > 0).sum(0).tolist() == [0, 0, 10, 35]
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mirror_reflects_whole_showers_and_auto_detects_symmetry() -> None:
    geo = two_layer_geometry()
    model = make(geo, **MDN)
    x = torch.arange(geo.n_cells, dtype=torch.float32)[None].repeat(4, 1)
    z = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    out = model.mirror(x, z)
    img0 = out[:, :35].view(4, 5, 7)
    ref0 = x[0, :35].view(5, 7)
    torch.testing.assert_close(img0[0], ref0)
    torch.testing.assert_close(img0[1], ref0.flip(1))  # x -> -x
    torch.testing.assert_close(img0[2], ref0.flip(0))  # y -> -y
    torch.testing.assert_close(img0[3], ref0.flip(0).flip(1))
    torch.testing.assert_close(out[1, 35:], x[0, 35:].flip(0))  # the 1x9 layer: columns reversed
    torch.testing.assert_close(out.sum(1), x.sum(1))
    # auto: a centred symmetric batch switches it on, showers all off to one side switch it off
    ctx = FakeCtx(model, transform=FractionTransform())
    sym, cond = fake_batch(geo, 256)
    e = FakeConditions().incident_energy(cond)
    sym = 0.5 * (sym + sym[:, model.mirror.perm_x])
    sym = 0.5 * (sym + sym[:, model.mirror.perm_y])
    model.fit_statistics(sym / e, cond, ctx)
    assert bool(model.mirror.on)
    side = sym.clone()
    side[:, :35] = side[:, :35].view(-1, 5, 7).mul(torch.tensor([0, 0, 0, 0, 1.0, 2.0, 4.0])).reshape(-1, 35)
    model.fit_statistics(side / e, cond, ctx)
    assert not bool(model.mirror.on)
    assert make(geo, **{**MDN, "mirror": False}).mirror is None


def test_gumbel_top_k_draws_hits_from_the_shape() -> None:
    """k = 1: the hit cell is drawn with probability softmax(x) (the Gumbel-max trick);
    the Gumbel variates from normal latents have the standard Gumbel mean and spread."""
    g = torch.Generator().manual_seed(0)
    gum = _gumbel(torch.randn(200_000, generator=g))
    assert float(gum.mean()) == pytest.approx(0.5772, abs=0.01)
    assert float(gum.std()) == pytest.approx(math.pi / math.sqrt(6), abs=0.01)
    gen = make(two_layer_geometry(), **MDN).generator
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b = 40_000
    x = torch.log(p)[:, None].expand(4, b)
    floor = torch.full((b,), 1e-3)
    with torch.no_grad():
        out = gen._with_hits(x, torch.ones(b), torch.ones(b), floor, _gumbel(torch.randn(4, b, generator=g)))
    assert ((out > 0).sum(0) == 1).all()
    torch.testing.assert_close((out > 0).float().mean(1), p, atol=0.01, rtol=0)
