"""Known-answer tests of CALPAGAN's recipes (issue 14 §5): calosim's fixes and the seed's recipe one switch away."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from calosim.events.report import image_stats  # noqa: E402
from calosim.models.calpagan import (CALOSIM_V1, SEED_RECIPE, Calpagan, CalpaganConfig, SpreadKernel,  # noqa: E402
                                     blur_l1, fit_spread, train_calpagan)


def _fast(n: int = 3, seed: int = 0) -> np.ndarray:
    """Sparse fast images (n, 2, 72, 72) GeV, with some towers below the 0.2 GeV threshold."""
    rng = np.random.default_rng(seed)
    img = (rng.random((n, 2, 72, 72)) * 30 * (rng.random((n, 2, 72, 72)) > 0.97)).astype(np.float32)
    img[:, 0, 5, 5] = 0.1  # below the threshold: must come out empty
    img[:, 1, 5, 5] = 0.0
    return img


def test_recipes_are_one_switch_apart_and_unknown_names_fail_in_one_line():
    seed, ours = CalpaganConfig.recipe("seed", epochs=3), CalpaganConfig.recipe("calosim")
    keys = ("norm", "gate", "residual_init", "energy_weight", "bn_recalibrate", "d_lr_scale", "threshold_gev")
    assert [getattr(seed, k) for k in keys] == ["own-peak", "none", False, 0.0, False, 1.0, 0.0] and seed.epochs == 3
    assert [getattr(ours, k) for k in keys] == ["fast-peak", "relu", True, 1.0, True, 0.25, 0.2]
    assert {k: getattr(seed, k) for k in SEED_RECIPE} == SEED_RECIPE and ours == CalpaganConfig()
    assert (ours.spread_radius, seed.spread_radius) == (3, 0) and (ours.lr, seed.lr) == (5e-5, 2e-4)
    v1 = CalpaganConfig.recipe("calosim-v1")  # last session's calosim recipe: everything but the spread kernel
    assert {k: getattr(v1, k) for k in CALOSIM_V1} == CALOSIM_V1 and [getattr(v1, k) for k in keys] == \
        [getattr(ours, k) for k in keys]
    from calosim.events.cli import RECIPE_NAMES
    from calosim.models.calpagan import RECIPES

    assert RECIPE_NAMES == list(RECIPES)
    with pytest.raises(ValueError, match="recipe must be one of calosim, calosim-v1, seed") as err:
        CalpaganConfig.recipe("pix2pix")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="gate must be one of none, relu"):
        CalpaganConfig(gate="sigmoid")


def test_untrained_calosim_v1_model_returns_the_fast_image_with_the_detailed_threshold():
    fast = _fast()
    model = Calpagan(CalpaganConfig.recipe("calosim-v1", hidden=4))  # zero-initialised residual: G(x) = 0
    out = model.generate(fast)
    summed = fast.sum(1, keepdims=True)
    expect = np.where(summed >= 0.2, summed, 0.0)
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert (out[:, 0, 5, 5] == 0).all() and ((out == 0) == (expect == 0)).all()
    np.testing.assert_allclose(out.sum((1, 2, 3)), expect.sum((1, 2, 3)), rtol=1e-5)  # energy conserved
    # the seed's recipe (default initialisation, no gate, no threshold) does not start from the fast image
    seed_out = Calpagan(CalpaganConfig.recipe("seed", hidden=4)).generate(fast)
    assert not np.allclose(seed_out, expect, rtol=1e-3)


def test_relu_gate_is_never_negative_and_each_norm_restores_the_scale():
    # the detailed image is 0.5 x the fast one: with fast-peak normalisation the scale is G's to learn,
    # with the seed's own-peak one it is the fixed peak ratio (exactly 0.5 here)
    fast = _fast(2, seed=1)
    fast[:, 1] = 0.0  # ECAL only, so that the peak ratio is exactly the scale
    det = 0.5 * fast.sum(1, keepdims=True)
    model, hist = train_calpagan(fast, det, CalpaganConfig(epochs=1, batch_size=2, hidden=4),
                                 frechet_every_epoch=False)
    assert model.peak_ratio == 1.0 and len(hist["fd_detailed-calpagan_train"]) == 1 and len(hist["loss_g"]) == 1
    x = torch.zeros(2, 2, 72, 72)
    assert (model._fake(x) >= 0).all()  # ReLU(G(x) + x): never negative, so empty towers can be exactly 0
    seed_model, _ = train_calpagan(fast, det, CalpaganConfig.recipe("seed", epochs=1, batch_size=2, hidden=4),
                                   frechet_every_epoch=False)
    assert seed_model.peak_ratio == pytest.approx(0.5)


def test_checkpoint_without_the_new_keys_loads_as_the_seed_recipe(tmp_path):
    from calosim.train.checkpoint import load_tensors, save_tensors

    model = Calpagan(CalpaganConfig.recipe("seed", hidden=4), peak_ratio=0.8)
    weights = model.save(tmp_path / "run", {})
    tensors, meta = load_tensors(weights)
    for k in SEED_RECIPE:  # a checkpoint from before the calosim recipe
        del meta["config"][k]
    save_tensors(weights, tensors, meta)
    again, _ = Calpagan.load(tmp_path / "run")
    assert {k: getattr(again.config, k) for k in SEED_RECIPE} == SEED_RECIPE
    x = _fast(2)
    np.testing.assert_array_equal(again.generate(x), model.generate(x))


def test_image_stats_known_answer():
    fast = np.zeros((2, 2, 72, 72), np.float32)
    det = np.zeros((2, 1, 72, 72), np.float32)
    fast[:, 0, 10, 10] = 10.0
    det[:, 0, 10, 10] = 8.0
    gen = det.copy()
    gen[:, 0, 0, :] = 0.5  # a floor over one row of 72 towers empty in the detailed image
    st = image_stats(fast, det, gen)
    assert st["energy_detailed"] == 8.0 and st["energy_generated"] == 8.0 + 36.0
    assert st["response_fast"] == pytest.approx(1.25) and st["response_generated"] == pytest.approx(44 / 8)
    assert st["towers_generated"] == 73 and st["towers_detailed"] == 1 and st["towers_fast"] == 1
    assert st["floor_gev"] == pytest.approx(36.0 / (72 * 72 - 1))
    assert st["energy_fraction_in_empty"] == pytest.approx(36 / 44)


def test_batchnorm_recalibration_sets_the_running_mean_to_the_data_mean():
    model = Calpagan(CalpaganConfig(hidden=4))
    xn = torch.from_numpy(_fast(4, seed=2) / 30.0)
    block = model.gen.contract[0]
    seen = []
    hook = block.conv1.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    model.recalibrate_batchnorm(xn, batch=4)
    hook.remove()
    np.testing.assert_allclose(block.norm1.running_mean.numpy(), seen[0].mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    assert block.norm1.num_batches_tracked.item() == 1 and block.norm1.momentum == 0.1


def _kernel(radius: int = 2, seed: int = 0) -> np.ndarray:
    """A random non-negative (2, k, k) kernel with gains 1.0 (ECAL) and 0.8 (HCAL)."""
    w = np.random.default_rng(seed).random((2, 2 * radius + 1, 2 * radius + 1))
    return w / w.sum((1, 2), keepdims=True) * np.array([1.0, 0.8])[:, None, None]


def test_spread_kernel_conserves_energy_even_at_the_phi_and_eta_edges():
    spread = SpreadKernel(2, radius=2)
    spread.set_weights(_kernel() / np.array([1.0, 0.8])[:, None, None])  # gains 1: energy-conserving
    x = torch.zeros(1, 2, 72, 72)
    x[0, 0, 0, 0] = 10.0  # corner: eta edge and phi wrap-around
    x[0, 1, 71, 70] = 5.0
    x[0, 0, 30, 40] = 2.0
    y = spread(x)
    assert y.shape == (1, 1, 72, 72) and (y >= 0).all()
    assert y.sum().item() == pytest.approx(17.0, rel=1e-5)
    assert y[0, 0, 0, 71].item() > 0 and y[0, 0, 30, 38].item() > 0  # wrapped in phi; spread 2 towers
    single = torch.zeros(1, 2, 72, 72)
    single[0, 0, 30, 40] = 1.0  # away from the edges the image is the kernel itself, placed at the tower
    np.testing.assert_allclose(spread(single)[0, 0, 28:33, 38:43].detach().numpy(), spread.kernel()[0].detach().numpy(),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(spread.kernel().sum((1, 2)).detach().numpy(), [1.0, 1.0], rtol=1e-6)


def test_fit_spread_recovers_a_known_footprint():
    true = SpreadKernel(2, radius=2)
    true.set_weights(_kernel())
    rng = np.random.default_rng(3)
    x = (rng.random((6, 2, 72, 72)) * 20 * (rng.random((6, 2, 72, 72)) > 0.98)).astype(np.float32)
    x[:, :, :2] = x[:, :, -2:] = 0.0  # the least-squares design does not model the eta-edge fold-back
    with torch.no_grad():
        y = true(torch.from_numpy(x)).numpy()
    w = fit_spread(x, y, radius=2, batch=4)
    np.testing.assert_allclose(w, _kernel(), atol=1e-4)
    np.testing.assert_allclose(w.sum((1, 2)), [1.0, 0.8], atol=1e-4)


def test_blur_l1_is_zero_for_identical_images_and_grows_with_the_shift():
    a = torch.zeros(1, 1, 72, 72)
    a[0, 0, 36, 36] = 1.0
    shifted = {d: torch.roll(a, d, dims=-1) for d in (1, 3, 8)}
    assert blur_l1(a, a.clone()).item() == 0.0
    loss = {d: blur_l1(a, b).item() for d, b in shifted.items()}
    assert 0 < loss[1] < loss[3] < loss[8]
    # the per-pixel L1 cannot tell a one-tower miss from an eight-tower one
    assert torch.nn.functional.l1_loss(a, shifted[1]).item() == torch.nn.functional.l1_loss(a, shifted[8]).item()


def test_untrained_spread_model_returns_the_spread_fast_image_and_trains_with_the_fitted_kernel(tmp_path):
    fast = _fast(2, seed=4)
    fast[:, :, :3] = fast[:, :, -3:] = 0.0  # no eta-edge fold-back, which the fit does not model
    true = SpreadKernel(2, radius=3)
    true.set_weights(np.pad(_kernel(radius=2), ((0, 0), (1, 1), (1, 1))))
    with torch.no_grad():
        det = true(torch.from_numpy(fast)).numpy()
    cfg = CalpaganConfig(epochs=1, batch_size=2, hidden=4)
    model, hist = train_calpagan(fast, det, cfg, frechet_every_epoch=False)
    np.testing.assert_allclose(hist["spread_gain"], [1.0, 0.8], atol=2e-3)  # fitted before training, then fixed
    np.testing.assert_allclose(model.spread.kernel().numpy(), true.kernel().detach().numpy(), atol=2e-3)
    again, _ = Calpagan.load(model.save(tmp_path / "run", hist))
    np.testing.assert_array_equal(again.generate(fast), model.generate(fast))
    fresh = Calpagan(CalpaganConfig(hidden=4))  # zero-initialised residual: the output is ReLU(spread(x))
    fresh.spread.set_weights(true.kernel().detach().numpy() * true.gain().detach().numpy()[:, None, None])
    out = fresh.generate(fast)
    expect = np.where(det >= 0.2, det, 0.0)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
