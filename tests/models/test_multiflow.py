"""multiflow (models/multiflow.py): the seed's context structure, the preprocessing, the
energy rescaling, a layer flow's likelihood on a known Gaussian, and the CLI on a tiny file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from calosim.cli import main
from calosim.geometry import Geometry, Layer, Material
from calosim.io import ShowerData, read_showers, write_showers
from calosim.models import get_model_class
from calosim.models.multiflow import LayerFlow, MultiFlow
from toys import FakeConditions, FakeCtx, two_layer_geometry

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"transform": "identity", "hidden": 8, "embed": 8, "transforms": 2, "energy_hidden": 8,
        "energy_transforms": 2}


def deep_geometry(n_layers: int = 8) -> Geometry:
    """``n_layers`` layers of 2x2 cells (enough depth for a 5-layer context window)."""
    mat = Material("W", "Si", x0_mm=3.5, lambda_mm=99.0, moliere_mm=9.3, critical_mev=8.0)
    return Geometry("deep", tuple(Layer(f"l{i}", "cartesian", (2, 2), z_mm=5.0 * i, thickness_mm=5.0, material=mat,
                                        cell_mm=(5.0, 5.0)) for i in range(n_layers)))


def _showers(geo: Geometry, n: int, seed: int = 0, zeros: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.empty(n, 1).uniform_(math.log(1e4), math.log(1e5), generator=g))
    w = (0.05 + torch.rand(n, geo.n_cells, generator=g)) * (torch.rand(n, geo.n_cells, generator=g) > zeros)
    return 0.9 * e * w / w.sum(1, keepdim=True), FakeConditions.encode(e)


def _model(geo: Geometry, **kw: object) -> tuple[MultiFlow, FakeCtx]:
    torch.manual_seed(0)
    model = get_model_class("multiflow")(geo, 1, {**TINY, **kw})
    ctx = FakeCtx(model)
    x, cond = _showers(geo, 64)
    model.fit_statistics(x, cond, ctx)
    return model, ctx


def test_context_follows_the_seed_table() -> None:
    model, _ = _model(deep_geometry(8))
    assert model.context_of(0) == [] and model.context_of(3) == [2, 1, 0]
    assert model.context_of(7) == [6, 5, 4, 3, 2]
    # context widths: 4 cells per previous layer (at most 5), E_i, 1 condition column
    assert [f.embed[0].in_features for f in model.flows] == [2, 6, 10, 14, 18, 22, 22, 22]


def test_layer_log_density_depends_only_on_its_window_its_energy_and_the_conditions() -> None:
    """d log p_i / d x is non-zero exactly on layers i-5..i (layer i: its image and E_i)."""
    geo = deep_geometry(8)
    model, _ = _model(geo)
    x, cond = _showers(geo, 16, seed=1, zeros=0.0)
    x.requires_grad_(True)
    cond = cond.clone().requires_grad_(True)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    lp = model.layer_log_probs(x, cond, u)
    slices = geo.layer_slices
    for i in (0, 3, 7):
        gx, gc = torch.autograd.grad(lp[:, i].sum(), (x, cond), retain_graph=True)
        per_layer = torch.stack([gx[:, s].abs().sum() for s in slices])
        window = set(range(max(i - 5, 0), i + 1))
        assert all(per_layer[j] > 0 for j in window), (i, per_layer)
        assert all(per_layer[j] == 0 for j in range(8) if j not in window), (i, per_layer)
        assert gc.abs().sum() > 0
    # E_i enters flow i: the same image at twice the layer energy changes its density
    x2 = x.detach().clone()
    x2[:, slices[7]] *= 2.0
    lp2 = model.layer_log_probs(x2, cond.detach(), u)
    assert not torch.allclose(lp2[:, 7], lp[:, 7].detach())
    torch.testing.assert_close(lp2[:, :2], lp[:, :2].detach())  # layers 0, 1 do not see layer 7


def test_preprocessing_round_trips_and_empty_cells_come_back_empty() -> None:
    geo = two_layer_geometry()
    model, _ = _model(geo)
    x, _ = _showers(geo, 32, seed=3)
    f = model.layer_energies(x)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    back = model.decode(model.preprocess(x, u), f)
    assert torch.equal(back == 0, x == 0)  # the noise pile is cut
    torch.testing.assert_close(back, x, rtol=5e-4, atol=0.0)  # float32 logits + the noise
    torch.testing.assert_close(model.decode(model.preprocess(x, torch.zeros_like(x)), f), x, rtol=5e-4, atol=0.0)


def test_generated_layer_energies_are_the_drawn_ones() -> None:
    geo = deep_geometry(6)
    model, _ = _model(geo)
    model.eval()
    cond = FakeConditions.encode(torch.full((40, 1), 3e4))
    x = model.sample(cond, torch.Generator().manual_seed(7))
    z = model.latent(40, torch.Generator().manual_seed(7))
    f = model.draw_energies(z[:, :geo.n_layers], cond)
    torch.testing.assert_close(model.layer_energies(x), f, rtol=1e-5, atol=0.0)
    assert torch.equal(model.layer_energies(x) == 0, f == 0) and (x >= 0).all()


def test_draw_energies_maps_the_empty_layer_spike_to_zero() -> None:
    """A fraction at energy_vector's clip (1e-6) comes back as an exactly empty layer."""
    geo = two_layer_geometry()
    model, _ = _model(geo)
    x, cond = _showers(geo, 8, seed=5)
    x[:4, geo.layer_slices[0]] = 0.0  # first layer empty in half the showers
    t = model.energy_target(x, torch.rand(8, 2, generator=torch.Generator().manual_seed(0)))
    class Exact(torch.nn.Module):  # an energy "flow" returning the targets themselves
        def inverse(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return t
    model.energy = Exact()
    f = model.draw_energies(torch.zeros(8, 2), cond)
    assert (f[:4, 0] == 0).all() and (f[4:, 0] > 0).all()
    torch.testing.assert_close(f[4:], model.layer_energies(x)[4:], rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("bins", [0, 4])
def test_layer_flow_inverse_is_the_sampling_map_of_its_density(bins: int) -> None:
    """``inverse`` inverts zuko's density direction, and log p = log N(z) - log|det dy/dz|
    with the Jacobian of ``inverse`` by autograd (exact change of variables)."""
    torch.manual_seed(0)
    d = 3
    flow = LayerFlow(d, 1, kind="coupling", transforms=4, bins=bins, hidden=16, depth=1, embed=0, seed=0)
    y, c = 0.5 * torch.randn(5, d), torch.randn(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(flow.inverse(flow.flow(c).transform(y), c), y, rtol=1e-4, atol=1e-5)
    for k in range(5):
        zk = flow.flow(c[k:k + 1]).transform(y[k:k + 1])
        jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v, c[k:k + 1]), zk).reshape(d, d)
        want = -0.5 * (zk ** 2).sum() - 0.5 * d * math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(flow.log_prob(y[k:k + 1], c[k:k + 1])[0], want, rtol=1e-4, atol=1e-4)


def test_layer_flow_log_likelihood_on_a_known_gaussian() -> None:
    """A flow fitted to y ~ N(a c, L L^T) reaches the Gaussian's exact test log-likelihood."""
    torch.manual_seed(0)
    d = 3
    flow = LayerFlow(d, 1, kind="coupling", transforms=4, bins=0, hidden=16, depth=1, embed=0, seed=0)
    chol = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.3]])
    a = torch.tensor([1.0, -0.5, 0.3])
    dist = lambda c: torch.distributions.MultivariateNormal(c * a, scale_tril=chol)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(200):
        c = torch.randn(128, 1, generator=g)
        loss = -flow.log_prob(dist(c).sample(), c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    c = torch.randn(4000, 1, generator=g)
    yt = dist(c).sample()
    with torch.no_grad():
        got = flow.log_prob(yt, c).mean().item()
    exact = dist(c).log_prob(yt).mean().item()  # the known answer: -entropy (about -1.39 here)
    assert abs(got - exact) < 0.05 * d, (got, exact)


def test_one_cell_layer_and_bad_bins_are_refused() -> None:
    mat = Material("W", "Si", x0_mm=3.5, lambda_mm=99.0, moliere_mm=9.3, critical_mev=8.0)
    geo = Geometry("one", (Layer("a", "cartesian", (2, 2), z_mm=0.0, thickness_mm=5.0, material=mat, cell_mm=(5.0, 5.0)),
                           Layer("b", "cartesian", (1, 1), z_mm=5.0, thickness_mm=5.0, material=mat, cell_mm=(5.0, 5.0))))
    with pytest.raises(ValueError, match="layer 'b' of geometry 'one' has 1 cell"):
        MultiFlow(geo, 1)
    with pytest.raises(ValueError, match="'bins' must be 0"):
        MultiFlow(two_layer_geometry(), 1, {"bins": 1})


def test_cli_train_generate_on_a_tiny_file(tmp_path) -> None:
    geo = deep_geometry(6)
    x, cond = _showers(geo, 96, seed=9)
    e = FakeConditions().incident_energy(cond)
    write_showers(tmp_path / "d.h5", ShowerData(x.numpy(), e.numpy(), geo, {}, attrs={"particle": "photon"}))
    run = tmp_path / "run"
    sets = [a for k, v in {**TINY, "transform": "scale", "energy_steps": 5, "batch_size": 32, "val_size": 16,
                            "log_every": 1}.items() for a in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(main, ["train", "-m", "multiflow", "-d", str(tmp_path / "d.h5"), "-o", str(run),
                                  "--steps", "3", *sets])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["generate", "--run", str(run), "-n", "20", "-e", "30", "-o", str(tmp_path / "g.h5")])
    assert r.exit_code == 0, r.output
    gen = read_showers(tmp_path / "g.h5")
    assert gen.showers.shape == (20, geo.n_cells) and np.isfinite(gen.showers).all() and (gen.showers >= 0).all()
    assert (gen.showers.sum(1) > 0).all()
    pytest.importorskip("onnxruntime")
    r = CliRunner().invoke(main, ["export", "--run", str(run), "-o", str(tmp_path / "g.onnx")])  # checks vs torch
    assert r.exit_code == 0, r.output


def test_a_diverging_layer_flow_does_not_poison_the_later_layers() -> None:
    """A generated image outside the logit's range is clamped before it is context."""
    geo = deep_geometry(4)
    model, _ = _model(geo)
    model.eval()
    model.flows[0].inverse = lambda z, ctx: torch.full_like(z, float("inf")) * torch.sign(z)  # type: ignore[method-assign]
    cond = FakeConditions.encode(torch.full((10, 1), 3e4))
    x = model.sample(cond, torch.Generator().manual_seed(0))
    z = model.latent(10, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    torch.testing.assert_close(model.layer_energies(x), model.draw_energies(z[:, :4], cond), rtol=1e-5, atol=0.0)
