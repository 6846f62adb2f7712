"""Geant4 11.4 data sets: find the official ones, or build a small stand-in for EM and hadron showers.

Geant4's data sets (``G4EMLOW``, ``G4NDL``, ...) are large downloads from CERN. When they are not
installed (:func:`official_data_env` finds them through ``GEANT4_DATA_DIR`` or the 12 per-set
variables), :func:`build_standin` writes, once, a *stand-in* tree that holds exactly what the
standard electromagnetic physics (``G4EmStandardPhysics``, plus ``G4DecayPhysics``) and the
hadronic list ``FTFP_BERT`` read, for Z = 1..100, computed from physics formulae and the Elam
photon tables of ``xraydb``:

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

``G4PARTICLEXS4.2/neutron/{inel,el,cap}{Z}`` (Z = 1..92)
    Neutron cross sections of ``G4NeutronInelasticXS``, ``G4NeutronElasticXS`` and
    ``G4NeutronCaptureXS`` (``G4PhysicsLogVector``: 124 points log-uniform in kinetic energy from
    1e-5 eV to 20 MeV; cross sections in mm^2). Above 20 MeV Geant4 uses its Glauber-Gribov cross
    sections scaled to the tables' 20 MeV values, below 1e-5 eV 1/v. Inelastic (non-elastic):
    the black disc with the reduced de Broglie wavelength, pi (R + lambda-bar)^2, R = 1.35 A^1/3 fm
    (e.g. Blatt & Weisskopf, *Theoretical Nuclear Physics* (1952), ch. VIII), times a threshold
    factor (1 - E_th/E), E_th = 20 A^-2/3 MeV (~ the first excited level): within ~15 % of the
    measured 14 MeV non-elastic cross sections of C, Fe and Pb; none for hydrogen (no channel below
    the pion threshold; Geant4 then keeps its own n-p cross sections above 20 MeV: 30 mb inelastic
    at 10 GeV). The 20 MeV normalisation carries the stand-in's error to high energies: in Geant4
    with this tree (thin-target counts), 10 GeV n-Pb is 1.54 b inelastic and 1.09 b elastic, where
    Geant4's own (compiled-in) p-Pb cross sections are 1.95 b and 1.22 b: secondary neutrons above
    20 MeV interact ~20 % less often than they should. Elastic: the s-wave hard sphere 4 pi R^2 at low energy joined, with weight
    (kR)^4, to the black disc's shadow scattering 2 pi (R + lambda-bar)^2 - sigma_inel at high
    energy (no resonances; within a factor 2-3 of thermal values for light nuclei); for hydrogen the
    n-p effective-range expansion (triplet a = 5.424 fm, r = 1.759 fm; singlet a = -23.748 fm,
    r = 2.75 fm: 20.4 b at 0, 4.26 b at 1 MeV, 0.68 b at 14 MeV). Capture: 1/v from the thermal
    absorption cross sections of Sears (Neutron News 3 (1992) 26), without resonances.
``G4PARTICLEXS4.2/gamma/inel{Z}`` (Z = 1..94)
    Photonuclear cross section of ``G4GammaNuclearXS`` (``G4PhysicsLinearVector``: uniform 0.5 MeV
    grid 0..100 MeV, mm^2; Geant4 joins the last point linearly to its CHIPS parameterisation at
    150 MeV and uses CHIPS above, and for Z = 1, 40, 74 everywhere). A Lorentzian giant dipole
    resonance with the RIPL-3 systematics (Capote et al., Nucl. Data Sheets 110 (2009) 3107):
    E_GDR = 31.2 A^-1/3 + 20.6 A^-1/6 MeV, Gamma = 0.026 E_GDR^1.91 MeV, and a peak that exhausts
    the Thomas-Reiche-Kuhn sum rule 60 NZ/A mb MeV times (1 + 0.2) (Pb: 586 mb at 13.7 MeV,
    measured 640 mb at 13.4 MeV), plus a flat quasi-deuteron part of 0.1 mb per nucleon that sets in
    above the resonance; zero below the neutron separation energy (Bethe-Weizsaecker formula).

The 10 other data directories exist and are empty (``G4NDL`` is only read by the ``_HP`` lists,
``PhotonEvaporation`` levels are optional: without them, nuclear de-excitation is a continuum of
gammas). Results made with the stand-in must be labelled **"Geant4 11.4.1 with stand-in data"**:
the EM physics (models, LPM, msc, ionisation, Compton, pair production) is Geant4's own and is the
reference; only the three EM cross-section tables above are approximations. Hadron showers are
**experimental**: the models and the pion, proton and ion cross sections (Barashenkov-Glauber-Gribov,
compiled into Geant4) are Geant4's own, but neutron and gamma-nuclear cross sections are the
parameterised stand-ins above. :func:`data_env` returns the label of the source it chose.

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
           "official_data_env", "build_standin", "data_env", "sb_scaled_dcs", "sb_grid", "NXS_Z_MAX", "GXS_Z_MAX",
           "neutron_grid", "neutron_xs", "thermal_capture_barn", "gamma_grid", "gamma_nuclear_xs", "gdr_parameters"]

GEANT4_VERSION = "11.4.1"
#: Version of the stand-in content; a tree with another stamp is rebuilt.
STANDIN_VERSION = "2"
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
            _write_particlexs(tmp / DATASETS["G4PARTICLEXSDATA"])
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


# ---------------------------------------------------------------------------------------------
# G4PARTICLEXS: neutron and gamma-nuclear cross sections for the hadronic physics list

#: Highest Z of the neutron tables (G4NeutronInelasticXS/ElasticXS/CaptureXS clamp Z to 92) and of
#: the gamma-nuclear tables (G4GammaNuclearXS opens inel1..inel94 when it is constructed).
NXS_Z_MAX, GXS_Z_MAX = 92, 94
#: Neutron tables: log-uniform grid (``G4PhysicsLogVector``) from 1e-5 eV to 20 MeV, where Geant4
#: continues with its Glauber-Gribov (elastic, inelastic) cross sections scaled to the table's last point.
N_EMIN_MEV, N_EMAX_MEV, N_PER_DECADE = 1.0e-11, 20.0, 10
#: Gamma-nuclear tables: uniform linear grid (``G4PhysicsLinearVector``) 0..100 MeV; Geant4 joins the
#: last point linearly to its CHIPS parameterisation at 150 MeV and uses CHIPS above.
G_EMAX_MEV, G_STEP_MEV = 100.0, 0.5
_HBARC_MEV_FM = 197.3269804
_MN_MEV = 939.56542052
_FM2_MM2 = 1.0e-24
_R0_FM = 1.35              # black-disc radius parameter, R = r0 A^(1/3)
_E_THERMAL_MEV = 2.53e-8   # 2200 m/s
_GDR_KAPPA = 0.2           # exchange-force enhancement of the TRK sum rule (RIPL-3 systematics)
_QD_MB_PER_NUCLEON = 0.1   # quasi-deuteron plateau of the photoabsorption cross section per nucleon

# Thermal (2200 m/s) neutron absorption cross sections in barn, V.F. Sears, Neutron News 3 (1992) 26
# (NIST table); Z missing here are interpolated geometrically between neighbours.
_SIGMA_TH_BARN: dict[int, float] = {
    1: 0.3326, 2: 0.00747, 3: 70.5, 4: 0.0076, 5: 767.0, 6: 0.0035, 7: 1.90, 8: 0.00019, 9: 0.0096, 10: 0.039,
    11: 0.530, 12: 0.063, 13: 0.231, 14: 0.171, 15: 0.172, 16: 0.53, 17: 33.5, 18: 0.675, 19: 2.1, 20: 0.43,
    21: 27.5, 22: 6.09, 23: 5.08, 24: 3.05, 25: 13.3, 26: 2.56, 27: 37.18, 28: 4.49, 29: 3.78, 30: 1.11,
    31: 2.75, 32: 2.2, 33: 4.5, 34: 11.7, 35: 6.9, 36: 25.0, 37: 0.38, 38: 1.28, 39: 1.28, 40: 0.185,
    41: 1.15, 42: 2.48, 43: 20.0, 44: 2.56, 45: 144.8, 46: 6.9, 47: 63.3, 48: 2520.0, 49: 193.8, 50: 0.626,
    51: 4.91, 52: 4.7, 53: 6.15, 54: 23.9, 55: 29.0, 56: 1.1, 57: 8.97, 58: 0.63, 59: 11.5, 60: 50.5,
    61: 168.4, 62: 5922.0, 63: 4530.0, 64: 49700.0, 65: 23.4, 66: 994.0, 67: 64.7, 68: 159.0, 69: 100.0,
    70: 34.8, 71: 74.0, 72: 104.1, 73: 20.6, 74: 18.3, 75: 89.7, 76: 16.0, 77: 425.0, 78: 10.3, 79: 98.65,
    80: 372.3, 81: 3.43, 82: 0.171, 83: 0.0338, 88: 12.8, 90: 7.37, 91: 200.6, 92: 7.57,
}


def _mass_number(z: int) -> float:
    """Mean mass number of the natural element (standard atomic weight, from ``xraydb``)."""
    import xraydb

    return float(xraydb.atomic_mass(z))


def thermal_capture_barn(z: int) -> float:
    """Thermal (2200 m/s) capture cross section of element ``z`` in barn (Sears 1992; gaps interpolated)."""
    if z in _SIGMA_TH_BARN:
        return _SIGMA_TH_BARN[z]
    lo = max(k for k in _SIGMA_TH_BARN if k < z)
    hi = min(k for k in _SIGMA_TH_BARN if k > z)
    w = (z - lo) / (hi - lo)
    return math.exp((1 - w) * math.log(_SIGMA_TH_BARN[lo]) + w * math.log(_SIGMA_TH_BARN[hi]))


def neutron_grid() -> np.ndarray:
    """Kinetic energies (MeV) of the neutron tables: log-uniform, :data:`N_PER_DECADE` per decade."""
    n = int(round(N_PER_DECADE * math.log10(N_EMAX_MEV / N_EMIN_MEV))) + 1
    return np.geomspace(N_EMIN_MEV, N_EMAX_MEV, n)


def _np_elastic_barn(t_mev: np.ndarray) -> np.ndarray:
    """Free n-p elastic cross section from the effective-range expansion (S-waves, singlet + triplet)."""
    # k cot(delta) = -1/a + r k^2 / 2; triplet a = 5.424 fm, r = 1.759 fm; singlet a = -23.748 fm, r = 2.75 fm
    k2 = 0.5 * _MN_MEV * t_mev / _HBARC_MEV_FM ** 2         # c.m. momentum squared (fm^-2), m_n ~ m_p
    trip = 3.0 / (k2 + (-1 / 5.424 + 0.5 * 1.759 * k2) ** 2)
    sing = 1.0 / (k2 + (1 / 23.748 + 0.5 * 2.75 * k2) ** 2)
    return math.pi * (trip + sing) / 100.0                 # pi [3 sin^2 d_t + sin^2 d_s] / k^2, fm^2 -> barn


def neutron_xs(z: int, t_mev: np.ndarray) -> dict[str, np.ndarray]:
    """Stand-in neutron cross sections (barn) of element ``z`` at kinetic energies ``t_mev``.

    Returns ``{"inel", "el", "cap"}``, each shaped like ``t_mev``; see the module docstring for
    the formulae (black disc with the reduced wavelength, hard-sphere elastic, 1/v capture).
    """
    t = np.asarray(t_mev, float)
    a = _mass_number(z)
    lam = _HBARC_MEV_FM / np.sqrt(t * (t + 2 * _MN_MEV))          # reduced de Broglie wavelength, fm
    cap = thermal_capture_barn(z) * np.sqrt(_E_THERMAL_MEV / t)
    if z == 1:   # no inelastic channel below the pion threshold; n-p elastic from the effective range
        return {"inel": np.zeros_like(t), "el": _np_elastic_barn(t), "cap": cap}
    r = _R0_FM * a ** (1 / 3)
    absorb = math.pi * (r + lam) ** 2 / 100.0                    # black disc, fm^2 -> barn
    e_th = 20.0 * a ** (-2 / 3)                                   # ~ first excited level, MeV
    inel = absorb * np.clip(1.0 - e_th / t, 0.0, None)
    # s-wave hard sphere (4 pi R^2, kR << 1) joined to the optical limit (kR >> 1: the black disc's
    # shadow scattering, 2 pi (R + lambda)^2 minus the reactions); weight (kR)^4 so that the optical
    # term, ~lambda^2, vanishes at low energy
    x4 = (r / lam) ** 4
    optical = np.maximum(2 * absorb - inel, 0.0)
    el = (4 * math.pi * r * r / 100.0 + x4 * optical) / (1.0 + x4)
    return {"inel": inel, "el": el, "cap": cap}


def _separation_energy_mev(z: int, a: int) -> float:
    """Neutron separation energy from the Bethe-Weizsaecker mass formula, clamped to [2.2, 20] MeV."""
    def binding(zz: int, aa: int) -> float:
        n = aa - zz
        pair = 0.0 if aa % 2 else (11.18 if zz % 2 == 0 else -11.18) / math.sqrt(aa)
        return (15.75 * aa - 17.8 * aa ** (2 / 3) - 0.711 * zz * (zz - 1) / aa ** (1 / 3)
                - 23.7 * (n - zz) ** 2 / aa + pair)
    return min(max(binding(z, a) - binding(z, a - 1), 2.2), 20.0) if a > 2 else 2.2


def gdr_parameters(z: int) -> tuple[float, float, float]:
    """Giant dipole resonance of element ``z``: peak energy (MeV), width (MeV), peak cross section (mb).

    RIPL-3 systematics (Capote et al., Nucl. Data Sheets 110 (2009) 3107): E = 31.2 A^-1/3 +
    20.6 A^-1/6 MeV, Gamma = 0.026 E^1.91 MeV, and the peak from the TRK sum rule,
    (pi/2) sigma Gamma = 60 NZ/A (1 + kappa) mb MeV with kappa = 0.2.
    """
    a = _mass_number(z)
    e0 = 31.2 * a ** (-1 / 3) + 20.6 * a ** (-1 / 6)
    width = 0.026 * e0 ** 1.91
    trk = 60.0 * (a - z) * z / a * (1 + _GDR_KAPPA)
    return e0, width, 2.0 * trk / (math.pi * width)


def gamma_grid() -> np.ndarray:
    """Photon energies (MeV) of the gamma-nuclear tables: uniform, 0..:data:`G_EMAX_MEV`."""
    return np.linspace(0.0, G_EMAX_MEV, int(round(G_EMAX_MEV / G_STEP_MEV)) + 1)


def gamma_nuclear_xs(z: int, e_mev: np.ndarray) -> np.ndarray:
    """Stand-in photonuclear cross section (mb) of element ``z``: GDR Lorentzian plus a flat part.

    Zero below the neutron separation energy; above it the Lorentzian of :func:`gdr_parameters`
    (the form of Berman & Fultz, Rev. Mod. Phys. 47 (1975) 713) plus the quasi-deuteron plateau,
    0.1 mb per nucleon, switched on smoothly above the resonance (tanh over one width at E + 2 Gamma).
    """
    e = np.asarray(e_mev, float)
    if z == 1:                       # no nucleus to excite (Geant4 uses CHIPS for hydrogen anyway)
        return np.zeros_like(e)
    a = _mass_number(z)
    e0, width, peak = gdr_parameters(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        lor = peak / (1.0 + ((e * e - e0 * e0) / (e * width)) ** 2)
    lor = np.nan_to_num(lor)
    flat = _QD_MB_PER_NUCLEON * a * 0.5 * (1.0 + np.tanh((e - e0 - 2 * width) / width))
    s_n = _separation_energy_mev(z, int(round(a)))
    return np.where(e >= s_n, lor + flat, 0.0)


def _vector_text(e: np.ndarray, v: np.ndarray) -> str:
    """A ``G4PhysicsVector`` in ASCII: ``emin emax n``, ``n``, then n lines ``energy value``."""
    body = "\n".join(f"{x:.9g} {y:.6g}" for x, y in zip(e, v))
    return f"{e[0]:.9g} {e[-1]:.9g} {len(e)}\n{len(e)}\n{body}\n"


def _write_particlexs(root: Path) -> None:
    """Write ``neutron/{inel,el,cap}{Z}`` and ``gamma/inel{Z}`` (Geant4 internal units: MeV, mm^2)."""
    neutron, gamma = root / "neutron", root / "gamma"
    neutron.mkdir(parents=True)
    gamma.mkdir(parents=True)
    tn, tg = neutron_grid(), gamma_grid()
    for z in range(1, NXS_Z_MAX + 1):
        for kind, sig in neutron_xs(z, tn).items():
            (neutron / f"{kind}{z}").write_text(_vector_text(tn, sig * _BARN_MM2))
    for z in range(1, GXS_Z_MAX + 1):
        (gamma / f"inel{z}").write_text(_vector_text(tg, gamma_nuclear_xs(z, tg) * 1e-3 * _BARN_MM2))
