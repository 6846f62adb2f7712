"""Latent samplers (``models/latent.py``) against known answers: the KDE reproduces a known
Gaussian mixture (weights, means, widths) and a conditional mean; the latent flow learns a
known conditional Gaussian p(z | c) = N(a c, s^2) (log-density against the analytic one)."""

from __future__ import annotations

import math

import pytest
import torch

from calosim.models.latent import LatentFlow, LatentKDE

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
MEANS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]])
STD = 0.5


def _mixture(n: int, g: torch.Generator) -> torch.Tensor:
    comp = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return MEANS[comp] + STD * torch.randn(n, 2, generator=g)


def test_kde_moments_are_the_centres_plus_the_kernel_width() -> None:
    """Unconditional KDE (all centres are neighbours): mean = centres' mean, covariance =
    centres' covariance + diag(width^2), width = Scott's factor n^(-1/6) x the centres' std."""
    g = torch.Generator().manual_seed(0)
    z = _mixture(2000, g)
    kde = LatentKDE(2, 1, capacity=2000, neighbours=2000).fit(z, torch.zeros(2000, 1))
    s = kde(torch.randn(40000, 3, generator=g), torch.zeros(40000, 1))
    width = 2000 ** (-1 / 6) * z.std(0, unbiased=False)
    torch.testing.assert_close(s.mean(0), z.mean(0), atol=0.06, rtol=0)
    want = torch.cov(z.T, correction=0) + torch.diag(width**2)
    torch.testing.assert_close(torch.cov(s.T), want, atol=0.15, rtol=0.03)


def test_kde_reproduces_mixture_weights_means_and_widths() -> None:
    g = torch.Generator().manual_seed(1)
    z = _mixture(3000, g)
    kde = LatentKDE(2, 1, capacity=5000, neighbours=10**6, bandwidth=0.2).fit(z, torch.zeros(3000, 1))
    assert kde.n == 3000
    s = kde(torch.randn(30000, 3, generator=g), torch.zeros(30000, 1))
    comp = torch.cdist(s, MEANS).argmin(1)
    weights = torch.bincount(comp, minlength=3) / len(s)
    torch.testing.assert_close(weights, WEIGHTS, atol=0.02, rtol=0)
    width = 0.2 * 3000 ** (-1 / 6) * z.std(0, unbiased=False)  # the kernel adds its variance
    for k in range(3):
        sk = s[comp == k]
        torch.testing.assert_close(sk.mean(0), MEANS[k], atol=0.05, rtol=0)
        torch.testing.assert_close(sk.std(0), (STD**2 + width**2).sqrt(), atol=0.04, rtol=0)


def test_conditional_kde_follows_the_condition_and_reloads_from_its_buffers() -> None:
    """z = 2c + N(0, 0.1^2): at c = 0.5 the nearest-neighbour KDE gives mean 1 and width ~0.11."""
    g = torch.Generator().manual_seed(2)
    c = torch.rand(4000, 1, generator=g) * 2 - 1
    z = 2 * c + 0.1 * torch.randn(4000, 1, generator=g)
    kde = LatentKDE(1, 1, capacity=3000, neighbours=50).fit(z, c)
    assert kde.n == 3000 and kde.add(z, c) == 3000  # full: no more centres taken
    q = torch.full((6000, 1), 0.5)
    eps = torch.randn(6000, 2, generator=g)
    s = kde(eps, q)
    assert abs(float(s.mean()) - 1.0) < 0.02
    assert 0.09 < float(s.std()) < 0.14
    other = LatentKDE(1, 1, capacity=3000, neighbours=50)
    other.load_state_dict(kde.state_dict())
    torch.testing.assert_close(other(eps, q), s, rtol=0, atol=0)


def test_empty_kde_is_the_standard_normal_prior() -> None:
    eps = torch.randn(5, 4)
    torch.testing.assert_close(LatentKDE(3, 2, 10, 5)(eps, torch.zeros(5, 2)), eps[:, 1:])


def test_latent_flow_learns_a_known_conditional_gaussian() -> None:
    a, s = torch.tensor([1.5, -0.5]), torch.tensor([0.3, 0.7])

    def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.rand(n, 1, generator=g) * 2 - 1
        return a * c + s * torch.randn(n, 2, generator=g), c

    def true_log_prob(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((z - a * c) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(1)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    flow = LatentFlow(2, 1, transforms=2, hidden=32)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(300):
        z, c = draw(256, g)
        loss = -flow.log_prob(z, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, c = draw(4000, g)
    with torch.no_grad():
        gap = true_log_prob(z, c) - flow.log_prob(z, c)  # KL(p || q) estimate >= 0
        assert abs(float(gap.mean())) < 0.05 and float(gap.std()) < 0.3
        q = torch.full((4000, 1), 0.8)
        zs = flow(torch.randn(4000, 3, generator=g), q)
    torch.testing.assert_close(zs.mean(0), a * 0.8, atol=0.05, rtol=0)
    torch.testing.assert_close(zs.std(0), s, atol=0.05, rtol=0)
