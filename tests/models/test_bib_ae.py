"""BIB-AE (``models/bib_ae.py``): the sorted-energy MMD, the stages of one run (autoencoder,
latent sampler, post-processor), the choice of latent sampler, and train / generate / export
through the CLI on a tiny file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from calosim.geometry import Geometry, Layer, Material
from calosim.models._random import standard_normal
from calosim.models.bib_ae import BIBAE, mmd, sorted_energy_mmd
from calosim.models.latent import LatentFlow, LatentKDE
from toys import FakeConditions, FakeCtx

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"transform": "identity", "latent_dim": 4, "hidden": 32, "channels": 8, "enc_channels": 8, "critic_channels": 4,
        "critic_hidden": 16, "pp_channels": 4, "flow_hidden": 8, "flow_transforms": 1, "kde_size": 64,
        "kde_neighbours": 8, "steps": 30, "ae_steps": 20, "latent_steps": 4}


def stack_geometry(n_layers: int = 6, shape: tuple[int, int] = (6, 6)) -> Geometry:
    """A regular Cartesian stack deep enough for the 3D convolutions."""
    mat = Material("W", "Si", x0_mm=3.5, lambda_mm=100.0, moliere_mm=9.0, critical_mev=8.0)
    return Geometry("stack", tuple(Layer(f"l{i}", "cartesian", shape, z_mm=5.0 * i, thickness_mm=5.0, material=mat,
                                         cell_mm=(5.0, 5.0)) for i in range(n_layers)))


def toy_batch(geo: Geometry, n: int, seed: int = 0, angles: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Showers (MeV) with a Gaussian lateral core whose depth grows with log E; cond (n, 1 or 2)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.empty(n, 1).uniform_(math.log(1e3), math.log(1e5), generator=g))
    L, (H, W) = geo.n_layers, geo.layers[0].shape
    zz, yy, xx = torch.meshgrid(torch.arange(L), torch.arange(H), torch.arange(W), indexing="ij")
    depth = 1 + FakeConditions.encode(e).view(n, 1, 1, 1)
    shape = torch.exp(-((yy - H / 2 + 0.5) ** 2 + (xx - W / 2 + 0.5) ** 2) / 2 - (zz - depth) ** 2 / 4)
    x = e.view(n, 1, 1, 1) * shape * torch.rand(n, L, H, W, generator=g)
    x = torch.where(x > 0.02 * e.view(n, 1, 1, 1), x, torch.zeros_like(x)).reshape(n, -1)
    cond = FakeConditions.encode(e)
    if angles:
        cond = torch.cat([cond, torch.randn(n, 1, generator=g)], 1)
    return x, cond


def fitted_model(geo: Geometry, n: int, seed: int, config: dict | None = None) -> tuple[BIBAE, FakeCtx, torch.Tensor, torch.Tensor]:
    """A tiny BIB-AE whose statistics are fitted on a toy batch of ``n`` showers."""
    torch.manual_seed(0)
    model = BIBAE(geo, 1, config or TINY)
    ctx = FakeCtx(model, total_steps=30)
    x, cond = toy_batch(geo, n, seed=seed)
    model.fit_statistics(x, cond, ctx)
    return model, ctx, x, cond


class _AngleConditions(FakeConditions):
    names = ["energy", "theta"]
    slices = {"energy": slice(0, 1), "theta": slice(1, 2)}


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 50, generator=g) ** 4
    assert abs(float(sorted_energy_mmd(a, a.clone()))) < 1e-6
    # the same showers with cells permuted: same sorted values, so the same spectrum and hit count
    assert abs(float(sorted_energy_mmd(a, a[:, torch.randperm(50, generator=g)]))) < 1e-6
    small, large = sorted_energy_mmd(a, 1.1 * a), sorted_energy_mmd(a, 1.5 * a)
    assert 0 < float(small) < float(large)
    fewer_hits = torch.where(a > 0.2, a, torch.zeros_like(a))  # same energies, fewer hits
    assert float(sorted_energy_mmd(a, fewer_hits)) > 0
    z = torch.randn(200, 3, generator=g)
    assert float(mmd(z, torch.randn(200, 3, generator=g))) < float(mmd(z, torch.randn(200, 3, generator=g) + 1))


def test_autoencoder_steps_reduce_the_reconstruction_loss() -> None:
    geo = stack_geometry()
    model, ctx, x, cond = fitted_model(geo, 32, seed=0, config={**TINY, "lr": 3e-3})
    assert model.cells.groups[0].use_3d
    losses = [model.train_step(x, cond, ctx)["reconstruction"] for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0]


def test_latent_and_post_processor_stages() -> None:
    """Stage 2 fills the KDE and trains the flow with the autoencoder frozen; stage 3 trains
    only the post-processor; sampling then goes through the KDE (no angles in the data)."""
    geo = stack_geometry()
    model, ctx, x, cond = fitted_model(geo, 32, seed=1)
    assert not bool(model.use_flow) and model.latent_sampler() is None
    ctx.step = 20
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = model.train_step(x, cond, ctx)
    assert out["stage"] == 2 and out["kde_centres"] == 32 and math.isfinite(out["flow_nll"])
    changed = {k.split(".")[0] for k, p in model.named_parameters() if not torch.equal(before[k], p)}
    assert changed == {"flow"}
    assert isinstance(model.latent_sampler(), LatentKDE)
    ctx.step = 25
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = model.train_step(x, cond, ctx)
    assert out["stage"] == 3 and out["pp_mmd_sorted"] >= 0
    changed = {k.split(".")[0] for k, p in model.named_parameters() if not torch.equal(before[k], p)}
    assert changed == {"post"}
    # the exported graph is the sampling path: KDE -> decoder -> post-processor
    f = model.export_module()
    z = standard_normal(5, f.latent_dim, torch.Generator().manual_seed(3), cond.device)
    torch.testing.assert_close(f(z, cond[:5]), model.sample(cond[:5], torch.Generator().manual_seed(3)))
    assert (f(z, cond[:5]) >= 0).all()


def test_auto_sampler_is_the_flow_when_angles_vary() -> None:
    geo = stack_geometry()
    model = BIBAE(geo, 2, TINY)
    ctx = FakeCtx(model, total_steps=30)
    ctx.conditions = _AngleConditions()
    x, cond = toy_batch(geo, 16, angles=True)
    model.fit_statistics(x, cond, ctx)
    assert bool(model.use_flow)
    ctx.step = 20
    model.train_step(x, cond, ctx)
    assert isinstance(model.latent_sampler(), LatentFlow)
    assert BIBAE(geo, 1, {**TINY, "latent": "kde"}).flow is None
    short = BIBAE(geo, 1, TINY)
    with pytest.warns(UserWarning, match="using 15 autoencoder, 2 latent and 3 post-processor steps"):
        short.lr_schedules(20)  # a run shorter than ae_steps + latent_steps: stages scaled to fit
    assert [short.stage(i) for i in (14, 15, 16, 17, 19)] == [1, 2, 2, 3, 3]


@pytest.mark.parametrize("latent", ["kde", "flow"])
def test_cli_train_generate_export(tmp_path: Path, latent: str) -> None:
    """Train (all three stages), generate and export to ONNX (checked against PyTorch by
    ``calosim export``) through the CLI, with either latent sampler."""
    from calosim.cli import main
    from calosim.io import ShowerData, read_showers, write_showers

    geo = stack_geometry()
    x, cond = toy_batch(geo, 96, seed=2)
    e = FakeConditions().incident_energy(cond).numpy().astype(np.float64)
    data = tmp_path / "toy.h5"
    write_showers(data, ShowerData(x.numpy(), e, geo, {}, attrs={"particle": "photon"}))
    run = CliRunner().invoke(main, [
        "train", "-m", "bib-ae", "-d", str(data), "-o", str(tmp_path / "run"), "--steps", "8",
        *[a for k, v in {**TINY, "latent": latent, "transform": "scale", "steps": 8, "ae_steps": 4, "latent_steps": 2,
                         "batch_size": 16, "val_size": 16, "val_every": 0, "log_every": 2}.items()
          for a in ("--set", f"{k}={v}")]])
    assert run.exit_code == 0, run.output
    gen = CliRunner().invoke(main, ["generate", "--run", str(tmp_path / "run"), "-n", "10", "-e", "10:50",
                                    "-o", str(tmp_path / "gen.h5")])
    assert gen.exit_code == 0, gen.output
    showers = read_showers(tmp_path / "gen.h5")
    assert showers.showers.shape == (10, geo.n_cells) and (showers.showers >= 0).all()
    pytest.importorskip("onnxruntime")
    exp = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "run"), "-o", str(tmp_path / "g.onnx")])
    assert exp.exit_code == 0, exp.output
    assert (tmp_path / "g.onnx").stat().st_size > 0


def test_zero_cell_noise_is_the_deterministic_decoder_path() -> None:
    """With zero noise variance the new sampling path equals the old one (cell_noise = 0,
    snap_by_conditions = false) for the same latent noise columns, and the snap is h_snap."""
    geo = stack_geometry()
    torch.manual_seed(0)
    old = BIBAE(geo, 1, {**TINY, "cell_noise": 0.0, "snap_by_conditions": False})
    new = BIBAE(geo, 1, TINY)
    assert old.latent_dim == 1 + TINY["latent_dim"] and new.latent_dim == old.latent_dim + geo.n_cells
    cond = torch.linspace(-1, 1, 7)[:, None]
    z = torch.randn(7, new.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        snap = old.decoder(z[:, 1:old.latent_dim], cond).median().clamp_min(0)  # half the cells on
        state = old.state_dict()
        state["h_snap"], state["snap_w"] = snap, torch.stack([snap, torch.zeros(())])
        old.load_state_dict(state)
        new.load_state_dict(state)  # noise_w is zero: no noise
        x_old, x_new = old.export_module()(z[:, :old.latent_dim], cond), new.export_module()(z, cond)
    torch.testing.assert_close(x_new, x_old)
    assert (x_old == 0).any() and (x_old > 0).any()


def test_cell_noise_tail_and_layer_energies() -> None:
    """Tukey's h noise is a monotone map of eps (known quantiles; Gaussian at tail 0), and the
    rescaled noisy layers carry the noise-free layer energies exactly."""
    from calosim.models.bib_ae import _add_cell_noise, _keep_layer_energies

    eps = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    std = torch.full_like(eps, 0.3)
    torch.testing.assert_close(_add_cell_noise(torch.ones_like(eps), std, eps), 1 + 0.3 * eps)
    torch.testing.assert_close(_add_cell_noise(torch.zeros_like(eps), std, eps, 0.5),
                               0.3 * eps * torch.exp(0.25 * eps**2))
    torch.testing.assert_close(_add_cell_noise(torch.full_like(eps, -1.0), torch.zeros_like(eps), eps),
                               torch.zeros_like(eps))  # no noise: relu(raw)
    geo = stack_geometry(n_layers=2, shape=(2, 2))
    cell_layer = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    raw = torch.tensor([[1.0, 0.5, -1.0, 0.0, 2.0, 2.0, 2.0, 2.0]])
    noisy = torch.tensor([[1.5, 0.0, 0.3, 0.0, 0.0, 3.0, 0.0, 0.0]])  # noisy, some cells snapped off
    out = _keep_layer_energies(noisy, torch.relu(raw), geo, cell_layer)
    e = lambda v: (torch.exp(v) - 1).reshape(2, 4).sum(1)  # noqa: E731
    torch.testing.assert_close(e(out), e(torch.relu(raw)))
    assert ((out > 0) == (noisy > 0)).all()  # the hit pattern is the noisy one


def test_latent_stage_fits_the_residual_variance_linear_in_the_conditions() -> None:
    """A decoder that outputs nothing leaves residual h: the fitted variance is the least
    squares line of h^2 on [1, cond] per cell (known answer from torch.linalg.lstsq)."""
    geo = stack_geometry()
    model, ctx, x, cond = fitted_model(geo, 32, seed=4)

    class _Nothing(torch.nn.Module):
        def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return torch.full((len(z), geo.n_cells), -1.0)

    model.decoder = _Nothing()
    ctx.step = 20
    model.train_step(x[:16], cond[:16], ctx)
    model.train_step(x[16:], cond[16:], ctx)
    h = model._to_h(x)
    X = torch.cat([torch.ones(32, 1), cond], 1)
    want = torch.linalg.lstsq(X.double(), (h**2).double()).solution.float()
    torch.testing.assert_close(model.noise_w, want, atol=1e-4, rtol=1e-3)


def test_snap_by_conditions_gives_each_shower_its_real_hit_count() -> None:
    """Outputs whose per-shower hit-count threshold is linear in the condition: one calibration
    at rate 1 recovers that line, and the snapped outputs have the real hit counts."""
    geo = stack_geometry()
    model = BIBAE(geo, 1, {**TINY, "snap_rate": 1.0})
    B, C = 8, geo.n_cells
    cond = torch.linspace(-1, 1, B)[:, None]
    vals = torch.linspace(1.0, 0.0, C).expand(B, C)  # every shower: the same descending values
    n_real = (C * (0.5 + 0.25 * cond[:, 0])).long()  # more hits at higher "energy"
    model._calibrate_snap(vals, n_real, cond)
    on = (vals >= model.snap_w[0] + cond * model.snap_w[1]).sum(1)
    assert (on - n_real).abs().max() <= 1
    assert float(model.snap_w[1]) < 0  # a lower threshold where there are more hits
