"""Geant4 11.4 data sets: find the official ones, or build a small stand-in for EM showers.

Geant4's data sets (``G4EMLOW``, ``G4NDL``, ...) are large downloads from CERN. When they are not
installed (:func:`official_data_env` finds them through ``GEANT4_DATA_DIR`` or the 12 per-set
variables), :func:`build_standin` writes, once, a *stand-in* tree that holds exactly what the
standard electromagnetic physics (``G4EmStandardPhysics``, plus ``G4DecayPhysics``) reads, for
Z = 1..100, computed from physics formulae and the Elam photon tables of ``xraydb``:

``G4EMLOW8.8/brem_SB/br{Z}``
    Seltzer-Berger bremsstrahlung table (a ``G4Physics2DVector``): the scaled cross section
    ``chi = (beta^2 / Z^2) k dsigma/dk`` in mb on the SB grid (32 values of k/T, 57 electron kinetic
    energies T = 1 keV..10 GeV, stored as ln(T/MeV)). Above 0.5 MeV it is the screened
    Bethe-Heitler cross section of Tsai (Rev. Mod. Phys. 46 (1974) 815: Thomas-Fermi screening
    functions, Coulomb correction, Tsai's radiation logarithms for Z <= 4); radiation lengths
    from these tables are 1-1.5 % shorter than the PDG values (the test checks Pb, W, Fe, Si), which is
    what matters for shower development. Below 0.1 MeV it is the non-relativistic Born cross
    section with the Elwert factor and a Thomas-Fermi screening cut-off; in between the two are
    joined geometrically in ln T. The last 3 % of the spectrum (k/T > 0.97, where both Born
    formulae fail) is held at its k/T = 0.97 value. Below ~10 MeV the table can be off the
    published SB tables by 10-30 % (there radiative losses are a small part of the energy loss).
``G4EMLOW8.8/epics2017/phot/pe-{cs,high,low}-{Z}.dat``
    Photoelectric total cross section (``G4LivermorePhotoElectricModel``), tabulated from the Elam
    tables (100 eV..800 keV, both sides of every edge) and extrapolated above 800 keV with a
    log-log slope that relaxes to 1/E (within ~25 % of XCOM at 1-10 MeV, where the photo effect
    is <~10 % of the attenuation). One "shell" only: its binding energy is the outermost edge, so
    the photo-electron takes E - (a few eV) and no fluorescence/Auger cascade is simulated (the
    default of the standard list is fluorescence off anyway: the binding energy is then deposited
    locally; here the photo-electron carries it, which moves it by microns). The fit-parameter
    branches of the model are disabled (their thresholds are set to 1e10 MeV).
``G4EMLOW8.8/epics2017/rayl/re-cs-{Z}.dat``
    Rayleigh (coherent) total cross section (``G4LivermoreRayleighModel``) from the Elam tables,
    100 eV..800 keV (above, the model's own 1/E^2 continuation is exact enough).
``G4ENSDFSTATE3.0/ENSDFSTATE.dat``
    Empty: no nuclide levels (``G4NuclideTable`` then knows only what it builds on the fly).

The 10 other data directories exist and are empty, so hadronic, neutron, radioactive-decay,
optical and channeling physics have no data: the stand-in supports EM showers (e-, e+, gamma)
only, and hadron showers must not be simulated with it. Results made with it must be labelled
**"Geant4 11.4.1 with stand-in data"**: the EM physics (models, LPM, msc, ionisation, Compton,
pair production) is Geant4's own and is the reference; only the three cross-section tables
above are approximations; hadronic physics is not provided. :func:`data_env` returns the label of
the source it chose.

geant4-pybind's import downloads missing data sets (without asking when ``CI=true``) unless
``GEANT4_DATA_DIR`` is set, so the environment of :func:`data_env` must be in ``os.environ``
before ``import geant4_pybind``.

>>> env, label = data_env()          # doctest: +SKIP
>>> os.environ.update(env); import geant4_pybind   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["GEANT4_VERSION", "DATASETS", "STANDIN_VERSION", "STANDIN_LABEL", "default_data_dir",
           "official_data_env", "build_standin", "data_env", "sb_scaled_dcs", "sb_grid"]

GEANT4_VERSION = "11.4.1"
#: Version of the stand-in content; a tree with another stamp is rebuilt.
STANDIN_VERSION = "1"
#: How results made with the stand-in tree must be labelled.
STANDIN_LABEL = f"Geant4 {GEANT4_VERSION} with stand-in data"

#: Geant4 11.4 data sets: environment variable -> directory name (as geant4-pybind 0.1.3 expects).
DATASETS: dict[str, str] = {
    "G4NEUTRONHPDATA": "G4NDL4.7.1", "G4LEDATA": "G4EMLOW8.8", "G4LEVELGAMMADATA": "PhotonEvaporation6.1.2",
    "G4RADIOACTIVEDATA": "RadioactiveDecay6.1.2", "G4PARTICLEXSDATA": "G4PARTICLEXS4.2", "G4PIIDATA": "G4PII1.3",
    "G4REALSURFACEDATA": "RealSurface2.2", "G4SAIDXSDATA": "G4SAIDDATA2.0", "G4ABLADATA": "G4ABLA3.3",
    "G4INCLDATA": "G4INCL1.3", "G4ENSDFSTATEDATA": "G4ENSDFSTATE3.0", "G4CHANNELINGDATA": "G4CHANNELING2.0",
}

Z_MAX = 100
_STAMP = "calosim-standin.txt"
#: Files whose presence marks a complete official tree (beyond the 12 directories).
_OFFICIAL_MARKERS = ("G4EMLOW8.8/brem_SB/br82", "G4ENSDFSTATE3.0/ENSDFSTATE.dat", "G4NDL4.7.1/Elastic")

# physical constants (CODATA 2018)
_ALPHA = 7.2973525693e-3
_R_E_CM = 2.8179403262e-13
_ME_MEV = 0.51099895
_AVOGADRO = 6.02214076e23
_MB_PER_CM2 = 1e27
_BARN_CM2 = 1e-24
_BARN_MM2 = 1e-22          # Geant4 internal unit of area is mm^2
_ELAM_MIN_EV, _ELAM_MAX_EV = 100.0, 8.0e5
_PE_MAX_EV = 1.0e11        # photoelectric table up to 100 GeV
_PARAM_OFF_MEV = 1.0e10    # threshold that disables the parameterised photoelectric branches


def default_data_dir() -> Path:
    """Where the stand-in tree lives: ``$CALOSIM_CACHE`` or ``$XDG_CACHE_HOME|~/.cache``/calosim/...."""
    if os.environ.get("CALOSIM_CACHE"):
        return Path(os.environ["CALOSIM_CACHE"]) / f"geant4-data-{GEANT4_VERSION}"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "calosim" / f"geant4-data-{GEANT4_VERSION}"


def _env_for_root(root: Path) -> dict[str, str]:
    return {"GEANT4_DATA_DIR": str(root), **{k: str(root / d) for k, d in DATASETS.items()}}


def _is_official(root: Path) -> bool:
    return (all((root / d).is_dir() for d in DATASETS.values()) and not (root / _STAMP).exists()
            and all((root / m).exists() for m in _OFFICIAL_MARKERS))


def official_data_env() -> dict[str, str] | None:
    """The environment for complete official data, from ``GEANT4_DATA_DIR`` or the 12 per-set variables.

    A directory is taken as official when it holds the 12 directories of Geant4 11.4, a few
    files only official data have (``G4EMLOW8.8/brem_SB/br82``, ``G4NDL4.7.1/Elastic``, ...),
    and no stand-in stamp. Returns ``None`` otherwise.
    """
    root = os.environ.get("GEANT4_DATA_DIR")
    if root and _is_official(Path(root)):
        return _env_for_root(Path(root))
    paths = {k: os.environ.get(k) for k in DATASETS}
    if all(paths.values()):
        dirs = {k: Path(v) for k, v in paths.items() if v}
        ok = (all(p.is_dir() for p in dirs.values()) and (dirs["G4LEDATA"] / "brem_SB" / "br82").exists()
              and (dirs["G4ENSDFSTATEDATA"] / "ENSDFSTATE.dat").stat().st_size > 0
              and (dirs["G4NEUTRONHPDATA"] / "Elastic").exists()
              and not (dirs["G4LEDATA"].parent / _STAMP).exists())
        if ok:
            # geant4-pybind only needs GEANT4_DATA_DIR to be set (it then skips its download check)
            common = os.path.commonpath([str(p) for p in dirs.values()])
            return {"GEANT4_DATA_DIR": root or common, **{k: str(p) for k, p in dirs.items()}}
    return None


def data_env(path: Path | None = None) -> tuple[dict[str, str], str]:
    """Environment to set before ``import geant4_pybind``, and a data-source label.

    Official data (see :func:`official_data_env`) win; otherwise the stand-in tree at ``path``
    (default :func:`default_data_dir`) is built if needed. The mapping holds ``GEANT4_DATA_DIR``
    and every per-set variable of :data:`DATASETS`.
    """
    env = official_data_env()
    if env is not None:
        return env, f"official Geant4 data ({env['GEANT4_DATA_DIR']})"
    root = build_standin(path)
    return _env_for_root(root), f"stand-in data ({root})"


# ---------------------------------------------------------------------------------------------
# building the tree

def _stamp_text() -> str:
    return f"calosim stand-in Geant4 data\nversion {STANDIN_VERSION}\ngeant4 {GEANT4_VERSION}\nz_max {Z_MAX}\n"


def _complete(root: Path) -> bool:
    stamp = root / _STAMP
    return stamp.is_file() and stamp.read_text() == _stamp_text()


def build_standin(path: Path | None = None, progress: bool = False) -> Path:
    """Build the stand-in data tree at ``path`` (default :func:`default_data_dir`) unless it is complete.

    The tree is written in a temporary sibling directory and renamed into place, so a reader never
    sees a half-built tree and concurrent builders are harmless (the first rename wins). Returns
    the root (the directory to use as ``GEANT4_DATA_DIR``).
    """
    root = Path(path) if path is not None else default_data_dir()
    if _complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for d in DATASETS.values():
            (tmp / d).mkdir()
        emlow = tmp / DATASETS["G4LEDATA"]
        for sub in ("brem_SB", "epics2017/phot", "epics2017/rayl"):
            (emlow / sub).mkdir(parents=True)
        (tmp / DATASETS["G4ENSDFSTATEDATA"] / "ENSDFSTATE.dat").write_text("")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # xraydb warns about the edges of the Elam tables
            for z in range(1, Z_MAX + 1):
                _write_sb(emlow / "brem_SB" / f"br{z}", z)
                _write_photoelectric(emlow / "epics2017" / "phot", z)
                _write_rayleigh(emlow / "epics2017" / "rayl" / f"re-cs-{z}.dat", z)
                if progress and z % 10 == 0:
                    print(f"stand-in Geant4 data: Z={z}/{Z_MAX}", file=sys.stderr, flush=True)
        (tmp / _STAMP).write_text(_stamp_text())
        if root.exists():
            if _complete(root):          # another process finished first
                shutil.rmtree(tmp)
                return root
            if (root / _STAMP).exists() or not any(root.iterdir()):
                shutil.rmtree(root)       # an outdated stand-in (or an empty directory): replace it
            else:
                raise FileExistsError(f"{root} exists and is not a calosim stand-in tree; not replacing it")
        try:
            os.rename(tmp, root)
        except OSError:
            if not _complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"stand-in Geant4 data built in {root} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return root


# ---------------------------------------------------------------------------------------------
# Seltzer-Berger bremsstrahlung

def sb_grid() -> tuple[np.ndarray, np.ndarray]:
    """The Seltzer-Berger grid: reduced photon energies k/T (32) and electron kinetic energies T in MeV (57)."""
    kappa = np.array([1e-12, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
                      0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999,
                      0.99995, 0.99999, 1.0])
    mantissa = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    t_mev = np.concatenate([mantissa * 10.0 ** p for p in range(-3, 4)] + [np.array([1e4])])
    return kappa, t_mev


def _coulomb_correction(z: int) -> float:
    a2 = (_ALPHA * z) ** 2
    return a2 * (1.0 / (1.0 + a2) + 0.20206 - 0.0369 * a2 + 0.0083 * a2 ** 2 - 0.002 * a2 ** 3)


# Tsai's radiation logarithms for the lightest elements (Thomas-Fermi is poor there): (L_rad, L'_rad)
_TSAI_LOW_Z = {1: (5.31, 6.144), 2: (4.79, 5.621), 3: (4.74, 5.805), 4: (4.71, 5.924)}


def _chi_tsai(z: int, t: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Scaled DCS (mb) from Tsai's screened Bethe-Heitler formula with Coulomb correction."""
    e = t + _ME_MEV
    k = kappa * t
    e2 = e - k
    y = k / e
    z13 = z ** (1.0 / 3.0)
    gam = 100.0 * _ME_MEV * k / (e * e2 * z13)
    eps = gam / z13
    phi1 = 20.863 - 2.0 * np.log1p((0.55846 * gam) ** 2) - 4.0 * (1.0 - 0.6 * np.exp(-0.9 * gam)
                                                                   - 0.4 * np.exp(-1.5 * gam))
    phi12 = (2.0 / 3.0) / (1.0 + 6.5 * gam + 6.0 * gam ** 2)
    psi1 = 28.340 - 2.0 * np.log1p((3.621 * eps) ** 2) - 4.0 * (1.0 - 0.7 * np.exp(-8.0 * eps)
                                                                 - 0.3 * np.exp(-29.2 * eps))
    psi12 = (2.0 / 3.0) / (1.0 + 40.0 * eps + 400.0 * eps ** 2)
    el = phi1 / 4.0 - math.log(z) / 3.0          # -> L_rad = ln(184.15 Z^-1/3) at complete screening
    inel = psi1 / 4.0 - 2.0 * math.log(z) / 3.0  # -> L'_rad = ln(1194 Z^-2/3)
    if z in _TSAI_LOW_Z:
        lrad, lprad = _TSAI_LOW_Z[z]
        el = el + lrad - (math.log(184.15) - math.log(z) / 3.0)
        inel = inel + lprad - (math.log(1194.0) - 2.0 * math.log(z) / 3.0)
    fc = _coulomb_correction(z)
    z2 = z * z
    kdsdk = 4.0 * _ALPHA * _R_E_CM ** 2 * ((4.0 / 3.0 - 4.0 / 3.0 * y + y * y) * (z2 * (el - fc) + z * inel)
                                           + (1.0 - y) / 6.0 * (z2 * phi12 + z * psi12))
    beta2 = t * (t + 2 * _ME_MEV) / e ** 2
    return np.maximum(beta2 * kdsdk / z2 * _MB_PER_CM2, 0.0)


def _chi_nonrel(z: int, t: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Scaled DCS (mb): non-relativistic Born cross section, Elwert factor, Thomas-Fermi screening."""
    p0 = np.sqrt(t * (t + 2 * _ME_MEV)) / _ME_MEV              # momenta in units of m c
    t2 = np.maximum(t * (1.0 - kappa), 1e-12 * t)
    p = np.sqrt(t2 * (t2 + 2 * _ME_MEV)) / _ME_MEV
    b0, b = p0 / np.sqrt(1 + p0 ** 2), p / np.sqrt(1 + p ** 2)
    s = z ** (1.0 / 3.0) / 111.0                                  # inverse Thomas-Fermi radius, m c units
    log_term = 0.5 * np.log(((p0 + p) ** 2 + s * s) / ((p0 - p) ** 2 + s * s))
    a = 2 * math.pi * _ALPHA * z
    elwert = (b0 / b) * (-np.expm1(-a / b0)) / (-np.expm1(-a / b))
    # chi = beta0^2 k dsigma/dk / Z^2 with k dsigma/dk = (16/3) alpha r_e^2 Z^2 ln(...)/p0^2
    return (16.0 / 3.0) * _ALPHA * _R_E_CM ** 2 * (b0 / p0) ** 2 * log_term * elwert * _MB_PER_CM2


#: the two regimes of :func:`sb_scaled_dcs` are joined geometrically in ln T between these energies
_T_LOW_MEV, _T_HIGH_MEV = 0.1, 0.5
_KAPPA_TIP = 0.97


def sb_scaled_dcs(z: int, t_mev: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """The stand-in scaled bremsstrahlung cross section chi(Z, T, k/T) in mb, shape (len(t), len(kappa))."""
    t = np.asarray(t_mev, float)[:, None]
    kp = np.asarray(kappa, float)[None, :]
    kp = np.minimum(kp, _KAPPA_TIP)   # the Born formulae fail at the tip: hold chi at its k/T = 0.97 value
    hi, lo = _chi_tsai(z, t, kp), _chi_nonrel(z, t, kp)
    w = np.clip(np.log(t / _T_LOW_MEV) / math.log(_T_HIGH_MEV / _T_LOW_MEV), 0.0, 1.0)
    return np.exp((1 - w) * np.log(np.maximum(lo, 1e-6)) + w * np.log(np.maximum(hi, 1e-6)))


def _write_sb(path: Path, z: int) -> None:
    kappa, t = sb_grid()
    chi = sb_scaled_dcs(z, t, kappa)
    lines = [f"2 {len(kappa)} {len(t)}", " ".join(f"{v:.6g}" for v in kappa),
             " ".join(f"{v:.9g}" for v in np.log(t))]
    lines += [" ".join(f"{v:.6g}" for v in row) for row in chi]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# photon cross sections from the Elam tables (xraydb)

def _elam_grid(z: int, per_decade: int = 40) -> np.ndarray:
    """Photon energies (eV) on [100 eV, 800 keV]: log-spaced plus both sides of every absorption edge."""
    import xraydb

    n = int(per_decade * math.log10(_ELAM_MAX_EV / _ELAM_MIN_EV)) + 1
    grid = list(np.geomspace(_ELAM_MIN_EV, _ELAM_MAX_EV, n))
    for edge in xraydb.xray_edges(xraydb.atomic_symbol(z)).values():
        if _ELAM_MIN_EV * 1.001 < edge.energy < _ELAM_MAX_EV * 0.999:
            grid += [edge.energy * (1 - 1e-4), edge.energy * (1 + 1e-4)]
    g = np.unique(np.round(np.array(grid), 6))
    return g[np.concatenate([[True], np.diff(g) > 1e-9 * g[1:]])]


def _barn_per_atom(z: int, energy_ev: np.ndarray, kind: str) -> np.ndarray:
    import xraydb

    sym = xraydb.atomic_symbol(z)
    mu = np.asarray(xraydb.mu_elam(sym, energy_ev, kind=kind), float)     # cm^2/g
    return mu * xraydb.atomic_mass(z) / _AVOGADRO / _BARN_CM2


def _elam_z(z: int) -> int:
    """Elam tables stop at Z = 98: heavier elements use Cf scaled by (Z/98)^k (photo ~Z^4.5, coh ~Z^2)."""
    return min(z, 98)


def _photo_barn(z: int, energy_ev: np.ndarray) -> np.ndarray:
    """Photoelectric cross section per atom (barn): Elam below 800 keV, log-log extrapolation above."""
    ze = _elam_z(z)
    e = np.asarray(energy_ev, float)
    sig = _barn_per_atom(ze, np.clip(e, _ELAM_MIN_EV, _ELAM_MAX_EV), "photo")
    e0, e1 = _ELAM_MAX_EV, 0.75 * _ELAM_MAX_EV
    s_e0, s_e1 = _barn_per_atom(ze, np.array([e0, e1]), "photo")
    slope = math.log(s_e0 / s_e1) / math.log(e0 / e1)   # ~ -2.5 at 800 keV; relaxes to -1 (Sauter) above
    hi = e > e0
    u = np.log(e[hi] / e0)
    sig[hi] = s_e0 * np.exp(-u + (slope + 1.0) * (1.0 - np.exp(-u)))
    return sig * (z / ze) ** 4.5


def _write_photoelectric(directory: Path, z: int) -> None:
    """``pe-cs`` holds sigma*E^3 (barn MeV^3) vs E (MeV); ``pe-high``/``pe-low`` one disabled shell."""
    import xraydb

    e_ev = np.concatenate([_elam_grid(_elam_z(z)), np.geomspace(_ELAM_MAX_EV * 1.25, _PE_MAX_EV, 30)])
    e_mev = e_ev * 1e-6
    vals = _photo_barn(z, e_ev) * e_mev ** 3
    body = "\n".join(f"{a:.9g} {b:.6g}" for a, b in zip(e_mev, vals))
    (directory / f"pe-cs-{z}.dat").write_text(f"{e_mev[0]:.9g} {e_mev[-1]:.9g} {len(e_mev)}\n{len(e_mev)}\n{body}\n")
    edges = [v.energy for v in xraydb.xray_edges(xraydb.atomic_symbol(_elam_z(z))).values() if v.energy > 0]
    binding_mev = max(min(edges, default=13.6), 1.0) * 1e-6
    # n_rows n_shells_used threshold, then per row: binding energy (MeV) + 6 fit coefficients (barn)
    param = f"1 1 {_PARAM_OFF_MEV:g}\n{binding_mev:.6g} 0 0 0 0 0 0\n"
    (directory / f"pe-high-{z}.dat").write_text(param)
    (directory / f"pe-low-{z}.dat").write_text(param)


def _write_rayleigh(path: Path, z: int) -> None:
    """``re-cs`` holds sigma*E^2 in Geant4 internal units (mm^2 MeV^2) vs E (MeV)."""
    ze = _elam_z(z)
    e_ev = np.geomspace(_ELAM_MIN_EV, _ELAM_MAX_EV, 161)
    e_mev = e_ev * 1e-6
    vals = _barn_per_atom(ze, e_ev, "coh") * (z / ze) ** 2 * _BARN_MM2 * e_mev ** 2
    body = "\n".join(f"{a:.9g} {b:.6g}" for a, b in zip(e_mev, vals))
    path.write_text(f"{e_mev[0]:.9g} {e_mev[-1]:.9g} {len(e_mev)}\n{len(e_mev)}\n{body}\n")
