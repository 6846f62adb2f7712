"""Known-answer tests of CALPAGAN's recipes (issue 14 §5): calosim's fixes and the seed's recipe one switch away."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from calosim.events.report import image_stats  # noqa: E402
from calosim.models.calpagan import SEED_RECIPE, Calpagan, CalpaganConfig, train_calpagan  # noqa: E402


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
    with pytest.raises(ValueError, match="recipe must be one of calosim, seed") as err:
        CalpaganConfig.recipe("pix2pix")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="gate must be one of none, relu"):
        CalpaganConfig(gate="sigmoid")


def test_untrained_calosim_model_returns_the_fast_image_with_the_detailed_threshold():
    fast = _fast()
    model = Calpagan(CalpaganConfig(hidden=4))  # zero-initialised residual: G(x) = 0
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
