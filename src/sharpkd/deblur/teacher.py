"""Teacher v2: blind deblurring as a model the rest of sharpkd can load, tile and evaluate.

``BlindTeacher`` = blur estimation (:func:`sharpkd.deblur.estimate.estimate_kernel`, one kernel
per photo, from the photo alone; when the free-form estimate comes out round, i.e. the blur looks
like defocus rather than camera shake, a Gaussian whose width is read from the photo's edges,
:func:`sharpkd.deblur.estimate.edge_sigma`, replaces it) + non-blind deconvolution with a learned prior
(:func:`sharpkd.deblur.solve.hqs_deconvolve`, FFDNet as the denoiser). Its only weights are the
denoiser's (converted from KAIR's FFDNet, see ``tools/convert_ffdnet.py``); nothing here was
trained on this project's data yet. The noise level is estimated from the photo too.

For tiled inference the kernel must come from the whole photo, not from each tile: callers use
:meth:`BlindTeacher.estimate` once and :meth:`BlindTeacher.restore` per tile (``Sharpener`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from sharpkd.deblur.denoiser import FFDNet
from sharpkd.deblur.estimate import EstimateConfig, anisotropy, edge_sigma, estimate_kernel, kernel_spread
from sharpkd.deblur.solve import estimate_noise, hqs_deconvolve
from sharpkd.degrade import gaussian_kernel


@dataclass(frozen=True)
class BlindTeacherConfig:
    kernel_size: int = 31  # largest blur the estimator represents (odd)
    iters: int = 8  # HQS iterations
    cg_steps: int = 8  # conjugate-gradient steps of each data step (unknown boundaries)
    lam: float = 0.23  # DPIR's data-step weight
    sigma_max: float = 49 / 255  # first denoiser strength
    min_noise: float = 0.5 / 255  # floor on the estimated noise level
    estimate_side: int = 768  # the kernel is estimated on a central crop at most this large
    isotropic_below: float = 1.5  # free-form estimates rounder than this are taken as Gaussian blur
    intrinsic_sigma: float = 1.5  # edge width taken as the photo's own, removed (in quadrature) from the edge
    # estimate; generous on purpose: deconvolving with a kernel 0.5 px too wide costs about 10 dB,
    # one too narrow only part of the gain
    max_spread: float = 2.0  # a free-form kernel wider than this x the edge width is distrusted (Gaussian used)
    multiple: int = 1  # any input size


@dataclass
class BlurEstimate:
    """What the teacher found in one photo: the kernel (K, K), sum 1, and the noise level in [0, 1]."""

    kernel: np.ndarray
    noise: float


class BlindTeacher(nn.Module):
    """(B, 3, H, W) in [0, 1] -> deblurred, same shape. ``forward`` = ``restore(x, estimate(x))``."""

    def __init__(self, *, config: BlindTeacherConfig | None = None):
        super().__init__()
        self.config = config or BlindTeacherConfig()
        self.denoiser = FFDNet()

    def estimate(self, x: torch.Tensor) -> list[BlurEstimate]:
        """One :class:`BlurEstimate` per image of the batch."""
        cfg = self.config
        out = []
        for img in x:
            side = min(img.shape[-2:])
            ks = min(cfg.kernel_size, (side // 2 - 1) | 1)
            noise = max(estimate_noise(img[None]), cfg.min_noise)
            if ks < 5:  # too small to say anything about its blur: leave it as it is
                k = np.zeros((1, 1))
                k[0, 0] = 1.0
            else:
                k = estimate_kernel(img, EstimateConfig(kernel_size=ks, max_side=cfg.estimate_side))
                width = edge_sigma(img)
                if anisotropy(k) < cfg.isotropic_below or kernel_spread(k) > cfg.max_spread * width:
                    # round blur (defocus, soft optics), or a free-form estimate far wider than the edges
                    # say: the parametric width read from the edges is the more robust estimate
                    sigma = math.sqrt(max(width**2 - cfg.intrinsic_sigma**2, 0.0))
                    k = gaussian_kernel(max(sigma, 0.3), min(ks, 2 * math.ceil(3 * max(sigma, 0.3)) + 1))
            out.append(BlurEstimate(k, noise))
        return out

    def restore(self, x: torch.Tensor, estimates: list[BlurEstimate]) -> torch.Tensor:
        cfg = self.config
        outs = []
        for img, est in zip(x, estimates, strict=True):
            if est.kernel.shape == (1, 1):
                outs.append(img[None].clamp(0, 1))
                continue
            outs.append(hqs_deconvolve(img[None], est.kernel, self._denoise, noise=est.noise, iters=cfg.iters,
                                       sigma_max=cfg.sigma_max, lam=cfg.lam, cg_steps=cfg.cg_steps))
        return torch.cat(outs)

    def macs_per_pixel(self, size: int = 64) -> float:
        """Multiply-accumulates per pixel of the solver's denoiser calls (``iters`` FFDNet passes); the
        FFTs and the kernel estimation are not included."""
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, size, size)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            self.denoiser(x, 0.01)
        return self.config.iters * fc.get_total_flops() / 2 / (size * size)

    def _denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.denoiser(x, sigma)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x, self.estimate(x))
