r"""Engine ``mc``: a parameterised Monte Carlo shower simulator (the built-in Geant4 stand-in).

The model follows GFlash (G. Grindhammer, M. Rudowicz, S. Peters, NIM A290 (1990) 469;
G. Grindhammer, S. Peters, hep-ex/0001020) for electromagnetic showers and standard hadronic
shower phenomenology (R. Wigmans, *Calorimetry*; PDG Review "Passage of particles through
matter", section on electromagnetic and hadronic cascades) for charged pions. Every geometry
is a stack of layers of effective materials (``Material``: X0, lambda_int, R_M, E_c, sampling
fraction, stochastic term a, constant term b); gaps between layers are dead material of the
following layer's material (as in ``Geometry.layer_depth_centers_x0``).

All energies are MeV; the cell energies written are at the electromagnetic scale (visible
energy divided by the sampling fraction), so a fully contained electron deposits E on average.

Depth bookkeeping
-----------------
Each layer is cut into *slices* of at most ``MAX_SLICE_X0`` radiation lengths. For every slice
the cumulative depth at normal incidence is tabulated in X0 and in lambda_int, integrating layer
by layer through materials and dead gaps. A particle entering at polar angle theta traverses
``depth / cos(theta)`` along its axis. A longitudinal profile f(t) is turned into slice energies
with its CDF, so thick layers (CaloGAN's 347 mm = 15.8 X0 layer) receive exactly the integral of
the profile over their depth, and energy past the last layer is leakage (lost).

Electromagnetic showers (e-, e+, gamma; pi0 photons inside pion showers)
------------------------------------------------------------------------
Longitudinal profile (Longo-Sestili / GFlash Gamma distribution), t in X0 along the axis from
the shower start::

    dE/dt = E * beta (beta t)^(alpha-1) exp(-beta t) / Gamma(alpha),   T = (alpha - 1) / beta

with y = E / E_c and the shower maximum (PDG eq. 34.36)::

    T = ln y + C,   C = -0.5 (electrons), C = +0.5 (photons).

A photon first converts after an exponential depth with mean 9/7 X0 (PDG eq. 34.29); the pair
cascade after conversion has T = ln y + C_pair, C_pair = -0.9 (close to two electron cascades of
E/2, ln(y/2) - 0.5), fixed such that the *mean* photon profile peaks at ln y + 0.5. The mean alpha follows GFlash's slope, alpha = 1 + b T with
b = 0.458 + 2.26 / Z (b ~ 0.5, PDG), where Z is the effective atomic number obtained from the
material's critical energy, E_c = 610 MeV / (Z + 1.24) (PDG eq. 34.11). Per-shower fluctuations
use GFlash's correlated log-normal parameters (homogeneous media)::

    sigma(ln T)     = 1 / (-1.4 + 1.26 ln y)
    sigma(ln alpha) = 1 / (-0.58 + 0.86 ln y)
    rho(ln T, ln alpha) = 0.705 + 0.023 ln y

(applied to ln(alpha - 1), so that alpha stays > 1; sigmas capped at 0.5 for tiny y).

Radial profile (GFlash, homogeneous media), r in units of the Moliere radius R_M of the slice's
material, tau = t / T the depth relative to the shower maximum, E in GeV::

    f(r) = p f_C(r) + (1 - p) f_T(r),     f_i(r) = 2 r R_i^2 / (r^2 + R_i^2)^2
    R_C = z1 + z2 tau,                      z1 = 0.0251 + 0.00319 ln E,  z2 = 0.1162 - 0.000381 Z
    R_T = k1 [exp(k3 (tau - k2)) + exp(k4 (tau - k2))],
          k1 = 0.659 - 0.00309 Z,  k2 = 0.645,  k3 = -2.59,  k4 = 0.3585 + 0.0421 ln E
    p   = p1 exp[(p2 - tau)/p3 - exp((p2 - tau)/p3)],
          p1 = 2.632 - 0.00094 Z,  p2 = 0.401 + 0.00187 Z,  p3 = 1.313 - 0.0686 ln E

Radii are sampled by inverting the CDF r^2 / (r^2 + R^2): r = R sqrt(u / (1 - u)). About 90 %
of the energy falls within one R_M (PDG).

Energy deposition and fluctuations
----------------------------------
For every (shower component, slice) the mean energy mu from the profile is fluctuated with a
Gamma distribution of mean mu and variance ``eps * mu`` where ``eps = a^2 * 1 GeV`` is the
sampling quantum of the material (stochastic term a): independent per slice, so the summed
energy has sigma/E = a / sqrt(E / GeV), the continuous analogue of GFlash's Poisson spot
counting. The slice energy is then shared among ``N_spots ~ V / eps_g`` spots (``eps_g`` =
``eps`` clipped to [5, 50] MeV, so N_spots grows linearly with E) with continuous weights
(0.5 + U) normalised to V; each spot gets a radius from f(r), a uniform azimuth and a depth
uniform within the slice, and is binned into the layer's cells (Cartesian (ny, nx) or
CaloChallenge polar (n_alpha, n_r) voxels, alpha = atan2(y, x) in ``Layer.alpha_edges``).
Energy outside a layer's grid goes to that layer's ``overflow``. A per-shower factor
(1 + b g), g ~ N(0, 1), gives the constant term, and cells below ``Geometry.threshold_mev``
are zeroed.

Incidence: the impact point (x0, y0) on the front face and the direction (theta, phi) define the
axis x(z) = x0 + z tan(theta) cos(phi), y(z) = y0 + z tan(theta) sin(phi); spots are spread
around the axis point at their depth, so the lateral shift grows with depth.

Charged pions
-------------
* The first inelastic interaction happens after an exponential depth (mean 1 lambda_int along
  the axis, integrated through the layers' lambda_int). Before it, and for pions that never
  interact, the pion is a MIP: it deposits dE/dx * path in every slice, with dE/dx ~ E_c / X0
  (the critical energy is where ionisation loss per X0 equals E, Rossi's definition) and a
  Landau-like (Moyal: -ln chi^2_1) fluctuation of relative width 0.1 / sqrt(sampling fraction).
* At the interaction the energy splits into an electromagnetic fraction (pi0 -> gamma gamma),
  with mean f_em = 1 - (E / E0)^(k - 1), E0 = 1 GeV, k = 0.82 (Groom; Wigmans), drawn from a Beta
  distribution (concentration 8, i.e. sigma(f_em) ~ 0.15), deposited as two photon sub-showers
  (energy split uniformly, axes deflected by p_T ~ 300 MeV / E), and a hadronic remainder.
* The hadronic component has a Gamma profile in lambda_int with maximum at
  t_max = 0.2 ln(E / GeV) + 0.7 lambda and decay length lambda_att = lambda (E / GeV)^0.13 (PDG
  eqs. 34.41-42), log-normal fluctuations of both, a wide core+halo radial profile (radii
  (0.06 + 0.04 tau) lambda and (0.25 + 0.1 tau) lambda, equal weights: ~95 % within one lambda),
  invisible energy (e/h = 1.3 with 10 % fluctuation of the visible fraction) and sampling
  fluctuations four times the electromagnetic variance.
  Net result: pions deposit less than electrons and fluctuate more (non-compensation, leakage).

Speed: everything is vectorised over a block of showers: profile integrals are evaluated for all
(component, slice) pairs with ``scipy.special.gammainc``, spots are generated in flat float32
arrays ordered by slice (so each layer's spots are contiguous), and deposited with one
``np.bincount`` over ``shower * (n_cells + n_layers) + cell`` indices.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.special import gammainc

from ..geometry import Geometry

__all__ = ["MCEngine", "MCTuning", "tuning_for", "em_shower_max", "Z_from_critical_energy"]

# ---- physics constants (see the module docstring) ----------------------------------------
C_ELECTRON = -0.5  # t_max = ln(E/E_c) + C  (PDG)
C_PHOTON = 0.5
CONVERSION_X0 = 9.0 / 7.0  # mean photon conversion depth in X0
# Pair cascade after conversion (two electrons of ~E/2 would give ln y - 1.19): -0.9, tuned so that
# the mean photon profile (conversion depth convolved with the cascade) peaks at ln y + 0.5.
C_PAIR = C_PHOTON - 1.40
FEM_E0_MEV = 1000.0  # f_em = 1 - (E/E0)^(k-1)
FEM_K = 0.82
FEM_CONCENTRATION = 8.0  # Beta(m nu, (1-m) nu): sigma(f_em) = sqrt(m(1-m)/(nu+1))
PI0_PT_MEV = 300.0  # typical transverse momentum of pi0 photons w.r.t. the pion axis
E_OVER_H = 1.3  # invisible energy of the hadronic component
INVISIBLE_SIGMA = 0.10  # relative fluctuation of the visible hadronic fraction
HAD_EPS_FACTOR = 4.0  # hadronic sampling variance / electromagnetic sampling variance
MAX_SLICE_X0 = 1.0  # depth slices: at most this many X0
EPS_G_RANGE = (5.0, 50.0)  # spot energy granularity (MeV), em
EPS_G_RANGE_HAD = (10.0, 100.0)
MU_MIN_MEV = 1e-3  # (component, slice) means below 1 keV are dropped
SPOT_BUDGET = 2_000_000  # spots processed at once (bounds memory; does not change results)
FAR = 1e9  # mm: "never" (no conversion / interaction inside the detector)

EM, HAD, MIP = 0, 1, 2


@dataclass(frozen=True)
class MCTuning:
    """Per-detector corrections of the EM parameterisation, fitted to Geant4 showers of that detector.

    The defaults are the textbook (PDG/GFlash) values above; ``benchmarks/calibrate_mc.py`` fits
    a tuning to Geant4 samples and stores it in ``calosim/data/mc_tunings.json`` under the
    preset's name. A geometry uses the tuning named by ``geometry.meta["mc_tuning"]``, else the
    one of its own name, else the defaults.

    ``c_electron`` / ``c_pair``: shower-maximum offsets T = ln(E/E_c) + C of electron and pair
    cascades; ``alpha_scale`` multiplies alpha - 1 at fixed T (longitudinal width);
    ``sigma_scale`` multiplies the log-normal fluctuations of T and alpha; ``radial_scale``
    multiplies the GFlash core and tail radii, ``tail_scale`` the tail radius again, and
    ``core_scale`` the core probability; ``stochastic`` replaces the material's sampling term a
    (None keeps it); the EM-scale response is ``response + response_slope ln(E / GeV)`` (Geant4's
    visible energy over the declared sampling fraction is not exactly 1, and drifts with E).
    ``spot_mev`` is the EM spot energy (None: a^2 x 1 GeV clipped to 5..50 MeV; smaller spots
    hit more cells, as Geant4's soft photons leave many cells with < 1 MeV); ``cluster_mm`` moves each (cascade, slice) spot
    cloud sideways by a Gaussian of sigma ``cluster_mm * sqrt(1 GeV / V)`` for a slice of
    energy V: a shower is a few energetic clumps, not a smooth cloud, so its per-layer centroid
    wanders by ~``cluster_mm / sqrt(E_layer / GeV)`` (Geant4: several mm at a few GeV).
    ``cluster_core`` adds ``cluster_core * r_core`` (the slice's GFlash core radius) to
    ``cluster_mm``: the core wanders in proportion to its own width, so in the first X0, where the
    primary still runs along the axis, it hardly moves, and deeper it does.
    ``tail_clumps`` moves only the *tail* spots of each (cascade, slice) cloud, by a Gaussian of
    sigma ``tail_clumps * r_tail * sqrt(1 GeV / V)``: the clumps are the sub-showers of wide-angle
    photons, which sit in the tail, while the core stays on the axis (Geant4's presampler centroid
    wanders by millimetres at high energy, yet the energy stays evenly shared between the two
    central 5 mm strips, which a shifted core would make lopsided).
    ``halo_fraction`` of each EM slice's energy goes into spots of ``halo_spot_mev`` spread with
    the radial profile of radius ``halo_mm``: the soft photons that carry a little energy far
    from the core and make Geant4's many low-energy hit cells. ``quantised_tail``: a (cascade,
    slice) pair expecting less energy than one spot gets one spot with probability V / spot
    energy, else nothing (the mean is kept): the deep tail of a low-energy shower is mostly
    empty in Geant4, not a thin film of tiny deposits.
    """

    c_electron: float = C_ELECTRON
    c_pair: float = C_PAIR
    alpha_scale: float = 1.0
    sigma_scale: float = 1.0
    radial_scale: float = 1.0
    tail_scale: float = 1.0
    core_scale: float = 1.0
    stochastic: float | None = None
    response: float = 1.0
    response_slope: float = 0.0
    spot_mev: float | None = None
    cluster_mm: float = 0.0
    cluster_core: float = 0.0
    tail_clumps: float = 0.0
    halo_fraction: float = 0.0
    halo_mm: float = 50.0
    halo_spot_mev: float = 0.5
    quantised_tail: bool = False
    source: str = "textbook defaults (PDG, GFlash)"


@lru_cache(maxsize=1)
def _stored_tunings() -> dict[str, MCTuning]:
    text = resources.files("calosim").joinpath("data/mc_tunings.json").read_text()
    return {name: MCTuning(**fields) for name, fields in json.loads(text).items() if not name.startswith("_")}


def tuning_for(geometry: Geometry) -> MCTuning:
    """The :class:`MCTuning` the engine uses for ``geometry`` (see :class:`MCTuning`)."""
    return _stored_tunings().get(str(geometry.meta.get("mc_tuning", geometry.name)), MCTuning())


def Z_from_critical_energy(ec_mev: np.ndarray | float) -> np.ndarray:
    """Effective atomic number from E_c = 610 MeV / (Z + 1.24) (PDG, solids)."""
    return np.clip(610.0 / np.asarray(ec_mev, dtype=np.float64) - 1.24, 1.0, 100.0)


def em_shower_max(energy_mev: float, critical_mev: float, photon: bool = False) -> float:
    """PDG expectation of the mean profile's maximum in X0: ln(E/E_c) + C, C = -0.5 / +0.5."""
    return math.log(energy_mev / critical_mev) + (C_PHOTON if photon else C_ELECTRON)


# ------------------------------------------------------------------------------------------
# geometry tables
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerBins:
    kind: str
    offset: int
    nx: int  # cartesian: nx; polar: n_r
    ny: int  # cartesian: ny; polar: n_alpha
    inv_dx: float
    inv_dy: float
    r_edges: np.ndarray | None  # polar: (n_r + 2,) float32 edges followed by +inf
    lut: np.ndarray | None = None  # polar: radial bin of r = k * lut_step (binary search is slow)
    lut_step: float = 0.0

    @staticmethod
    def polar(offset: int, n_alpha: int, edges: tuple[float, ...]) -> "_LayerBins":
        e = np.asarray(edges, dtype=np.float64)
        step = float(np.min(np.diff(e))) / 2  # <= 1 edge per LUT cell: one comparison corrects
        n_lut = int(e[-1] / step) + 2
        lut = None
        if n_lut <= 1 << 20:
            lut = (np.searchsorted(e, np.arange(n_lut) * step, side="right") - 1).astype(np.int64)
        ext = np.r_[e, np.inf].astype(np.float32)
        return _LayerBins("polar", offset, len(e) - 1, n_alpha, 0.0, 0.0, ext, lut, step)


@dataclass(frozen=True)
class _Tables:
    """Depth slices, depth maps and binning of one geometry (all arrays ``(S,)`` unless noted)."""

    n_cells: int
    n_layers: int
    layer: np.ndarray  # slice -> layer index
    z_lo: np.ndarray  # mm
    z_hi: np.ndarray
    x0_lo: np.ndarray  # cumulative X0 at normal incidence
    x0_hi: np.ndarray
    lam_lo: np.ndarray  # cumulative lambda_int
    lam_hi: np.ndarray
    rm: np.ndarray  # Moliere radius (mm)
    lam_mm: np.ndarray
    ec: np.ndarray
    zeff: np.ndarray
    eps: np.ndarray  # sampling quantum a^2 * 1 GeV (MeV)
    dedx: np.ndarray  # MIP dE/dx ~ E_c / X0 (MeV/mm)
    mip_width: np.ndarray
    k_z: np.ndarray  # depth-map knots (K,)
    k_x0: np.ndarray
    k_lam: np.ndarray
    const: np.ndarray  # constant term per layer (L,)
    bins: tuple[_LayerBins, ...]
    tuning: MCTuning

    @property
    def n_slices(self) -> int:
        return len(self.layer)

    def z_from_x0(self, t: np.ndarray) -> np.ndarray:
        """Depth z (mm) where the cumulative X0 (normal incidence) reaches ``t``; FAR beyond."""
        return np.where(t < self.k_x0[-1], np.interp(t, self.k_x0, self.k_z), FAR)

    def z_from_lam(self, t: np.ndarray) -> np.ndarray:
        return np.where(t < self.k_lam[-1], np.interp(t, self.k_lam, self.k_z), FAR)

    def slice_at(self, z: np.ndarray) -> np.ndarray:
        """Index of the slice containing (or first after) depth ``z``."""
        return np.minimum(np.searchsorted(self.z_hi, z, side="right"), self.n_slices - 1)


def _tables(geometry: Geometry, tuning: MCTuning | None = None) -> _Tables:
    return _tables_for(geometry, tuning or tuning_for(geometry))


@lru_cache(maxsize=32)
def _tables_for(geometry: Geometry, tuning: MCTuning) -> _Tables:
    rows: list[tuple] = []
    k_z, k_x0, k_lam = [0.0], [0.0], [0.0]
    end = 0.0
    bins = []
    offsets = geometry.layer_offsets
    for li, lay in enumerate(geometry.layers):
        m = lay.material
        gap = max(lay.z_mm - end, 0.0)
        if gap > 0:  # dead material in front of the layer, counted in the layer's material
            k_z.append(k_z[-1] + gap)
            k_x0.append(k_x0[-1] + gap / m.x0_mm)
            k_lam.append(k_lam[-1] + gap / m.lambda_mm)
        z0 = k_z[-1]
        ns = max(1, math.ceil(lay.thickness_mm / m.x0_mm / MAX_SLICE_X0 - 1e-9))
        dz = lay.thickness_mm / ns
        zeff = float(Z_from_critical_energy(m.critical_mev))
        eps = (m.stochastic if tuning.stochastic is None else tuning.stochastic) ** 2 * 1000.0
        mip_w = min(max(0.1 / math.sqrt(m.sampling_fraction), 0.1), 0.6)
        for j in range(ns):
            zl, zh = z0 + j * dz, z0 + (j + 1) * dz
            rows.append((li, zl, zh, k_x0[-1] + (zl - z0) / m.x0_mm, k_x0[-1] + (zh - z0) / m.x0_mm,
                         k_lam[-1] + (zl - z0) / m.lambda_mm, k_lam[-1] + (zh - z0) / m.lambda_mm,
                         m.moliere_mm, m.lambda_mm, m.critical_mev, zeff, eps, m.critical_mev / m.x0_mm, mip_w))
        k_z.append(z0 + lay.thickness_mm)
        k_x0.append(k_x0[-1] + lay.thickness_mm / m.x0_mm)
        k_lam.append(k_lam[-1] + lay.thickness_mm / m.lambda_mm)
        end = lay.z_mm + lay.thickness_mm
        if lay.kind == "cartesian":
            dy, dx = lay.cell_mm  # type: ignore[misc]
            bins.append(_LayerBins("cartesian", int(offsets[li]), lay.shape[1], lay.shape[0], 1.0 / dx, 1.0 / dy, None))
        else:
            bins.append(_LayerBins.polar(int(offsets[li]), lay.shape[0], lay.r_edges_mm))  # type: ignore[arg-type]
    cols = list(zip(*rows))
    a = [np.asarray(c, dtype=np.float64) for c in cols]
    return _Tables(
        n_cells=geometry.n_cells, n_layers=geometry.n_layers, layer=np.asarray(cols[0], dtype=np.int64),
        z_lo=a[1], z_hi=a[2], x0_lo=a[3], x0_hi=a[4], lam_lo=a[5], lam_hi=a[6], rm=a[7], lam_mm=a[8], ec=a[9],
        zeff=a[10], eps=a[11], dedx=a[12], mip_width=a[13],
        k_z=np.asarray(k_z), k_x0=np.asarray(k_x0), k_lam=np.asarray(k_lam),
        const=np.asarray([l.material.constant for l in geometry.layers]), bins=tuple(bins), tuning=tuning,
    )


# ------------------------------------------------------------------------------------------
# shower components
# ------------------------------------------------------------------------------------------
@dataclass
class _Components:
    """Independent energy depositions of a block (``(C,)`` arrays): EM / HAD cascades, MIP tracks."""

    shower: np.ndarray  # int: shower index in the block
    kind: np.ndarray  # EM, HAD or MIP
    energy: np.ndarray  # MeV, energy of the cascade (radial-profile energy dependence)
    visible: np.ndarray  # MeV at the EM scale to deposit (EM/HAD)
    z_start: np.ndarray  # mm: cascade start / MIP track start
    z_stop: np.ndarray  # mm: MIP track end (FAR for cascades)
    x0: np.ndarray  # axis: x(z) = x0 + z sx (mm)
    y0: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    inv_cos: np.ndarray  # path length per unit depth
    alpha: np.ndarray  # Gamma profile shape
    beta: np.ndarray  # Gamma profile rate (1/X0 for EM, 1/lambda for HAD)
    tmax: np.ndarray  # (alpha - 1) / beta

    @staticmethod
    def concat(parts: list["_Components"]) -> "_Components":
        return _Components(*[np.concatenate([getattr(p, f) for p in parts]) for f in _Components.__dataclass_fields__])


def _em_params(energy: np.ndarray, ec: np.ndarray, zeff: np.ndarray, c: float,
               rng: np.random.Generator, tuning: MCTuning = MCTuning()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluctuated GFlash Gamma parameters ``(alpha, beta, T)`` for EM cascades, each ``(n,)``."""
    lny = np.log(np.maximum(energy / ec, 1.0))
    t_mean = np.maximum(lny + c, 0.3)
    b = (0.458 + 2.26 / zeff) * tuning.alpha_scale
    am1_mean = b * t_mean  # alpha - 1
    ly = np.maximum(lny, 2.5)
    s_t = np.minimum(tuning.sigma_scale / (-1.4 + 1.26 * ly), 0.5)
    s_a = np.minimum(tuning.sigma_scale / (-0.58 + 0.86 * ly) * (1.0 + am1_mean) / am1_mean, 0.5)
    rho = np.minimum(0.705 + 0.023 * ly, 0.95)
    g1, g2 = rng.standard_normal((2, len(energy)))
    t = t_mean * np.exp(s_t * g1 - 0.5 * s_t ** 2)
    am1 = am1_mean * np.exp(s_a * (rho * g1 + np.sqrt(1 - rho ** 2) * g2) - 0.5 * s_a ** 2)
    return 1.0 + am1, am1 / t, t


class MCEngine:
    """The ``mc`` engine: :meth:`simulate_block` turns incident particles into cell energies."""

    name = "mc"
    version = "2"

    def __init__(self, tuning: MCTuning | None = None) -> None:
        #: an explicit tuning for every geometry (calibration); None: :func:`tuning_for` each one
        self.tuning = tuning

    def geometry_provenance(self, geometry: Geometry) -> dict[str, str]:
        """File attributes naming the tuning used for ``geometry``."""
        t = self.tuning or tuning_for(geometry)
        return {"mc_tuning": json.dumps({k: v for k, v in t.__dict__.items() if k != "source"}, sort_keys=True),
                "mc_tuning_source": t.source}

    def simulate_block(self, geometry: Geometry, pdg: int, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray,
                       position: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Simulate one block of ``n`` showers.

        ``energy`` (n,) MeV, ``theta``/``phi`` (n,) rad, ``position`` (n, 2) mm impact point.
        Returns ``showers`` (n, n_cells) float32 MeV and ``overflow`` (n, n_layers) float32 MeV.
        """
        tab = _tables(geometry, self.tuning)
        n = len(energy)
        energy = np.asarray(energy, dtype=np.float64)
        tan_t = np.tan(theta)
        axis = (position[:, 0].astype(np.float64), position[:, 1].astype(np.float64),
                tan_t * np.cos(phi), tan_t * np.sin(phi), 1.0 / np.cos(theta))
        if abs(pdg) == 11 or pdg == 22:
            comps = self._em_particle(tab, pdg == 22, energy, axis, rng)
        elif abs(pdg) == 211:
            comps = self._pion(tab, energy, axis, rng)
        else:
            raise ValueError(f"engine mc simulates e-, e+, gamma, pi+, pi- only (got PDG id {pdg}; "
                             "protons: --engine geant4)")
        out = self._deposit(tab, comps, n, rng)
        showers = out[:, :tab.n_cells]
        overflow = out[:, tab.n_cells:]
        # Constant term: a per-shower calibration factor common to all cells of a material.
        g = rng.standard_normal(n)
        fac = np.maximum(1.0 + tab.const[None, :] * g[:, None], 0.0)  # (n, L)
        cells = np.empty((n, tab.n_cells), dtype=np.float32)
        for li, sl in enumerate(geometry.layer_slices):  # per layer: no (n, n_cells) float64 temporaries
            np.multiply(showers[:, sl], fac[:, li:li + 1], out=cells[:, sl], casting="same_kind")
        if geometry.threshold_mev > 0:
            cells[cells < geometry.threshold_mev] = 0.0
        return cells, (overflow * fac).astype(np.float32)

    # ---- components -------------------------------------------------------------------------
    @staticmethod
    def _cascade(tab: _Tables, shower: np.ndarray, kind: int, energy: np.ndarray, visible: np.ndarray,
                 z_start: np.ndarray, axis: tuple[np.ndarray, ...], params: tuple[np.ndarray, ...]) -> _Components:
        x0, y0, sx, sy, ic = axis
        far = np.full(len(shower), FAR)
        return _Components(shower, np.full(len(shower), kind), energy, visible, z_start, far, x0, y0, sx, sy, ic, *params)

    def _em_particle(self, tab: _Tables, photon: bool, energy: np.ndarray, axis: tuple[np.ndarray, ...],
                     rng: np.random.Generator) -> _Components:
        n = len(energy)
        inv_cos = axis[4]
        if photon:  # conversion after an exponential path (in X0 along the axis)
            t_conv = rng.exponential(CONVERSION_X0, n)
            z_start = tab.z_from_x0(t_conv / inv_cos)
        else:
            z_start = np.zeros(n)
        s = tab.slice_at(z_start)
        tu = tab.tuning
        params = _em_params(energy, tab.ec[s], tab.zeff[s], tu.c_pair if photon else tu.c_electron, rng, tu)
        return self._cascade(tab, np.arange(n), EM, energy, energy * _em_response(tu, energy), z_start, axis, params)

    def _pion(self, tab: _Tables, energy: np.ndarray, axis: tuple[np.ndarray, ...],
              rng: np.random.Generator) -> _Components:
        n = len(energy)
        x0, y0, sx, sy, inv_cos = axis
        idx = np.arange(n)
        # First inelastic interaction: exponential in lambda_int along the axis.
        z_int = tab.z_from_lam(rng.exponential(1.0, n) / inv_cos)
        mip = _Components(idx, np.full(n, MIP), energy, np.zeros(n), np.zeros(n), z_int, x0, y0, sx, sy, inv_cos,
                          np.ones(n), np.ones(n), np.ones(n))
        # Mean ionisation loss before the interaction (MIP dE/dx ~ E_c / X0).
        path = np.clip(np.minimum(tab.z_hi[None, :], z_int[:, None]) - tab.z_lo[None, :], 0.0, None)
        e_int = np.maximum(energy - (path * tab.dedx[None, :]).sum(1) * inv_cos, 1.0)
        # Electromagnetic fraction (pi0 production) with Beta fluctuations.
        m = np.clip(1.0 - (e_int / FEM_E0_MEV) ** (FEM_K - 1.0), 0.05, 0.95)
        f_em = rng.beta(m * FEM_CONCENTRATION, (1.0 - m) * FEM_CONCENTRATION)
        e_em = f_em * e_int
        u = rng.random(n)
        xi, yi = x0 + z_int * sx, y0 + z_int * sy  # interaction point (only used if inside)
        parts = [mip]
        cum_x0_int = np.interp(np.minimum(z_int, tab.k_z[-1]), tab.k_z, tab.k_x0)
        for frac in (u, 1.0 - u):  # two photon sub-showers from pi0 decays
            e_g = np.maximum(frac * e_em, 1e-3)
            theta_pt = np.minimum(PI0_PT_MEV / e_g, 0.5)
            gsx = sx + theta_pt * rng.standard_normal(n)
            gsy = sy + theta_pt * rng.standard_normal(n)
            g_ic = np.sqrt(1.0 + gsx ** 2 + gsy ** 2)
            z_conv = np.where(z_int < FAR, tab.z_from_x0(cum_x0_int + rng.exponential(CONVERSION_X0, n) / g_ic), FAR)
            s = tab.slice_at(z_conv)
            params = _em_params(e_g, tab.ec[s], tab.zeff[s], tab.tuning.c_pair, rng, tab.tuning)
            g_axis = (xi - z_int * gsx, yi - z_int * gsy, gsx, gsy, g_ic)
            parts.append(self._cascade(tab, idx, EM, e_g, frac * e_em * _em_response(tab.tuning, e_g), z_conv,
                                       g_axis, params))
        # Hadronic remainder: Gamma profile in lambda_int, invisible energy e/h.
        e_had = (1.0 - f_em) * e_int
        vis = e_had / E_OVER_H * np.exp(INVISIBLE_SIGMA * rng.standard_normal(n) - 0.5 * INVISIBLE_SIGMA ** 2)
        e_gev = np.maximum(e_int / 1000.0, 0.1)
        g1, g2 = rng.standard_normal((2, n))
        t_h = (0.2 * np.log(e_gev) + 0.7) * np.exp(0.2 * g1 - 0.02)
        b_h = e_gev ** -0.13 * np.exp(0.15 * g2 - 0.01125)
        parts.append(self._cascade(tab, idx, HAD, e_int, vis, z_int, axis, (1.0 + b_h * t_h, b_h, t_h)))
        return _Components.concat(parts)

    # ---- deposition -------------------------------------------------------------------------
    def _deposit(self, tab: _Tables, c: _Components, n: int, rng: np.random.Generator) -> np.ndarray:
        """Energies of all components into ``(n, n_cells + n_layers)`` float64 (cells, then overflow)."""
        C, S = len(c.shower), tab.n_slices
        is_had, is_mip = c.kind == HAD, c.kind == MIP
        casc = ~is_mip
        # Depth of every slice edge along each component's axis, in the component's unit.
        u_lo = np.where(is_had[:, None], tab.lam_lo[None, :], tab.x0_lo[None, :])
        u_hi = np.where(is_had[:, None], tab.lam_hi[None, :], tab.x0_hi[None, :])
        zs = np.minimum(c.z_start, tab.k_z[-1])
        u_start = np.where(is_had, np.interp(zs, tab.k_z, tab.k_lam), np.interp(zs, tab.k_z, tab.k_x0))
        d_lo = np.clip(u_lo - u_start[:, None], 0.0, None) * c.inv_cos[:, None]
        d_hi = np.clip(u_hi - u_start[:, None], 0.0, None) * c.inv_cos[:, None]
        mu = np.zeros((C, S))
        ci = np.flatnonzero(casc)
        a, b = c.alpha[ci, None], c.beta[ci, None]
        mu[ci] = c.visible[ci, None] * (gammainc(a, b * d_hi[ci]) - gammainc(a, b * d_lo[ci]))
        mi = np.flatnonzero(is_mip)
        if len(mi):
            path = np.clip(np.minimum(tab.z_hi[None, :], c.z_stop[mi, None]) - tab.z_lo[None, :], 0.0, None)
            mu[mi] = path * tab.dedx[None, :] * c.inv_cos[mi, None]
        mu[mu < MU_MIN_MEV] = 0.0

        # Sampling fluctuations: Gamma(mean mu, variance eps mu) per (component, slice).
        eps = np.where(is_had[:, None], HAD_EPS_FACTOR, 1.0) * tab.eps[None, :]
        V = np.zeros((C, S))
        nz = np.nonzero(mu[ci])
        rows = ci[nz[0]]
        V[rows, nz[1]] = rng.gamma(mu[rows, nz[1]] / eps[rows, nz[1]], eps[rows, nz[1]])
        if len(mi):  # MIP: Landau-like (Moyal) fluctuation of dE/dx
            nzm = np.nonzero(mu[mi])
            rm, sm = mi[nzm[0]], nzm[1]
            moyal = -np.log(np.maximum(rng.standard_normal(len(rm)) ** 2, 1e-30))
            V[rm, sm] = mu[rm, sm] * np.clip(1.0 + tab.mip_width[sm] * (moyal - 1.2704) / 2.2214, 0.0, None)

        # Pairs (slice-major so that each layer's spots are contiguous).
        s_idx, c_idx = np.nonzero(V.T > 0)
        if len(s_idx) == 0:
            return np.zeros((n, tab.n_cells + tab.n_layers))
        v = V[c_idx, s_idx]
        kind = c.kind[c_idx]
        eps_g = np.where(kind == HAD, np.clip(HAD_EPS_FACTOR * tab.eps[s_idx], *EPS_G_RANGE_HAD),
                         np.clip(tab.eps[s_idx], *EPS_G_RANGE) if tab.tuning.spot_mev is None else tab.tuning.spot_mev)
        if tab.tuning.quantised_tail:  # a slice expecting less than one spot holds one spot or nothing
            small = np.flatnonzero((kind == EM) & (v < eps_g))
            keep = rng.random(len(small)) * eps_g[small] < v[small]
            v = v.copy()
            v[small] = np.where(keep, eps_g[small], 0.0)
        n_sp = np.where(kind == MIP, 1, np.maximum(1, np.rint(v / eps_g))).astype(np.int64)

        # Radial parameters of each pair.
        zl = np.maximum(tab.z_lo[s_idx], c.z_start[c_idx])
        zh = np.minimum(tab.z_hi[s_idx], c.z_stop[c_idx])
        dlo, dhi = d_lo[c_idx, s_idx], d_hi[c_idx, s_idx]
        tau = np.clip(0.5 * (dlo + dhi) / c.tmax[c_idx], 0.0, 4.0)
        p_core, r_c, r_t = _radial(kind, tau, c.energy[c_idx], tab.zeff[s_idx], tab.rm[s_idx], tab.lam_mm[s_idx],
                                   tab.tuning)
        zmid = 0.5 * (zl + zh)
        xp = c.x0[c_idx] + zmid * c.sx[c_idx]
        yp = c.y0[c_idx] + zmid * c.sy[c_idx]
        tx = ty = np.zeros(0)  # per-pair offsets of the tail spots only (``tail_clumps``)
        if tab.tuning.cluster_mm > 0 or tab.tuning.cluster_core > 0:  # clumpy showers: each EM cloud off the axis
            size = tab.tuning.cluster_mm + tab.tuning.cluster_core * r_c
            sig = np.where(kind == EM, size * np.sqrt(1000.0 / np.maximum(v, 1.0)), 0.0)
            dxy = rng.standard_normal((2, len(v))) * sig
            xp, yp = xp + dxy[0], yp + dxy[1]
        if tab.tuning.tail_clumps > 0:  # the tail's sub-showers wander; the core stays on the axis
            sig = np.where(kind == EM, tab.tuning.tail_clumps * r_t * np.sqrt(1000.0 / np.maximum(v, 1.0)), 0.0)
            tx, ty = rng.standard_normal((2, len(v))) * sig
        jit = bool(np.any(c.sx != 0) or np.any(c.sy != 0))
        jx, jy = (zh - zl) * c.sx[c_idx], (zh - zl) * c.sy[c_idx]
        W = tab.n_cells + tab.n_layers
        base = c.shower[c_idx] * W
        layer = tab.layer[s_idx]
        tu = tab.tuning
        if tu.halo_fraction > 0:  # soft halo: a share of each EM pair's energy in small spots far out
            em = np.flatnonzero(kind == EM)
            vh = tu.halo_fraction * v[em]
            v = v.copy()
            v[em] -= vh
            full = np.full(len(em), 1.0)
            extra = {"v": vh, "n_sp": np.maximum(1, np.rint(vh / tu.halo_spot_mev)).astype(np.int64),
                     "p_core": full * (1 - 1e-3), "r_c": full * tu.halo_mm, "r_t": full * tu.halo_mm}
            arrays = {"v": v, "n_sp": n_sp, "p_core": p_core, "r_c": r_c, "r_t": r_t, "xp": xp, "yp": yp, "jx": jx,
                      "jy": jy, "base": base, "layer": layer}
            if len(tx):
                arrays.update(tx=tx, ty=ty)
            merged = {k: np.concatenate([a, extra[k] if k in extra else a[em]]) for k, a in arrays.items()}
            order = np.argsort(merged["layer"], kind="stable")  # spots of a layer must stay contiguous
            merged = {k: a[order] for k, a in merged.items()}
            v, n_sp, p_core, r_c, r_t, xp, yp, jx, jy, base, layer = (merged[k] for k in list(arrays)[:11])
            if len(tx):
                tx, ty = merged["tx"], merged["ty"]

        out: np.ndarray | None = None
        # Process in groups of whole pairs with a bounded number of spots (memory); the groups
        # depend only on the block's content, so results do not depend on any chunk setting.
        ends = np.cumsum(n_sp)
        grp = (ends - 1) // SPOT_BUDGET
        cuts = np.flatnonzero(np.diff(grp)) + 1
        for g0, g1 in zip(np.r_[0, cuts], np.r_[cuts, len(n_sp)]):
            sl = slice(int(g0), int(g1))
            part = _spots(tab, rng, n * W, n_sp[sl], v[sl], p_core[sl], r_c[sl], r_t[sl], xp[sl], yp[sl],
                          jx[sl] if jit else None, jy[sl] if jit else None, base[sl], layer[sl],
                          (tx[sl], ty[sl]) if len(tx) else None)
            if out is None:
                out = part
            else:
                out += part
        assert out is not None
        return out.reshape(n, W)


def _em_response(tuning: MCTuning, energy: np.ndarray) -> np.ndarray:
    """EM-scale response of a cascade of ``energy`` MeV (see :class:`MCTuning`)."""
    if tuning.response_slope == 0.0:
        return np.full(np.shape(energy), tuning.response)
    return tuning.response + tuning.response_slope * np.log(np.maximum(energy, 1.0) / 1000.0)


def _radial(kind: np.ndarray, tau: np.ndarray, energy: np.ndarray, z: np.ndarray, rm: np.ndarray,
            lam: np.ndarray, tuning: MCTuning = MCTuning()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core probability and core / tail radii (mm) per pair: GFlash for EM, core+halo for HAD."""
    lne = np.log(np.maximum(energy / 1000.0, 1e-3))
    r_c = (0.0251 + 0.00319 * lne + (0.1162 - 0.000381 * z) * tau) * rm * tuning.radial_scale
    k4 = 0.3585 + 0.0421 * lne
    r_t = ((0.659 - 0.00309 * z) * (np.exp(-2.59 * (tau - 0.645)) + np.exp(k4 * (tau - 0.645))) * rm
           * tuning.radial_scale * tuning.tail_scale)
    q = (0.401 + 0.00187 * z - tau) / (1.313 - 0.0686 * lne)
    p = (2.632 - 0.00094 * z) * np.exp(q - np.exp(q)) * tuning.core_scale
    had = kind == HAD
    r_c = np.where(had, (0.06 + 0.04 * tau) * lam, r_c)
    r_t = np.where(had, (0.25 + 0.10 * tau) * lam, r_t)
    p = np.where(had, 0.5, p)
    mip = kind == MIP
    r_c, r_t = np.where(mip, 0.0, r_c), np.where(mip, 0.0, r_t)
    return np.clip(p, 1e-3, 1 - 1e-3), np.maximum(r_c, 0.0), np.maximum(r_t, 0.0)


def _spots(tab: _Tables, rng: np.random.Generator, size: int, n_sp: np.ndarray, v: np.ndarray, p: np.ndarray,
           r_c: np.ndarray, r_t: np.ndarray, xp: np.ndarray, yp: np.ndarray, jx: np.ndarray | None,
           jy: np.ndarray | None, base: np.ndarray, layer: np.ndarray,
           tail_shift: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Generate the spots of a group of (component, slice) pairs and bin them: ``(size,)`` energies.

    ``tail_shift`` (dx, dy) per pair moves that pair's tail spots (not its core).
    """
    f32 = np.float32
    M = int(n_sp.sum())
    u = rng.random(M, dtype=f32)
    ph = rng.random(M, dtype=f32)
    w = rng.random(M, dtype=f32)
    ps = np.repeat(p.astype(f32), n_sp)
    core = u < ps
    # Reuse u: given the component, u/p (core) or (u-p)/(1-p) (tail) is again uniform.
    q = np.where(core, u, u - ps)
    q /= np.where(core, ps, 1 - ps)
    del ps
    R = np.where(core, np.repeat(r_c.astype(f32), n_sp), np.repeat(r_t.astype(f32), n_sp))
    np.minimum(q, f32(1 - 1e-7), out=q)
    r = R * np.sqrt(q / (1 - q))  # inverse CDF of 2 r R^2 / (r^2 + R^2)^2
    del R, q
    ph *= f32(2 * np.pi)
    # Spots around an axis through the grid centre need no Cartesian detour for polar layers.
    on_axis = jx is None and tail_shift is None and not np.any(xp) and not np.any(yp)
    all_polar = all(tab.bins[li].kind == "polar" for li in np.unique(layer))
    if on_axis and all_polar:
        x = y = None
    else:
        x = np.repeat(xp.astype(f32), n_sp) + r * np.cos(ph)
        y = np.repeat(yp.astype(f32), n_sp) + r * np.sin(ph)
        if jx is not None and jy is not None:  # depth of the spot inside the slice (tilted axis)
            j = rng.random(M, dtype=f32) - f32(0.5)
            x += j * np.repeat(jx.astype(f32), n_sp)
            y += j * np.repeat(jy.astype(f32), n_sp)
        if tail_shift is not None:
            x += np.where(core, f32(0), np.repeat(tail_shift[0].astype(f32), n_sp))
            y += np.where(core, f32(0), np.repeat(tail_shift[1].astype(f32), n_sp))
    del core
    # Weights (0.5 + U) normalised to the pair's energy: continuous cell energies, exact sum.
    w += f32(0.5)
    starts = np.r_[0, np.cumsum(n_sp)[:-1]]
    scale = v / np.add.reduceat(w, starts, dtype=np.float64)
    weight = w * np.repeat(scale, n_sp)
    # Flat output index: shower * W + cell, or shower * W + n_cells + layer for overflow.
    idx = np.repeat(base, n_sp)
    lay_bounds = np.r_[0, np.cumsum(np.bincount(layer, weights=n_sp, minlength=tab.n_layers))].astype(np.int64)
    for li in np.flatnonzero(np.diff(lay_bounds)):
        a, b = int(lay_bounds[li]), int(lay_bounds[li + 1])
        lb, code = tab.bins[li], tab.n_cells + li
        if x is None or y is None:
            idx[a:b] += _bin_polar(lb, r[a:b], ph[a:b], code)
        elif lb.kind == "cartesian":
            idx[a:b] += _bin_cartesian(lb, x[a:b], y[a:b], code)
        else:
            alpha = np.arctan2(y[a:b], x[a:b]) if lb.ny > 1 else None
            idx[a:b] += _bin_polar(lb, np.hypot(x[a:b], y[a:b]), alpha, code)
    return np.bincount(idx, weights=weight, minlength=size)


def _bin_cartesian(lb: _LayerBins, x: np.ndarray, y: np.ndarray, overflow_code: int) -> np.ndarray:
    """Flat cell index of each spot in a (ny, nx) grid centred on (0, 0), or ``overflow_code``."""
    fx = x * np.float32(lb.inv_dx) + np.float32(0.5 * lb.nx)
    fy = y * np.float32(lb.inv_dy) + np.float32(0.5 * lb.ny)
    inside = (fx >= 0) & (fx < lb.nx) & (fy >= 0) & (fy < lb.ny)
    cell = lb.offset + fy.astype(np.int64) * lb.nx + fx.astype(np.int64)
    return np.where(inside, cell, overflow_code)


def _bin_polar(lb: _LayerBins, r: np.ndarray, alpha: np.ndarray | None, overflow_code: int) -> np.ndarray:
    """Flat voxel index (alpha bin, radial bin) of each spot, or ``overflow_code``.

    ``alpha`` is the azimuth in rad, either in (-pi, pi] (atan2) or [0, 2 pi) (sampled angle);
    bins follow ``Layer.alpha_edges`` (-pi..pi), so angles are taken modulo 2 pi.
    """
    assert lb.r_edges is not None
    if lb.lut is not None:
        k = np.minimum(r * np.float32(1.0 / lb.lut_step), np.float32(len(lb.lut) - 1)).astype(np.int64)
        ir = lb.lut[k]
        ir += r >= lb.r_edges[ir + 1]
    else:
        ir = np.searchsorted(lb.r_edges, r, side="right") - 1
    inside = (ir >= 0) & (ir < lb.nx)
    if lb.ny > 1 and alpha is not None:
        ia = ((alpha + np.float32(np.pi)) * np.float32(lb.ny / (2 * np.pi))).astype(np.int64) % lb.ny
        cell = lb.offset + ia * lb.nx + ir
    else:
        cell = lb.offset + ir
    return np.where(inside, cell, overflow_code)
