"""Invertible, fitted, saved preprocessing of showers.

A transform maps showers in MeV ``(B, n_cells)`` and incident energies ``(B, 1)`` MeV to the
space a model trains in, ``(B, out_dim)``, and back. ``out_dim`` is ``n_cells`` for all
transforms except ``layer-norm`` (``n_cells + n_layers``); the framework passes it to models
as ``config["data_dim"]``. Fitted parameters are buffers, so ``state_dict()`` saves them; the
constructor allocates them with their final shapes so a fresh transform can ``load_state_dict``
without fitting.

All ``forward``/``inverse`` are torch, batched and differentiable (CaloGAN-style physics
losses back-propagate through ``inverse``). ``inverse`` does not clamp to physical values:
:func:`postprocess` does (clamp >= 0, threshold, NaN -> 0) for validation and generation.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import features

if TYPE_CHECKING:
    from ..geometry import Geometry

__all__ = [
    "ShowerTransform", "register_transform", "get_transform", "list_transforms", "postprocess",
    "IdentityTransform", "ScaleTransform", "LogTransform", "BoxCoxTransform", "LayerNormTransform",
    "LogitTransform",
]

_TRANSFORMS: dict[str, type["ShowerTransform"]] = {}
_FIT_CHUNK = 65536  # rows per chunk when fitting, so fitting 10^6 showers needs no float64 copy


def register_transform(cls: type["ShowerTransform"]) -> type["ShowerTransform"]:
    """Class decorator adding a transform to the registry under ``cls.name``."""
    _TRANSFORMS[cls.name] = cls
    return cls


def get_transform(name: str, geometry: "Geometry", **kw: Any) -> "ShowerTransform":
    """An unfitted transform ``name`` for ``geometry``; ``kw`` are its options (e.g. ``eps``)."""
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; valid: {', '.join(sorted(_TRANSFORMS))}")
    try:
        return _TRANSFORMS[name](geometry, **kw)
    except TypeError as exc:
        raise ValueError(f"transform {name!r}: bad options {kw}: {exc}") from None


def list_transforms() -> dict[str, str]:
    """``{name: first docstring line}`` of every registered transform."""
    return {k: (v.__doc__ or "").strip().splitlines()[0] for k, v in sorted(_TRANSFORMS.items())}


class ShowerTransform(nn.Module):
    """Base class: ``fit`` on training showers, ``forward`` MeV -> model space, ``inverse`` back."""

    name: ClassVar[str] = ""

    def __init__(self, geometry: "Geometry", **kw: Any) -> None:
        super().__init__()
        self.geometry = geometry
        self.n_cells = geometry.n_cells
        self.kw = dict(kw)  # constructor options, saved with the run to rebuild the transform
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def out_dim(self) -> int:
        """Width of the model-space representation."""
        return self.n_cells

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: enough to rebuild an unfitted copy with :func:`get_transform`."""
        return {"name": self.name, **self.kw}

    @torch.no_grad()
    def fit(self, showers: Tensor, e_inc: Tensor) -> "ShowerTransform":
        """Fit parameters on training showers ``(N, n_cells)`` MeV and energies ``(N, 1)`` MeV."""
        showers, e_inc = _as_tensor(showers), _as_tensor(e_inc).reshape(-1, 1)
        if showers.ndim != 2 or showers.shape[1] != self.n_cells:
            raise ValueError(f"transform {self.name!r}: expected showers (N, {self.n_cells}), got {tuple(showers.shape)}")
        self._fit(showers, e_inc)
        self.fitted.fill_(True)
        return self

    def _fit(self, showers: Tensor, e_inc: Tensor) -> None:
        pass

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:  # (B, n_cells), (B, 1) -> (B, out_dim)
        raise NotImplementedError

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:  # (B, out_dim), (B, 1) -> (B, n_cells) MeV
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"transform {self.name!r} is used before fit() / load_state_dict()")


@register_transform
class IdentityTransform(ShowerTransform):
    """identity: the model sees MeV."""

    name = "identity"

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return x_mev

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x


@register_transform
class ScaleTransform(ShowerTransform):
    """scale: energy fractions x = factor * E_cell / E_inc."""

    name = "scale"

    def __init__(self, geometry: "Geometry", factor: float = 1.0) -> None:
        super().__init__(geometry, factor=float(factor))
        self.factor = float(factor)

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return x_mev / e_inc * self.factor

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x / self.factor * e_inc


class _Standardised(ShowerTransform):
    """Helper: y = g(E_cell / E_inc) per cell, then (y - mean) / std per cell."""

    def __init__(self, geometry: "Geometry", **kw: Any) -> None:
        super().__init__(geometry, **kw)
        self.register_buffer("mean", torch.zeros(self.n_cells))
        self.register_buffer("std", torch.ones(self.n_cells))

    def _g(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _fit_moments(self, showers: Tensor, e_inc: Tensor) -> None:
        s1 = torch.zeros(self.n_cells, dtype=torch.float64)
        s2 = torch.zeros(self.n_cells, dtype=torch.float64)
        n = len(showers)
        for lo in range(0, n, _FIT_CHUNK):
            y = self._g((showers[lo:lo + _FIT_CHUNK].double() / e_inc[lo:lo + _FIT_CHUNK].double())).double()
            s1 += y.sum(0)
            s2 += (y * y).sum(0)
        mean = s1 / max(n, 1)
        var = (s2 / max(n, 1) - mean * mean).clamp_min(0)
        std = var.sqrt()
        std = torch.where(std > 1e-6 * (mean.abs() + 1), std, torch.ones_like(std))  # constant cells: no scaling
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())


@register_transform
class LogTransform(_Standardised):
    """log: x = standardise(log(eps + E_cell / E_inc)) per cell."""

    name = "log"

    def __init__(self, geometry: "Geometry", eps: float = 1e-6) -> None:
        super().__init__(geometry, eps=float(eps))
        self.eps = float(eps)

    def _g(self, u: Tensor) -> Tensor:
        return torch.log(u + self.eps)

    def _fit(self, showers: Tensor, e_inc: Tensor) -> None:
        self._fit_moments(showers, e_inc)

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return (self._g(x_mev / e_inc) - self.mean) / self.std

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return (torch.exp(x * self.std + self.mean) - self.eps) * e_inc


@register_transform
class BoxCoxTransform(_Standardised):
    """boxcox: per-cell Box-Cox of eps + E_cell / E_inc (lambda by max. likelihood), standardised.

    lambda is the maximum-likelihood Box-Cox parameter of each cell's non-zero values (on at most
    ``max_fit_rows`` seeded rows), clipped to [-1, 2]. ``method="vectorised"`` maximises the same
    log-likelihood as ``scipy.stats.boxcox_normmax(method="mle")`` for all cells at once (golden
    section search; ~100x faster, which matters for 10^4-cell geometries); ``method="scipy"``
    calls scipy per cell. Cells with < 5 distinct non-zero values get lambda = 0 (log).
    """

    name = "boxcox"
    LAMBDA_RANGE = (-1.0, 2.0)  # keeps v**lambda finite in float32 for v >= eps

    def __init__(self, geometry: "Geometry", eps: float = 1e-6, max_fit_rows: int = 5000, seed: int = 0,
                 method: str = "vectorised") -> None:
        if method not in ("vectorised", "scipy"):
            raise ValueError(f"boxcox method must be 'vectorised' or 'scipy', got {method!r}")
        super().__init__(geometry, eps=float(eps), max_fit_rows=int(max_fit_rows), seed=int(seed), method=method)
        self.method = method
        self.eps = float(eps)
        self.max_fit_rows = int(max_fit_rows)
        self.seed = int(seed)
        self.register_buffer("lmbda", torch.zeros(self.n_cells))
        self.register_buffer("vmax", torch.full((self.n_cells,), 10.0))  # cap of the inverse, per cell

    def _g(self, u: Tensor) -> Tensor:
        return _boxcox(u + self.eps, self.lmbda)

    def _fit(self, showers: Tensor, e_inc: Tensor) -> None:
        rng = np.random.default_rng(self.seed)
        rows = np.arange(len(showers))
        if len(rows) > self.max_fit_rows:  # lambda only needs a sample
            rows = np.sort(rng.choice(rows, self.max_fit_rows, replace=False))
        u = (showers[rows].double() / e_inc[rows].double()).numpy()
        pos = u > 0
        if self.method == "scipy":
            lam = _boxcox_lambda_scipy(u, pos, self.eps, self.LAMBDA_RANGE)
        else:
            lam = boxcox_lambda_mle(np.where(pos, u + self.eps, np.nan), self.LAMBDA_RANGE)
        self.lmbda.copy_(torch.as_tensor(lam, dtype=torch.float32))
        vmax = torch.zeros(self.n_cells, dtype=torch.float64)
        for a in range(0, len(showers), _FIT_CHUNK):
            u = showers[a:a + _FIT_CHUNK].double() / e_inc[a:a + _FIT_CHUNK].double()
            vmax = torch.maximum(vmax, u.max(0).values)
        self.vmax.copy_((torch.clamp(2.0 * vmax, min=1.0) + self.eps).float())
        self._fit_moments(showers, e_inc)

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return (self._g(x_mev / e_inc) - self.mean) / self.std

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        y = x * self.std + self.mean
        v = _inv_boxcox(y, self.lmbda)
        v = torch.minimum(v, self.vmax)  # lambda < 0 diverges near y = -1/lambda: cap, do not overflow
        return (v - self.eps) * e_inc


def boxcox_llf(x: np.ndarray, lmbda: np.ndarray) -> np.ndarray:
    """Box-Cox profile log-likelihood per column of ``x`` (n, c) (NaN = missing) at ``lmbda`` (c,)."""
    logx = np.log(x)
    n = np.sum(~np.isnan(x), axis=0)
    lam = lmbda[None, :]
    small = np.abs(lam) < 1e-8
    y = np.where(small, logx, np.expm1(lam * logx) / np.where(small, 1.0, lam))
    var = np.nanvar(y, axis=0)
    return (lmbda - 1) * np.nansum(logx, axis=0) - 0.5 * n * np.log(np.maximum(var, 1e-300))


def boxcox_lambda_mle(x: np.ndarray, bounds: tuple[float, float] = (-1.0, 2.0), iters: int = 40) -> np.ndarray:
    """Maximum-likelihood Box-Cox lambda for every column of ``x`` (n, c), positive values or NaN.

    Golden-section search on [bounds]; columns with < 5 values or no spread get 0 (log).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        n = np.sum(~np.isnan(x), axis=0)
        spread = np.nanmax(np.where(np.isnan(x), -np.inf, x), axis=0) > np.nanmin(np.where(np.isnan(x), np.inf, x), axis=0)
        ok = (n >= 5) & spread
        lam = np.zeros(x.shape[1])
        if not ok.any():
            return lam
        xs = x[:, ok]
        g = (math.sqrt(5) - 1) / 2
        a = np.full(xs.shape[1], bounds[0])
        b = np.full(xs.shape[1], bounds[1])
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = boxcox_llf(xs, c), boxcox_llf(xs, d)
        for _ in range(iters):  # maximise: keep the sub-interval holding the larger value
            left = fc > fd
            b = np.where(left, d, b)
            a = np.where(left, a, c)
            new_c, new_d = b - g * (b - a), a + g * (b - a)
            c_next = np.where(left, new_c, d)
            d_next = np.where(left, c, new_d)
            f_new = boxcox_llf(xs, np.where(left, new_c, new_d))
            fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
            c, d = c_next, d_next
        lam[ok] = 0.5 * (a + b)
    return lam


def _boxcox_lambda_scipy(u: np.ndarray, pos: np.ndarray, eps: float, bounds: tuple[float, float]) -> np.ndarray:
    from scipy.stats import boxcox_normmax

    lam = np.zeros(u.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in range(u.shape[1]):
            v = u[pos[:, c], c] + eps
            if len(v) < 5 or np.ptp(v) <= 0:
                continue
            try:
                lam[c] = float(np.clip(boxcox_normmax(v, method="mle"), *bounds))
            except (ValueError, FloatingPointError, RuntimeError):
                pass
    return lam


def _safe_lambda(lmbda: Tensor) -> tuple[Tensor, Tensor]:
    is_log = lmbda.abs() < 1e-4
    return is_log, torch.where(is_log, torch.ones_like(lmbda), lmbda)


def _boxcox(v: Tensor, lmbda: Tensor) -> Tensor:
    is_log, lam = _safe_lambda(lmbda)
    v = v.clamp_min(1e-30)
    return torch.where(is_log, torch.log(v), (torch.pow(v, lam) - 1) / lam)


def _inv_boxcox(y: Tensor, lmbda: Tensor) -> Tensor:
    is_log, lam = _safe_lambda(lmbda)
    base = (lam * y + 1).clamp_min(1e-12)  # outside the domain: the limit value (0, or the cap for lambda < 0)
    # Clamp the exp argument so the unused branch of torch.where cannot make inf * 0 = NaN gradients.
    return torch.where(is_log, torch.exp(y.clamp(max=80.0)), torch.pow(base, 1 / lam))


@register_transform
class LayerNormTransform(ShowerTransform):
    """layer-norm: per layer, the normalised shape (cells sum to 1) plus the layer's E fraction.

    Output ``(B, n_cells + n_layers)``: the cells in their usual order, each layer divided by its
    layer energy, followed by ``E_layer / E_inc`` for each layer. ``inverse`` renormalises each
    generated shape (after clamping at 0), so it is exact on real showers and robust on
    generated ones. Empty layers map to all-zero shapes.
    """

    name = "layer-norm"

    def __init__(self, geometry: "Geometry", tiny: float = 1e-12) -> None:
        super().__init__(geometry, tiny=float(tiny))
        self.tiny = float(tiny)
        self.slices = geometry.layer_slices
        self.n_layers = geometry.n_layers

    @property
    def out_dim(self) -> int:
        return self.n_cells + self.n_layers

    def _layer_sums(self, x: Tensor) -> Tensor:  # (B, n_cells) -> (B, n_layers)
        return features.layer_energies(x, self.geometry)

    def _expand(self, per_layer: Tensor) -> Tensor:  # (B, n_layers) -> (B, n_cells)
        return torch.cat([per_layer[:, i:i + 1].expand(-1, s.stop - s.start) for i, s in enumerate(self.slices)], dim=1)

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        e_layer = self._layer_sums(x_mev)
        denom = self._expand(e_layer)
        shape = torch.where(denom > 0, x_mev / denom.clamp_min(self.tiny), torch.zeros_like(x_mev))
        return torch.cat([shape, e_layer / e_inc], dim=1)

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        shape = x[:, :self.n_cells].clamp_min(0)
        frac = x[:, self.n_cells:].clamp_min(0)
        norm = self._layer_sums(shape)
        scale = frac * e_inc / norm.clamp_min(self.tiny)
        return shape * self._expand(scale)


@register_transform
class LogitTransform(_Standardised):
    """logit: CaloFlow-style x = logit(alpha + (1 - 2 alpha) u), u = E_cell / (E_inc * s), standardised."""

    name = "logit"

    def __init__(self, geometry: "Geometry", alpha: float = 1e-6, standardise: bool = True) -> None:
        super().__init__(geometry, alpha=float(alpha), standardise=bool(standardise))
        self.alpha = float(alpha)
        self.standardise = bool(standardise)
        # s >= 1: the largest cell fraction seen in training, so u stays in [0, 1].
        self.register_buffer("scale", torch.ones(()))

    def _g(self, u: Tensor) -> Tensor:
        p = self.alpha + (1 - 2 * self.alpha) * (u / self.scale).clamp(0, 1)
        return torch.log(p) - torch.log1p(-p)

    def _fit(self, showers: Tensor, e_inc: Tensor) -> None:
        m = 0.0
        for a in range(0, len(showers), _FIT_CHUNK):
            m = max(m, float((showers[a:a + _FIT_CHUNK].double() / e_inc[a:a + _FIT_CHUNK].double()).max()))
        self.scale.fill_(max(1.0, m))
        if self.standardise:
            self._fit_moments(showers, e_inc)

    def forward(self, x_mev: Tensor, e_inc: Tensor) -> Tensor:
        return (self._g(x_mev / e_inc) - self.mean) / self.std

    def inverse(self, x: Tensor, e_inc: Tensor) -> Tensor:
        p = torch.sigmoid(x * self.std + self.mean)
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.scale * e_inc


# ------------------------------------------------------------------------------------------
def postprocess(x_mev: Tensor, threshold_mev: float = 0.0) -> tuple[Tensor, int]:
    """Make model output physical: NaN/inf -> 0, clamp >= 0, zero cells below the threshold.

    Returns the cleaned showers ``(B, n_cells)`` MeV and the number of non-finite cells replaced.
    """
    bad = ~torch.isfinite(x_mev)
    n_bad = int(bad.sum())
    x = torch.where(bad, torch.zeros_like(x_mev), x_mev).clamp_min(0)
    if threshold_mev > 0:
        x = torch.where(x < threshold_mev, torch.zeros_like(x), x)
    return x, n_bad


def _as_tensor(a: Any) -> Tensor:
    return a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a, dtype=np.float32))

