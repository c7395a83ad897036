"""Non-blind deconvolution with a learned prior: half-quadratic splitting (plug-and-play).

Follows DPIR (Zhang, Li, Zuo, Zhang, Van Gool and Timofte, "Plug-and-play image restoration with
deep denoiser prior", IEEE TPAMI 2021). For ``y = k * x + n`` the energy
``||k * x - y||^2 / (2 sigma_n^2) + prior(x)`` is split with an auxiliary image ``z`` and a penalty
``mu / 2 ||x - z||^2`` whose weight grows over the iterations. Two steps alternate:

* data step, closed form in the Fourier domain (circular convolution):
  ``x = F^-1[(conj(K) Y + alpha F(z)) / (|K|^2 + alpha)]`` with ``alpha = lam * sigma_n^2 / sigma_t^2``;
* prior step: ``z = denoise(x, sigma_t)``, a denoiser at strength ``sigma_t``, which falls
  geometrically from ``sigma_max`` (49/255, strong smoothing while the estimate is poor) to the
  noise level of the photo.

Boundaries: the FFT treats the image as periodic, which a photo is not. Without care the
discontinuity between opposite borders, and any mismatch between a padded band and the blur
model, rings through the whole result along the blur direction (camera-shake kernels have
near-zeros in their spectrum). The solver therefore works on a domain larger than the photo by
the kernel size on every side and treats the band outside the photo as unobserved (as in Almeida
and Figueiredo, "Deconvolving images with unknown boundaries", IEEE TIP 2013): the data step
solves ``min ||M (k * x) - y||^2 + alpha ||x - z||^2`` with M the photo's mask, by a few
conjugate-gradient steps preconditioned with the circular (FFT) solution.

All functions work on (B, C, H, W) float tensors in [0, 1]; kernels are (K, K) or (B, K, K),
odd K, summing to 1, convolution (not correlation) convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def psf2otf(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Frequency response (``rfft2``, shape (B, h, w//2+1)) of (B, K, K) kernels placed with their
    centre at the origin of an h x w periodic grid."""
    if kernel.ndim == 2:
        kernel = kernel[None]
    b, kh, kw = kernel.shape
    pad = torch.zeros(b, h, w, dtype=kernel.dtype, device=kernel.device)
    pad[:, :kh, :kw] = kernel
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(1, 2))
    return torch.fft.rfft2(pad)


def symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad the last two dimensions by mirroring with the edge repeated (``d c b a | a b c d``), as
    scipy.ndimage's "reflect" mode does; works for any image size."""

    def index(n: int) -> torch.Tensor:
        i = torch.arange(-p, n + p, device=x.device) % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i)

    return x[..., index(x.shape[-2]), :][..., index(x.shape[-1])]


def pad_for_fft(y: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror ``y`` outwards by ``pad`` pixels (``d c b a | a b c d``) and fade the outer half of the
    band towards each image's mean, so the padded image wraps around without a jump."""
    h, w = y.shape[-2:]
    yp = symmetric_pad(y, pad)
    if pad < 2:
        return yp

    def ramp(n: int) -> torch.Tensor:  # 1 inside, falling as a raised cosine over the outer pad/2
        d = torch.minimum(torch.arange(n, device=y.device), torch.arange(n, device=y.device).flip(0)).float()
        t = (d / (pad / 2)).clamp(0, 1)
        return 0.5 - 0.5 * torch.cos(math.pi * t)

    wgt = (ramp(h + 2 * pad)[:, None] * ramp(w + 2 * pad)[None, :]).to(y.dtype)
    mean = y.mean(dim=(-2, -1), keepdim=True)
    return mean + (yp - mean) * wgt


def dpir_schedule(noise: float, iters: int, sigma_max: float = 49 / 255,
                  lam: float = 0.23) -> list[tuple[float, float]]:
    """(denoiser strength sigma_t, data-step weight alpha_t) for each iteration, DPIR's schedule."""
    noise = max(float(noise), 1e-4)
    sigmas = np.geomspace(max(sigma_max, noise), noise, iters)
    return [(float(s), float(lam * noise**2 / s**2)) for s in sigmas]


@torch.no_grad()
def hqs_deconvolve(y: torch.Tensor, kernel: torch.Tensor | np.ndarray, denoiser: Denoiser, *, noise: float = 1 / 255,
                   iters: int = 8, sigma_max: float = 49 / 255, lam: float = 0.23, pad: int | None = None,
                   cg_steps: int = 8, geo_ensemble: bool = False) -> torch.Tensor:
    """Deblur ``y`` (B, C, H, W) blurred by ``kernel``; ``noise``: the noise standard deviation in [0, 1]
    units (estimate it with :func:`estimate_noise` when unknown). Returns (B, C, H, W), clamped.
    ``geo_ensemble``: see :func:`hqs_unrolled`."""
    return hqs_unrolled(y, kernel, denoiser, noise=noise, iters=iters, sigma_max=sigma_max, lam=lam, pad=pad,
                        cg_steps=cg_steps, geo_ensemble=geo_ensemble)


def hqs_unrolled(y: torch.Tensor, kernel: torch.Tensor | np.ndarray, denoiser: Denoiser, *, noise: float = 1 / 255,
                 iters: int = 8, sigma_max: float = 49 / 255, lam: float = 0.23, pad: int | None = None,
                 cg_steps: int = 8, geo_ensemble: bool = False) -> torch.Tensor:
    """:func:`hqs_deconvolve` with gradients: every step is differentiable, so the denoiser can be
    trained through the whole unrolled solver (:mod:`sharpkd.deblur.finetune`).

    ``geo_ensemble``: iteration i hands the denoiser the image in the i-th of the eight orientations
    (rotations by 90 degrees, with and without a mirror) and turns its answer back, DPIR's periodical
    geometric self-ensemble: the denoiser's own directional artefacts do not pile up over the
    iterations, at no extra cost."""
    k = torch.as_tensor(kernel, dtype=torch.float32, device=y.device)
    if k.ndim == 2:
        k = k[None]
    if k.shape[-1] % 2 == 0 or k.shape[-2] % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {tuple(k.shape[-2:])}")
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    h, w = y.shape[-2:]
    p = pad if pad is not None else max(k.shape[-1], 16)
    # FFT-friendly sizes: the band beyond the mirrored border is outside the mask like the border itself,
    # so it changes the result only at rounding level while every FFT of the solver gets faster
    yp = pad_to_fast_grid(y.float(), p)
    hp, wp = yp.shape[-2:]
    otf = psf2otf(k, hp, wp)[:, None]  # (B or 1, 1, hp, wp//2+1)
    k2 = otf.abs() ** 2
    inside = torch.zeros(1, 1, hp, wp, dtype=y.dtype, device=y.device)
    inside[..., p : p + h, p : p + w] = 1

    def conv(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(f * torch.fft.rfft2(t), s=(hp, wp))

    kty = conv(yp * inside, torch.conj(otf))  # K^T M y
    x, z = None, yp
    for i, (sigma, alpha) in enumerate(dpir_schedule(noise, iters, sigma_max, lam)):
        if x is None:  # first iteration: the circular solution for the mirrored photo, then refine
            x = torch.fft.irfft2((torch.conj(otf) * torch.fft.rfft2(yp) + alpha * torch.fft.rfft2(z)) / (k2 + alpha),
                                 s=(hp, wp))
        x = masked_data_step(x, z, kty, otf, k2, inside, alpha, cg_steps)
        mode = i % 8 if geo_ensemble else 0
        z = orient(denoiser(orient(x.clamp(-0.5, 1.5), mode), sigma), mode, inverse=True).clamp(0, 1)
    return z[..., p : p + h, p : p + w].contiguous()


def orient(t: torch.Tensor, mode: int, inverse: bool = False) -> torch.Tensor:
    """The ``mode``-th of the eight orientations of the last two dimensions (0-3: rotations by
    ``mode`` x 90 degrees; 4-7: the same after a left-right mirror); ``inverse`` turns it back."""
    turns, mirror = mode % 4, mode >= 4
    if not inverse:
        t = t.flip(-1) if mirror else t
        return torch.rot90(t, turns, dims=(-2, -1)) if turns else t
    t = torch.rot90(t, -turns, dims=(-2, -1)) if turns else t
    return t.flip(-1) if mirror else t


def masked_data_step(x: torch.Tensor, z: torch.Tensor, kty: torch.Tensor, otf: torch.Tensor, k2: torch.Tensor,
                     inside: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
    """Approximately solve ``(K^T M K + alpha) x = K^T M y + alpha z`` by preconditioned conjugate
    gradients (``steps`` of them), warm-started from ``x``. M masks the photo's pixels inside the padded domain; the
    preconditioner ``(K^T K + alpha)^-1`` is the unmasked (circular) solution, exact away from the
    border, so a few steps suffice."""
    hp, wp = x.shape[-2:]

    def conv(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(f * torch.fft.rfft2(t), s=(hp, wp))

    def apply_a(t: torch.Tensor) -> torch.Tensor:
        return conv(conv(t, otf) * inside, torch.conj(otf)) + alpha * t

    def precond(t: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(t) / (k2 + alpha), s=(hp, wp))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    b = kty + alpha * z
    r = b - apply_a(x)
    s = precond(r)
    d = s
    rs = dot(r, s)
    for _ in range(steps):
        ad = apply_a(d)
        step = rs / dot(d, ad).clamp_min(1e-20)
        x = x + step * d
        r = r - step * ad
        s = precond(r)
        rs_new = dot(r, s)
        d = s + (rs_new / rs.clamp_min(1e-20)) * d
        rs = rs_new
    return x


def soften(x: torch.Tensor, width: float) -> torch.Tensor:
    """(B, C, H, W) blurred by a Gaussian of standard deviation ``width`` px (scipy.ndimage's, borders
    mirrored); ``width`` 0 returns ``x`` itself."""
    if width <= 0:
        return x
    from scipy.ndimage import gaussian_filter

    arr = x.detach().cpu().double().numpy()
    out = gaussian_filter(arr, (0, 0, width, width), mode="reflect")
    return torch.from_numpy(out).to(dtype=x.dtype, device=x.device)


def estimate_noise(y: torch.Tensor) -> float:
    """Noise standard deviation of a (B, C, H, W) image in [0, 1] units, by scikit-image's wavelet
    estimator (Donoho's MAD of the finest diagonal coefficients), averaged over channels and images."""
    from skimage.restoration import estimate_sigma

    arr = y.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return float(np.mean([estimate_sigma(a, channel_axis=-1, average_sigmas=True) for a in arr]))


def wiener_filter(kernel: torch.Tensor | np.ndarray, hp: int, wp: int, balance: float = 3e-3) -> torch.Tensor:
    """The (1, 1, hp, wp // 2 + 1) frequency response ``conj(K) / (|K|^2 + balance |L|^2)`` of the
    Laplacian-regularised Wiener filter for ``kernel`` on an hp x wp (padded) grid."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    if k.ndim == 2:
        k = k[None]
    otf = psf2otf(k / k.sum(dim=(-2, -1), keepdim=True), hp, wp)[:, None]
    lap = torch.zeros(hp, wp)
    lap[0, 0], lap[0, 1], lap[1, 0], lap[0, -1], lap[-1, 0] = 4, -1, -1, -1, -1
    l2 = torch.fft.rfft2(lap).abs() ** 2
    return torch.conj(otf) / (otf.abs() ** 2 + balance * l2)


def wiener_grid(h: int, w: int, kernel_size: int, pad: int | None = None) -> tuple[int, int, int]:
    """(border, grid height, grid width) of :func:`wiener_deconvolve` for an h x w image: the image
    mirrored by the border (at least the kernel's size), then extended to the next sizes whose FFTs
    are fast (factors 2, 3 and 5): for a 640x480 frame and a 31-px kernel, 576 x 720 rather than
    542 x 702 (542 = 2 x 271); ``benchmarks/guide_speed.py`` times both."""
    from scipy.fft import next_fast_len

    p = pad if pad is not None else max(int(kernel_size), 16)
    return p, next_fast_len(h + 2 * p, real=True), next_fast_len(w + 2 * p, real=True)


def pad_to_fast_grid(y: torch.Tensor, pad: int) -> torch.Tensor:
    """:func:`pad_for_fft`, then extended at the bottom and right to the next FFT-friendly sizes
    (:func:`wiener_grid`'s) with the image's mean, the value the faded border ends on, so the wrap-around
    stays smooth. The image keeps its place, ``pad`` pixels from the top left corner."""
    from scipy.fft import next_fast_len

    yp = pad_for_fft(y, pad)
    hp, wp = yp.shape[-2:]
    mean = y.mean(dim=(-2, -1), keepdim=True)
    return mean + F.pad(yp - mean, (0, next_fast_len(wp, real=True) - wp, 0, next_fast_len(hp, real=True) - hp))


def wiener_deconvolve(y: torch.Tensor, kernel: torch.Tensor | np.ndarray, balance: float = 3e-3,
                      pad: int | None = None, filt: torch.Tensor | None = None) -> torch.Tensor:
    """Linear baseline: Wiener deconvolution with a Laplacian regulariser, same padding as above.
    ``filt``: the :func:`wiener_filter` for this kernel and padded size, when the caller keeps it
    (video frames of one size deconvolved with one kernel)."""
    return _wiener(y.float(), torch.as_tensor(kernel, dtype=torch.float32), balance, pad, filt).clamp(0, 1).contiguous()


def _wiener(y: torch.Tensor, k: torch.Tensor, balance: float, pad: int | None = None,
            filt: torch.Tensor | None = None) -> torch.Tensor:
    """The Wiener deconvolution of :func:`wiener_deconvolve`, unclamped (``y`` may be signed)."""
    h, w = y.shape[-2:]
    p, hp, wp = wiener_grid(h, w, k.shape[-1], pad)
    yp = pad_to_fast_grid(y, p)
    if filt is None:
        filt = wiener_filter(k, hp, wp, balance)
    x = torch.fft.irfft2(filt.to(y.device) * torch.fft.rfft2(yp), s=(hp, wp))
    return x[..., p : p + h, p : p + w]


def fft_blur(img: torch.Tensor, kernel: torch.Tensor | np.ndarray) -> torch.Tensor:
    """:func:`sharpkd.degrade.blur` (reflected borders, true convolution; one (K, K) kernel or one per image)
    computed with FFTs: the image reflected by K // 2, extended to FFT-friendly sizes, multiplied by the kernel's
    response, cropped back. The crop reads only the reflected image, never the wrapped-around extension, so the
    result equals the spatial convolution to float rounding, at a cost that does not grow with the kernel
    (a 31x31 kernel on a 640x480 frame: ``benchmarks/guide_speed.py --refine``). Kernels too large for a
    reflected border, and even sizes, take :func:`sharpkd.degrade.blur` itself."""
    from scipy.fft import next_fast_len

    from sharpkd.degrade import blur

    k = torch.as_tensor(kernel, dtype=torch.float32, device=img.device)
    p = k.shape[-1] // 2
    h, w = img.shape[-2:]
    if k.shape[-1] % 2 == 0 or k.shape[-2] != k.shape[-1] or p >= min(h, w):
        return blur(img.float(), k)
    xp = F.pad(img.float(), (p, p, p, p), mode="reflect")
    hp, wp = next_fast_len(h + 2 * p, real=True), next_fast_len(w + 2 * p, real=True)
    otf = psf2otf(k if k.ndim == 3 else k[None], hp, wp)[:, None]  # (1 or B, 1, hp, wp // 2 + 1)
    out = torch.fft.irfft2(torch.fft.rfft2(xp, s=(hp, wp)) * otf, s=(hp, wp))
    return out[..., p : p + h, p : p + w]


def wiener_refine(x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor | np.ndarray, balance: float = 3e-3,
                  damping: float = 1.0) -> torch.Tensor:
    """A linear correction of an estimate ``x`` of the sharp image behind ``y``: ``x`` plus ``damping`` x the
    Laplacian-regularised Wiener deconvolution of the data residual ``y - kernel * x`` (as
    :func:`wiener_deconvolve` makes it). Where ``x`` already explains ``y`` it is returned unchanged. The
    blur of ``x`` is :func:`fft_blur`, the benchmark's blur computed with FFTs."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    r = y.float() - fft_blur(x.float(), k)
    return (x.float() + damping * _wiener(r, k, balance)).clamp(0, 1).contiguous()
