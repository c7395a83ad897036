"""Blind blur-kernel estimation from a single photo: coarse to fine, under an L0 gradient prior.

The method follows the L0 family of blind deblurring (Xu, Zheng and Jia, "Unnatural L0 sparse
representation for natural image deblurring", CVPR 2013; Pan, Hu, Su and Yang, "Deblurring text
images via L0-regularized intensity and gradient prior", CVPR 2014 / TPAMI 2017; the clean
description of Anger, Facciolo and Delbracio, "Estimating an image's blur kernel using natural
image statistics, and deblurring it", IPOL 2019). On a pyramid of the grey image, from a few
pixels of blur at the coarsest level to the full kernel size, two steps alternate:

1. **Latent image**: ``min_x ||k * x - y||^2 + lam ||grad x||_0``. The L0 prior keeps only strong
   edges and flattens everything else: exactly the structures that carry information about the
   blur. Solved by half-quadratic splitting: the auxiliary gradient field is a hard threshold of
   ``grad x``, the image update is closed form in the Fourier domain; the splitting weight doubles
   from ``2 lam`` to 1e5.
2. **Kernel**: ``min_k ||grad x * k - grad y||^2 + gamma ||k||^2`` over kernels of the working
   support, using only the latent image's most salient edges (Cho and Lee 2009: the strongest
   gradients, enough of them in every orientation; the threshold is lowered a little every step),
   by conjugate gradients with FFT products; then negatives are removed, weights below
   1/20 of the peak zeroed, and the kernel renormalised.

``lam`` shrinks a little at every iteration so finer edges join in as the kernel improves. After
the finest level, small disconnected blobs are removed and the kernel is centred on its centre of
mass (a blind method cannot know a global shift; see BENCHMARK.md version 2).

Boundaries: the grey image is mirrored outwards and faded to its mean (see
:func:`sharpkd.deblur.solve.pad_for_fft`) so the FFT's periodic model does not see a jump at the
frame; the kernel step only uses gradients inside the photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sharpkd.deblur.solve import pad_for_fft, psf2otf


@dataclass(frozen=True)
class EstimateConfig:
    """Settings of :func:`estimate_kernel` (defaults chosen on training photos, never on Kodak24)."""

    kernel_size: int = 31  # odd; the largest blur the estimate can represent
    lam: float = 2e-3  # L0 weight at the start of each level (grey image stretched to [0, 1])
    lam_min: float = 1e-4
    lam_decay: float = 1.0  # lam /= lam_decay after every iteration (1: constant; smaller lam lets the
    # latent keep blurry edges, and the kernel then collapses towards a point)
    iters: int = 5  # alternations per pyramid level
    gamma: float = 0.5  # ridge weight of the kernel update (sum of squared residuals over the photo)
    max_side: int = 768  # larger photos: estimate on a central crop of this size
    min_kernel: int = 5  # kernel size at the coarsest level
    edge_pixels: float = 0.0  # salient-edge selection: keep about this many x K pixels per orientation (0: all)
    kernel_cg_steps: int = 60  # conjugate-gradient steps of each kernel update
    edge_decay: float = 1.1  # the edge threshold falls by this factor every iteration
    prune: bool = True  # drop small disconnected blobs after every kernel step (not only at the end)
    center_levels: bool = True  # re-centre the kernel on its centre of mass between pyramid levels
    margin: float = 0.0  # kernel step ignores gradients within margin x K of the photo's edge (FFT wrap effects)
    snap_gaussian: float = 0.0  # if > 0: replace an estimate within this L1 distance of a Gaussian by that Gaussian
    normalize: bool = True  # stretch the grey image's 1st-99th percentiles to [0, 1] (lam is contrast-relative)
    # (0: off) weight of an L0 dark-channel term in the latent step (Pan, Sun, Pfister and Yang, "Blind image
    # deblurring using dark channel prior", CVPR 2016): blur lifts the darkest pixel of every patch, so the
    # latent image is pushed to keep dark patch minima at zero; ``dark_patch`` is the patch side at full size
    dark_lam: float = 0.0
    dark_patch: int = 35


def to_grey(y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8/float array or (3, H, W) / (1, 3, H, W) tensor in [0, 1] -> (H, W) float64 luma."""
    if isinstance(y, np.ndarray):
        a = y.astype(np.float64)
        if y.dtype == np.uint8:
            a = a / 255.0
        t = torch.from_numpy(a).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a)[None]
    else:
        t = y.detach().double().cpu()
        if t.ndim == 4:
            t = t[0]
    if t.shape[0] == 3:
        t = 0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]
    else:
        t = t[0]
    return t


def central_crop(g: torch.Tensor, side: int) -> torch.Tensor:
    h, w = g.shape
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return g[y0 : y0 + min(h, side), x0 : x0 + min(w, side)]


def resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(img[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0, 0]


def gradient_otfs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    # convolution with [1, -1, 0] centred = x[j + 1] - x[j], the forward difference of grad()
    dx = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    return psf2otf(dx, h, w)[0], psf2otf(dx.T.contiguous(), h, w)[0]


def grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular forward differences, the operators of :func:`gradient_otfs`."""
    return torch.roll(x, -1, 1) - x, torch.roll(x, -1, 0) - x


def l0_latent(y: torch.Tensor, otf: torch.Tensor, lam: float, dxo: torch.Tensor, dyo: torch.Tensor,
              beta_max: float = 1e5, *, start: torch.Tensor | None = None, target: torch.Tensor | None = None,
              mu: float = 0.0) -> torch.Tensor:
    """``argmin_x ||k * x - y||^2 + lam ||grad x||_0`` by half-quadratic splitting (Xu et al. 2011), from
    ``start`` (default ``y``); with ``target``, ``mu ||x - target||^2`` is added (:func:`l0_dark_latent`)."""
    h, w = y.shape
    fy = torch.conj(otf) * torch.fft.rfft2(y)
    k2 = otf.abs() ** 2
    d2 = dxo.abs() ** 2 + dyo.abs() ** 2
    if target is not None:
        fy, k2 = fy + mu * torch.fft.rfft2(target), k2 + mu
    x = y if start is None else start
    beta = 2 * lam
    while beta < beta_max:
        gx, gy = grad(x)
        keep = (gx**2 + gy**2) >= lam / beta
        gx, gy = gx * keep, gy * keep
        num = fy + beta * (torch.conj(dxo) * torch.fft.rfft2(gx) + torch.conj(dyo) * torch.fft.rfft2(gy))
        x = torch.fft.irfft2(num / (k2 + beta * d2), s=(h, w))
        beta *= 2
    return x


def dark_pixels(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Where ``x`` is the minimum of some ``patch`` x ``patch`` window (its dark channel's pixels): the
    grey-level opening (erosion, then dilation, same window) equals the image exactly there. A square
    window's erosion and dilation are separable: a 1-D pass along the rows, then one along the columns."""

    def dilate(a: torch.Tensor) -> torch.Tensor:
        a = F.max_pool1d(a[:, None], patch, stride=1, padding=patch // 2)[:, 0]  # along each row
        return F.max_pool1d(a.T[:, None], patch, stride=1, padding=patch // 2)[:, 0].T  # along each column

    opened = dilate(-dilate(-x))
    return opened >= x


def l0_dark_latent(y: torch.Tensor, otf: torch.Tensor, lam: float, dark_lam: float, patch: int,
                   dxo: torch.Tensor, dyo: torch.Tensor, beta_max: float = 1e5, outer: int = 4) -> torch.Tensor:
    """:func:`l0_latent` with an L0 term on the dark channel as well (Pan et al. 2016): ``outer`` times,
    the dark-channel pixels whose value is below ``sqrt(dark_lam / mu)`` are set to zero in a target image
    ``u`` (the others keep their value), and the gradient splitting runs again from the last image with
    ``mu ||x - u||^2`` added; ``mu`` starts at ``dark_lam`` over the Otsu threshold of ``x^2`` and doubles
    every time."""
    from skimage.filters import threshold_otsu

    x = y
    sq = (y.clamp(0, 1) ** 2).numpy()
    mu = dark_lam / max(float(threshold_otsu(sq)) if float(sq.max()) > float(sq.min()) else 0.5, 1e-3)
    for _ in range(outer):
        u = torch.where(dark_pixels(x, patch) & (x**2 < dark_lam / mu), torch.zeros_like(x), x)
        x = l0_latent(y, otf, lam, dxo, dyo, beta_max, start=x, target=u, mu=mu)
        mu *= 2
    return x


def salient_edges(x: torch.Tensor, inside: torch.Tensor, count: int,
                   threshold: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cho and Lee's (SIGGRAPH Asia 2009) edge selection: keep only the strongest gradients of the
    latent image, at least ``count`` pixels in each of four orientation bins (so every direction of
    the blur is constrained). Returns the thresholded gradients and the squared-magnitude threshold."""
    gx, gy = grad(x)
    mag = gx**2 + gy**2
    if threshold is None:
        angle = torch.atan2(gy, gx) % math.pi
        bins = (angle / (math.pi / 4)).long().clamp(0, 3)
        per_bin = []
        for b in range(4):
            v = mag[(bins == b) & (inside > 0)]
            if v.numel():
                per_bin.append(float(torch.topk(v, min(count, v.numel())).values[-1]))
        threshold = min(per_bin) if per_bin else 0.0
    keep = mag >= threshold
    while not bool(keep.any()) and threshold > 0:
        threshold *= 0.81
        keep = mag >= threshold
    return gx * keep, gy * keep, threshold


def kernel_step(gxs: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, k0: torch.Tensor, gamma: float,
                inside: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """``argmin_k sum_d ||(M d_x) * k - M d y||^2 + gamma ||k||^2`` over a (K, K) support, by conjugate
    gradients, given the latent image's (selected) gradients ``gxs``; M masks the photo (gradients
    in the padded band are set to zero). Returns the raw (signed) kernel."""
    h, w = y.shape
    ks = k0.shape[0]
    # Leaving the band out of both sides of the fit (gradients zeroed there) makes the normal operator a
    # convolution of the kernel with the gradients' autocorrelation, of which only the K x K centre is
    # kept. That needs the autocorrelation at shifts up to K - 1 only: one (2K-1)^2 window, computed
    # once, so a CG step is a small convolution rather than two photo-sized FFTs.
    fxs = [torch.fft.rfft2(g * inside) for g in gxs]
    fys = [torch.fft.rfft2(g * inside) for g in grad(y)]
    auto = torch.roll(torch.fft.irfft2(sum(f.abs() ** 2 for f in fxs), s=(h, w)), (ks - 1, ks - 1), (0, 1))
    window = auto[: 2 * ks - 1, : 2 * ks - 1][None, None]

    def to_kernel(full: torch.Tensor) -> torch.Tensor:  # adjoint of placing a kernel at the origin
        full = torch.roll(full, shifts=(ks // 2, ks // 2), dims=(0, 1))
        return full[:ks, :ks]

    def apply(k: torch.Tensor) -> torch.Tensor:
        return F.conv2d(window, k.flip(0, 1)[None, None])[0, 0] + gamma * k

    b = to_kernel(torch.fft.irfft2(sum(torch.conj(fx) * fy for fx, fy in zip(fxs, fys, strict=True)), s=(h, w)))
    k = k0.clone()
    r = b - apply(k)
    d = r.clone()
    rs = (r * r).sum()
    for _ in range(steps):
        if rs < 1e-18:
            break
        ad = apply(d)
        a = rs / (d * ad).sum().clamp_min(1e-30)
        k = k + a * d
        r = r - a * ad
        rs_new = (r * r).sum()
        d = r + rs_new / rs * d
        rs = rs_new
    return k


def clean_kernel(k: torch.Tensor, rel_threshold: float = 0.05) -> torch.Tensor:
    k = k.clamp_min(0)
    if float(k.max()) <= 0:
        out = torch.zeros_like(k)
        out[k.shape[0] // 2, k.shape[1] // 2] = 1
        return out
    k = torch.where(k < k.max() * rel_threshold, torch.zeros_like(k), k)
    return k / k.sum()


def remove_small_blobs(k: np.ndarray, min_mass: float = 0.1) -> np.ndarray:
    """Drop 8-connected components of the kernel holding less than ``min_mass`` of its weight."""
    from skimage.measure import label

    lab = label(k > 0, connectivity=2)
    out = k.copy()
    for n in range(1, lab.max() + 1):
        if k[lab == n].sum() < min_mass:
            out[lab == n] = 0
    if out.sum() <= 0:
        return k
    return out / out.sum()


def resize_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(k[None, None], size=(size, size), mode="bilinear", align_corners=True)[0, 0]
    return clean_kernel(out, 0.0)


def contrast_stretch(grey: torch.Tensor) -> tuple[float, float]:
    """(offset, scale) that map the grey image's 1st-99th percentiles to [0, 1] (``lam`` is relative
    to contrast)."""
    lo, hi = torch.quantile(grey.flatten()[:: max(1, grey.numel() // 100_000)],
                            torch.tensor([0.01, 0.99], dtype=grey.dtype))
    return float(lo), max(float(hi - lo), 1e-3)


def grey_crop(image: torch.Tensor | np.ndarray, cfg: EstimateConfig) -> tuple[torch.Tensor, float, float]:
    """The grey central crop (at most ``cfg.max_side``) that estimates work on, stretched to [0, 1] when
    ``cfg.normalize``, and the (offset, scale) of that stretch ((0, 1) without it)."""
    grey = central_crop(to_grey(image), cfg.max_side)
    lo, scale = contrast_stretch(grey) if cfg.normalize else (0.0, 1.0)
    return (grey - lo) / scale if cfg.normalize else grey, lo, scale


def photo_mask(padded_shape: tuple[int, int], image_shape: tuple[int, int], pad: int, margin: int) -> torch.Tensor:
    """1 on the photo inside a padded array (less ``margin`` more pixels on every side, unless the photo
    is too small for that), 0 on the band the FFT padding added: the kernel step fits only there."""
    hp, wp = padded_shape
    m = pad + 1 + margin
    if min(image_shape) - 2 * (m - pad) < 16:  # small image at a coarse level: keep what there is
        m = pad + 1
    inside = torch.zeros(hp, wp, dtype=torch.float64)
    h, w = image_shape
    inside[m : h + 2 * pad - m, m : w + 2 * pad - m] = 1  # the photo sits ``pad`` from the top left
    return inside


def estimate_kernel(image: torch.Tensor | np.ndarray, config: EstimateConfig | None = None,
                    *, kernel_size: int | None = None) -> np.ndarray:
    """Estimate the blur kernel of a photo. ``image``: (H, W, 3) uint8/float or (3, H, W) /
    (1, 3, H, W) tensor in [0, 1]. Returns a (K, K) float64 kernel, sum 1, centred on its centre of
    mass, K = ``kernel_size`` (default ``config.kernel_size``)."""
    from sharpkd.degrade import center_kernel

    cfg = config or EstimateConfig()
    ks_final = kernel_size or cfg.kernel_size
    if ks_final % 2 == 0 or ks_final < 3:
        raise ValueError(f"kernel_size must be odd and >= 3, got {ks_final}")
    grey = grey_crop(image, cfg)[0]
    h0, w0 = grey.shape
    if min(h0, w0) < 2 * ks_final:
        raise ValueError(f"image {h0}x{w0} too small to estimate a {ks_final}x{ks_final} kernel")
    levels = max(1, int(math.ceil(math.log(ks_final / cfg.min_kernel) / math.log(math.sqrt(2)))) + 1)
    k = None
    for level in range(levels):
        scale = math.sqrt(0.5) ** (levels - 1 - level)
        ks = ks_final if level == levels - 1 else max(3, int(round(ks_final * scale)) | 1)
        y = grey if scale == 1 else resize(grey, max(8, round(h0 * scale)), max(8, round(w0 * scale)))
        if k is None:
            k = torch.zeros(ks, ks, dtype=torch.float64)
            c = ks // 2
            k[c, c - 1 : c + 1] = 0.5  # a tiny blur: the L0 step needs something to deblur
        else:
            if cfg.center_levels:
                k = torch.from_numpy(center_kernel(k.numpy()))
            k = resize_kernel(k, ks)
        pad = ks
        yp = pad_for_fft(y[None, None], pad)[0, 0]
        hp, wp = yp.shape
        inside = photo_mask((hp, wp), tuple(y.shape), pad, int(cfg.margin * ks))
        dxo, dyo = gradient_otfs(hp, wp)
        lam, threshold = cfg.lam, None
        for _ in range(cfg.iters):
            if cfg.dark_lam > 0:
                patch = max(3, int(round(cfg.dark_patch * scale)) | 1)
                x = l0_dark_latent(yp, psf2otf(k, hp, wp)[0], lam, cfg.dark_lam, patch, dxo, dyo)
            else:
                x = l0_latent(yp, psf2otf(k, hp, wp)[0], lam, dxo, dyo)
            if cfg.edge_pixels > 0:
                gx, gy, threshold = salient_edges(x, inside, int(cfg.edge_pixels * ks), threshold)
                threshold /= cfg.edge_decay
            else:
                gx, gy = grad(x)
            k = clean_kernel(kernel_step((gx, gy), yp, k, cfg.gamma, inside, steps=cfg.kernel_cg_steps))
            if cfg.prune:
                k = torch.from_numpy(remove_small_blobs(k.numpy()))
            lam = max(lam / cfg.lam_decay, cfg.lam_min)
    k_np = center_kernel(remove_small_blobs(k.numpy()))
    if cfg.snap_gaussian > 0:
        dist, g = nearest_gaussian(k_np)
        if dist < cfg.snap_gaussian:
            return g
    return k_np


def edge_sigma(image: torch.Tensor | np.ndarray, sigma0: float = 1.0) -> float:
    """Width of a Gaussian blur from the photo's edges, by the re-blur gradient ratio of Zhuo and Sim
    ("Defocus map estimation from a single image", Pattern Recognition 2011): at a step edge blurred
    by sigma, re-blurring by sigma0 lowers the gradient peak by R = sqrt(sigma^2 + sigma0^2) / sigma,
    so sigma = sigma0 / sqrt(R^2 - 1). Measured at Canny edges; the median over them is returned."""
    from scipy.ndimage import gaussian_filter, sobel
    from skimage.feature import canny

    g = central_crop(to_grey(image), 768).numpy()
    lo, hi = np.percentile(g, [1, 99])
    g = (g - lo) / max(hi - lo, 1e-3)

    def grad_mag(a: np.ndarray) -> np.ndarray:
        return np.hypot(sobel(a, 0), sobel(a, 1))

    edges = canny(g, sigma=2.0, low_threshold=0.1, high_threshold=0.2)
    edges[:8], edges[-8:], edges[:, :8], edges[:, -8:] = False, False, False, False
    if edges.sum() < 20:
        return 0.0
    r = grad_mag(g)[edges] / np.maximum(grad_mag(gaussian_filter(g, sigma0))[edges], 1e-8)
    r = r[r > 1.0 + 1e-3]
    if r.size < 20:
        return 0.0
    return float(np.median(sigma0 / np.sqrt(r**2 - 1)))


def fit_gaussian_width(blurred: torch.Tensor | np.ndarray, latent: torch.Tensor | np.ndarray,
                       sigmas: np.ndarray | None = None, side: int = 512) -> tuple[float, float]:
    """The Gaussian width that, applied to ``latent`` (a sharper estimate of the same photo, e.g. the
    network teacher's output), best reproduces ``blurred``: least squares over the grey gradients of a
    central crop, sigma on a 0.05 px grid. Returns (width, RMS residual of those gradients, in [0, 1]
    units). Where ``latent`` still holds some of the blur the width is short of the truth (in
    quadrature); where the blur is not round, the residual stays well above the noise's."""
    from scipy.ndimage import convolve1d

    from sharpkd.degrade import gaussian_profile

    y = central_crop(to_grey(blurred), side).numpy().astype(np.float64)
    x = central_crop(to_grey(latent), side).numpy().astype(np.float64)
    m = 12  # the border, where reflections differ, is left out
    gy = [np.diff(y, axis=a)[m:-m, m:-m] for a in (0, 1)]
    best = (np.inf, 0.0)
    for s in sigmas if sigmas is not None else np.arange(0.3, 4.0 + 1e-9, 0.05):
        # degrade.gaussian_kernel(s) is the outer product of this normalised profile with itself, so two
        # 1-D passes give the same blur as the 2-D kernel, at a fraction of the cost
        g1 = gaussian_profile(float(s))
        g1 /= g1.sum()
        b = convolve1d(convolve1d(x, g1, axis=0, mode="reflect"), g1, axis=1, mode="reflect")
        err = sum(float(((np.diff(b, axis=a)[m:-m, m:-m] - g) ** 2).mean()) for a, g in zip((0, 1), gy, strict=True))
        if err < best[0]:
            best = (err, float(s))
    return best[1], float(np.sqrt(best[0] / 2))


def kernel_spread(k: np.ndarray) -> float:
    """RMS radius of a kernel per axis, sqrt(trace(cov) / 2): sigma for a Gaussian."""
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]].astype(np.float64)
    cy, cx = (k * yy).sum(), (k * xx).sum()
    return float(np.sqrt((k * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / 2))


def anisotropy(k: np.ndarray) -> float:
    """Ratio of the principal standard deviations of a kernel (1: isotropic, large: a line)."""
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]].astype(np.float64)
    cy, cx = (k * yy).sum(), (k * xx).sum()
    cov = np.array([[(k * (yy - cy) ** 2).sum(), (k * (yy - cy) * (xx - cx)).sum()],
                    [(k * (yy - cy) * (xx - cx)).sum(), (k * (xx - cx) ** 2).sum()]])
    ev = np.linalg.eigvalsh(cov)
    return float(np.sqrt(max(ev[1], 1e-12) / max(ev[0], 1e-12)))


def nearest_gaussian(k: np.ndarray, sigmas: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The isotropic Gaussian (same array size, sigma on a 0.1 px grid) closest to ``k`` in L1, and that
    distance (0..2). Defocus and soft optics give near-Gaussian blurs, whose free-form estimates are
    noisy; a parametric fit is the more robust estimate for them (camera shake stays free-form)."""
    from sharpkd.degrade import gaussian_kernel

    size = k.shape[0]
    best = (np.inf, k)
    for s in sigmas if sigmas is not None else np.arange(0.3, size / 6 + 1e-9, 0.1):
        g = gaussian_kernel(float(s), size)
        d = float(np.abs(k - g).sum())
        if d < best[0]:
            best = (d, g)
    return best


def refine_kernel(blurred: torch.Tensor | np.ndarray, latent: torch.Tensor | np.ndarray, kernel: np.ndarray,
                  config: EstimateConfig | None = None, *, threshold: float = 0.05,
                  min_mass: float = 0.1) -> np.ndarray:
    """One kernel update at full resolution against a better latent image than the L0 cartoon, e.g. the
    solver's output with the current estimate (``latent``, same size as ``blurred``). The deconvolved
    photo has the true edges' positions and contrasts, so a least-squares fit of its gradients to the
    blurred photo's tightens a kernel that the L0 stage left too thick. Returns a kernel like
    :func:`estimate_kernel`'s (same size, sum 1, centred). The least-squares kernel is cleaned as the
    estimator cleans its kernels: values below ``threshold`` x its peak are dropped, then 8-connected parts
    holding less than ``min_mass`` of the weight (:func:`remove_small_blobs`; 0: none)."""
    from sharpkd.degrade import center_kernel

    cfg = config or EstimateConfig()
    y, lo, scale = grey_crop(blurred, cfg)
    x = (central_crop(to_grey(latent), cfg.max_side) - lo) / scale  # the same stretch for both, from the photo
    ks = kernel.shape[0]
    yp = pad_for_fft(y[None, None], ks)[0, 0]
    xp = pad_for_fft(x[None, None], ks)[0, 0]
    inside = photo_mask(tuple(yp.shape), tuple(y.shape), ks, int(cfg.margin * ks))
    gx, gy = grad(xp)
    k0 = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float64))
    k = clean_kernel(kernel_step((gx, gy), yp, k0, cfg.gamma, inside, steps=cfg.kernel_cg_steps), threshold)
    return center_kernel(remove_small_blobs(k.numpy(), min_mass) if min_mass > 0 else k.numpy())


def reblur_residual(blurred: torch.Tensor | np.ndarray, kernel: np.ndarray, config: EstimateConfig | None = None,
                    *, pad: int | None = None) -> float:
    """How well a kernel explains the photo: the L0 latent image of the (contrast-stretched, grey) central
    crop under ``kernel`` (:func:`l0_latent`, weight ``config.lam``), blurred again by the kernel; the mean
    squared difference to the photo inside the frame. Of two estimates of one photo, the one with the smaller
    residual is usually the better kernel: a wrong kernel leaves structure its cartoon cannot reproduce.
    ``pad`` (default: the kernel's size) lets kernels of different sizes be compared on the same band."""
    cfg = config or EstimateConfig()
    y = grey_crop(blurred, cfg)[0]
    pad = pad or kernel.shape[0]
    yp = pad_for_fft(y[None, None], pad)[0, 0]
    hp, wp = yp.shape
    dxo, dyo = gradient_otfs(hp, wp)
    otf = psf2otf(torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float64)), hp, wp)[0]
    x = l0_latent(yp, otf, cfg.lam, dxo, dyo)
    reblurred = torch.fft.irfft2(otf * torch.fft.rfft2(x), s=(hp, wp))
    h, w = y.shape
    return float(((reblurred - yp)[pad : pad + h, pad : pad + w] ** 2).mean())


def kernel_match(a: np.ndarray, b: np.ndarray) -> float:
    """Shape agreement of two kernels: the peak of their normalised cross-correlation over all shifts
    (1: the same shape; sizes may differ)."""
    from scipy.signal import correlate

    c = correlate(np.asarray(a, np.float64), np.asarray(b, np.float64), mode="full")
    return float(c.max() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-30))
