"""Image quality metrics.

* ``psnr``: 10 log10(data_range^2 / MSE) over all pixels and channels, no border crop.
* ``ssim``: scikit-image's SSIM with the settings of Wang et al. (2004) (Gaussian window sigma=1.5,
  population covariance), on H x W x C arrays, as the benchmark protocol specifies.
* ``sharpness``: a no-reference measure, the variance of the Laplacian of the luma.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 255.0) -> float:
    """PSNR in dB of two arrays of the same shape; ``inf`` when they are equal."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().double().numpy()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def batch_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of (B, C, H, W) tensors in [0, 1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two H x W x C (or H x W) arrays with the Wang et al. (2004) settings."""
    return float(structural_similarity(
        np.asarray(a, np.float64), np.asarray(b, np.float64), channel_axis=2 if a.ndim == 3 else None,
        data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def sharpness(img: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma of an H x W x 3 image in [0, 1]."""
    from scipy.ndimage import laplace

    x = np.asarray(img, np.float64)
    y = x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x
    return float(laplace(y, mode="reflect").var())
