"""CALPAGAN (seed 004): a pix2pix-style conditional GAN turning a fast (Delphes-like) event image
into the detailed one.

Not a registered shower model: it maps ``(N, 2, 72, 72)`` fast images (ECAL, HCAL) to
``(N, 1, 72, 72)`` detailed images (ECAL + HCAL) of the *same* events, which the shower-sampling
contract of :mod:`calosim.models.base` (conditions -> showers) does not describe. It is trained
and applied by ``calosim events train`` / ``calosim events apply``.

Architecture exactly as the seed's section 3.1:

* generator (U-Net): a 1x1 feature-map block 2 -> 16 channels; five contracting blocks
  (conv 3x3 doubling the channels, batch norm, LeakyReLU(0.2), conv 3x3, batch norm,
  LeakyReLU(0.2), max-pool 2/2 in blocks 1-3 and 3/3 in blocks 4-5: 72 -> 36 -> 18 -> 9 -> 3 -> 1);
  five expanding blocks (bilinear upsampling x3, x3, x2, x2, x2; conv 2x2 halving the channels;
  concatenation with the centre-cropped skip connection; conv 3x3 halving; batch norm,
  LeakyReLU(0.2); conv 2x2 with padding 1; batch norm, LeakyReLU(0.2)); a 1x1 feature-map block
  16 -> 1; LeakyReLU(0.5) on the output.
* discriminator (PatchGAN): a 1x1 feature-map block to 8 channels, three contracting blocks with
  instance normalisation (8 -> 16 -> 32 -> 64, 72 -> 9), a 1x1 block to 1 channel: a 9 x 9 map of
  real/fake logits for the pair (x, y) or (x, G(x) + x).
* The generated image is G(x) + x, pixel by pixel (x summed over its channels: G learns the
  correction from the fast to the detailed image). The noise z is added to x (sigma ``noise``).
* Loss: cGAN (binary cross-entropy on the patch logits) + lambda L1(y, G(x) + x).
* Normalisation (the seed's fix against blank images): every fast image is divided by its own
  highest pixel, every detailed image by its own. At generation the output is scaled back by the
  fast image's highest pixel times ``peak_ratio``, the mean ratio of the detailed to the fast
  highest pixel in the training set (the only scale known without the detailed image).
* Zero suppression (calosim's addition, off in the seed's recipe): the detailed images are
  zero-suppressed towers, while G(x) + x leaves a faint positive floor over the whole image.
  ``zero_threshold`` (GeV) is fitted on the training set after training so that the generated
  training images have as many non-zero towers on average as the detailed ones;
  ``generate(zero_suppress=True)`` zeroes the towers below it.

Fixes the seed's conclusion asks for (D learns faster than G): ``g_steps`` generator updates per
discriminator update and ``d_lr_scale`` (the discriminator's learning rate relative to G's).

Three recipes (:meth:`CalpaganConfig.recipe`): ``"seed"`` is the above exactly; ``"calosim"`` (the
defaults) keeps the architecture and losses but normalises x and y by x's highest pixel, replaces x
in G(x) + x by a non-negative spread kernel applied to x (:class:`SpreadKernel`, fitted by least
squares before training: the mean shower footprint), gates ReLU(G(x) + base), starts G's last
layer at zero (the untrained model returns the spread fast image), adds a per-image total-energy
term to G's loss and zeroes generated towers below 0.2 GeV; ``"calosim-v1"`` is the same without
the spread kernel (see :class:`CalpaganConfig` and docs/events.md for why and what each is
measured to do).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "Discriminator", "SpreadKernel", "fit_spread", "blur_l1", "CalpaganConfig", "SEED_RECIPE",
           "CALOSIM_V1", "RECIPES", "Calpagan", "train_calpagan",
           "frechet_image_distance", "plot_history"]


class FeatureMapBlock(nn.Module):
    """1x1 convolution changing the number of channels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ContractingBlock(nn.Module):
    """conv3x3 (C -> 2C), norm, LReLU(0.2), conv3x3, norm, LReLU(0.2), max-pool ``pool`` / ``pool``."""

    def __init__(self, c_in: int, pool: int = 2, norm: str = "batch") -> None:
        super().__init__()
        c = 2 * c_in
        make = {"batch": nn.BatchNorm2d, "instance": lambda k: nn.InstanceNorm2d(k, affine=True)}[norm]
        self.conv1 = nn.Conv2d(c_in, c, kernel_size=3, padding=1)
        self.norm1 = make(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.norm2 = make(c)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.MaxPool2d(kernel_size=pool, stride=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        x = self.act(self.norm2(self.conv2(x)))
        return self.pool(x)


def _crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop of ``x`` (N, C, H, W) to ``size`` (h, w)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class ExpandingBlock(nn.Module):
    """Upsample ``scale`` (bilinear), conv2x2 (C -> C/2), concat skip, conv3x3 (C -> C/2), BN, LReLU,
    conv2x2 (padding 1), BN, LReLU: spatial size ``s -> scale * s``."""

    def __init__(self, c_in: int, scale: int) -> None:
        super().__init__()
        c = c_in // 2
        self.up = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=True)
        self.conv1 = nn.Conv2d(c_in, c, kernel_size=2)
        self.conv2 = nn.Conv2d(c_in, c, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=2, padding=1)
        self.norm3 = nn.BatchNorm2d(c)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.up(x))
        x = torch.cat([x, _crop(skip, tuple(x.shape[-2:]))], dim=1)
        x = self.act(self.norm2(self.conv2(x)))
        return self.act(self.norm3(self.conv3(x)))


class UNet(nn.Module):
    """The seed's generator: ``(N, 2, 72, 72)`` -> ``(N, 1, 72, 72)``."""

    POOLS = (2, 2, 2, 3, 3)

    def __init__(self, c_in: int = 2, c_out: int = 1, hidden: int = 16) -> None:
        super().__init__()
        self.upfeature = FeatureMapBlock(c_in, hidden)
        self.contract = nn.ModuleList(ContractingBlock(hidden * 2 ** i, p) for i, p in enumerate(self.POOLS))
        self.expand = nn.ModuleList(ExpandingBlock(hidden * 2 ** (5 - i), p)
                                    for i, p in enumerate(reversed(self.POOLS)))
        self.downfeature = FeatureMapBlock(hidden, c_out)
        self.out_act = nn.LeakyReLU(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.upfeature(x)]
        for block in self.contract:
            skips.append(block(skips[-1]))
        h = skips.pop()
        for block in self.expand:
            h = block(h, skips.pop())
        return self.out_act(self.downfeature(h))


class Discriminator(nn.Module):
    """PatchGAN: ``(N, c_in, 72, 72)`` (condition and image stacked) -> ``(N, 1, 9, 9)`` logits."""

    def __init__(self, c_in: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.upfeature = FeatureMapBlock(c_in, hidden)
        self.blocks = nn.Sequential(*(ContractingBlock(hidden * 2 ** i, 2, norm="instance") for i in range(3)))
        self.final = FeatureMapBlock(hidden * 8, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.upfeature(torch.cat([x, y], dim=1))))


class SpreadKernel(nn.Module):
    """Energy-conserving lateral spread (calosim's addition): ``(N, C, 72, 72)`` -> ``(N, 1, 72, 72)``.

    Each tower of channel c hands its energy to its ``(2 radius + 1)^2`` neighbourhood with the
    non-negative weights ``kernel()[c]`` (a softmax, so they sum to 1) times ``gain()[c]``; phi (the
    last axis) wraps around and energy spread beyond an eta edge stays in the edge row, so with
    gain 1 the image sum is exactly conserved. It turns the fast view's one-tower deposits into the
    mean shower footprint, which the per-pixel L1 (a median fit) does not learn (docs/events.md §5).
    """

    def __init__(self, channels: int = 2, radius: int = 3) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"spread kernel radius must be >= 1, got {radius}")
        self.radius = radius
        k = 2 * radius + 1
        logits = torch.full((channels, k * k), -20.0)
        logits[:, k * k // 2] = 0.0  # starts as (almost) the identity
        self.logits = nn.Parameter(logits)
        self.log_gain = nn.Parameter(torch.zeros(channels))

    def kernel(self) -> torch.Tensor:
        """``(C, k, k)`` weights, each channel's summing to 1: ``[c, R + di, R + dj]`` is the fraction
        a tower sends ``di`` towers along eta and ``dj`` along phi."""
        k = 2 * self.radius + 1
        return torch.softmax(self.logits, dim=-1).view(-1, k, k)

    def gain(self) -> torch.Tensor:
        """``(C,)`` energy scale of each channel."""
        return self.log_gain.exp()

    def set_weights(self, weights: np.ndarray) -> None:
        """Set kernel and gain from non-negative weights ``(C, k, k)`` (gain = their sum per channel)."""
        w = torch.as_tensor(np.asarray(weights, np.float64)).reshape(len(self.logits), -1)
        total = w.sum(1).clamp_min(1e-12)
        with torch.no_grad():
            self.logits.copy_(torch.log(w / total[:, None] + 1e-9).float())
            self.log_gain.copy_(torch.log(total).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        w = (self.kernel() * self.gain()[:, None, None]).unsqueeze(1)  # (C, 1, k, k): C inputs -> 1 output
        out = F.conv_transpose2d(x, w)  # (N, 1, H + 2R, W + 2R): tower (i, j) -> (i + di + R, j + dj + R)
        mid = out[..., r:-r]  # phi wrap-around: what spread past either phi edge comes in at the other
        mid = mid + F.pad(out[..., -r:], (0, mid.shape[-1] - r)) + F.pad(out[..., :r], (mid.shape[-1] - r, 0))
        core = mid[..., r:-r, :]  # eta: energy spread past an edge stays in the edge row
        h = core.shape[-2]
        low = F.pad(mid[..., :r, :].sum(-2, keepdim=True), (0, 0, 0, h - 1))
        high = F.pad(mid[..., -r:, :].sum(-2, keepdim=True), (0, 0, h - 1, 0))
        return core + low + high


def _shift_columns(x: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares design of :class:`SpreadKernel`: for images ``x`` (N, C, H, W), the rows
    (pixels within ``radius`` of a non-zero tower) -> ``(A, rows)`` with ``A[p, (c, a, b)]`` the
    energy tower (i - a + R, j - b + R) of channel c would send to pixel p = (n, i, j) with weight
    ``kernel[c, a, b]`` (phi periodic, eta zero-padded: the fit ignores the edge fold-back)."""
    r, k = radius, 2 * radius + 1
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)))
    xp = np.concatenate([xp[..., -r:], xp, xp[..., :r]], axis=-1)  # (N, C, H + 2R, W + 2R)
    occupied = xp.sum(1) > 0
    near = np.zeros(x[:, 0].shape, bool)
    for a in range(k):
        for b in range(k):
            near |= occupied[:, a:a + x.shape[2], b:b + x.shape[3]]
    n, i, j = np.nonzero(near)
    cols = [xp[n, c, i + 2 * r - a, j + 2 * r - b] for c in range(x.shape[1]) for a in range(k) for b in range(k)]
    return np.stack(cols, axis=1), np.stack([n, i, j])


def fit_spread(fast: np.ndarray, detailed: np.ndarray, radius: int, batch: int = 50) -> np.ndarray:
    """Non-negative least-squares :class:`SpreadKernel` weights ``(C, k, k)`` (their sums are the
    gains) that best map ``fast`` (N, C, H, W) to ``detailed`` (N, 1, H, W): the mean footprint."""
    from scipy.optimize import nnls

    m = fast.shape[1] * (2 * radius + 1) ** 2
    ata, aty = np.zeros((m, m)), np.zeros(m)
    for s in range(0, len(fast), batch):
        a, (n, i, j) = _shift_columns(fast[s:s + batch].astype(np.float64), radius)
        y = detailed[s:s + batch, 0].astype(np.float64)[n, i, j]
        ata += a.T @ a
        aty += a.T @ y
    # ||A w - y||^2 = ||L^T w - L^-1 A^T y||^2 + const with A^T A = L L^T: NNLS on the m x m system
    chol = np.linalg.cholesky(ata + 1e-9 * np.trace(ata) / m * np.eye(m) + 1e-12 * np.eye(m))
    w, _ = nnls(chol.T, np.linalg.solve(chol, aty))
    return w.reshape(fast.shape[1], 2 * radius + 1, 2 * radius + 1)


def _gauss_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(N, 1, H, W)`` blurred by a Gaussian of ``sigma`` towers (phi periodic, eta zero-padded), sum kept away from the eta edges."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=img.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    x = F.pad(img, (r, r, 0, 0), mode="circular")
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1), padding=(r, 0))


def blur_l1(a: torch.Tensor, b: torch.Tensor, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)) -> torch.Tensor:
    """Mean over ``sigmas`` of the per-pixel L1 distance of ``a`` and ``b`` (N, 1, H, W) after a Gaussian
    blur of that many towers (a multi-scale L1). Unlike the per-pixel L1, energy put one tower off
    costs less than energy put far away, so G is rewarded for the right footprint, not only the exact towers."""
    return torch.stack([F.l1_loss(_gauss_blur(a, s), _gauss_blur(b, s)) for s in sigmas]).mean()


# ---- training ----------------------------------------------------------------------------------
@dataclass
class CalpaganConfig:
    """Training settings; the defaults are calosim's recipe, :data:`SEED_RECIPE` lists the seed's values.

    ``norm``: ``"own-peak"`` (seed: each image by its own highest pixel, the scale restored with
    ``peak_ratio``) or ``"fast-peak"`` (the fast image and its detailed target both by the fast image's
    highest pixel, so G learns the energy response and the scale is restored exactly).
    ``gate``: ``"none"`` (seed) or ``"relu"`` (ReLU of G(x) + x in training too, so G can make a tower
    exactly empty). ``residual_init``: G's last 1x1 convolution starts at zero, so the untrained model
    returns the fast image (summed over ECAL and HCAL) and learns only the correction (seed: off,
    PyTorch's default initialisation). ``energy_weight``: adds ``energy_weight`` x the relative error of
    each image's total energy, |sum G(x) + x - sum y| / sum y, to G's loss (seed: 0): the per-pixel L1
    alone is a median fit that leaves out the sparse shower tails and so under-shoots the energy.
    ``bn_recalibrate``: after each epoch G's batch-norm running statistics are re-estimated on the
    whole training set with the weights fixed (seed: off, the running averages of the last steps,
    which lag weights that move fast). ``threshold_gev``: generated towers below it are zeroed (0 in the seed; 0.2 GeV
    is the detailed view's smallest tower threshold, ECAL).
    ``spread_radius``: G's base image is :class:`SpreadKernel` (x) instead of x summed over ECAL and
    HCAL, a non-negative (2 R + 1)^2 kernel per channel fitted by least squares on the training pairs
    before training (0: off, the seed's and calosim-v1's x). ``spread_train``: the kernel then trains
    with G (off: it stays at its fit). ``blur_weight``: adds ``lam x blur_weight x`` :func:`blur_l1`
    (the L1 after Gaussian blurs of 1, 2 and 4 towers) to G's loss (0: off).
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-5  # G's learning rate (seed: 2e-4): slower, G's residual keeps more of the fitted spread
    lam: float = 100.0
    noise: float = 0.01
    g_steps: int = 1  # generator updates per discriminator update (seed: 1)
    d_lr_scale: float = 0.25  # discriminator lr / generator lr (seed: 1)
    hidden: int = 16  # generator width (seed: 16); larger = the "stronger G" fix
    norm: str = "fast-peak"
    gate: str = "relu"
    residual_init: bool = True
    energy_weight: float = 1.0
    bn_recalibrate: bool = True
    threshold_gev: float = 0.2
    spread_radius: int = 3
    spread_train: bool = False
    blur_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"calpagan config: norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.gate not in GATES:
            raise ValueError(f"calpagan config: gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.spread_radius < 0 or self.spread_radius > 8:
            raise ValueError(f"calpagan config: spread_radius must be 0 (off) to 8 towers, got {self.spread_radius}")

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> "CalpaganConfig":
        """The named recipe (``"calosim"``: the defaults; ``"seed"``: the paper's), then ``overrides``."""
        if name not in RECIPES:
            raise ValueError(f"calpagan recipe must be one of {', '.join(RECIPES)}, got {name!r}")
        return cls(**{**RECIPES[name], **overrides})


NORMS, GATES = ("own-peak", "fast-peak"), ("none", "relu")
#: The seed's recipe (section 3.1) where calosim's defaults differ; old checkpoints without these keys are the seed's.
SEED_RECIPE: dict[str, Any] = {"norm": "own-peak", "gate": "none", "residual_init": False, "energy_weight": 0.0,
                               "bn_recalibrate": False, "d_lr_scale": 1.0, "threshold_gev": 0.0,
                               "spread_radius": 0, "spread_train": False, "blur_weight": 0.0, "lr": 2e-4}
#: calosim's first recipe (x as G's base, no spread kernel): older calosim checkpoints are this.
CALOSIM_V1: dict[str, Any] = {"spread_radius": 0, "spread_train": False, "blur_weight": 0.0, "lr": 2e-4}
RECIPES: dict[str, dict[str, Any]] = {"calosim": {}, "calosim-v1": CALOSIM_V1, "seed": SEED_RECIPE}


#: Files of a CALPAGAN run directory (``calosim events train --out``).
WEIGHTS_FILE, SIDE_FILE = "calpagan.safetensors", "calpagan.json"


def _peaks(x: np.ndarray) -> np.ndarray:
    """Highest pixel of each image ``(N, C, H, W)`` -> ``(N,)`` (1 for blank images)."""
    m = x.reshape(len(x), -1).max(axis=1)
    return np.where(m > 0, m, 1.0).astype(np.float32)


class Calpagan:
    """A trained (or fresh) generator with its normalisation; :meth:`generate` maps fast -> detailed (GeV)."""

    def __init__(self, config: CalpaganConfig | None = None, peak_ratio: float = 1.0,
                 zero_threshold: float = 0.0) -> None:
        self.config = config or CalpaganConfig()
        torch.manual_seed(self.config.seed)
        self.gen = UNet(hidden=self.config.hidden)
        if self.config.residual_init:
            nn.init.zeros_(self.gen.downfeature.conv.weight)
            nn.init.zeros_(self.gen.downfeature.conv.bias)
        self.spread = SpreadKernel(2, self.config.spread_radius) if self.config.spread_radius else None
        self.disc = Discriminator()
        self.peak_ratio = float(peak_ratio)
        self.zero_threshold = float(zero_threshold)

    def generate(self, fast: np.ndarray, batch: int = 64, seed: int = 0, zero_suppress: bool = False) -> np.ndarray:
        """Detailed-like images ``(N, 1, 72, 72)`` GeV from fast images ``(N, 2, 72, 72)`` GeV.

        Towers below ``config.threshold_gev`` are always zeroed; ``zero_suppress`` also zeroes those
        below the fitted ``zero_threshold`` (see the module doc).
        """
        gen = torch.Generator().manual_seed(seed)
        self.gen.eval()
        out = []
        with torch.no_grad():
            for a in range(0, len(fast), batch):
                x = fast[a:a + batch].astype(np.float32)
                p = _peaks(x)
                xn = torch.from_numpy(x / p[:, None, None, None])
                y = self._fake(xn, gen)
                scale = p * (self.peak_ratio if self.config.norm == "own-peak" else 1.0)
                img = np.maximum(y.numpy(), 0.0) * scale[:, None, None, None]
                img[img < self.config.threshold_gev] = 0.0
                if zero_suppress:
                    img[img < self.zero_threshold] = 0.0
                out.append(img)
        return np.concatenate(out) if out else np.zeros((0, 1, *fast.shape[2:]), np.float32)

    def fit_zero_threshold(self, fast: np.ndarray, detailed: np.ndarray, seed: int = 0) -> float:
        """Set ``zero_threshold`` (GeV) so that generated images of ``fast`` have the mean number of
        non-zero towers of ``detailed`` (0 if they already have fewer); returns it."""
        gen = self.generate(fast, seed=seed).ravel()
        target = int((detailed > 0).sum())
        self.zero_threshold = 0.0 if (gen > 0).sum() <= target else float(np.partition(gen, -target - 1)[-target - 1])
        return self.zero_threshold

    def recalibrate_batchnorm(self, xn: torch.Tensor, batch: int = 16) -> None:
        """Re-estimate G's batch-norm running statistics as the plain average over batches of the
        peak-normalised fast images ``xn`` (N, 2, 72, 72), G's weights fixed."""
        norms = [m for m in self.gen.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.gen.train()
        with torch.no_grad():
            for a in range(0, len(xn), batch):
                if len(xn[a:a + batch]) >= 2:  # the 1 x 1 bottleneck needs two images
                    self.gen(xn[a:a + batch])
        for m in norms:
            m.momentum = 0.1

    def _fake(self, xn: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(xn.shape, generator=gen) * self.config.noise
        base = self.spread(xn) if self.spread is not None else xn.sum(1, keepdim=True)
        y = self.gen(xn + z) + base
        return F.relu(y) if self.config.gate == "relu" else y

    def save(self, run_dir: str | Path, history: dict[str, Any]) -> Path:
        """Write ``run_dir/calpagan.safetensors`` (G and D weights; config and peak ratio in the header)
        and ``run_dir/calpagan.json`` (config, peak ratio, training history), each atomically.

        Safetensors holds tensors only, so loading never unpickles anything.
        """
        from ..io import write_text_atomic
        from ..train.checkpoint import save_tensors

        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        tensors = {f"gen/{k}": v for k, v in self.gen.state_dict().items()}
        tensors.update({f"disc/{k}": v for k, v in self.disc.state_dict().items()})
        if self.spread is not None:
            tensors.update({f"spread/{k}": v.detach() for k, v in self.spread.state_dict().items()})
        meta = {"model": "calpagan", "config": asdict(self.config), "peak_ratio": self.peak_ratio,
                "zero_threshold": self.zero_threshold}
        save_tensors(run / WEIGHTS_FILE, tensors, meta)
        write_text_atomic(run / SIDE_FILE, json.dumps({**meta, "history": history}, indent=1, default=float))
        return run / WEIGHTS_FILE

    @staticmethod
    def load(path: str | Path) -> tuple["Calpagan", dict[str, Any]]:
        """``(model, history)`` from a run directory or its ``calpagan.safetensors``; one-line ValueError otherwise."""
        from ..train.checkpoint import RunError, load_tensors

        path = Path(path)
        weights = path / WEIGHTS_FILE if path.is_dir() else path
        try:
            tensors, meta = load_tensors(weights)
        except RunError as exc:
            raise ValueError(f"{exc} (expected a calpagan checkpoint from `calosim events train`)") from None
        if meta.get("model") != "calpagan":
            raise ValueError(f"{weights}: not a calpagan checkpoint (header model={meta.get('model')!r}; "
                             "make one with `calosim events train`)")
        try:
            m = Calpagan(CalpaganConfig(**{**SEED_RECIPE, **meta["config"]}), meta["peak_ratio"],
                         meta.get("zero_threshold", 0.0))
            nets = (("gen/", m.gen), ("disc/", m.disc), *((("spread/", m.spread),) if m.spread is not None else ()))
            for prefix, net in nets:
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{weights}: calpagan checkpoint does not fit this model ({first})") from None
        side = weights.with_name(SIDE_FILE)
        history: dict[str, Any] = {}
        if side.is_file():
            try:
                history = json.loads(side.read_text()).get("history", {})
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{side}: not readable JSON ({exc})") from None
        return m, history


def _features(img: np.ndarray) -> np.ndarray:
    """Fréchet features of images ``(N, C, 72, 72)``: log(1 + E) of the summed image pooled 8 x 8 -> (N, 81)."""
    s = img.sum(1)
    n, h, w = s.shape
    pooled = s.reshape(n, h // 8, 8, w // 8, 8).sum((2, 4))
    return np.log1p(np.maximum(pooled, 0.0)).reshape(n, -1)


def frechet_image_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to :func:`_features` of two image sets (an FID without Inception)."""
    from ..metrics.fpd import frechet_distance

    fa, fb = _features(a), _features(b)
    return frechet_distance(fa.mean(0), np.atleast_2d(np.cov(fa, rowvar=False)),
                            fb.mean(0), np.atleast_2d(np.cov(fb, rowvar=False)))


def train_calpagan(fast: np.ndarray, detailed: np.ndarray, config: CalpaganConfig, *,
                   test: tuple[np.ndarray, np.ndarray] | None = None, log: Any = None,
                   frechet_every_epoch: bool = True) -> tuple[Calpagan, dict]:
    """Train on paired images ``fast`` (N, 2, 72, 72) and ``detailed`` (N, 1, 72, 72) GeV.

    Returns the model and its history: per epoch the mean D and G losses and the Fréchet
    distances detailed-fast, detailed-generated and fast-generated on the training (and test) set
    (``frechet_every_epoch=False``: after the last epoch only, which saves generating both sets
    every epoch).
    """
    if fast.shape[0] != detailed.shape[0] or fast.shape[1:] != (2, 72, 72) or detailed.shape[1:] != (1, 72, 72):
        raise ValueError(f"calpagan trains on pairs (N, 2, 72, 72) fast and (N, 1, 72, 72) detailed images; "
                         f"got {fast.shape} and {detailed.shape}")
    pf, pd = _peaks(fast), _peaks(detailed)
    own = config.norm == "own-peak"
    model = Calpagan(config, peak_ratio=float(np.mean(pd / pf)) if own else 1.0)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    xn = torch.from_numpy(fast / pf[:, None, None, None])
    yn = torch.from_numpy(detailed / (pd if own else pf)[:, None, None, None])
    g, d = model.gen, model.disc
    hist: dict[str, list[float]] = {"epoch": [], "loss_d": [], "loss_g": [], "seconds": []}
    g_params = list(g.parameters())
    if model.spread is not None:
        t0 = time.perf_counter()
        model.spread.set_weights(fit_spread(xn.numpy(), yn.numpy(), config.spread_radius))
        hist["spread_fit_s"] = time.perf_counter() - t0
        if config.spread_train:
            g_params += list(model.spread.parameters())
        else:
            model.spread.requires_grad_(False)
    opt_g = torch.optim.Adam(g_params, lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr * config.d_lr_scale, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    n = len(xn)
    step = 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        g.train(); d.train()
        ld, lg, nb = 0.0, 0.0, 0
        perm = rng.permutation(n)
        for a in range(0, n, config.batch_size):
            idx = torch.from_numpy(perm[a:a + config.batch_size])
            if len(idx) < 2:  # batch norm at the 1 x 1 bottleneck needs two images
                continue
            x, y = xn[idx], yn[idx]
            # discriminator: (x, y) real, (x, G(x) + x) fake
            if step % config.g_steps == 0:
                with torch.no_grad():
                    fake = model._fake(x)
                real_l, fake_l = d(x, y), d(x, fake)
                loss_d = 0.5 * (bce(real_l, torch.ones_like(real_l)) + bce(fake_l, torch.zeros_like(fake_l)))
                opt_d.zero_grad(); loss_d.backward(); opt_d.step()
                ld += loss_d.item()
            # generator: fool D and stay close in L1
            fake = model._fake(x)
            fl = d(x, fake)
            loss_g = bce(fl, torch.ones_like(fl)) + config.lam * F.l1_loss(fake, y)
            if config.energy_weight:
                e_fake, e_true = fake.sum((1, 2, 3)), y.sum((1, 2, 3))
                loss_g = loss_g + config.energy_weight * ((e_fake - e_true).abs() / e_true.clamp_min(1e-6)).mean()
            if config.blur_weight:
                loss_g = loss_g + config.lam * config.blur_weight * blur_l1(fake, y)
            opt_g.zero_grad(); loss_g.backward(); opt_g.step()
            lg += loss_g.item()
            nb += 1
            step += 1
        hist["epoch"].append(epoch)
        hist["loss_d"].append(ld / max(1, math.ceil(nb / config.g_steps)))
        hist["loss_g"].append(lg / max(nb, 1))
        hist["seconds"].append(time.perf_counter() - t0)
        if config.bn_recalibrate:
            model.recalibrate_batchnorm(xn, config.batch_size)
        splits = (("train", (fast, detailed)), *((("test", test),) if test is not None else ()))
        for name, (f_, d_) in splits if frechet_every_epoch or epoch == config.epochs else ():
            gen_img = model.generate(f_, seed=epoch)
            for key, (u, v) in {"detailed-fast": (d_, f_), "detailed-calpagan": (d_, gen_img),
                                "fast-calpagan": (f_, gen_img)}.items():
                hist.setdefault(f"fd_{key}_{name}", []).append(frechet_image_distance(u, v))
        if log:
            fd = ""
            if "fd_detailed-fast_train" in hist:
                fd = (f"  FD(det,fast) {hist['fd_detailed-fast_train'][-1]:.2f}  "
                      f"FD(det,gen) {hist['fd_detailed-calpagan_train'][-1]:.2f}")
            log(f"epoch {epoch}: D {hist['loss_d'][-1]:.3f}  G {hist['loss_g'][-1]:.3f}{fd}  "
                f"({hist['seconds'][-1]:.1f} s)")
    if model.spread is not None:
        hist["spread_gain"] = model.spread.gain().tolist()
    model.fit_zero_threshold(fast, detailed, seed=0)
    hist["zero_threshold_gev"] = model.zero_threshold
    return model, hist


def plot_history(hist: dict[str, list[float]], path: str | Path) -> Path:
    """The seed's Fig. 5 (Fréchet distances per epoch, train solid / test dashed) and Fig. 6 (losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"detailed-fast": "C0", "detailed-calpagan": "C3", "fast-calpagan": "C2"}
    for key, c in colours.items():
        for split, ls in (("train", "-"), ("test", "--")):
            v = hist.get(f"fd_{key}_{split}")
            if v:
                a1.plot(hist["epoch"][-len(v):], v, ls + ("o" if len(v) == 1 else ""), color=c,
                        label=f"{key} ({split})")
    a1.set_yscale("log"); a1.set_xlabel("epoch"); a1.set_ylabel("Fréchet distance (pooled log-energy features)")
    a1.legend(fontsize=7)
    a2.plot(hist["epoch"], hist["loss_d"], color="C3", label="discriminator")
    a2.plot(hist["epoch"], hist["loss_g"], color="C0", label="generator")
    a2.set_yscale("log"); a2.set_xlabel("epoch"); a2.set_ylabel("loss"); a2.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
