"""Two calorimeter views of the same events on CALPAGAN's 72 x 72 eta-phi tower grid.

Grid (the ``cms-towers`` preset's 72 x 72 towers of 0.087 x 0.087): eta in [-3.132, 3.132),
phi in [-pi, pi). Images are ``(N, C, 72, 72)`` float32 GeV with axis -2 = eta bin and
axis -1 = phi bin; energies are tower energies E (not E_T).

* ``fast`` (Delphes-like, C = 2: ECAL, HCAL). Delphes itself is not available here; this is
  the parametrisation of Delphes' ``Calorimeter`` module with the CMS card: each particle's
  energy goes, split by its class's (f_ECAL, f_HCAL), to the tower its momentum direction
  points at; no lateral spread. Each tower's ECAL and HCAL sums are smeared with Delphes'
  log-normal of the card's resolution, then zeroed below ``E_min`` or ``E / sigma < S_min``.
* ``detailed`` (C = 1: ECAL + HCAL). Every particle is showered by calosim's built-in ``mc``
  engine through a local two-layer tower stack (PbWO4 ECAL, brass/scintillator HCAL) around the
  tower it hits along a straight line (no magnetic field) from its production vertex: EM and
  hadronic lateral spread into neighbouring towers, sampling and constant-term fluctuations,
  then tower thresholds. The engine simulates e/gamma and charged pions; every other hadron is
  showered as a pion of the same energy, and muons leave a minimum-ionising deposit.
  No Geant4 tuning exists for this stack (the engine's defaults are used).
  ``engine="geant4"`` (``--engine geant4``, for small samples) showers the same particles with
  Geant4 instead: e/gamma in a PbWO4 ECAL block, hadrons in a brass/scintillator HCAL stack
  (:func:`geant4_geometries`; the engine builds one sampling structure per detector, so the
  hadrons miss the ECAL in front of them), muons as in the built-in view.

Per-event random streams (seeded by the event's Pythia seed and the view) make any subset of
events give the same images.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..geometry import get_geometry
from ..geometry.core import Geometry, Layer, Material
from . import EventsError
from ..progress import progress_bar
from .pythia import n_events, read_events

__all__ = ["N_ETA", "N_PHI", "ETA_MAX", "VIEWS", "tower_index", "tower_centers", "fast_image", "detailed_image",
           "make_images", "read_images", "write_images", "local_geometry", "geant4_geometries"]

_GRID = get_geometry("cms-towers").layers[0]
N_ETA, N_PHI = _GRID.shape
D_ETA = 0.087
ETA_MAX = N_ETA * D_ETA / 2  # 3.132
D_PHI = 2 * math.pi / N_PHI
IMAGE_FORMAT = "calosim-event-images"

# ---- Delphes CMS card (cards/delphes_card_CMS.tcl, module Calorimeter) -------------------------
#: |pdg| -> (f_ECAL, f_HCAL); every other particle is a hadron (0, 1).
ENERGY_FRACTION = {11: (1.0, 0.0), 22: (1.0, 0.0), 111: (1.0, 0.0),
                   12: (0.0, 0.0), 13: (0.0, 0.0), 14: (0.0, 0.0), 16: (0.0, 0.0),
                   310: (0.3, 0.7), 3122: (0.3, 0.7)}
ECAL_MIN, ECAL_SIG_MIN = 0.5, 2.0  # GeV, E / sigma
HCAL_MIN, HCAL_SIG_MIN = 1.0, 1.0


def ecal_sigma(e: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Delphes CMS ECAL resolution (GeV) at energy ``e`` (GeV), tower ``eta``."""
    return np.where(np.abs(eta) <= 3.0, np.sqrt(e ** 2 * 0.007 ** 2 + e * 0.07 ** 2 + 0.35 ** 2),
                    np.sqrt(e ** 2 * 0.107 ** 2 + e * 2.08 ** 2))


def hcal_sigma(e: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Delphes CMS HCAL resolution (GeV)."""
    return np.where(np.abs(eta) <= 3.0, np.sqrt(e ** 2 * 0.050 ** 2 + e * 1.50 ** 2),
                    np.sqrt(e ** 2 * 0.130 ** 2 + e * 2.70 ** 2))


def tower_index(eta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i_eta, i_phi, inside)`` of directions (rad); ``inside`` is False beyond |eta| = 3.132."""
    ie = np.floor((np.asarray(eta, np.float64) + ETA_MAX) / D_ETA).astype(np.int64)
    ip = np.floor((np.mod(np.asarray(phi, np.float64) + math.pi, 2 * math.pi)) / D_PHI).astype(np.int64) % N_PHI
    inside = (ie >= 0) & (ie < N_ETA)
    return np.clip(ie, 0, N_ETA - 1), ip, inside


def tower_centers() -> tuple[np.ndarray, np.ndarray]:
    """Centres ``eta`` (72,) and ``phi`` (72,) of the tower bins."""
    return (-ETA_MAX + (np.arange(N_ETA) + 0.5) * D_ETA, -math.pi + (np.arange(N_PHI) + 0.5) * D_PHI)


def _event_rng(event_seed: int, view: str) -> np.random.Generator:
    return np.random.default_rng([int(event_seed), sum(map(ord, view))])


def _fractions(pdg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(pdg)
    fe, fh = np.zeros(len(a)), np.ones(len(a))
    for k, (e, h) in ENERGY_FRACTION.items():
        m = a == k
        fe[m], fh[m] = e, h
    return fe, fh


def _lognormal(mean: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Delphes' LogNormal(mean, sigma): a log-normal variate with that mean and standard deviation."""
    out = np.zeros_like(mean)
    m = mean > 0
    s2 = np.log1p((sigma[m] / mean[m]) ** 2)
    out[m] = mean[m] * np.exp(np.sqrt(s2) * rng.standard_normal(m.sum()) - 0.5 * s2)
    return out


def fast_image(ev: dict[str, np.ndarray], event_seed: int) -> np.ndarray:
    """Delphes-like ``(2, 72, 72)`` ECAL/HCAL image (GeV) of one event's particles."""
    rng = _event_rng(event_seed, "fast")
    ie, ip, inside = tower_index(ev["eta"], ev["phi"])
    fe, fh = _fractions(ev["pdg"])
    e = ev["E"].astype(np.float64)
    flat = (ie * N_PHI + ip)[inside]
    img = np.stack([np.bincount(flat, weights=(f * e)[inside], minlength=N_ETA * N_PHI) for f in (fe, fh)])
    eta_c = np.repeat(tower_centers()[0], N_PHI)
    for c, (sig, emin, smin) in enumerate(((ecal_sigma, ECAL_MIN, ECAL_SIG_MIN), (hcal_sigma, HCAL_MIN, HCAL_SIG_MIN))):
        s = sig(img[c], eta_c)
        sm = _lognormal(img[c], s, rng)
        sm[(sm < emin) | (sm < smin * sig(sm, eta_c))] = 0.0
        img[c] = sm
    return img.reshape(2, N_ETA, N_PHI).astype(np.float32)


# ---- detailed view ---------------------------------------------------------------------------
R_ECAL_MM, Z_ECAL_MM = 1290.0, 3150.0  # ECAL front: barrel radius, endcap |z|
HALF = 4  # the local stack spans (2 HALF + 1)^2 towers around the hit tower
PBWO4 = Material("PbWO4", "PbWO4", x0_mm=8.9, lambda_mm=200.0, moliere_mm=21.9, critical_mev=8.5,
                 sampling_fraction=1.0, stochastic=0.03, constant=0.005)
# CMS HCAL: brass absorber, scintillator tiles, ~5.8 lambda at eta = 0; a ~ 100 %, b ~ 5 %.
BRASS_SC = Material("brass", "scintillator", x0_mm=16.0, lambda_mm=170.0, moliere_mm=20.0, critical_mev=20.0,
                    sampling_fraction=0.05, stochastic=0.85, constant=0.05)
ECAL_THICK_MM, GAP_MM, HCAL_THICK_MM = 230.0, 50.0, 990.0
TOWER_MM = 112.0  # a 0.087 tower at the ECAL front (the cms-towers cell size)
DET_ECAL_MIN, DET_HCAL_MIN = 0.2, 0.5  # GeV, tower thresholds per calorimeter
MIP_ECAL_GEV, MIP_HCAL_GEV = 0.30, 1.9  # muon most-probable deposits (dE/dx * path, ~ E_c / X0 per X0)


@lru_cache(maxsize=1)
def local_geometry() -> Geometry:
    """The two-layer tower stack the ``mc`` engine showers each particle through, ``(9, 9)`` towers per layer."""
    n = 2 * HALF + 1
    layers = (Layer("ecal", "cartesian", (n, n), z_mm=0.0, thickness_mm=ECAL_THICK_MM, material=PBWO4,
                    cell_mm=(TOWER_MM, TOWER_MM)),
              Layer("hcal", "cartesian", (n, n), z_mm=ECAL_THICK_MM + GAP_MM, thickness_mm=HCAL_THICK_MM,
                    material=BRASS_SC, cell_mm=(TOWER_MM, TOWER_MM)))
    return Geometry("cms-towers-local", layers, "CMS-like ECAL+HCAL tower stack around one tower (events view)",
                    overflow=True)


def hit_direction(ev: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(eta, phi) of the point where each particle's straight line from its vertex meets the ECAL front.

    The front is the barrel cylinder r = 1.29 m, closed by the endcap planes |z| = 3.15 m.
    """
    v = ev["vertex"][:, :3].astype(np.float64)
    p = np.stack([ev["px"], ev["py"], ev["pz"]], axis=1).astype(np.float64)
    pt2 = p[:, 0] ** 2 + p[:, 1] ** 2
    # barrel: |v_T + s p_T| = R, s > 0
    b = (v[:, 0] * p[:, 0] + v[:, 1] * p[:, 1])
    c = v[:, 0] ** 2 + v[:, 1] ** 2 - R_ECAL_MM ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        s_b = np.where(pt2 > 0, (-b + np.sqrt(np.maximum(b * b - pt2 * c, 0.0))) / pt2, np.inf)
        s_e = np.where(p[:, 2] != 0, (np.sign(p[:, 2]) * Z_ECAL_MM - v[:, 2]) / p[:, 2], np.inf)
    s = np.minimum(s_b, np.where(s_e > 0, s_e, np.inf))
    x = v + s[:, None] * p
    r = np.hypot(x[:, 0], x[:, 1])
    eta = np.arcsinh(x[:, 2] / np.maximum(r, 1e-9))
    return eta, np.arctan2(x[:, 1], x[:, 0])


#: The Geant4 detailed view (``engine="geant4"``): the engine builds one sampling structure per
#: detector, so e/gamma are showered in a PbWO4 ECAL block alone and hadrons in a brass /
#: scintillator HCAL stack alone (no ECAL in front of them, unlike the built-in view's stack).
#: CMS HCAL barrel: ~18 brass plates of ~50 mm with ~3.7 mm tiles; here 18 x (50 + 5) mm = 990 mm.
G4_HCAL_PERIODS, G4_HCAL_BRASS_MM, G4_HCAL_SC_MM = 18, 50.0, 5.0
#: Visible share of an electron shower's energy in that stack, measured with the Geant4 engine
#: (``benchmarks/events_geant4.py --sampling-fraction``: 10 e- of 10 GeV).
G4_HCAL_SAMPLING_FRACTION = 0.0141


@lru_cache(maxsize=1)
def geant4_geometries() -> tuple[Geometry, Geometry]:
    """``(ecal, hcal)``: one-layer ``(9, 9)``-tower detectors with Geant4 sampling structures."""
    from ..geometry.core import Sampling

    n, width = 2 * HALF + 1, 2000.0  # plates wider than the 9 x 112 mm grid: the rest is overflow
    ecal = Geometry("cms-towers-g4-ecal", (Layer("ecal", "cartesian", (n, n), z_mm=0.0, thickness_mm=ECAL_THICK_MM,
                                                 material=PBWO4, cell_mm=(TOWER_MM, TOWER_MM)),),
                    "PbWO4 ECAL block, 9 x 9 towers (events view, Geant4)", overflow=True,
                    sampling=Sampling("G4_PbWO4", "G4_PbWO4", absorber_mm=0.0, active_mm=ECAL_THICK_MM, n_periods=1,
                                      width_mm=width, sampling_fraction=1.0, source="CMS ECAL: 23 cm PbWO4 crystals"))
    depth = G4_HCAL_PERIODS * (G4_HCAL_BRASS_MM + G4_HCAL_SC_MM)
    hcal = Geometry("cms-towers-g4-hcal", (Layer("hcal", "cartesian", (n, n), z_mm=0.0, thickness_mm=depth,
                                                 material=BRASS_SC, cell_mm=(TOWER_MM, TOWER_MM)),),
                    "brass/scintillator HCAL stack, 9 x 9 towers (events view, Geant4)", overflow=True,
                    sampling=Sampling("G4_BRASS", "G4_POLYSTYRENE", absorber_mm=G4_HCAL_BRASS_MM,
                                      active_mm=G4_HCAL_SC_MM, n_periods=G4_HCAL_PERIODS, width_mm=width,
                                      sampling_fraction=G4_HCAL_SAMPLING_FRACTION,
                                      source="CMS HCAL barrel (brass + plastic scintillator tiles), simplified"))
    return ecal, hcal


_ENGINES: dict[str, tuple[Any, Any]] = {}


def _showerers(engine: str) -> tuple[Any, Any]:
    """``(em, had)`` engine instances of this process (two Geant4 workers: one per detector)."""
    from ..simulate import get_engine

    if engine not in _ENGINES:
        if engine == "mc":
            e = get_engine("mc")
            _ENGINES[engine] = (e, e)
        elif engine == "geant4":
            _ENGINES[engine] = (get_engine("geant4"), get_engine("geant4"))
        else:
            raise EventsError(f"unknown detailed-view engine {engine!r}; valid: mc, geant4")
    return _ENGINES[engine]


def detailed_image(ev: dict[str, np.ndarray], event_seed: int, engine: str = "mc") -> np.ndarray:
    """Detailed ``(1, 72, 72)`` ECAL + HCAL image (GeV) of one event, showered by ``engine`` (``mc``, ``geant4``)."""
    em_eng, had_eng = _showerers(engine)
    rng = _event_rng(event_seed, "detailed" if engine == "mc" else f"detailed-{engine}")
    eta, phi = hit_direction(ev)
    ie, ip, inside = tower_index(eta, phi)
    a = np.abs(ev["pdg"])
    visible = inside & ~np.isin(a, (12, 14, 16)) & (ev["E"] > 0)
    img = np.zeros((2, N_ETA + 2 * HALF, N_PHI), dtype=np.float64)  # eta padded: showers leak past the edge
    n = 2 * HALF + 1
    # sub-tower offset of the hit inside its tower: local x <-> eta, y <-> phi
    ox = ((eta + ETA_MAX) / D_ETA - ie - 0.5) * TOWER_MM
    oy = ((np.mod(phi + math.pi, 2 * math.pi)) / D_PHI - ip - 0.5) * TOWER_MM
    if engine == "mc":
        geos = (local_geometry(), local_geometry())
        layers_of = ((0, 1), (0, 1))  # the two-layer stack fills ECAL and HCAL
    else:
        geos = geant4_geometries()
        layers_of = ((0,), (1,))  # e/gamma: ECAL block; hadrons: HCAL stack
    groups = ((em_eng, geos[0], layers_of[0], 22, visible & np.isin(a, (11, 22))),
              (had_eng, geos[1], layers_of[1], 211, visible & ~np.isin(a, (11, 22, 13))))
    for eng, geo, layers, pdg, m in groups:
        if not m.any():
            continue
        k = int(m.sum())
        pos = np.stack([ox[m], oy[m]], axis=1)
        cells, _ = eng.simulate_block(geo, pdg, ev["E"][m].astype(np.float64) * 1000.0, np.zeros(k), np.zeros(k),
                                      pos, rng)
        win = np.asarray(cells).reshape(k, len(layers), n, n) / 1000.0  # (k, layer, phi, eta) GeV
        de, dp = np.meshgrid(np.arange(n) - HALF, np.arange(n) - HALF, indexing="xy")  # (phi, eta) grids
        te = ie[m][:, None, None] + HALF + de[None]
        tp = (ip[m][:, None, None] + dp[None]) % N_PHI
        for j, layer in enumerate(layers):
            np.add.at(img[layer], (te, tp), win[:, j])
    mu = visible & (a == 13)
    if mu.any():  # Landau-like (Moyal: -ln chi^2_1, mean 1.27) fluctuation around the most-probable deposit
        k = int(mu.sum())
        for layer, mpv in enumerate((MIP_ECAL_GEV, MIP_HCAL_GEV)):
            moyal = -np.log(np.maximum(rng.standard_normal(k) ** 2, 1e-12)) - 1.27
            np.add.at(img[layer], (ie[mu] + HALF, ip[mu]), np.maximum(mpv * (1.0 + 0.15 * moyal), 0.0))
    img = img[:, HALF:HALF + N_ETA]
    img[0][img[0] < DET_ECAL_MIN] = 0.0
    img[1][img[1] < DET_HCAL_MIN] = 0.0
    return img.sum(0, keepdims=True).astype(np.float32)


VIEWS: dict[str, Callable[..., np.ndarray]] = {"fast": fast_image, "detailed": detailed_image}
CHANNELS = {"fast": ("ECAL", "HCAL"), "detailed": ("ECAL+HCAL",)}


def _image_block(args: tuple[str, str, int, int, str]) -> tuple[np.ndarray, float]:
    path, view, a, b, engine = args
    batch, _ = read_events(path, a, b)
    fn = VIEWS[view]
    kw = {"engine": engine} if view == "detailed" else {}
    t0 = time.perf_counter()
    out = np.stack([fn(batch.event(i), int(batch.seed[i]), **kw) for i in range(len(batch))])
    return out, time.perf_counter() - t0


def make_images(events: str | Path, view: str, *, start: int = 0, stop: int | None = None, workers: int = 1,
                chunk: int = 20, progress: bool = False, engine: str = "mc") -> tuple[np.ndarray, float]:
    """Images ``(N, C, 72, 72)`` of events ``start:stop`` and the seconds per event spent making them.

    ``engine`` (detailed view only): ``mc`` (built-in) or ``geant4`` (slow: for small samples).
    The seconds are wall time of the image loop in each worker (for Geant4 they include its worker
    processes, which do the showering), summed over workers.
    """
    if view not in VIEWS:
        raise EventsError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
    if engine != "mc" and view != "detailed":
        raise EventsError(f"--engine {engine} applies to the detailed view only")
    total = n_events(events)
    stop = total if stop is None else min(stop, total)
    if engine == "geant4":
        chunk = min(chunk, 2)  # a Geant4 event image takes seconds: advance the bar often
    jobs = [(str(events), view, a, min(a + chunk, stop), engine) for a in range(start, stop, chunk)]
    desc = f"{view} images" + (f" ({engine})" if engine != "mc" else "")
    parts, cpu = [], 0.0
    with progress_bar(stop - start, desc, enabled=progress, unit="images") as advance:
        if workers <= 1:
            results = map(_image_block, jobs)
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers)
            results = pool.imap(_image_block, jobs)
        for out, sec in results:
            parts.append(out)
            cpu += sec
            advance(len(out))
        if workers > 1:
            pool.close()
    imgs = np.concatenate(parts) if parts else np.zeros((0, len(CHANNELS[view]), N_ETA, N_PHI), np.float32)
    return imgs, cpu / max(len(imgs), 1)


def write_images(path: str | Path, images: np.ndarray, attrs: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write ``images`` (N, C, 72, 72) GeV to ``path`` (temp file + rename) with ``attrs``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise EventsError(f"{path} exists (use --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": IMAGE_FORMAT, **attrs})
            f.create_dataset("images", data=images.astype(np.float32), compression="gzip", compression_opts=1,
                             chunks=(min(64, max(len(images), 1)), *images.shape[1:]))
            f["eta_centers"], f["phi_centers"] = tower_centers()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_images(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(images (N, C, 72, 72) float32 GeV, attrs)`` of an image file."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise EventsError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") != IMAGE_FORMAT:
            raise EventsError(f"{path}: not a calosim event-image file (attribute format={IMAGE_FORMAT!r} expected; "
                              "make one with `calosim events image`)")
        return f["images"][:], dict(f.attrs)
