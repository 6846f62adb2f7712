"""The ``calosim`` command line: a thin layer over the Python API.

Every sub-command that draws random numbers takes ``--seed``. Errors a user can cause (bad
file, unknown name, bad range, an output that cannot be written) are printed as one line,
without a traceback, exit code 2; SIGINT/SIGTERM remove temporary outputs and exit 130/143.
Outputs are checked for writability before any work is done.
"""

from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .interrupts import (INTERRUPTED, Interrupted, exit_on_interrupt, install_interrupt_handlers, interrupted_signal,
                         remove_temp_files)

if Path(sys.argv[0]).name == "calosim" and threading.current_thread() is threading.main_thread():
    install_interrupt_handlers()  # the console script: before importing click (Ctrl-C at start-up)

with exit_on_interrupt():
    import click

    from . import __version__
    from .scaleout import EngineError

SEED = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                    help="Random seed, >= 0 (same seed -> same output).")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
DEVICE = click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, cuda:1, ...")
THREADS = click.option("--threads", type=click.IntRange(min=1), default=None,
                       help="torch intra-op threads (default: the run's `threads` setting, else torch's choice; "
                            "1 is faster on a busy machine).")
SHARD = click.option("--shard", default=None, metavar="K/N",
                     help="Run only shard K of N (K = 0..N-1: a contiguous range of the run's seeded blocks, "
                          "e.g. one per Slurm/HTCondor array task); join the files with `calosim merge`.")
DASK = click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
                    help="Run the blocks on an existing Dask cluster (scheduler address, e.g. tcp://host:8786); "
                         "this process writes the file. Needs the extra calosim[dask].")


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing errors into a one-line message and exit code 2.

    An ``OSError`` (read-only directory, disk full, ...) names its file; an interrupt removes
    the temporary outputs and exits 130 (SIGINT) or 143 (SIGTERM), also when a library
    swallowed the ``KeyboardInterrupt`` on the way.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _exit_interrupted(exc.signum if isinstance(exc, Interrupted) else 2)
        except (ValueError, KeyError, FileExistsError, FileNotFoundError, ImportError, EngineError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            click.secho(f"Error: {msg}", fg="red", err=True)
            sys.exit(2)
        except OSError as exc:  # file systems: permissions, immutable, full, ...
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"Error: {where}{exc.strerror or exc}", fg="red", err=True)
            sys.exit(2)
        if INTERRUPTED.is_set():  # a KeyboardInterrupt swallowed by a library: still not a success
            _exit_interrupted(interrupted_signal())
        return result

    return wrapper


def _exit_interrupted(signum: int) -> None:
    remove_temp_files()
    click.secho(f"Interrupted ({'SIGTERM' if signum == 15 else 'SIGINT'}); no output was written "
                "(files finished before the interrupt are kept)", fg="red", err=True)
    sys.exit(128 + signum)


class _Group(click.Group):
    """The ``calosim`` group: SIGINT/SIGTERM handlers first, before click parses anything.

    An interrupt that arrives before a command runs (click turns it into ``Abort``, "Aborted!",
    exit 1) exits 130/143 like one during the command.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            install_interrupt_handlers()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _exit_interrupted(interrupted_signal() if INTERRUPTED.is_set() else 2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except BrokenPipeError:  # `calosim geometries | head`: as click's standalone mode
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _warning_line(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    click.secho(f"Warning: {message}", fg="yellow", err=True)


def _device(spec: str) -> str:
    """Check a ``--device`` before any work: a valid torch device that exists on this machine."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r}: not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine (no GPU or a CPU-only torch); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {spec!r}: unsupported device type {dev.type!r}; use cpu, cuda, cuda:N or mps")
    return spec


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="calosim")
def main() -> None:
    """calosim: fast calorimeter simulation with deep generative models.

    Also runs as `python -m calosim` (and `torchrun ... -m calosim train ...`).

    \b
    Data flows one way:
      geometry -> `simulate` reference showers (HDF5) -> `train` a model (run directory)
      -> `generate` showers (HDF5) -> `evaluate` (HTML report + metrics.json) -> `bench` speed.
    Start with `calosim demo`, which runs the whole loop on the built-in simulator.
    """
    import warnings

    warnings.showwarning = _warning_line  # one line, no source excerpt


# ---------------------------------------------------------------------------------------------
@main.command("geometries")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON description of every preset.")
@_friendly
def geometries_cmd(as_json: bool) -> None:
    """List the detector geometry presets."""
    from .geometry import get_geometry, list_geometries

    if as_json:
        import json

        click.echo(json.dumps({n: get_geometry(n).to_dict() for n in list_geometries()}, indent=1))
        return
    width = max(map(len, list_geometries()))
    for name, desc in list_geometries().items():
        click.echo(f"{name:<{width}}  {desc}")


@main.command("models")
@_friendly
def models_cmd() -> None:
    """List the registered generative models."""
    from .models import list_models

    for name, desc in list_models().items():
        click.echo(f"{name:<12} {desc}")


# ---------------------------------------------------------------------------------------------
@main.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--geometry", "-g", default=None,
              help="Geometry (preset, .json or binning .xml), for CaloChallenge files with a custom binning.")
@_friendly
def info_cmd(file: str, geometry: str | None) -> None:
    """Physics-aware summary of a shower FILE (any supported layout)."""
    from .summary import file_summary

    click.echo(file_summary(file, _geometry(geometry) if geometry else None))


# ---------------------------------------------------------------------------------------------
@main.command("simulate")
@click.option("--geometry", "-g", default="calogan", show_default=True,
              help="Geometry: a preset (see `calosim geometries`), a geometry .json or a CaloChallenge binning .xml.")
@click.option("--particle", "-p", default="e+", show_default=True,
              help="e-, e+, gamma, pi+, pi-, proton (aliases: electron, positron, photon, pion+, ...; "
                   "proton: --engine geant4 only).")
@click.option("--energy", "-e", default="1:100", show_default=True,
              help="Incident energy in GeV: 50 (fixed), 1:100 (uniform), log:1:100 (log-uniform), "
                   "discrete:1,2,4 (equal shares of the listed energies) or calochallenge-1 (the challenge's "
                   "15 powers of two, 0.256 ... 4194.304 GeV).")
@click.option("--theta", default="0", show_default=True, help="Polar angle of incidence in degrees: fixed or lo:hi.")
@click.option("--phi", default="0", show_default=True, help="Azimuth of the incidence direction in degrees: fixed or lo:hi.")
@click.option("--position", default="0", show_default=True, help="Impact position in mm: fixed, lo:hi (both x and y) or x,y.")
@click.option("-n", "n", type=int, default=10000, show_default=True, help="Number of showers (> 0).")
@click.option("--engine", default="mc", show_default=True, help="Simulation engine: mc (built-in) or geant4 (extra).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@click.option("--layout", default="native", show_default=True, type=click.Choice(["native", "calogan", "calochallenge"]))
@click.option("--workers", type=int, default=1, show_default=True,
              help="Simulate blocks on this many worker threads, one engine instance each (same file for any N).")
@SHARD
@DASK
@SEED
@OVERWRITE
@_friendly
def simulate_cmd(geometry: str, particle: str, energy: str, theta: str, phi: str, position: str, n: int,
                 engine: str, out: str, layout: str, workers: int, shard: str | None, dask_address: str | None,
                 seed: int, overwrite: bool) -> None:
    """Simulate reference showers with the built-in simulator (or another engine).

    Example: calosim simulate --geometry calogan --particle e+ --energy 1:100 -n 10000 --seed 1 -o eplus.h5

    \b
    Scale-out (docs/scaleout.md): -n is always the whole run's size; the same --seed gives the
    same showers with any --workers, on --dask, or as --shard K/N files joined by `calosim merge`.
    """
    import time

    from .io import check_free_space, check_writable, estimate_file_bytes
    from .scaleout import parse_shard
    from .simulate import parse_conditions, resolve_particle, shard_size, simulate_to_file

    geo = _geometry(geometry)
    if n <= 0:
        raise ValueError(f"-n must be a positive number of showers, got {n}")
    if workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers}")
    sh = parse_shard(shard)
    if sh is not None and layout != "native":
        raise ValueError("--shard writes native files (they carry the shard attributes `calosim merge` needs); "
                         "drop --layout or convert the merged file")
    resolve_particle(particle)
    parse_conditions(energy, theta, phi, position)
    check_writable(out, overwrite=overwrite)
    check_free_space(out, estimate_file_bytes(shard_size(n, sh), geo.n_cells))
    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(energy=energy, theta=theta, phi=phi, position=position, seed=seed)
    if engine != "mc":
        kw["engine"] = engine
    if workers != 1:
        kw["workers"] = workers
    if sh is not None:
        kw["shard"] = sh
    if dask_address is not None:
        kw["dask"] = dask_address
    path = simulate_to_file(out, geo, particle, n, overwrite=overwrite, progress=True, layout=layout, **kw)
    dt = time.perf_counter() - t0
    m = shard_size(n, sh)
    what = f"shard {sh[0]}/{sh[1]}: {m} of {n}" if sh else f"{n}"
    click.echo(f"wrote {what} {particle} showers ({geo.name}) to {path} in {dt:.1f} s ({m / dt:.0f} showers/s)")


# ---------------------------------------------------------------------------------------------
@main.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Merged output HDF5 file.")
@OVERWRITE
@_friendly
def merge_cmd(files: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Merge the --shard K/N files of one `simulate` or `generate` run into one file.

    Checks that the files are shards of the same run (geometry, conditions, engine and version,
    seed, particle, shard count, ...), that every shard is there exactly once, then writes them in
    block order (streamed, atomic). Example: calosim merge part_*.h5 -o all.h5
    """
    from .io import check_writable
    from .scaleout import merge

    check_writable(out, overwrite=overwrite)
    path = merge(list(files), out, overwrite=overwrite, progress=True)
    click.echo(f"merged {len(files)} shards into {path}")


# ---------------------------------------------------------------------------------------------
@main.command("geant4-data")
@click.option("--path", "path", default=None, type=click.Path(file_okay=False),
              help="Data directory (default: calosim's default Geant4 data directory).")
@click.option("--build", "action", flag_value="build",
              help="Build the stand-in Geant4 data tree there (from the screened Bethe-Heitler cross section "
                   "and xraydb's Elam data; nothing is downloaded).")
@click.option("--where", "action", flag_value="where", default=True,
              help="Print the data directory and the data source the Geant4 engine would use (default).")
@_friendly
def geant4_data_cmd(path: str | None, action: str) -> None:
    """Build or locate the Geant4 data sets used by `simulate --engine geant4`."""
    try:
        from .simulate import g4data
    except ImportError as exc:
        raise ImportError(f"the Geant4 data tools (calosim.simulate.g4data) are not available: {exc}") from None

    if action == "build":
        built = g4data.build_standin(Path(path) if path else None, progress=True)
        click.echo(f"built the stand-in Geant4 data tree in {built}")
        return
    click.echo(f"default data directory: {g4data.default_data_dir()}")
    try:
        _, label = g4data.data_env(Path(path) if path else None)
    except (ValueError, FileNotFoundError) as exc:
        label = f"none usable ({exc})"
    click.echo(f"data source: {label}")


def _geometry(spec: str):  # noqa: ANN202
    from .geometry import resolve_geometry

    return resolve_geometry(spec)


# ---------------------------------------------------------------------------------------------
@main.command("train")
@click.option("--model", "-m", required=True, help="Model name (see `calosim models`).")
@click.option("--data", "-d", required=True, type=click.Path(dir_okay=False), help="Training showers (HDF5).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML file of hyper-parameters.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one hyper-parameter (repeatable).")
@click.option("--epochs", type=int, default=None, help="Train for this many epochs ...")
@click.option("--steps", type=int, default=None, help="... or this many optimiser steps (default: the model's recipe).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--geometry", "-g", default=None,
              help="Geometry of the training file (preset, .json or CaloChallenge binning .xml), for CaloChallenge "
                   "files with a custom binning; default: the file's own.")
@DEVICE
@SEED
@OVERWRITE
@_friendly
def train_cmd(model: str, data: str, out: str, config_file: str | None, overrides: tuple[str, ...], epochs: int | None,
              steps: int | None, resume: bool, geometry: str | None, device: str, seed: int, overwrite: bool) -> None:
    """Train a generative model on reference showers; writes a run directory.

    Data-parallel: `torchrun --nproc_per_node 2 -m calosim train ...`.
    """
    from .io import check_writable
    from .train import parse_overrides, train

    _device(device)
    check_writable(out, directory=True)
    cfg = parse_overrides(overrides)
    if geometry is not None:
        _geometry(geometry)  # a bad spec fails now, naming the file
        cfg["geometry"] = str(Path(geometry).resolve()) if Path(geometry).suffix.lower() in (".json", ".xml") else geometry
    run = train(model, data, out, config=cfg, config_file=config_file, epochs=epochs, steps=steps, device=device,
                seed=seed, resume=resume, overwrite=overwrite, progress=True)
    click.echo(f"run directory: {run}")


# ---------------------------------------------------------------------------------------------
@main.command("generate")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("-n", "n", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of showers.")
@click.option("--energy", "-e", default=None,
              help="Incident energy in GeV (50, 1:100, log:1:100, 10,20,50); default: the training distribution. "
                   "Energies outside the training range give a warning.")
@click.option("--particle", "-p", default=None,
              help="Particle (name or PDG code); must be one the run was trained on.")
@click.option("--conditions-from", default=None, type=click.Path(dir_okay=False), help="Copy incident energies/conditions from this file.")
@click.option("--batch", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Showers per model call and per write (the showers of a seed depend on it below 1024).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False))
@SHARD
@DASK
@DEVICE
@THREADS
@SEED
@OVERWRITE
@_friendly
def generate_cmd(run_dir: str, n: int, energy: str | None, particle: str | None, conditions_from: str | None, batch: int,
                 out: str, shard: str | None, dask_address: str | None, device: str, threads: int | None, seed: int,
                 overwrite: bool) -> None:
    """Sample showers from a trained run into an HDF5 file (native layout, streamed).

    -n is the whole run's size; with --shard K/N only shard K's rows are written (bit-identical to
    those rows of the full run; join with `calosim merge`). --dask workers must see the run directory.
    """
    import time

    from .generate import GEN_BLOCK, generate
    from .scaleout import parse_shard, shard_blocks

    sh = parse_shard(shard)
    _device(device)
    t0 = time.perf_counter()
    path = generate(run_dir, out, n, energy=energy, particle=particle, conditions_from=conditions_from, batch=batch,
                    device=device, seed=seed, overwrite=overwrite, progress=True, shard=sh, dask=dask_address,
                    threads=threads)
    dt = time.perf_counter() - t0
    blocks = shard_blocks(sh, -(-max(n, 0) // GEN_BLOCK))
    m = max(0, min(n, blocks.stop * GEN_BLOCK) - blocks.start * GEN_BLOCK) if len(blocks) else 0
    what = f"shard {sh[0]}/{sh[1]}: {m} of {n}" if sh else f"{n}"
    click.echo(f"wrote {what} showers to {path} in {dt:.1f} s ({1000 * dt / max(m, 1):.3f} ms/shower incl. I/O)")


# ---------------------------------------------------------------------------------------------
class _EvaluateCommand(click.Command):
    """`evaluate` with the options generated from the fields of EvaluateOptions marked `cli`.

    Generated on first use (parsing or --help), so the other commands do not import the
    metrics package at start-up.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "_options_added", False):
            self._options_added = True
            self.params.extend(_evaluate_params())
        return super().get_params(ctx)


def _evaluate_params() -> list[click.Parameter]:
    from .metrics.options import cli_fields

    params: list[click.Parameter] = []
    for name, default, help_text, choices in cli_fields():
        flag = "--" + name.replace("_", "-")
        if choices:
            params.append(click.Option([flag, name], type=click.Choice(choices), default=default, show_default=True,
                                       help=help_text))
        elif isinstance(default, bool):
            decls = [f"{flag}/--no-{name.replace('_', '-')}"] if default else [flag]
            params.append(click.Option([*decls, name], is_flag=True, default=default, show_default=default,
                                       help=help_text))
        elif name == "threshold":
            params.append(click.Option([flag, name], type=float, default=None, metavar="MEV", help=help_text))
        elif name == "geometry":
            params.append(click.Option([flag, name], default=None, metavar="SPEC", help=help_text))
        else:
            params.append(click.Option([flag, name], type=type(default) if default is not None else int,
                                       default=default, show_default=default is not None, help=help_text))
    return params


@main.command("evaluate", cls=_EvaluateCommand)
@click.option("--reference", "-r", required=True, type=click.Path(dir_okay=False), help="Reference showers.")
@click.option("--generated", "-g", required=True, multiple=True, type=click.Path(dir_okay=False), help="Generated showers (repeatable).")
@click.option("--name", "names", multiple=True, help="Display name per --generated (repeatable, same order).")
@click.option("--train", "train_file", default=None, type=click.Path(dir_okay=False), help="Training showers, for the memorisation test.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Report directory.")
@_friendly
def evaluate_cmd(reference: str, generated: tuple[str, ...], names: tuple[str, ...], train_file: str | None,
                 out: str, **options: Any) -> None:
    """Compare generated showers with reference showers: HTML report, PNG plots, metrics.json.

    The report directory is written as a whole (an interrupted run leaves the old one); the
    geometry's official voxel cut is applied to every sample (--threshold to change it).
    """
    from .metrics import evaluate
    from .metrics.options import EvaluateOptions
    from .metrics.report import format_terminal_table

    if options.get("geometry") is not None:
        options["geometry"] = _geometry(options["geometry"])  # the same -g resolution as every command
    try:
        metrics = evaluate(reference, list(generated), names=list(names) or None, train=train_file, out_dir=out,
                           options=EvaluateOptions(**options))
    except OSError as exc:  # unwritable report directory and the like: one line, no traceback
        if isinstance(exc, (FileExistsError, FileNotFoundError)):
            raise
        raise ValueError(str(exc)) from None
    click.echo(format_terminal_table(metrics))
    click.echo(f"report: {Path(out) / 'index.html'}")


# ---------------------------------------------------------------------------------------------
@main.command("bench")
@click.option("--run", "runs", required=True, multiple=True, type=click.Path(file_okay=False), help="Run directory (repeatable).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write the rows as JSON.")
@click.option("--no-reference", is_flag=True, help="Do not time the reference simulator.")
@click.option("--no-geant4", is_flag=True,
              help="Do not time Geant4 (timed by default when calosim[geant4] is installed and the geometry has a "
                   "Geant4 description).")
@click.option("--geant4-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Geant4 showers timed per run.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads (default: torch's choice; 1 is faster on a busy machine).")
@DEVICE
@SEED
@OVERWRITE
@_friendly
def bench_cmd(runs: tuple[str, ...], json_path: str | None, no_reference: bool, no_geant4: bool, geant4_n: int,
              threads: int | None, device: str, seed: int, overwrite: bool) -> None:
    """Time sampling (ms/shower at batch 1, 4, 10, 128, 512, 1024) against the reference simulator and Geant4."""
    from .bench import bench, format_table, write_json
    from .io import check_writable

    _device(device)
    if json_path:
        check_writable(json_path, overwrite=overwrite)  # before minutes of timing, not after
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    rows = bench(list(runs), device=device, reference=not no_reference, seed=seed,
                 geant4=False if no_geant4 else None, geant4_n=geant4_n)
    click.echo(format_table(rows))
    if json_path:
        write_json(rows, json_path, overwrite=overwrite)
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------------------------------------
@main.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@OVERWRITE
@_friendly
def export_cmd(run_dir: str, out: str, overwrite: bool) -> None:
    """Export a trained generator to ONNX (needs `pip install calosim[export]`)."""
    from .export import export_onnx
    from .io import check_writable

    check_writable(out, overwrite=overwrite)
    path = export_onnx(run_dir, out, overwrite=overwrite)
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
@main.command("demo")
@click.option("--out", "-o", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): a smoke test of the whole loop.")
@click.option("--model", "-m", default=None, help="Model to train (default: spots, the better one; see `calosim models`).")
@SEED
@click.option("--overwrite", is_flag=True, help="Replace the files of an earlier demo in --out.")
@_friendly
def demo_cmd(out: str, quick: bool, model: str | None, seed: int, overwrite: bool) -> None:
    """Run the whole loop on the built-in simulator: simulate, train, generate, evaluate."""
    from .demo import DEMO_MODEL, run_demo

    run_demo(Path(out), quick=quick, seed=seed, model=model or DEMO_MODEL, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
from .events.cli import events_group  # noqa: E402  (whole events, CALPAGAN: docs/events.md)

main.add_command(events_group)


if __name__ == "__main__":  # pragma: no cover
    main()
