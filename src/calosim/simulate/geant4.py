"""The Geant4 reference engine (``calosim simulate --engine geant4``; extra ``calosim[geant4]``).

Geant4 (through geant4-pybind) runs in a worker subprocess that this engine owns, for two
reasons: a fatal ``G4Exception`` calls ``abort()``, and ``G4RunManager`` is a per-process
singleton (one geometry per process). The parent sends blocks of conditions down a pipe and
gets the cell energies back; a worker that dies is reported with the tail of its Geant4 log.

The detector is the geometry's :class:`~calosim.geometry.Sampling` structure: ``n_periods`` x
(absorber + active) plates, each active slab holding its readout layer's cell grid as
replicas (rows along y, cells along x). Scoring is done in C++ by primitive scorers
(``G4PSEnergyDeposit3D`` on the cells, ``G4PSEnergyDeposit`` on the slab outside the grid for the
overflow): Python runs once per event, to read the hit maps, never per step. Visible (active)
energy is divided by the structure's sampling fraction, so cells are on the electromagnetic
scale like the built-in engine's. Each event's random seed is drawn from the block's physics
generator, so a shower depends only on (seed, event index), never on workers or shards.

The physics list depends on the particle (:func:`physics_list_for`): e-, e+ and gamma use
``G4EmStandardPhysics`` (EM option 0, the reference for EM showers) plus ``G4DecayPhysics``;
pi+, pi- and protons use Geant4's reference list for hadron calorimetry, ``FTFP_BERT`` (the same
EM physics, plus ``G4EmExtraPhysics`` (gamma- and lepto-nuclear), ``G4HadronElasticPhysics``,
``G4HadronPhysicsFTFP_BERT`` (Bertini cascade below 3-6 GeV, FTF string model above),
``G4StoppingPhysics``, ``G4IonPhysics``, ``G4NeutronTrackingCut``). FTFP_BERT is chosen because it
needs the least data of the hadronic lists: no G4NDL (that is for the ``_HP`` lists), no INCL or
ABLA tables; it reads only G4PARTICLEXS (neutron elastic, inelastic and capture, gamma-nuclear);
PhotonEvaporation levels are optional to it. Production cut 0.7 mm for both. One worker runs one
physics list: switching between EM and hadron particles restarts it.

Geant4 data sets come from ``GEANT4_DATA_DIR`` when it holds complete official data, else from
calosim's stand-in tree (:mod:`calosim.simulate.g4data`, built once into the user cache; files are
labelled "Geant4 11.4.1 with stand-in data"). With the stand-in, EM showers are the reference; hadron
showers are **experimental** (their neutron and gamma-nuclear cross sections are parameterised
stand-ins; pion and proton cross sections and all models are Geant4's own), and files say so in the
``hadronic_physics`` attribute. The
environment is set in the worker before ``geant4_pybind`` is imported, so the import never tries
to download anything (geant4-pybind otherwise downloads missing data sets, without asking when
``CI=true``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from . import register_engine
from .conditions import particle_name
from .g4data import DATASETS, STANDIN_LABEL, data_env
from .g4detector import check_geometry, make_detector, slab_layers

__all__ = ["Geant4Engine", "GEANT4_VERSION", "PHYSICS_LIST", "HADRON_PHYSICS_LIST", "PRODUCTION_CUT_MM", "EM_PDGS",
           "HADRON_PDGS", "HADRONIC_STANDIN", "DATASETS", "data_env", "physics_list_for", "slab_layers"]

GEANT4_VERSION = "11.4.1"
#: The EM physics list (e-, e+, gamma).
PHYSICS_LIST = "G4EmStandardPhysics + G4DecayPhysics"
#: The hadronic physics list (pi+, pi-, proton): geant4-pybind's ``FTFP_BERT`` modular list.
HADRON_PHYSICS_LIST = ("FTFP_BERT (G4EmStandardPhysics + G4EmExtraPhysics + G4DecayPhysics + G4HadronElasticPhysics"
                       " + G4HadronPhysicsFTFP_BERT + G4StoppingPhysics + G4IonPhysics + G4NeutronTrackingCut)")
PRODUCTION_CUT_MM = 0.7
#: Particles simulated with the EM physics list.
EM_PDGS = (11, -11, 22)
#: Particles simulated with the hadronic physics list.
HADRON_PDGS = (211, -211, 2212)
#: ``hadronic_physics`` attribute of files made with the stand-in data.
HADRONIC_STANDIN = "experimental: stand-in cross sections"
_LOG_TAIL = 15


def physics_list_for(pdg: int) -> str:
    """``"em"`` (e-, e+, gamma) or ``"hadron"`` (pi+, pi-, proton): the physics list that shoots ``pdg``."""
    if pdg in EM_PDGS:
        return "em"
    if pdg in HADRON_PDGS:
        return "hadron"
    raise ValueError(f"the Geant4 engine cannot shoot PDG id {pdg} (it shoots e-, e+, gamma, pi+, pi-, proton)")


def _require_extra() -> None:
    if importlib.util.find_spec("geant4_pybind") is None:
        raise ImportError("the Geant4 engine needs the extra: pip install 'calosim[geant4]' (geant4-pybind)")


# ---------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------
@register_engine("geant4")
class Geant4Engine:
    """Geant4 as a calosim engine; see the module docstring. Thread-safe per instance."""

    name = "geant4"
    version = GEANT4_VERSION

    def __init__(self) -> None:
        _require_extra()
        self._env, self.data_source = data_env()
        self.label = STANDIN_LABEL if self.data_source.startswith("stand-in") else f"Geant4 {GEANT4_VERSION}"
        self._proc: Any = None
        self._send: Any = None
        self._recv: Any = None
        self._geo_json: str | None = None
        self._physics: str | None = None
        self._log: Path | None = None
        self._lock = threading.Lock()

    def provenance(self, pdg: int | None = None) -> dict[str, Any]:
        """Attributes recorded in every file this engine writes.

        ``physics_list`` is the list that shoots ``pdg``; without it (calosim asks before it knows
        the particle), the rule: the EM list for e-, e+, gamma and FTFP_BERT for pi+, pi-, proton
        (the file's ``particle`` attribute says which one applies).
        """
        if pdg is None:
            physics = f"{PHYSICS_LIST} for e-, e+, gamma; {HADRON_PHYSICS_LIST} for pi+, pi-, proton"
        else:
            physics = PHYSICS_LIST if physics_list_for(pdg) == "em" else HADRON_PHYSICS_LIST
        standin = self.label == STANDIN_LABEL
        return {"engine_label": self.label, "geant4_version": GEANT4_VERSION, "physics_list": physics,
                "hadronic_physics": HADRONIC_STANDIN if standin else "FTFP_BERT with official Geant4 data",
                "production_cut_mm": PRODUCTION_CUT_MM, "data_source": self.data_source,
                "cell_energy_scale": "electromagnetic scale: energy deposited in the active material / "
                                     "the structure's sampling fraction, MeV",
                "energy_scale": "em-scale"}

    def _start(self, geo: Geometry, physics: str) -> None:
        # A plain subprocess over two pipes, not multiprocessing's spawn: spawn re-imports the
        # caller's __main__, which breaks user scripts without an ``if __name__ == "__main__"`` guard.
        self.close()
        fd, log = tempfile.mkstemp(prefix="calosim-geant4-", suffix=".log")
        self._log = Path(log)
        down_r, down_w = os.pipe()   # parent -> worker
        up_r, up_w = os.pipe()       # worker -> parent
        try:
            # the environment (data sets) is in place before the worker imports geant4_pybind
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from calosim.simulate.geant4 import _worker_main; _worker_main()",
                 str(down_r), str(up_w)],
                env={**os.environ, **self._env}, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                pass_fds=(down_r, up_w), close_fds=True)
        finally:
            os.close(fd)
            os.close(down_r)
            os.close(up_w)
        self._send = Connection(down_w, readable=False)
        self._recv = Connection(up_r, writable=False)
        self._geo_json, self._physics = geo.to_json(), physics
        self._call(("init", self._geo_json, physics))

    def _tail(self) -> str:
        try:
            lines = [l for l in self._log.read_text(errors="replace").splitlines() if l.strip()]  # type: ignore[union-attr]
        except OSError:
            return ""
        return " | ".join(lines[-_LOG_TAIL:])

    def _call(self, msg: tuple[Any, ...]) -> Any:
        try:
            self._send.send(msg)
            status, payload = self._recv.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            try:
                code = self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            tail, log = self._tail(), self._log
            self._proc, self._log = None, None  # the log stays on disk for the user to read
            self._close_pipes()
            raise RuntimeError(f"the Geant4 worker died (exit code {code}); its last messages: {tail or '(none)'}; "
                               f"full log: {log}") from None
        if status != "ok":
            raise RuntimeError(f"Geant4 worker: {payload}")
        return payload

    def simulate_block(self, geometry: Geometry, pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray,
                       position: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`calosim.simulate.Engine.simulate_block`; showers and overflow in MeV (EM scale)."""
        check_geometry(geometry)
        physics = physics_list_for(pdg)
        seeds = rng.integers(1, 2**31 - 1, size=len(energy))
        with self._lock:
            if (self._proc is None or self._proc.poll() is not None or self._geo_json != geometry.to_json()
                    or self._physics != physics):
                self._start(geometry, physics)
            showers, overflow = self._call(("run", int(pdg), np.asarray(energy, np.float64), np.asarray(theta, np.float64),
                                            np.asarray(phi, np.float64), np.asarray(position, np.float64), seeds))
        return showers, overflow

    def _close_pipes(self) -> None:
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    self._send.send(("stop",))
                    self._proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                    self._proc.wait()
            self._close_pipes()
        self._proc = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# ---------------------------------------------------------------------------------------------
# worker side (runs in the spawned subprocess; the only place that imports geant4_pybind)
# ---------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies (a killed job leaves no Geant4 run)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(0)


def _worker_main() -> None:
    """Entry point of the worker process: ``argv`` holds the read and write pipe descriptors."""
    # Geant4 prints through C++ streams to fd 1 and 2, which the parent sent to the log file
    recv = Connection(int(sys.argv[1]), writable=False)
    send = Connection(int(sys.argv[2]), readable=False)
    _die_with_parent()
    app: _App | None = None
    while True:
        try:
            msg = recv.recv()
        except EOFError:       # the parent is gone
            os._exit(0)
        try:
            if msg[0] == "stop":
                # geant4-pybind crashes in Python's own shutdown: leave without it
                sys.stdout.flush()
                os._exit(0)
            if msg[0] == "init":
                app = _App(Geometry.from_json(msg[1]), msg[2])
                send.send(("ok", None))
            elif msg[0] == "run":
                assert app is not None
                send.send(("ok", app.run(*msg[1:])))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
            send.send(("error", f"{type(exc).__name__}: {exc}"))


class _App:
    """A Geant4 application for one geometry and physics list (``"em"`` or ``"hadron"``)."""

    def __init__(self, geo: Geometry, physics_kind: str) -> None:
        import geant4_pybind as g4

        self.g4, self.geo = g4, geo
        s = geo.sampling
        assert s is not None
        self.sf = s.sampling_fraction
        self.rm = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
        self.detector = make_detector(g4, geo)
        self.rm.SetUserInitialization(self.detector)
        if physics_kind == "hadron":
            physics = g4.FTFP_BERT()
        else:
            physics = g4.G4VModularPhysicsList()
            physics.RegisterPhysics(g4.G4EmStandardPhysics())
            physics.RegisterPhysics(g4.G4DecayPhysics())
        physics.SetDefaultCutValue(PRODUCTION_CUT_MM * g4.mm)
        physics.SetVerboseLevel(0)
        self.physics = physics
        self.rm.SetUserInitialization(physics)
        self.gun_action = _make_gun(g4, -0.5 * s.depth_mm * g4.mm)
        self.rm.SetUserAction(self.gun_action)
        self.event_action = _make_event_action(g4, self)
        self.rm.SetUserAction(self.event_action)
        ui = g4.G4UImanager.GetUIpointer()
        for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0",
                    "/process/em/verbose 0", "/process/had/verbose 0"):
            ui.ApplyCommand(cmd)
        self.rm.Initialize()
        self.offsets = geo.layer_offsets
        self.hc_ids: list[tuple[int, int]] | None = None

    def run(self, pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray, position: np.ndarray,
            seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(energy)
        self.showers = np.zeros((n, self.geo.n_cells), np.float64)
        self.overflow = np.zeros((n, self.geo.n_layers), np.float64)
        self.gun_action.configure(particle_name(pdg),  # calosim names are Geant4 names
                                   energy, theta, phi, position, seeds)
        self.rm.BeamOn(n)
        return (self.showers / self.sf).astype(np.float32), (self.overflow / self.sf).astype(np.float32)

    def score(self, event: Any) -> None:
        """Read the event's hit maps into row ``event.GetEventID()`` (MeV, visible)."""
        g4 = self.g4
        if self.hc_ids is None:
            sdm = g4.G4SDManager.GetSDMpointer()
            self.hc_ids = [(sdm.GetCollectionID(f"cells{i}/edep"), sdm.GetCollectionID(f"slab{i}/edep"))
                           for i in range(self.geo.n_layers)]
        hce = event.GetHCofThisEvent()
        i_evt = event.GetEventID()
        for layer, (cid, sid) in enumerate(self.hc_ids):
            o = int(self.offsets[layer])
            row = self.showers[i_evt]
            for idx, e in hce.GetHC(cid):
                row[o + idx] += e
            for _, e in hce.GetHC(sid):
                self.overflow[i_evt, layer] += e


def _make_gun(g4: Any, front: float) -> Any:
    class Gun(g4.G4VUserPrimaryGeneratorAction):
        def __init__(self) -> None:
            super().__init__()
            self.gun = g4.G4ParticleGun(1)

        def configure(self, particle: str, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray,
                      position: np.ndarray, seeds: np.ndarray) -> None:
            self.gun.SetParticleDefinition(g4.G4ParticleTable.GetParticleTable().FindParticle(particle))
            self.mass = self.gun.GetParticleDefinition().GetPDGMass()
            self.energy, self.theta, self.phi, self.position, self.seeds = energy, theta, phi, position, seeds

        def GeneratePrimaries(self, event: Any) -> None:  # noqa: N802 - Geant4 API
            i = event.GetEventID()
            g4.HepRandom.setTheSeed(int(self.seeds[i]))
            # calosim energies are total energies; the gun takes kinetic energy
            self.gun.SetParticleEnergy(max(float(self.energy[i]) - self.mass, 0.0) * g4.MeV)
            th, ph = float(self.theta[i]), float(self.phi[i])
            d = g4.G4ThreeVector(math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th))
            self.gun.SetParticleMomentumDirection(d)
            # the impact point is on the front face; start 1 mm upstream along the direction
            x, y = float(self.position[i, 0]), float(self.position[i, 1])
            start = g4.G4ThreeVector(x * g4.mm, y * g4.mm, front) - d * (1.0 * g4.mm / max(math.cos(th), 1e-3))
            self.gun.SetParticlePosition(start)
            self.gun.GeneratePrimaryVertex(event)

    return Gun()


def _make_event_action(g4: Any, app: _App) -> Any:
    class Events(g4.G4UserEventAction):
        def EndOfEventAction(self, event: Any) -> None:  # noqa: N802 - Geant4 API
            app.score(event)

    return Events()
