"""Pythia 8 events (pp at 13 TeV) in a ragged HDF5 file; the layout is documented in ``docs/events.md``.

Layout (``format = "calosim-events"``, ``version = 1``), ``n`` events holding ``m`` particles::

    /events/offsets   (n + 1,) int64    particles of event i are rows offsets[i]:offsets[i+1]
    /events/seed      (n,) int64        Pythia seed of event i (regenerates it alone)
    /events/code      (n,) int32        Pythia process code;  /events/pthat (n,) float32 GeV
    /particles/pdg    (m,) int32        final-state particles only
    /particles/E, px, py, pz, eta, phi  (m,) float32  GeV, rad
    /particles/vertex (m, 4) float32    production vertex x, y, z (mm), t (mm/c)

Per-event seeds: event ``i`` of a run with seed ``S`` re-seeds Pythia's generator with
:func:`event_seed` ``(S, i)`` before it is generated, so any subset (and any ``--workers``)
reproduces the same events.

``--hepmc``: the full Pythia record of every event (beams, shower, hadronisation, decays) as a
HepMC3 ASCII file written with pyhepmc, the file the seed shares between both simulations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..progress import progress_bar
from . import EventsError, require

__all__ = ["PROCESSES", "EventBatch", "event_seed", "generate_events", "write_events", "read_events",
           "n_events", "to_awkward"]

FORMAT, VERSION = "calosim-events", 1
ECM_GEV = 13000.0
#: Pythia's seed must lie in [1, 900 000 000].
_MAX_SEED = 900_000_000
_FIELDS = ("E", "px", "py", "pz", "eta", "phi")

#: process -> Pythia settings (the p-hat_T cut is appended from ``pthat_min``).
PROCESSES: dict[str, tuple[str, ...]] = {
    # W + 1 parton at LO (qqbar -> W g, q g -> W q); the shower adds the further jets
    # (MadGraph's W + up to 3 jets matrix elements are not available here). W decays inclusively.
    "wjets": ("WeakBosonAndParton:qqbar2Wg = on", "WeakBosonAndParton:qg2Wq = on"),
    # QCD 2 -> 2 (all hard QCD processes).
    "dijet": ("HardQCD:all = on",),
}
DEFAULT_PTHAT = {"wjets": 20.0, "dijet": 100.0}


def event_seed(seed: int, index: int) -> int:
    """Pythia seed (1..900 000 000) of event ``index`` of a run with ``seed`` (stable across versions)."""
    s = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)[0]
    return int(s % _MAX_SEED) + 1


@dataclass
class EventBatch:
    """A ragged block of events: ``offsets`` (n+1,), per-particle arrays (m,), per-event arrays (n,)."""

    offsets: np.ndarray
    particles: dict[str, np.ndarray]  # pdg, E, px, py, pz, eta, phi, vertex (m, 4)
    seed: np.ndarray
    code: np.ndarray
    pthat: np.ndarray
    #: Full Pythia records (HEPEVT arrays, one dict per event) when HepMC output is asked for.
    hepevt: list[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.seed)

    def event(self, i: int) -> dict[str, np.ndarray]:
        """The particles of event ``i`` as ``{field: (k,) array}``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {k: v[a:b] for k, v in self.particles.items()}

    @staticmethod
    def concat(parts: Sequence["EventBatch"]) -> "EventBatch":
        sizes = [int(p.offsets[-1]) for p in parts]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        off = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts[:-1])]).astype(np.int64)
        keys = parts[0].particles.keys()
        hep = None if any(p.hepevt is None for p in parts) else [h for p in parts for h in p.hepevt]
        return EventBatch(off, {k: np.concatenate([p.particles[k] for p in parts]) for k in keys},
                          *(np.concatenate([getattr(p, f) for p in parts]) for f in ("seed", "code", "pthat")),
                          hepevt=hep)


def _settings(process: str, pthat_min: float | None) -> list[str]:
    if process not in PROCESSES:
        raise EventsError(f"unknown process {process!r}; valid: {', '.join(PROCESSES)}")
    pt = DEFAULT_PTHAT[process] if pthat_min is None else float(pthat_min)
    return [f"Beams:eCM = {ECM_GEV:g}", *PROCESSES[process], f"PhaseSpace:pTHatMin = {pt:g}",
            "Random:setSeed = on", "Random:seed = 1", "Next:numberCount = 0", "Print:quiet = on"]


def _pythia(settings: Sequence[str]) -> Any:
    py8 = require("pythia8mc")
    p = py8.Pythia("", False)  # no banner
    for s in settings:
        if not p.readString(s):
            raise EventsError(f"Pythia rejected the setting {s!r}")
    if not p.init():
        raise EventsError("Pythia failed to initialise (see its messages above)")
    return p


def _hepevt(event: Any) -> dict[str, np.ndarray]:
    """The whole Pythia record (entries 1..; entry 0 is Pythia's 'system') as arrays for HepMC.

    ``mothers`` / ``mother_offsets``: the ragged 1-based mother lists (Pythia's ``motherList()``).
    """
    qs = [q for q in event][1:]
    a = np.array([(q.px(), q.py(), q.pz(), q.e(), q.m(), q.id(), q.statusHepMC(), q.xProd(), q.yProd(), q.zProd(),
                   q.tProd()) for q in qs], dtype=np.float64).reshape(-1, 11)
    moms = [sorted(m for m in q.motherList() if m > 0) for q in qs]
    return {"p": a[:, :5], "pid": a[:, 5].astype(np.int32), "status": a[:, 6].astype(np.int32), "x": a[:, 7:11],
            "mothers": np.asarray([m for ms in moms for m in ms], np.int32),
            "mother_offsets": np.concatenate([[0], np.cumsum([len(ms) for ms in moms])]).astype(np.int64)}


def _run(settings: Sequence[str], seed: int, indices: Sequence[int], hepmc: bool = False) -> EventBatch:
    """Generate the events ``indices`` of a run: one Pythia, re-seeded per event."""
    p = _pythia(settings)
    hep: list[dict[str, np.ndarray]] | None = [] if hepmc else None
    cols: dict[str, list[float]] = {k: [] for k in ("pdg", *_FIELDS, "vx", "vy", "vz", "vt")}
    offsets, seeds, codes, pthats = [0], [], [], []
    for i in indices:
        s = event_seed(seed, i)
        p.rndm.init(s)
        for _ in range(100):
            if p.next():
                break
        else:
            raise EventsError(f"Pythia failed 100 times to generate event {i} (seed {s})")
        n = 0
        for q in p.event:
            if not q.isFinal():
                continue
            n += 1
            cols["pdg"].append(q.id())
            cols["E"].append(q.e()); cols["px"].append(q.px()); cols["py"].append(q.py()); cols["pz"].append(q.pz())
            cols["eta"].append(q.eta()); cols["phi"].append(q.phi())
            cols["vx"].append(q.xProd()); cols["vy"].append(q.yProd()); cols["vz"].append(q.zProd())
            cols["vt"].append(q.tProd())
        offsets.append(offsets[-1] + n)
        if hep is not None:
            hep.append(_hepevt(p.event))
        seeds.append(s)
        info = p.infoPython()  # a snapshot: fetch it per event
        codes.append(info.code())
        pthats.append(info.pTHat())
    parts = {"pdg": np.asarray(cols["pdg"], dtype=np.int32)}
    parts.update({k: np.asarray(cols[k], dtype=np.float32) for k in _FIELDS})
    parts["vertex"] = np.stack([np.asarray(cols[k], dtype=np.float32) for k in ("vx", "vy", "vz", "vt")], axis=1)
    return EventBatch(np.asarray(offsets, dtype=np.int64), parts, np.asarray(seeds, dtype=np.int64),
                      np.asarray(codes, dtype=np.int32), np.asarray(pthats, dtype=np.float32), hepevt=hep)


def _run_star(args: tuple[list[str], int, list[int], bool]) -> EventBatch:
    return _run(*args)


def generate_events(process: str, n: int, *, seed: int = 0, pthat_min: float | None = None, workers: int = 1,
                    chunk: int = 50, first: int = 0, progress: bool = False, hepmc: bool = False
                    ) -> Iterator[EventBatch]:
    """Yield events ``first .. first + n - 1`` of a run in order, in blocks of ``chunk``.

    ``workers`` > 1 runs one Pythia per process; the events do not depend on it. ``hepmc`` keeps
    each event's full Pythia record (``EventBatch.hepevt``) for :func:`write_events`' HepMC3 copy.
    """
    if n < 1:
        raise EventsError(f"-n must be >= 1, got {n}")
    settings = _settings(process, pthat_min)
    blocks = [list(range(a, min(a + chunk, first + n))) for a in range(first, first + n, chunk)]
    jobs = [(settings, int(seed), b, hepmc) for b in blocks]
    with progress_bar(n, f"pythia {process}", enabled=progress, unit="events") as advance:
        if workers <= 1:
            for batch in map(_run_star, jobs):
                advance(len(batch))
                yield batch
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for batch in pool.imap(_run_star, jobs):
                    advance(len(batch))
                    yield batch


def write_events(path: str | Path, batches: Iterator[EventBatch], attrs: dict[str, Any], *,
                 overwrite: bool = False, hepmc: str | Path | None = None) -> int:
    """Write ``batches`` to ``path`` (temp file + rename); returns the number of events.

    ``hepmc``: also write the full Pythia records (batches from ``generate_events(hepmc=True)``)
    as a HepMC3 ASCII file there (pyhepmc), event numbers = event indices, atomically too.
    """
    path = Path(path)
    for out in (path, *((Path(hepmc),) if hepmc else ())):
        if out.exists() and not overwrite:
            raise EventsError(f"{out} exists (use --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    hep_writer, hep_tmp = None, None
    if hepmc:
        pyhepmc = require("pyhepmc")
        hep_path = Path(hepmc)
        hep_path.parent.mkdir(parents=True, exist_ok=True)
        hep_tmp = hep_path.with_name(f".{hep_path.name}.tmp{os.getpid()}")
        hep_writer = pyhepmc.open(hep_tmp, "w", format="HepMC3")
    n_ev = n_p = 0
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": FORMAT, "version": VERSION, **{k: (json.dumps(v) if isinstance(v, (list, dict))
                                                                        else v) for k, v in attrs.items()}})
            ev, pa = f.create_group("events"), f.create_group("particles")
            off = ev.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,))
            for b in batches:
                if n_ev == 0:
                    for k in ("seed", "code", "pthat"):
                        v = getattr(b, k)
                        ev.create_dataset(k, shape=(0,), dtype=v.dtype, maxshape=(None,), chunks=(4096,))
                    for k, v in b.particles.items():
                        pa.create_dataset(k, shape=(0, *v.shape[1:]), dtype=v.dtype, maxshape=(None, *v.shape[1:]),
                                          chunks=(65536, *v.shape[1:]), compression="gzip", compression_opts=1)
                k_ev, k_p = len(b), int(b.offsets[-1])
                off.resize((n_ev + k_ev + 1,))
                off[n_ev + 1:] = b.offsets[1:] + n_p
                for k in ("seed", "code", "pthat"):
                    ev[k].resize((n_ev + k_ev,))
                    ev[k][n_ev:] = getattr(b, k)
                for k, v in b.particles.items():
                    pa[k].resize((n_p + k_p, *v.shape[1:]))
                    pa[k][n_p:] = v
                if hep_writer is not None:
                    if b.hepevt is None:
                        raise EventsError("HepMC output needs events generated with hepmc=True")
                    for j, rec in enumerate(b.hepevt):
                        hep_writer.write(_genevent(rec, n_ev + j, int(b.seed[j])))
                n_ev, n_p = n_ev + k_ev, n_p + k_p
            f.attrs["n_events"] = n_ev
        if hep_writer is not None:
            hep_writer.close()
            hep_writer = None
            os.replace(hep_tmp, hepmc)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        if hep_writer is not None:
            hep_writer.close()
        for t in (tmp, hep_tmp):
            if t is not None:
                t.unlink(missing_ok=True)
    return n_ev


def _genevent(rec: dict[str, np.ndarray], number: int, seed: int) -> Any:
    """A pyhepmc GenEvent (GeV, mm) of one :func:`_hepevt` record; the event's Pythia seed is an attribute.

    A vertex joins all particles that share a mother (and all mothers of those particles), since
    a HepMC particle has one end vertex. Vertices are added once all their incoming particles are
    in the event: HepMC3's ASCII reader needs parents written before children, while Pythia puts
    the initial-state shower's earlier partons after the partons they turn into.
    """
    pyhepmc = require("pyhepmc")
    n = len(rec["pid"])
    off, moms = rec["mother_offsets"], rec["mothers"] - 1
    # union-find over particles: children of one mother, and mothers of one child, share a vertex
    root = list(range(n))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first_child = {}
    for c in range(n):
        for m in moms[off[c]:off[c + 1]]:
            if m in first_child:
                root[find(c)] = find(first_child[m])
            else:
                first_child[m] = c
    groups: dict[int, list[int]] = {}
    for c in range(n):
        if off[c + 1] > off[c]:
            groups.setdefault(find(c), []).append(c)
    ins = {g: sorted({int(m) for c in kids for m in moms[off[c]:off[c + 1]]}) for g, kids in groups.items()}
    ev = pyhepmc.GenEvent(pyhepmc.Units.GEV, pyhepmc.Units.MM)
    ev.event_number = number
    parts = []
    for i in range(n):
        px, py, pz, e, m = rec["p"][i]
        gp = pyhepmc.GenParticle((px, py, pz, e), int(rec["pid"][i]), int(rec["status"][i]))
        gp.generated_mass = m
        parts.append(gp)
    placed = np.zeros(n, bool)
    for i in range(n):
        if off[i + 1] == off[i]:  # beams (no mothers)
            ev.add_particle(parts[i])
            placed[i] = True
    pending = dict(groups)
    while pending:
        ready = [g for g in pending if placed[ins[g]].all()]
        if not ready:
            raise EventsError(f"event {number}: the Pythia record has a mother loop; it cannot be written as HepMC")
        for g in ready:
            kids = pending.pop(g)
            v = pyhepmc.GenVertex(tuple(rec["x"][kids[0]]))
            for m in ins[g]:
                v.add_particle_in(parts[m])
            for c in kids:
                v.add_particle_out(parts[c])
            ev.add_vertex(v)
            placed[kids] = True
    ev.attributes["calosim_pythia_seed"] = seed
    return ev


def _open(path: str | Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise EventsError(f"{path}: not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise EventsError(f"{path}: not a calosim events file (attribute format={FORMAT!r} expected; "
                          "make one with `calosim events generate`)")
    return f


def n_events(path: str | Path) -> int:
    """Number of events in an events file."""
    with _open(path) as f:
        return len(f["events/seed"])


def read_events(path: str | Path, start: int = 0, stop: int | None = None) -> tuple[EventBatch, dict[str, Any]]:
    """Events ``start:stop`` of ``path`` and the file's attributes."""
    with _open(path) as f:
        n = len(f["events/seed"])
        stop = n if stop is None else min(stop, n)
        if not 0 <= start <= stop:
            raise EventsError(f"{path}: event range {start}:{stop} is outside 0:{n}")
        off = f["events/offsets"][start:stop + 1]
        a, b = int(off[0]), int(off[-1])
        parts = {k: f["particles"][k][a:b] for k in f["particles"]}
        batch = EventBatch(off - a, parts, *(f["events"][k][start:stop] for k in ("seed", "code", "pthat")))
        return batch, dict(f.attrs)


def to_awkward(path: str | Path) -> Any:
    """The whole file as an awkward array of events of particle records (needs awkward)."""
    ak = require("awkward")
    batch, _ = read_events(path)
    counts = np.diff(batch.offsets)
    rec = {k: v for k, v in batch.particles.items() if v.ndim == 1}
    for i, k in enumerate(("vx", "vy", "vz", "vt")):
        rec[k] = batch.particles["vertex"][:, i]
    return ak.unflatten(ak.zip(rec), counts)
