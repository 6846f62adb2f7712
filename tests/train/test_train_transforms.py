"""Round trips and basic properties of the preprocessing transforms."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from calosim.geometry import get_geometry
from calosim.train.transforms import get_transform, list_transforms, postprocess

NAMES = ["identity", "scale", "log", "boxcox", "layer-norm", "logit"]

pytestmark = pytest.mark.usefixtures("one_thread")



def _showers(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, object]:
    geo = get_geometry("calogan")
    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(np.log(1e3), np.log(1e5), (n, 1)))  # 1-100 GeV in MeV
    w = rng.gamma(0.5, 1.0, (n, geo.n_cells)) * (rng.random((n, geo.n_cells)) < 0.6)  # many exact zeros
    w[:, geo.layer_slices[2]] *= rng.random((n, 1)) < 0.8  # some empty layers
    showers = 0.9 * e * w / w.sum(1, keepdims=True)
    return torch.tensor(showers, dtype=torch.float32), torch.tensor(e, dtype=torch.float32), geo


def test_registry_lists_all() -> None:
    assert set(NAMES) <= set(list_transforms())
    with pytest.raises(ValueError, match="unknown transform"):
        get_transform("nope", get_geometry("calogan"))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: str) -> None:
    x, e, geo = _showers()
    t = get_transform(name, geo).fit(x[:200], e[:200])
    for xs, es in ((x[:200], e[:200]), (x[200:], e[200:])):  # training and unseen showers
        z = t(xs, es)
        assert z.shape == (len(xs), t.out_dim)
        assert torch.isfinite(z).all()
        back = t.inverse(z, es)
        assert back.shape == xs.shape
        torch.testing.assert_close(back, xs, rtol=2e-3, atol=1e-5 * float(es.max()))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_restores_fit(name: str) -> None:
    x, e, geo = _showers()
    t = get_transform(name, geo).fit(x, e)
    cfg = t.config()
    t2 = get_transform(cfg.pop("name"), geo, **cfg)
    t2.load_state_dict(t.state_dict())
    torch.testing.assert_close(t2(x, e), t(x, e))


@pytest.mark.parametrize("name", NAMES)
def test_inverse_is_differentiable(name: str) -> None:
    x, e, geo = _showers(64)
    t = get_transform(name, geo).fit(x, e)
    z = t(x, e).detach().requires_grad_(True)
    t.inverse(z, e).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_standardised_transforms_are_centred() -> None:
    x, e, geo = _showers(300)
    for name in ("log", "boxcox", "logit"):
        z = get_transform(name, geo).fit(x, e)(x, e)
        assert z.mean(0).abs().max() < 1e-3, name
        assert ((z.std(0) - 1).abs() < 1e-2).float().mean() > 0.95, name


def test_boxcox_lambdas_fitted_and_inverse_clamps() -> None:
    x, e, geo = _showers(400)
    t = get_transform("boxcox", geo).fit(x, e)
    lam = t.lmbda
    assert (lam != 0).float().mean() > 0.9
    assert lam.min() >= -1 and lam.max() <= 2
    wild = torch.full((4, geo.n_cells), 1e4)
    out = t.inverse(torch.cat([wild, -wild]), e[:8])
    assert torch.isfinite(out).all()


def test_layer_norm_layout() -> None:
    x, e, geo = _showers(50)
    t = get_transform("layer-norm", geo).fit(x, e)
    z = t(x, e)
    assert t.out_dim == geo.n_cells + geo.n_layers
    frac = z[:, geo.n_cells:]
    torch.testing.assert_close(frac, torch.tensor(geo.layer_energies(x.numpy())) .float() / e, rtol=1e-5, atol=1e-7)
    for i, s in enumerate(geo.layer_slices):
        sums = z[:, s].sum(1)
        nonempty = frac[:, i] > 0
        torch.testing.assert_close(sums[nonempty], torch.ones(int(nonempty.sum())), rtol=1e-5, atol=1e-5)
        assert (sums[~nonempty] == 0).all()


def test_postprocess() -> None:
    x = torch.tensor([[1.0, -2.0, float("nan"), 0.005, float("inf"), 3.0]])
    out, bad = postprocess(x, threshold_mev=0.01)
    assert bad == 2
    assert out.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0, 3.0]]


def test_vectorised_boxcox_matches_scipy() -> None:
    from scipy.stats import boxcox_normmax

    from calosim.train.transforms import boxcox_lambda_mle

    rng = np.random.default_rng(1)
    cols = [rng.gamma(k, 1.0, 400) for k in (0.3, 1.0, 3.0)] + [rng.lognormal(0, 1, 400)]
    x = np.stack(cols, 1)
    x[rng.random(x.shape) < 0.3] = np.nan  # missing (zero) cells
    got = boxcox_lambda_mle(x)
    want = [np.clip(boxcox_normmax(c[~np.isnan(c)], method="mle"), -1, 2) for c in x.T]
    np.testing.assert_allclose(got, want, atol=1e-3)
