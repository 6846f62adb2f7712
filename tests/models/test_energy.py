"""The energy network (``calosim.models.energy``) shared by spots, calogan and the flows."""

from __future__ import annotations

import torch

from calosim.models._random import normal_cdf
from calosim.models.energy import EnergyMDN, energy_fractions, energy_fractions_numpy


def test_mdn_sample_is_the_picked_component_of_its_density() -> None:
    """``sample`` builds only the picked component's Cholesky factor; the draw must equal the
    one made from the full ``params`` (component k by the weights' CDF at Phi(noise_0), then
    mu_k + L_k noise), here for a mixture with correlated components."""
    torch.manual_seed(0)
    b, d, k = 512, 5, 7
    mdn = EnergyMDN(2, d, k, 16).eval()
    with torch.no_grad():
        mdn.net[-1].weight.normal_(0.0, 0.5)  # weights, means and off-diagonals all vary with cond
        cond, noise = torch.randn(b, 2), torch.randn(b, 1 + d)
        log_w, mu, tril, _ = mdn.params(cond)
        pick = (normal_cdf(noise[:, :1]) > torch.cumsum(log_w.exp(), -1)).sum(-1).clamp_max(k - 1)
        rows = torch.arange(b)
        want = mu[rows, pick] + (tril[rows, pick] @ noise[:, 1:, None]).squeeze(-1)
        got = mdn.sample(cond, noise)
    assert len(set(pick.tolist())) > 3  # several components are drawn
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_numpy_twins_draw_the_same_energies() -> None:
    """``sample_numpy`` and ``energy_fractions_numpy`` (the small-batch NumPy path) give the torch
    results from the same noise: the same component for every row, the same values to rounding."""
    torch.manual_seed(1)
    b, d, k = 256, 6, 9
    mdn = EnergyMDN(1, d, k, 16).eval()
    with torch.no_grad():
        mdn.net[-1].weight.normal_(0.0, 0.5)
        cond, noise = torch.randn(b, 1), torch.randn(b, 1 + d)
        want = mdn.sample(cond, noise)
        got = torch.from_numpy(mdn.sample_numpy(cond, noise.numpy()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    t = torch.randn(b, d) * 4.0
    torch.testing.assert_close(torch.from_numpy(energy_fractions_numpy(t.numpy())), energy_fractions(t),
                               rtol=1e-5, atol=1e-6)
