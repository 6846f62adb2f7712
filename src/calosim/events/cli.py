"""``calosim events``: generate Pythia events, make fast/detailed images, train/apply CALPAGAN, validate jets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from . import EventsError

__all__ = ["events_group"]


def _friendly(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except (EventsError, ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


#: calosim.models.calpagan.RECIPES' names, spelled out so that `--help` does not import torch (a test pins them equal).
RECIPE_NAMES = ["calosim", "calosim-v1", "seed"]
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
WORKERS = click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True,
                       help="Processes (results do not depend on it).")
THREADS = click.option("--threads", type=click.IntRange(1), default=None,
                       help="torch intra-op threads for CALPAGAN (default: torch's choice). 1 is faster on a "
                            "busy machine; the thread count changes the last digits of the results.")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@click.group("events")
def events_group() -> None:
    """Whole events (CALPAGAN, seed 004): Pythia 8, fast/detailed tower images, CALPAGAN, jets.

    Needs `pip install calosim[events]` (pythia8mc, fastjet). See docs/events.md.
    """


@events_group.command("generate")
@click.option("--process", "-p", type=click.Choice(["wjets", "dijet"]), required=True)
@click.option("-n", "n", type=click.IntRange(1), required=True, help="Number of events.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Run seed; event i uses its own Pythia seed derived from (seed, i).")
@click.option("--pthat-min", type=float, default=None, help="p-hat_T cut in GeV (default: wjets 20, dijet 100).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--hepmc", type=click.Path(dir_okay=False), default=None,
              help="Also write the full Pythia records as HepMC3 ASCII here (needs pyhepmc).")
@WORKERS
@OVERWRITE
@_friendly
def generate_cmd(process: str, n: int, seed: int, pthat_min: float | None, out: str, hepmc: str | None,
                 workers: int, overwrite: bool) -> None:
    """Generate pp events at 13 TeV with Pythia 8 into a ragged HDF5 events file (and optionally HepMC3)."""
    from .pythia import ECM_GEV, _settings, generate_events, write_events

    t0 = time.perf_counter()
    attrs = {"process": process, "seed": seed, "ecm_gev": ECM_GEV, "generator": "Pythia 8 (pythia8mc)",
             "settings": _settings(process, pthat_min)}
    k = write_events(out, generate_events(process, n, seed=seed, pthat_min=pthat_min, workers=workers,
                                          progress=True, hepmc=hepmc is not None), attrs, overwrite=overwrite,
                     hepmc=hepmc)
    dt = time.perf_counter() - t0
    also = f" and {hepmc}" if hepmc else ""
    click.echo(f"wrote {k} {process} events to {out}{also} ({1000 * dt / k:.1f} ms/event wall, {workers} worker(s))")


@events_group.command("image")
@click.argument("events", type=click.Path(exists=True, dir_okay=False))
@click.option("--view", type=click.Choice(["fast", "detailed"]), required=True)
@click.option("--engine", type=click.Choice(["mc", "geant4"]), default="mc", show_default=True,
              help="Showering engine of the detailed view (geant4: seconds per event, for small samples).")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True, help="First event.")
@click.option("--stop", type=click.IntRange(0), default=None, help="Stop before this event (default: all).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False))
@WORKERS
@OVERWRITE
@_friendly
def image_cmd(events: str, view: str, engine: str, start: int, stop: int | None, out: str, workers: int,
              overwrite: bool) -> None:
    """Turn an events file into 72 x 72 tower images (fast: ECAL, HCAL; detailed: ECAL+HCAL)."""
    from .views import CHANNELS, make_images, write_images

    imgs, sec = make_images(events, view, start=start, stop=stop, workers=workers, progress=True, engine=engine)
    write_images(out, imgs, {"view": view, "engine": engine if view == "detailed" else "delphes-like",
                             "events": str(events), "first_event": start, "channels": list(CHANNELS[view]),
                             "seconds_per_event": sec}, overwrite=overwrite)
    click.echo(f"wrote {len(imgs)} {view} images {imgs.shape[1:]} to {out} ({1000 * sec:.1f} ms/event)")


@events_group.command("train")
@click.option("--fast", required=True, type=click.Path(exists=True, dir_okay=False), help="Fast images (training).")
@click.option("--detailed", required=True, type=click.Path(exists=True, dir_okay=False), help="Detailed images.")
@click.option("--test-fast", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--test-detailed", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--recipe", type=click.Choice(RECIPE_NAMES), default="calosim", show_default=True,
              help="calosim: fast-peak normalisation, fitted spread kernel as G's base, ReLU gate, zero-initialised "
                   "residual, energy term, 0.2 GeV threshold; calosim-v1: the same without the spread kernel; "
                   "seed: the paper's recipe. The options below override single settings.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=None, help="[recipe: 16]")
@click.option("--lr", type=float, default=None, help="Generator learning rate [calosim 5e-5, calosim-v1 and seed 2e-4].")
@click.option("--lam", type=float, default=None, help="Weight of the L1 term [recipe: 100].")
@click.option("--g-steps", type=click.IntRange(1), default=None,
              help="Generator updates per discriminator update [recipe: 1].")
@click.option("--d-lr-scale", type=float, default=None,
              help="D learning rate / G learning rate [calosim 0.25, seed 1].")
@click.option("--hidden", type=click.IntRange(2), default=None, help="U-Net width [recipe: 16].")
@click.option("--energy-weight", type=float, default=None,
              help="Weight of the per-image total-energy term in G's loss [calosim 1, seed 0].")
@click.option("--threshold", "threshold_gev", type=float, default=None,
              help="Zero generated towers below this, GeV [calosim 0.2, seed 0].")
@click.option("--spread-radius", type=click.IntRange(0, 8), default=None,
              help="Radius (towers) of the least-squares spread kernel G starts from; 0: off [calosim 3, seed 0].")
@click.option("--spread-train/--no-spread-train", default=None,
              help="Train the spread kernel with G after its fit [recipe: no].")
@click.option("--blur-weight", type=float, default=None,
              help="Weight (relative to --lam) of the L1 after 1, 2, 4-tower Gaussian blurs [recipe: 0].")
@click.option("--seed", type=int, default=0, show_default=True)
@THREADS
@_friendly
def train_cmd(fast: str, detailed: str, test_fast: str | None, test_detailed: str | None, out: str, recipe: str,
              epochs: int, seed: int, threads: int | None, **overrides: Any) -> None:
    """Train CALPAGAN on paired fast/detailed images of the same events."""
    _set_threads(threads)
    from ..models.calpagan import CalpaganConfig, plot_history, train_calpagan
    from .views import read_images

    x, _ = read_images(fast)
    y, _ = read_images(detailed)
    test = None
    if (test_fast is None) != (test_detailed is None):
        raise EventsError("give both --test-fast and --test-detailed, or neither")
    if test_fast:
        test = (read_images(test_fast)[0], read_images(test_detailed)[0])
    cfg = CalpaganConfig.recipe(recipe, epochs=epochs, seed=seed,
                                **{k: v for k, v in overrides.items() if v is not None})
    model, hist = train_calpagan(x, y, cfg, test=test, log=click.echo)
    run = Path(out)
    weights = model.save(run, hist)
    plot_history(hist, run / "frechet.png")
    click.echo(f"wrote {weights}, {weights.with_suffix('.json')} and {run / 'frechet.png'}")


@events_group.command("apply")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--fast", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--zero-suppress", is_flag=True,
              help="Zero towers below the threshold fitted at training (calosim's fix; off in the seed's recipe).")
@OVERWRITE
@_friendly
def apply_cmd(run_dir: str, fast: str, out: str, seed: int, zero_suppress: bool, overwrite: bool) -> None:
    """Turn fast images into CALPAGAN (detailed-like) images."""
    from ..models.calpagan import Calpagan
    from .views import read_images, write_images

    model, _ = Calpagan.load(Path(run_dir))
    x, attrs = read_images(fast)
    t0 = time.perf_counter()
    y = model.generate(x, seed=seed, zero_suppress=zero_suppress)
    sec = (time.perf_counter() - t0) / max(len(x), 1)
    write_images(out, y, {"view": "calpagan_zs" if zero_suppress else "calpagan", "events": attrs.get("events", ""),
                          "channels": ["ECAL+HCAL"], "seconds_per_event": sec, "run": str(run_dir),
                          "zero_threshold_gev": model.zero_threshold if zero_suppress else 0.0}, overwrite=overwrite)
    click.echo(f"wrote {len(y)} calpagan images to {out} ({1000 * sec:.1f} ms/event)")


@events_group.command("evaluate")
@click.option("--fast", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--detailed", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--generated", type=click.Path(exists=True, dir_okay=False), default=None, help="CALPAGAN images.")
@click.option("--generated-zs", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Zero-suppressed CALPAGAN images (`events apply --zero-suppress`).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--title", default="jets", show_default=True, help="Report name (<out>/<title>.html, .json).")
@click.option("--r", "radius", type=float, default=0.4, show_default=True, help="Anti-kT radius (large-R: 1.0).")
@click.option("--trim/--no-trim", default=True, show_default=True, help="Trimming (R_sub 0.2, f_cut 0.05).")
@click.option("--ptmin", type=float, default=20.0, show_default=True, help="Jet pT threshold, GeV.")
@_friendly
def evaluate_cmd(fast: str, detailed: str, generated: str | None, generated_zs: str | None, out: str, title: str,
                 radius: float,
                 trim: bool, ptmin: float) -> None:
    """Jet validation: chi2 tables fast-detailed, detailed-CALPAGAN, fast-CALPAGAN (seed Tables 1, 2)."""
    from .report import jet_validation
    from .views import read_images

    imgs = {"fast": read_images(fast)[0], "detailed": read_images(detailed)[0]}
    if generated:
        imgs["calpagan"] = read_images(generated)[0]
    if generated_zs:
        imgs["calpagan_zs"] = read_images(generated_zs)[0]
    if len({len(v) for v in imgs.values()}) != 1:
        raise EventsError("the image files hold different numbers of events: " +
                          ", ".join(f"{k} {len(v)}" for k, v in imgs.items()))
    res = jet_validation(imgs, out, title=title, r=radius, trim=trim, ptmin=ptmin)
    click.echo(res["text"])
    click.echo(f"wrote {Path(out) / (title + '.html')}")


@events_group.command("demo")
@click.option("--out", "-o", default="out/events_demo", show_default=True, type=click.Path(file_okay=False))
@click.option("-n", "n", type=click.IntRange(20), default=300, show_default=True,
              help="Events per process and split (train and test each).")
@click.option("--epochs", type=click.IntRange(1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--recipe", type=click.Choice(RECIPE_NAMES), default="calosim", show_default=True,
              help="CALPAGAN's recipe: calosim's, calosim's first (no spread kernel) or the paper's "
                   "(see `events train --help`).")
@WORKERS
@THREADS
@_friendly
def demo_cmd(out: str, n: int, epochs: int, seed: int, recipe: str, workers: int, threads: int | None) -> None:
    """The whole chain at small N for W+jets and dijets, with the cross-process test (<= 15 min at the defaults)."""
    from .demo import run_events_demo

    _set_threads(threads)

    summary = run_events_demo(Path(out), n=n, epochs=epochs, seed=seed, workers=workers, recipe=recipe,
                              log=click.echo)
    click.echo(json.dumps(summary["timing"], indent=1))
