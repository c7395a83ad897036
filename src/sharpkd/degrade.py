"""Synthetic degradations: blur kernels, sensor noise and JPEG compression.

One module makes every blurred image in the project: training batches (``degrade_batch``), the
benchmark protocol of ``shared/BENCHMARK.md`` (``protocol_degrade``, ``protocol_kernel``,
``load_levin_kernels``), the hold-out validation set, the web demo and ``sharpkd degrade``.
Everything is seeded.

Conventions
-----------
Images are float tensors in [0, 1], shape (B, C, H, W), RGB. Kernels are float tensors of shape
(K, K) or (B, K, K), odd K, each summing to 1, centred on their centre of mass.

Kernel families
---------------
* ``gaussian``: isotropic Gaussian, support (2*ceil(3*sigma)+1)^2 as in the benchmark protocol.
* ``defocus``: an anti-aliased uniform disc (the out-of-focus point spread function of a lens).
* ``motion``: procedural camera shake, a random trajectory with inertia rasterised onto the grid,
  in the spirit of Boracchi & Foi, "Modeling the performance of image restoration from motion
  blur", IEEE TIP 2012. The recorded Levin et al. (CVPR 2009) kernels are kept for evaluation only.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BLUR_KINDS = ("gaussian", "defocus", "motion")


# --------------------------------------------------------------------------------------------
# Kernels (numpy float64, each sums to 1)
# --------------------------------------------------------------------------------------------
def gaussian_profile(sigma: float, size: int | None = None) -> np.ndarray:
    """The unnormalised 1-D Gaussian sampled on ``size`` points (default 2*ceil(3*sigma)+1), centred."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.exp(-(r**2) / (2 * sigma**2))


def gaussian_kernel(sigma: float, size: int | None = None) -> np.ndarray:
    """Isotropic Gaussian sampled on a ``size`` x ``size`` grid (default 2*ceil(3*sigma)+1): the outer
    product of :func:`gaussian_profile` with itself, normalised."""
    g = gaussian_profile(sigma, size)
    k = np.outer(g, g)
    return k / k.sum()


def defocus_kernel(radius: float, size: int | None = None, supersample: int = 8) -> np.ndarray:
    """Uniform disc of the given radius in pixels, anti-aliased by supersampling."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if size is None:
        size = 2 * math.ceil(radius) + 1
    n = size * supersample
    c = (np.arange(n) + 0.5) / supersample - size / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    disc = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    k = disc.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    if k.sum() == 0:  # radius far below one pixel: a delta
        k[size // 2, size // 2] = 1.0
    return k / k.sum()


def motion_kernel(rng: np.random.Generator, length: float, size: int = 31, steps: int = 96) -> np.ndarray:
    """A random camera-shake kernel whose trajectory is about ``length`` pixels long.

    The camera position follows a velocity with inertia plus random acceleration and occasional
    jerks; the trajectory is scaled to ``length``, splatted bilinearly onto the grid (the exposure
    time spent at each position), centred on its centre of mass and normalised.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    angle = rng.uniform(0, 2 * np.pi)
    vel = np.array([np.cos(angle), np.sin(angle)])
    pos = np.zeros(2)
    pts = [pos.copy()]
    anxiety = rng.uniform(0.0, 0.35)  # how shaky the hand is
    for _ in range(steps - 1):
        if rng.random() < anxiety * 0.1:  # a sudden jerk
            vel = vel + rng.normal(0, 1.0, 2)
        vel = 0.9 * vel + rng.normal(0, anxiety + 0.05, 2)
        nv = np.linalg.norm(vel)
        if nv > 0:
            vel = vel / nv
        pos = pos + vel
        pts.append(pos.copy())
    pts = np.asarray(pts)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()
    pts = pts - pts.mean(axis=0)
    pts = pts * (length / max(seg, 1e-8))
    # keep the trajectory inside the grid
    half = (size - 1) / 2 - 1
    ext = np.abs(pts).max()
    if ext > half:
        pts = pts * (half / ext)
    k = np.zeros((size, size))
    # densify so that every pixel the path crosses gets weight
    dense = []
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) * 4)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        dense.append(a + t * (b - a))
    dense = np.concatenate(dense + [pts[-1:]], axis=0)
    x = dense[:, 0] + (size - 1) / 2
    y = dense[:, 1] + (size - 1) / 2
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(k, (yi, xi), w)
    return center_kernel(k / k.sum())


def center_kernel(k: np.ndarray) -> np.ndarray:
    """Shift a kernel by whole pixels so its centre of mass is as close to the centre as possible."""
    size = k.shape[0]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = (k * yy).sum(), (k * xx).sum()
    sy, sx = int(round((size - 1) / 2 - cy)), int(round((size - 1) / 2 - cx))
    out = np.zeros_like(k)
    src = k[max(0, -sy) : size - max(0, sy), max(0, -sx) : size - max(0, sx)]
    out[max(0, sy) : max(0, sy) + src.shape[0], max(0, sx) : max(0, sx) + src.shape[1]] = src
    return out / out.sum()


def pad_kernel(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (or centre-crop and renormalise) a square odd kernel to ``size`` x ``size``."""
    ks = k.shape[0]
    if ks == size:
        return k
    if ks < size:
        p = (size - ks) // 2
        return np.pad(k, p)
    c = (ks - size) // 2
    k = k[c : c + size, c : c + size]
    return k / k.sum()


# --------------------------------------------------------------------------------------------
# The benchmark protocol (shared/BENCHMARK.md, version 2)
# --------------------------------------------------------------------------------------------
PROTOCOL_VERSION = 2
PROTOCOL_DEGRADATIONS = ("gauss1", "gauss2", "gauss3", "motion")


def recenter_levin(k: np.ndarray, pad: int = 4) -> np.ndarray:
    """Version 2's re-centring of a recorded kernel: zero-pad by ``pad`` pixels, then roll by whole
    pixels so the centre of mass lands within half a pixel of the array centre (BENCHMARK.md step 2)."""
    from scipy.ndimage import center_of_mass

    k = np.pad(np.asarray(k, np.float64), pad)
    h, w = k.shape
    cy, cx = center_of_mass(k)
    return np.roll(k, (-int(round(cy - (h - 1) / 2)), -int(round(cx - (w - 1) / 2))), axis=(0, 1))


def load_levin_kernels(path, version: int = PROTOCOL_VERSION) -> list[np.ndarray]:
    """The eight Levin et al. (2009) kernels k1..k8, normalised to sum 1 (re-centred for version 2)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Levin kernel file not found: {path}")
    with np.load(path) as z:
        ks = [np.asarray(z[f"k{n}"], np.float64) for n in range(1, 9)]
    ks = [k / k.sum() for k in ks]
    return [recenter_levin(k) for k in ks] if version >= 2 else ks


def protocol_kernel(j: int, i: int, levin: list[np.ndarray]) -> np.ndarray:
    """Kernel of degradation ``j`` (gauss1, gauss2, gauss3, motion) for image ``i``."""
    if j < 3:
        return gaussian_kernel(float(j + 1))
    return levin[i % 8]


def protocol_degrade(sharp: np.ndarray, kernel: np.ndarray, seed: int) -> np.ndarray:
    """uint8 H x W x 3 -> blurred, noisy uint8, exactly as BENCHMARK.md steps 1-4: float64
    convolution with reflected borders, N(0, 1/255) noise from ``default_rng(seed)``, 8-bit rounding."""
    from scipy.ndimage import convolve

    x = sharp.astype(np.float64) / 255.0
    y = np.stack([convolve(x[..., c], kernel, mode="reflect") for c in range(x.shape[2])], axis=-1)
    rng = np.random.default_rng(seed)
    y = y + rng.normal(0, 1 / 255, y.shape)
    return np.clip(np.round(y * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Random degradation settings for training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DegradeConfig:
    """Distribution of training degradations. Noise std and ranges are in [0, 1] image units."""

    kinds: tuple[str, ...] = ("gaussian", "defocus", "motion")
    kind_probs: tuple[float, ...] = (0.45, 0.2, 0.35)
    sigma_range: tuple[float, float] = (0.3, 3.5)
    defocus_radius_range: tuple[float, float] = (1.0, 5.0)
    motion_length_range: tuple[float, float] = (3.0, 30.0)
    kernel_size: int = 31
    noise_range: tuple[float, float] = (0.0, 0.01)
    jpeg_prob: float = 0.0
    jpeg_quality_range: tuple[int, int] = (60, 95)

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.kind_probs):
            raise ValueError("kinds and kind_probs must have the same length")
        for k in self.kinds:
            if k not in BLUR_KINDS:
                raise ValueError(f"unknown blur kind {k!r}; choose from {BLUR_KINDS}")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")


def random_kernel(rng: np.random.Generator, cfg: DegradeConfig) -> np.ndarray:
    """One kernel drawn from ``cfg``, padded to ``cfg.kernel_size``."""
    p = np.asarray(cfg.kind_probs, dtype=np.float64)
    kind = cfg.kinds[rng.choice(len(cfg.kinds), p=p / p.sum())]
    if kind == "gaussian":
        k = gaussian_kernel(float(rng.uniform(*cfg.sigma_range)))
    elif kind == "defocus":
        k = defocus_kernel(float(rng.uniform(*cfg.defocus_radius_range)))
    else:
        k = motion_kernel(rng, float(rng.uniform(*cfg.motion_length_range)), size=cfg.kernel_size)
    return pad_kernel(k, cfg.kernel_size)


def make_kernel(kind: str, *, sigma: float = 2.0, radius: float = 3.0, length: float = 15.0,
                seed: int = 0, size: int | None = None) -> np.ndarray:
    """A single kernel of a named family, for the ``degrade`` command and the tests."""
    if kind == "gaussian":
        k = gaussian_kernel(sigma)
    elif kind == "defocus":
        k = defocus_kernel(radius)
    elif kind == "motion":
        msize = size or (2 * math.ceil(length / 2) + 5)
        k = motion_kernel(np.random.default_rng(seed), length, size=msize)
    else:
        raise ValueError(f"unknown blur kind {kind!r}; choose from {BLUR_KINDS}")
    return pad_kernel(k, size) if size else k


# --------------------------------------------------------------------------------------------
# Applying degradations (batched torch)
# --------------------------------------------------------------------------------------------
def blur(img: torch.Tensor, kernel: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Convolve (B, C, H, W) images with one kernel (K, K) or one kernel per image (B, K, K).

    Uses kornia's ``filter2d`` with reflected borders and true convolution (kernel flipped).
    """
    k = torch.as_tensor(kernel, dtype=img.dtype, device=img.device)
    if k.ndim == 2:
        k = k[None]
    pad = k.shape[-1] // 2
    if pad >= min(img.shape[-2:]):
        # reflect padding needs the image larger than the kernel radius: replicate first
        extra = pad - min(img.shape[-2:]) + 1
        img = F.pad(img, (extra, extra, extra, extra), mode="replicate")
        out = kornia.filters.filter2d(img, k, border_type="reflect", behaviour="conv")
        return out[..., extra:-extra, extra:-extra]
    return kornia.filters.filter2d(img, k, border_type="reflect", behaviour="conv")


def add_noise(img: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise with per-image standard deviation ``std`` (scalar or (B,))."""
    std = torch.as_tensor(std, dtype=img.dtype, device=img.device).reshape(-1, 1, 1, 1)
    noise = torch.randn(img.shape, generator=generator, dtype=img.dtype, device="cpu").to(img.device)
    return img + std * noise


def jpeg(img: torch.Tensor, quality: int | list[int]) -> torch.Tensor:
    """Round-trip each image through JPEG at the given quality (Pillow; not differentiable)."""
    qs = [quality] * img.shape[0] if isinstance(quality, int) else list(quality)
    out = []
    for x, q in zip(img, qs, strict=True):
        arr = (x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(img)


def degrade_image(img: torch.Tensor, kernel: np.ndarray, noise: float = 0.0, jpeg_quality: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One chosen degradation of (B, 3, H, W) images in [0, 1]: blur, white noise of std ``noise``,
    clamp, then JPEG at ``jpeg_quality`` (0: none). Used by ``sharpkd degrade``."""
    y = blur(img, kernel)
    if noise > 0:
        y = add_noise(y, noise, generator)
    y = y.clamp(0, 1)
    return jpeg(y, jpeg_quality) if jpeg_quality else y


def degrade_batch(sharp: torch.Tensor, cfg: DegradeConfig, rng: np.random.Generator) -> torch.Tensor:
    """Give every image of a (B, 3, H, W) batch its own random blur, noise level and JPEG.

    The result is quantised to 8 bit, as a photo on disk would be.
    """
    b = sharp.shape[0]
    kernels = torch.from_numpy(np.stack([random_kernel(rng, cfg) for _ in range(b)])).to(sharp)
    out = blur(sharp, kernels)
    std = torch.from_numpy(rng.uniform(*cfg.noise_range, size=b)).to(sharp)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    out = add_noise(out, std, gen).clamp(0, 1)
    return torch.round(compress_some(out, cfg, rng) * 255) / 255


def compress_some(batch: torch.Tensor, cfg: DegradeConfig, rng: np.random.Generator) -> torch.Tensor:
    """``batch`` with each image, with probability ``cfg.jpeg_prob``, saved as a JPEG at a random quality in
    ``cfg.jpeg_quality_range`` and decoded (in place; nothing is drawn from ``rng`` when the probability is 0)."""
    if cfg.jpeg_prob > 0:
        use = rng.random(batch.shape[0]) < cfg.jpeg_prob
        if use.any():
            idx = np.flatnonzero(use)
            qs = rng.integers(cfg.jpeg_quality_range[0], cfg.jpeg_quality_range[1] + 1, size=len(idx))
            batch[idx] = jpeg(batch[idx], [int(q) for q in qs])
    return batch
