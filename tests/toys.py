"""Toy model and toy data shared by the training, generation and benchmark tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calosim.geometry import Geometry, Layer, Material, get_geometry
from calosim.io import ShowerData, write_showers
from calosim.models import ShowerModel, TrainConfig, param, register_model


def write_toy_data(path: Path, n: int = 240, seed: int = 0, conditions: bool = False, layout: str = "native") -> Path:
    """Gamma-distributed cells on the calogan geometry, E_inc in 1-100 GeV."""
    geo = get_geometry("calogan")
    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(np.log(1e3), np.log(1e5), (n, 1)))
    w = rng.gamma(0.5, 1.0, (n, geo.n_cells)) * (rng.random((n, geo.n_cells)) < 0.5)
    showers = 0.9 * e * w / w.sum(1, keepdims=True)
    conds = {}
    if conditions:
        conds = {"pdg": rng.choice([11, 22], n), "momentum": np.c_[np.zeros((n, 2)), e],
                 "position": rng.normal(0, 5, (n, 2))}
    data = ShowerData(showers, e, geo, conds, attrs={"particle": "photon"})
    return write_showers(path, data, layout=layout)


def two_layer_geometry() -> Geometry:
    """A custom Cartesian geometry with unlike layers, one of them a single row."""
    mat = Material("Pb", "LAr", x0_mm=20.0, lambda_mm=400.0, moliere_mm=40.0, critical_mev=10.0)
    return Geometry("two", (
        Layer("a", "cartesian", (5, 7), z_mm=0.0, thickness_mm=50.0, material=mat, cell_mm=(10.0, 10.0)),
        Layer("b", "cartesian", (1, 9), z_mm=50.0, thickness_mm=80.0, material=mat, cell_mm=(50.0, 8.0)),
    ))


class FakeConditions:
    """Column 0 = log10(E / 10 GeV); optional extra columns are passed through."""

    @staticmethod
    def encode(e_mev: Tensor) -> Tensor:
        return torch.log10(e_mev / 1e4)

    def incident_energy(self, cond: Tensor) -> Tensor:
        return 1e4 * 10.0 ** cond[:, :1]


class IdentityTransform:
    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return x_mev

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x


class FakeCtx:
    """Minimal stand-in for calosim.train's context (the TrainContext protocol)."""

    def __init__(self, model: ShowerModel, seed: int = 0, transform: Any = None, total_steps: int = 100) -> None:
        self.device = torch.device("cpu")
        self.step = 0
        self.transform = transform or IdentityTransform()
        self.conditions = FakeConditions()
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizers = model.make_optimizers()
        self.schedulers = {k: s.build(self.optimizers[k]) for k, s in model.lr_schedules(total_steps).items()}

    def backward_step(self, loss: Tensor, optimizer: str, *, retain_graph: bool = False) -> None:
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        opt.step()
        if optimizer in self.schedulers:
            self.schedulers[optimizer].step()


def prepare(model: ShowerModel, batches: Iterator[tuple[Tensor, Tensor]], ctx: Any) -> dict[str, float]:
    """What the framework does before the main loop: fit_statistics on the first batches, then pretrain."""
    parts = [next(batches) for _ in range(model.n_statistics_batches())]
    model.fit_statistics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), ctx)
    return model.pretrain(batches, ctx)


@register_model
class ToyGAN(ShowerModel):
    """Tiny conditional GAN used by the training-framework tests."""

    name = "_test_toy_gan"
    ema_modules = ("gen",)
    cells_only = False  # works with any transform width
    contract_exemptions = {"export": "test toy: samples with the global RNG when no generator is given, no ONNX path"}
    crash_at: int | None = None  # tests set this to simulate a kill

    @dataclass
    class Config(TrainConfig):
        batch_size: int = 32
        lr: float = 2e-3
        hidden: int = param(16, ge=1, le=4096)
        latent: int = param(4, ge=1)
        transform: str = "log"
        log_every: int = 5
        val_every: int = 10
        checkpoint_every: int = 10
        val_size: int = 64

    def __init__(self, geometry: Any, cond_dim: int, config: Any = None, *, data_dim: int | None = None) -> None:
        super().__init__(geometry, cond_dim, config, data_dim=data_dim)
        d, h, z = self.data_dim, self.config.hidden, self.config.latent
        self.latent = z
        self.gen = nn.Sequential(nn.Linear(z + cond_dim, h), nn.ReLU(), nn.Linear(h, d))
        self.disc = nn.Sequential(nn.Linear(d + cond_dim, h), nn.LeakyReLU(0.2), nn.Linear(h, 1))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.config.lr
        return {"gen": torch.optim.Adam(self.gen.parameters(), lr=lr, betas=(0.5, 0.9)),
                "disc": torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.9))}

    def _g(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(len(cond), self.latent, generator=generator, device=cond.device)
        return self.gen(torch.cat([z, cond], 1))

    def train_step(self, x: Tensor, cond: Tensor, ctx: Any) -> dict[str, float]:
        if self.crash_at is not None and ctx.step == self.crash_at:
            raise RuntimeError("simulated crash")
        fake = self._g(cond, ctx.generator)
        loss_d = (F.softplus(-self.disc(torch.cat([x, cond], 1))).mean()
                  + F.softplus(self.disc(torch.cat([fake.detach(), cond], 1))).mean())
        ctx.backward_step(loss_d, "disc")
        fake = self._g(cond)  # global torch RNG on purpose: its state must survive a resume
        jitter = 1e-3 * (float(np.random.rand()) + random.random())  # numpy + python RNG too
        e = ctx.conditions.incident_energy(cond)
        mev = ctx.transform.inverse(fake, e)  # differentiable physics-style term
        loss_g = (F.softplus(-self.disc(torch.cat([fake, cond], 1))).mean()
                  + 0.1 * ((mev.sum(1, keepdim=True) - 0.9 * e) / e).pow(2).mean() * (1 + jitter))
        ctx.backward_step(loss_g, "gen")
        return {"d": loss_d.item(), "g": loss_g.item()}

    @torch.no_grad()
    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._g(cond, generator)


@register_model
class ToyPretrain(ToyGAN):
    """Toy GAN with a pretraining stage."""

    name = "_test_toy_pretrain"
    pretrain_calls = 0

    def pretrain(self, batches: Iterator[tuple[Tensor, Tensor]], ctx: Any) -> dict[str, float]:
        type(self).pretrain_calls += 1
        for _ in range(3):
            x, c = next(batches)
            loss = F.softplus(-self.disc(torch.cat([x, c], 1))).mean()
            ctx.backward_step(loss, "disc")
        return {"loss": float(loss.detach())}
