"""``calosim events demo``: the whole chain at small N, both processes, with the cross-process test.

For each process (W+jets, dijets): Pythia train and test events (different run seeds), fast and
detailed images of both, CALPAGAN trained on the training pairs (Fréchet distances tracked on
train and test), applied to the test fast images, jets and chi2 tables on the test set. Then
the W+jets model on the dijet test set and the reverse. ``recipe`` picks CALPAGAN's recipe
(calosim's default or the paper's ``"seed"``). Writes ``summary.md``, ``summary.json``,
one HTML report per table, the Fig. 5-like plots and the timing per event of every step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..models.calpagan import CalpaganConfig, plot_history, train_calpagan
from .pythia import ECM_GEV, _settings, generate_events, write_events
from ..io import write_text_atomic
from .report import image_stats, jet_validation, markdown_table
from .views import CHANNELS, make_images, write_images

__all__ = ["run_events_demo"]

PROCESSES = ("wjets", "dijet")


def run_events_demo(out: Path, *, n: int = 300, epochs: int = 4, seed: int = 0, workers: int = 1,
                    recipe: str = "calosim", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out`` with CALPAGAN's ``recipe`` (``"calosim"`` or the paper's ``"seed"``);
    returns the summary (tables, image statistics, timings)."""
    CalpaganConfig.recipe(recipe)  # an unknown recipe fails before any event is generated
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    data: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for p_i, proc in enumerate(PROCESSES):
        for s_i, split in enumerate(("train", "test")):
            run_seed = seed * 100 + 10 * p_i + s_i
            ev = out / f"{proc}_{split}_events.h5"
            t0 = time.perf_counter()
            write_events(ev, generate_events(proc, n, seed=run_seed, workers=workers),
                         {"process": proc, "seed": run_seed, "ecm_gev": ECM_GEV, "generator": "Pythia 8 (pythia8mc)",
                          "settings": _settings(proc, None)}, overwrite=True)
            timing.setdefault(f"pythia_{proc}_s_per_event", 0.0)
            timing[f"pythia_{proc}_s_per_event"] += (time.perf_counter() - t0) / (2 * n)
            imgs = {}
            for view in ("fast", "detailed"):
                imgs[view], sec = make_images(ev, view, workers=workers)
                timing[f"{view}_s_per_event"] = timing.get(f"{view}_s_per_event", 0.0) + sec / 4
                write_images(out / f"{proc}_{split}_{view}.h5", imgs[view],
                             {"view": view, "events": str(ev), "channels": list(CHANNELS[view]),
                              "seconds_per_event": sec}, overwrite=True)
            data[proc, split] = imgs
            log(f"{proc} {split}: {n} events, fast and detailed images ({time.perf_counter() - t_start:.0f} s)")
    models = {}
    tables: dict[str, Any] = {}
    for proc in PROCESSES:
        tr, te = data[proc, "train"], data[proc, "test"]
        t0 = time.perf_counter()
        model, hist = train_calpagan(tr["fast"], tr["detailed"], CalpaganConfig.recipe(recipe, epochs=epochs, seed=seed),
                                     test=(te["fast"], te["detailed"]), log=lambda s, p=proc: log(f"{p} {s}"))
        timing[f"train_{proc}_s"] = time.perf_counter() - t0
        model.save(out / f"{proc}_run", hist)
        plot_history(hist, out / f"{proc}_frechet.png")
        models[proc] = model
    for m_proc in PROCESSES:
        for t_proc in PROCESSES:
            te = data[t_proc, "test"]
            t0 = time.perf_counter()
            gen = models[m_proc].generate(te["fast"], seed=seed)
            timing["calpagan_s_per_event"] = (time.perf_counter() - t0) / len(gen)
            gen_zs = models[m_proc].generate(te["fast"], seed=seed, zero_suppress=True)
            for name, img in (("calpagan", gen), ("calpagan_zs", gen_zs)):
                write_images(out / f"{t_proc}_test_{name}_from_{m_proc}.h5", img,
                             {"view": name, "events": str(out / f"{t_proc}_test_events.h5"), "channels": ["ECAL+HCAL"],
                              "seconds_per_event": timing["calpagan_s_per_event"], "model": m_proc,
                              "zero_threshold_gev": models[m_proc].zero_threshold if name == "calpagan_zs" else 0.0},
                             overwrite=True)
            title = f"{t_proc}_test" + ("" if m_proc == t_proc else f"_model_{m_proc}")
            res = jet_validation({"fast": te["fast"], "detailed": te["detailed"], "calpagan": gen,
                                  "calpagan_zs": gen_zs}, out, title=title)
            log(res["text"])
            tables[title] = {"table": res["table"], "closer": res["closer_by_model"], "n_jets_ge2": res["n_jets_ge2"],
                             "trained_on": m_proc, "tested_on": t_proc,
                             "zero_threshold_gev": models[m_proc].zero_threshold,
                             "images": {name: image_stats(te["fast"], te["detailed"], img) for name, img in
                                        (("fast", te["fast"]), ("calpagan", gen), ("calpagan_zs", gen_zs))}}
    timing["total_s"] = time.perf_counter() - t_start
    summary = {"n_per_split": n, "epochs": epochs, "seed": seed, "recipe": recipe, "timing": timing, "tables": tables}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1, default=float))
    lines = [f"# events demo: {n} train + {n} test events per process, {epochs} epochs, seed {seed}, "
             f"CALPAGAN recipe {recipe!r}", "",
             "## Timing", ""]
    lines += [f"- {k}: {v:.4g}" for k, v in timing.items()]
    for title, t in tables.items():
        lines += ["", f"## {title} (CALPAGAN trained on {t['trained_on']}, tested on {t['tested_on']}; "
                      f"zero threshold {t['zero_threshold_gev']:.2f} GeV)", "", markdown_table(t["table"]), ""]
        lines += [f"- {g}: closer to detailed than fast on {k} of {m} observables" for g, (k, m) in t["closer"].items()]
        lines += [f"- images {g}: {st['energy_generated']:.0f} GeV (detailed {st['energy_detailed']:.0f}), response "
                  f"{st['response_generated']:.2f}, {st['towers_generated']:.0f} towers (detailed "
                  f"{st['towers_detailed']:.0f}), floor {1000 * st['floor_gev']:.1f} MeV/empty tower, "
                  f"{100 * st['energy_fraction_in_empty']:.0f} % of the energy in towers empty in detailed"
                  for g, st in t["images"].items()]
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    return summary
