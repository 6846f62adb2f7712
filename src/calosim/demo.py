"""``calosim demo``: the whole loop on the built-in simulator, with nothing to download.

1. simulate e+, gamma and pi+ showers in the ``calogan`` geometry, print a summary and plot
   the mean shower image per layer and the response E_dep/E_inc vs E_inc;
2. train the default model briefly on the e+ sample;
3. generate showers for held-out incident energies;
4. evaluate the model — and a second reference sample with another seed, the best any model
   can do — against held-out reference showers: ``out/report/`` (index.html, metrics.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .geometry import Geometry, get_geometry
from .io import read_showers

__all__ = ["run_demo", "DemoSizes", "plot_particle_overview"]

DEMO_MODEL = "spots"  # the better model on the measured table (README): AUC 0.66 vs calogan 0.95 for e+


@dataclass(frozen=True)
class DemoSizes:
    n_particle: int = 10000  # showers per particle for the overview
    n_train: int = 30000
    n_heldout: int = 10000
    n_generate: int = 10000
    steps: int | None = None  # None: the model's demo recipe (DEMO_STEPS, else its full recipe)
    pretrain_steps: int | None = None  # steps of a model's maximum-likelihood stage ("mdn_steps"); None: its recipe
    classifier: bool = True


FULL = DemoSizes()
QUICK = DemoSizes(n_particle=300, n_train=1000, n_heldout=500, n_generate=500, steps=20, pretrain_steps=50,
                  classifier=False)
# shortened recipes where the full one is too long for the demo (calogan: ~5 min on one core
# instead of ~15; `calosim train` uses the full 3000 steps); spots runs its full recipe (~2 min)
DEMO_STEPS: dict[str, int] = {"calogan": 1500}


def _say(msg: str) -> None:
    from rich.console import Console

    Console().print(f"[bold cyan]calosim demo[/] {msg}")


def plot_particle_overview(samples: dict[str, Path], geometry: Geometry, out_dir: Path) -> list[Path]:
    """Mean shower image per layer (one row per particle) and response vs E_inc; returns the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from .metrics.observables import energy_bins, mean_images, response_vs_energy
    from .metrics.plots import hep_style

    data = {p: read_showers(f) for p, f in samples.items()}
    paths = []
    with plt.style.context(hep_style()):
        fig, axes = plt.subplots(len(data), geometry.n_layers, figsize=(4.2 * geometry.n_layers, 3.4 * len(data)),
                                 squeeze=False)
        for r, (particle, d) in enumerate(data.items()):
            for c, img in enumerate(mean_images(d.showers, geometry)):
                ax = axes[r, c]
                lay = geometry.layers[c]
                dy, dx = lay.cell_mm if lay.cell_mm else (1.0, 1.0)
                ext = [-lay.shape[1] * dx / 2, lay.shape[1] * dx / 2, -lay.shape[0] * dy / 2, lay.shape[0] * dy / 2]
                pos = img[img > 0]
                norm = LogNorm(vmin=max(pos.min(), pos.max() * 1e-5), vmax=pos.max()) if pos.size else None
                im = ax.imshow(np.where(img > 0, img, np.nan), extent=ext, origin="lower", aspect="auto", norm=norm, interpolation="nearest",
                               cmap="viridis")
                ax.set_title(f"{particle}: {lay.name}")
                ax.set_xlabel("x [mm]")
                ax.set_ylabel("y [mm]")
                fig.colorbar(im, ax=ax, label="mean E [MeV]")
        fig.tight_layout()
        p = out_dir / "mean_showers.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        edges, _ = energy_bins(*[d.incident_energies for d in data.values()], n_bins=10)
        for particle, d in data.items():
            e_inc = d.incident_energies[:, 0]
            rv = response_vs_energy(d.showers.sum(1), e_inc, edges)
            x = rv["e_mean"] / 1e3
            ax1.errorbar(x, rv["mean"], yerr=rv["mean_err"], marker="o", label=particle)
            ax2.errorbar(x, rv["resolution"], yerr=rv["resolution_err"], marker="o", label=particle)
        ax1.set_ylabel(r"$\langle E_{dep}/E_{inc} \rangle$")
        ax2.set_ylabel(r"$\sigma(E_{dep})/\langle E_{dep} \rangle$")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel(r"$E_{inc}$ [GeV]")
            ax.legend()
        fig.tight_layout()
        p = out_dir / "response.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


#: What the demo writes in its output directory (checked before it replaces anything).
DEMO_OUTPUTS = ("data", "run", "report", "mean_showers.png", "response.png", "demo_summary.json")


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, model: str = DEMO_MODEL, overwrite: bool = False) -> dict:
    """Run the demo into ``out``; returns the evaluation metrics dict.

    Refuses (before any work) an ``out`` that holds an earlier demo's files unless ``overwrite``,
    a negative ``seed``, and an ``out`` that cannot be written.
    """
    from .io import check_writable, write_text_atomic
    from .metrics import evaluate
    from .metrics.report import format_terminal_table
    from .models import get_model_class
    from .simulate import simulate_to_file
    from .summary import file_summary

    model_cls = get_model_class(model)  # an unknown name fails before any work, listing the valid ones
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    check_writable(out, directory=True)
    present = [name for name in DEMO_OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out}: holds an earlier demo's {', '.join(present)}; pass --overwrite to replace them "
                              "or choose another --out")

    sizes = QUICK if quick else FULL
    t_start = time.perf_counter()
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    geo = get_geometry("calogan")

    # 1. reference showers for three particles
    _say(f"1/4 simulating e+, gamma, pi+ in '{geo.name}' ({sizes.n_particle} each, 1-100 GeV)")
    samples = {}
    for i, particle in enumerate(["e+", "gamma", "pi+"]):
        path = data_dir / f"{particle.replace('+', 'plus')}.h5"
        simulate_to_file(path, geo, particle, sizes.n_particle, energy="1:100", seed=seed * 100 + i, overwrite=True)
        samples[particle] = path
        print(file_summary(path))
    pngs = plot_particle_overview(samples, geo, out)
    _say(f"plots: {', '.join(str(p) for p in pngs)}")

    # 2. train
    train_file = data_dir / "train_eplus.h5"
    heldout = data_dir / "heldout_eplus.h5"
    ref2 = data_dir / "reference_seed2_eplus.h5"
    simulate_to_file(train_file, geo, "e+", sizes.n_train, energy="1:100", seed=seed * 100 + 10, overwrite=True)
    simulate_to_file(heldout, geo, "e+", sizes.n_heldout, energy="1:100", seed=seed * 100 + 11, overwrite=True)
    simulate_to_file(ref2, geo, "e+", sizes.n_generate, energy="1:100", seed=seed * 100 + 12, overwrite=True)
    from .train import train

    steps = sizes.steps if sizes.steps is not None else DEMO_STEPS.get(model)
    recipe = f"{steps} steps" if steps is not None else "its default recipe"
    _say(f"2/4 training '{model}' for {recipe} on {sizes.n_train} e+ showers (CPU)")
    # One intra-op thread: on a busy 2-core machine two threads are several times slower
    # (measured 300 vs 1200-3000 ms/step for calogan at batch 256 under load).
    config: dict = {"threads": 1}
    if sizes.pretrain_steps is not None and "mdn_steps" in model_cls.default_config:
        config["mdn_steps"] = sizes.pretrain_steps
    run = train(model, train_file, out / "run", steps=steps, seed=seed, overwrite=True, progress=True, config=config)

    # 3. generate
    from .generate import generate

    gen = data_dir / f"generated_{model}.h5"
    _say(f"3/4 generating {sizes.n_generate} showers for the held-out incident energies")
    generate(run, gen, sizes.n_generate, conditions_from=heldout, seed=seed + 1, overwrite=True, progress=True)

    # 4. evaluate
    _say("4/4 evaluating against held-out reference showers (plus a second reference sample as the ideal)")
    metrics = evaluate(heldout, [gen, ref2], names=[model, "reference (seed 2)"], train=train_file,
                       out_dir=out / "report", classifier=sizes.classifier, seed=seed, progress=True)
    print(format_terminal_table(metrics))
    minutes = (time.perf_counter() - t_start) / 60
    write_text_atomic(out / "demo_summary.json", json.dumps({"minutes": minutes, "model": model, "steps": steps,
                                                            "quick": quick}, indent=1))
    _say(f"done in {minutes:.1f} min — open {out / 'report' / 'index.html'}")
    return metrics
