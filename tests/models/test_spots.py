"""The spots model: the spot-count solve, the spot sampler's known statistics, and a shape fit
that recovers a known condition-dependent shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from calosim.features import layer_energies as layer_sums
from calosim.models._random import normal_cdf
from calosim.models.spots import Spots, spot_count, spot_layer
from toys import FakeCtx, two_layer_geometry, prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bad_config_is_named() -> None:
    geo = two_layer_geometry()
    with pytest.raises(ValueError, match="'transform' must be \"scale\" or \"identity\""):
        Spots(geo, 1, {"transform": "log"})
    with pytest.raises(ValueError, match="spot_shape"):
        Spots(geo, 1, {"spot_shape": 0})


def test_spot_count_solves_the_expected_hits() -> None:
    """sum_i 1 - exp(-N p_i) = n, for peaked and flat shapes, few and almost all cells."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3.0 * torch.randn(6, 200, generator=g), 1)
    p[0] = 1.0 / 200  # flat
    n = torch.tensor([1.0, 5.0, 40.0, 120.0, 180.0, 0.0])
    big_n = spot_count(p.double(), n.double(), iterations=40)
    hits = (1 - torch.exp(-big_n[:, None] * p.double())).sum(1)
    torch.testing.assert_close(hits, n.double(), atol=1e-6, rtol=1e-6)
    # the default iterations suffice for shower-like shapes: a GFlash-like radial profile
    # 1 / (r^2 + R^2)^2 on a 12 x 12 grid, from a single hit to 90 % of the cells
    yy, xx = torch.meshgrid(torch.arange(12.0) - 5.5, torch.arange(12.0) - 5.5, indexing="ij")
    rows = [1.0 / ((xx**2 + yy**2).flatten() + r**2) ** 2 for r in (0.7, 1.5, 3.0)]
    p = torch.stack(rows).repeat(5, 1)
    p = p / p.sum(1, keepdim=True)
    n = torch.tensor([1.0, 5.0, 20.0, 60.0, 130.0]).repeat_interleave(3)
    hits32 = (1 - torch.exp(-spot_count(p, n)[:, None] * p)).sum(1)
    assert torch.all((hits32 - n).abs() <= 2e-3 * n + 1e-3), (hits32 - n)


def test_spot_layer_conserves_energy_and_hits_follow_the_poisson_rate() -> None:
    g = torch.Generator().manual_seed(1)
    b, size = 20_000, 30
    logp = torch.log_softmax(torch.linspace(0.0, -4.0, size), 0).expand(b, size)
    f = torch.rand(b, generator=g) + 0.5
    f[:100] = 0.0  # empty layers stay empty
    n = torch.full((b,), 8.0)
    x = spot_layer(logp, f, n, torch.randn(b, size, generator=g), spot_shape=8.0)
    assert (x >= 0).all() and torch.isfinite(x).all()
    torch.testing.assert_close(x.sum(1), f, rtol=1e-5, atol=0.0)
    assert (x[:100] == 0).all() and ((x[100:] > 0).sum(1) >= 1).all()
    # cell i is hit with probability 1 - exp(-N p_i); on average the layer has n hits
    big_n = spot_count(torch.exp(logp[:1]), n[:1])
    want = 1 - torch.exp(-big_n * torch.exp(logp[0]))
    got = (x[100:] > 0).float().mean(0)
    torch.testing.assert_close(got, want, atol=0.015, rtol=0)
    assert abs(float((x[100:] > 0).sum(1).float().mean()) - 8.0) < 0.1
    # a cell's energy share follows its expected spot count: dense cells ~ N p_i / N
    share = (x[100:] / f[100:, None]).mean(0)
    assert share[0] > share[size // 2] > share[-1]


def test_spot_layer_never_loses_the_energy_of_a_layer_whose_draw_is_empty() -> None:
    """n = 1 leaves ~exp(-1) of the draws without a hit: they get one cell drawn from p."""
    g = torch.Generator().manual_seed(2)
    b, size = 5000, 10
    logp = torch.log_softmax(torch.tensor([2.0] + [0.0] * (size - 1)), 0).expand(b, size)
    x = spot_layer(logp, torch.ones(b), torch.ones(b), torch.randn(b, size, generator=g), 8.0)
    torch.testing.assert_close(x.sum(1), torch.ones(b))
    assert ((x > 0).sum(1) >= 1).all()


def test_shape_fit_recovers_a_known_condition_dependent_shape() -> None:
    """Showers drawn by the spot sampler from a shape whose centre moves with the condition:
    the fitted model's shape is that shape (KL < 0.02 nats), and its samples have the true
    mean centroid per condition."""
    torch.manual_seed(0)
    geo = two_layer_geometry()
    sizes = [l.n_cells for l in geo.layers]
    pos = [torch.arange(s, dtype=torch.float32) for s in sizes]

    def true_logp(c: Tensor) -> list[Tensor]:  # c in [-1, 1]: the centre moves across the layer
        return [torch.log_softmax(-0.5 * ((q[None] - (s - 1) / 2 * (1 + 0.6 * c)) / 2.0) ** 2, 1)
                for q, s in zip(pos, sizes)]

    g = torch.Generator().manual_seed(3)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        c = torch.rand(n, 1, generator=g) * 2 - 1
        f = torch.stack([torch.full((n,), 0.6), torch.full((n,), 0.3)], 1)
        hits = torch.stack([torch.full((n,), 10.0), torch.full((n,), 4.0)], 1)
        x = torch.cat([spot_layer(lp, f[:, i], hits[:, i], torch.randn(n, s, generator=g), 8.0)
                       for i, (lp, s) in enumerate(zip(true_logp(c), sizes))], 1)
        return x, c

    model = Spots(geo, 1, {"hidden": 32, "mdn_steps": 150, "mdn_batches": 1, "lr": 1e-2, "steps": 400})
    ctx = FakeCtx(model, total_steps=400)
    prepare(model, iter(lambda: draw(256), None), ctx)
    for step in range(400):
        ctx.step = step
        model.train_step(*draw(256), ctx)
    x, c = draw(2000)
    with torch.no_grad():
        t = (model.energy_target(x) - model.t_mean) / model.t_std
        got = model.shape(torch.cat([c, t], 1))
        for lp_true, lp in zip(true_logp(c), got):
            kl = (lp_true.exp() * (lp_true - lp)).sum(1).mean()
            assert float(kl) < 0.02
        gen = model.sample(c, torch.Generator().manual_seed(4))
    assert (gen >= 0).all() and torch.isfinite(gen).all()
    # the mean position (flat cell index) in layer a moves with c as in the data
    slopes = []
    for s in (x, gen):
        centre = (s[:, :sizes[0]] / s[:, :sizes[0]].sum(1, keepdim=True)) @ pos[0]
        slopes.append(float(((centre - centre.mean()) * (c[:, 0] - c[:, 0].mean())).mean() / c[:, 0].var()))
    assert abs(slopes[1] - slopes[0]) < 0.1 * abs(slopes[0]), slopes
    torch.testing.assert_close(layer_sums(gen, geo).mean(0), layer_sums(x, geo).mean(0), rtol=0.05, atol=0)


def test_spot_layer_is_finite_for_extreme_shapes() -> None:
    """Cells with vanishing probability (spot rates that round to 0 in float32) stay exactly 0."""
    g = torch.Generator().manual_seed(5)
    logits = torch.full((64, 50), -200.0)
    logits[:, 0] = 0.0
    logits[32:, 1:5] = -20.0
    x = spot_layer(torch.log_softmax(logits, 1), torch.ones(64), torch.full((64,), 3.0),
                   5.0 * torch.randn(64, 50, generator=g), 8.0)
    assert torch.isfinite(x).all() and (x >= 0).all()
    torch.testing.assert_close(x.sum(1), torch.ones(64))
    assert (x[:, 5:] == 0).all()


def test_centroids_option_extends_the_energy_vector() -> None:
    """``centroids``: t gains each layer's energy-weighted (x, y), which a one-cell layer puts
    at that cell's centre; the model still trains and samples valid showers."""
    geo = two_layer_geometry()
    model = Spots(geo, 1, {"hidden": 16, "mdn_steps": 5, "mdn_batches": 1, "centroids": True})
    xs, ys = geo.cell_centers()
    x = torch.zeros(2, geo.n_cells)
    x[0, 3], x[0, 35 + 4] = 2.0, 1.0  # layer a: cell 3, layer b: cell 4
    x[1, 10] = 1.0  # layer b empty
    t = model.energy_target(x)
    assert t.shape == (2, 4 * geo.n_layers) and model.latent_dim == 1 + 8 + geo.n_cells
    torch.testing.assert_close(t[0, 4:], torch.tensor([xs[3], ys[3], xs[39], ys[39]], dtype=torch.float32))
    torch.testing.assert_close(t[1, 6:], torch.zeros(2))
    g = torch.Generator().manual_seed(6)

    def draw() -> tuple[Tensor, Tensor]:
        w = torch.rand(64, geo.n_cells, generator=g) * (torch.rand(64, geo.n_cells, generator=g) < 0.3)
        return w / w.sum(1, keepdim=True), torch.rand(64, 1, generator=g)

    ctx = FakeCtx(model)
    prepare(model, iter(draw, None), ctx)
    assert math.isfinite(model.train_step(*draw(), ctx)["loss_shape"])
    gen = model.sample(torch.rand(32, 1, generator=g), g)
    assert gen.shape == (32, geo.n_cells) and torch.isfinite(gen).all() and (gen >= 0).all()


def test_small_batches_are_drawn_in_numpy_with_the_same_showers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NumPy path of small eager batches (all layers in one padded block; unlike layer sizes:
    35 and 9 cells) draws the same showers from the same noise as the torch per-layer loop of
    large batches, at batch 1 and above, including empty layers and layers whose hit count is
    at the cell count; batches above SMALL_BATCH and batches with gradients take the torch path."""
    import calosim.models.spots as spots

    geo = two_layer_geometry()
    model = Spots(geo, 1, {"hidden": 16, "mdn_steps": 0})
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        model.shape.out.bias.normal_(0.0, 2.0, generator=g)  # uneven shapes
        model.t_std.fill_(2.0)  # spread hit counts: some 0, some at the layer's size
    cond = torch.rand(48, 1, generator=g)
    z = model.latent(48, g)
    sampler = spots._Sampler(model)
    with torch.no_grad():
        monkeypatch.setattr(spots, "SMALL_BATCH", 0)
        looped = sampler(z, cond)
        monkeypatch.setattr(spots, "SMALL_BATCH", 64)
        fast = sampler(z, cond)
        one = sampler(z[:1], cond[:1])
    with torch.enable_grad():  # differentiable: the torch path even for a small batch
        torch.testing.assert_close(sampler(z[:4], cond[:4]), looped[:4], rtol=0, atol=0)
    torch.testing.assert_close(fast, looped, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one, looped[:1], rtol=1e-5, atol=1e-7)
    assert torch.equal(fast > 0, looped > 0)
    hits = torch.stack([(looped[:, s] > 0).sum(1) for s in geo.layer_slices], 1)
    assert (hits == 0).any() and (hits[:, 1] >= 8).any()  # the edge cases occur


def test_numpy_spot_layer_matches_torch_on_padded_layers_and_empty_draws() -> None:
    """``_spot_layer_numpy`` on a padded ``(B, L, P)`` block: the cells of :func:`spot_layer`,
    here with n = 1 (about a third of the draws leave the layer empty and take the one-cell
    Gumbel draw), n = 0 with f = 0 (an empty layer) and padding cells (-inf) that stay empty."""
    from calosim.models.spots import _spot_layer_numpy

    g = torch.Generator().manual_seed(3)
    b, size = 400, 12
    logp = torch.log_softmax(torch.randn(b, 2, size, generator=g), -1)
    logp[:, 1, 9:] = -math.inf  # layer 1 has 9 cells
    logp[:, 1] = torch.log_softmax(logp[:, 1], -1)
    f = torch.rand(b, 2, generator=g) + 0.1
    n = torch.ones(b, 2)
    n[:50, 0], f[:50, 0] = 0.0, 0.0
    z = torch.randn(b, 2, size, generator=g)
    want = spot_layer(logp, f, n, z, 8.0, static=False)
    u = normal_cdf(z)
    got = torch.from_numpy(_spot_layer_numpy(logp.numpy(), f.numpy(), n.numpy(), u.numpy(), 8.0))
    p = logp.exp()
    empty_draws = (u < 1 - torch.exp(-spot_count(p, n)[..., None] * p)).sum(-1) == 0
    assert int((empty_draws & (f > 0)).sum()) > 50  # the Gumbel fallback is exercised
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)  # float rounding: NumPy's exp is not torch's
    assert torch.equal(got > 0, want > 0) and (got[:, 1, 9:] == 0).all() and (got[:50, 0] == 0).all()
