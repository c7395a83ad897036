"""Teacher v2: blind deblurring as a model the rest of sharpkd can load, tile and evaluate.

``BlindTeacher`` estimates the blur of the whole photo (:func:`sharpkd.deblur.estimate.estimate_kernel`,
from the photo alone) and then routes it:

* **camera shake it is sure of** (the free-form kernel is elongated, and a second estimate with other
  settings finds the same shape): non-blind deconvolution with a learned prior
  (:func:`sharpkd.deblur.solve.hqs_deconvolve`, FFDNet as the denoiser), run once with a
  conservative noise floor, then once more with the kernel refined against that first result
  (:func:`sharpkd.deblur.estimate.refine_kernel`);
* **everything else** (round blur such as defocus and soft optics, or a kernel the two estimates
  disagree on): the network teacher carried inside the model file (``network``), which is strong on
  those blurs; deconvolving with an unsure kernel costs far more than it can gain.

Without a ``network`` (the first blind file) round blur falls back to a Gaussian whose width is read
from the photo's edges (:func:`sharpkd.deblur.estimate.edge_sigma`). The denoiser's weights are
KAIR's FFDNet (``tools/convert_ffdnet.py``); the network's were trained here (``teacher``'s card).

Files may carry route-specific copies of FFDNet, fine-tuned through the unrolled solver on the kernels
that route really uses (:mod:`sharpkd.deblur.finetune`): ``shake_denoiser`` for the final camera-shake
run, ``round_denoiser`` for the round route (config ``shake_prior``, ``round_prior``).

For tiled inference the kernel must come from the whole photo, not from each tile: callers use
:meth:`BlindTeacher.estimate` once and :meth:`BlindTeacher.restore` per tile (``Sharpener`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from sharpkd.deblur.denoiser import FFDNet, OnnxFFDNet
from sharpkd.deblur.estimate import (
    EstimateConfig,
    anisotropy,
    edge_sigma,
    estimate_kernel,
    fit_gaussian_width,
    kernel_match,
    kernel_spread,
    reblur_residual,
    refine_kernel,
)
from sharpkd.deblur.solve import estimate_noise, hqs_deconvolve, soften
from sharpkd.degrade import gaussian_kernel
from sharpkd.models.blocks import pad_to_multiple
from sharpkd.models.teacher import NAFTeacher, NAFTeacherConfig


@dataclass(frozen=True)
class BlindTeacherConfig:
    kernel_size: int = 31  # largest blur the estimator represents (odd)
    iters: int = 8  # HQS iterations
    cg_steps: int = 8  # conjugate-gradient steps of each data step (unknown boundaries)
    lam: float = 0.23  # DPIR's data-step weight
    sigma_max: float = 49 / 255  # first denoiser strength
    min_noise: float = 0.5 / 255  # floor on the estimated noise level
    estimate_side: int = 768  # the kernel is estimated on a central crop at most this large
    estimate_iters: int = 5  # L0 / kernel alternations per pyramid level of both estimates (EstimateConfig.iters)
    isotropic_below: float = 1.5  # free-form estimates rounder than this are taken as Gaussian blur
    intrinsic_sigma: float = 1.5  # edge width taken as the photo's own, removed (in quadrature) from the edge
    # estimate; generous on purpose: deconvolving with a kernel 0.5 px too wide costs about 10 dB,
    # one too narrow only part of the gain
    max_spread: float = 2.0  # a free-form kernel wider than this x the edge width is distrusted (Gaussian used)
    multiple: int = 1  # any input size
    # routing (with a network): camera shake is deconvolved only when two estimates agree this well
    # (peak normalised cross-correlation) and the kernel is at least this elongated
    min_agreement: float = 0.9
    min_anisotropy: float = 1.5
    min_shake_spread: float = 1.5  # smaller blur: the network handles it well, and a wrong kernel costs more
    min_concentration: float = 0.12  # peak x spread of the kernel; below it the estimate is a diffuse cloud
    # (what the estimator returns on low-contrast photos), not a camera-shake path
    check_kernel_size: int = 27  # the second estimate: another support size and L0 weight
    check_lam: float = 3e-3
    first_noise: float = 6 / 255  # noise floor of the first (conservative) deconvolution
    shake_noise: float = 3 / 255  # noise floor of the final deconvolution, with the refined kernel
    refine_rounds: int = 1  # kernel refinements, each against a conservative deconvolution with the last kernel
    # (0: none, the L0 estimate is deconvolved as it is)
    # how the refined kernel is cleaned (sharpkd.deblur.estimate.refine_kernel): values below refine_threshold x
    # its peak dropped, then parts holding less than refine_min_mass of its weight (0: none dropped)
    refine_threshold: float = 0.05
    refine_min_mass: float = 0.1
    network: dict | None = None  # NAFTeacherConfig fields of the network for everything else (None: none)
    # round blur (with a network): what is not camera shake is deconvolved with a Gaussian when the L0
    # estimate is round (anisotropy below round_anisotropy; 0: never, the network takes it all) and a
    # Gaussian re-blur of the network's output explains the photo: width fitted by least squares
    # (fit_gaussian_width), gradient residual at most round_residual x the noise's (sqrt(2) x noise).
    # The network's output is a far better latent image than the L0 cartoon.
    round_anisotropy: float = 1.4
    round_residual: float = 1.2
    min_round_width: float = 0.5  # narrower fits: the photo is nearly sharp, the network handles it
    round_noise: float = 1 / 255  # noise floor of the round-blur deconvolution
    # (0: off, as shipped) camera-shake candidates are first offered to the round route when the fitted
    # Gaussian is at least this x the L0 kernel's spread (Gaussian blur on small crops gives spuriously
    # elongated estimates; benchmarks/route_study.py, docs/results.md "Routing study")
    round_spread_ratio: float = 0.0
    # the final camera-shake deconvolution uses its own FFDNet (``shake_denoiser``), fine-tuned through
    # the unrolled solver on the estimator's kernels (sharpkd.deblur.finetune); the other solver runs
    # keep the converted one. False: one denoiser for every run.
    shake_prior: bool = False
    # the same for the round route: the Gaussian deconvolution uses its own FFDNet (``round_denoiser``),
    # fine-tuned on the widths the round route fits (which come out short of the truth)
    round_prior: bool = False
    # compact camera shake (0: off): an estimate too round for the camera-shake gates (anisotropy below
    # min_anisotropy) that no Gaussian explains (the round route's fit fails) is deconvolved like camera
    # shake when the second estimate agrees with it at least this well, and its spread is at least
    # compact_min_spread. Short, blob-like shake kernels otherwise always went to the network.
    compact_agreement: float = 0.0
    compact_min_spread: float = 0.0
    # (0: off) with compact_agreement set, a photo a Gaussian explains whose L0 estimate matches that Gaussian
    # (kernel_match) less than this is first given the compact-shake check: camera shake if the second estimate
    # confirms the kernel, the round route otherwise. Short camera shake can pass the round route's fit.
    round_min_match: float = 0.0
    # (0: off) the same check for a photo whose Gaussian fit leaves a gradient residual above this x the noise's
    # (still within round_residual): a Gaussian explains compact camera shake less well than Gaussian blur
    round_doubt_residual: float = 0.0
    # every solver run hands its denoiser the image in a new orientation each iteration (DPIR's
    # periodical geometric self-ensemble, sharpkd.deblur.solve.hqs_unrolled); False: never
    geo_ensemble: bool = False
    # HQS iterations of the final camera-shake run, of the round route's run and of the conservative run the
    # kernel is refined against (0: ``iters``, as before)
    shake_iters: int = 0
    round_iters: int = 0
    refine_iters: int = 0
    # conjugate-gradient steps of each data step in the camera-shake route's runs (the refinement's and the final
    # ones; 0: ``cg_steps``). The round route keeps ``cg_steps``: its sigma-3 photos lost 0.15 dB on the hold-out
    # crops with 4 (docs/results.md, twenty-seventh session)
    shake_cg_steps: int = 0
    # (False: the first estimate, as before) a photo routed to camera shake is deconvolved with whichever of its
    # two estimates (the first and the check) the photo's L0 cartoon reproduces better under it
    # (sharpkd.deblur.estimate.reblur_residual); on procedural camera shake the first is not always the better one
    pick_by_residual: bool = False
    # (False: off, as shipped) a photo routed to camera shake is deconvolved twice, with the refined kernel and
    # with the L0 kernel it was refined from, and the two results are averaged. Each kernel's shape errors
    # displace the result differently (docs/results.md, "what a misplaced result costs"); the mean of two
    # differently displaced sharp photos is the closer guess
    shake_average: bool = False
    # (False: off, as shipped) with shake_average, the second estimate (the check that confirmed camera shake,
    # another support size and L0 weight) is deconvolved too, unrefined, and the three results are averaged
    shake_average_check: bool = False
    # (0: off) the camera-shake route's (averaged) result is blurred by a Gaussian of this standard deviation
    # (px). An estimated kernel's shape errors misplace fine detail by up to a pixel; where the place of that
    # detail is unsure, a slightly softer result is the closer guess (docs/results.md, twenty-seventh session)
    shake_soften: float = 0.0
    # (0: off) a JPEG file's noise floor per step of its quantisation table: the estimated noise level is at least
    # jpeg_noise x the file's median luma step (sharpkd.imageio.jpeg_step) / 255. Compression removes the finest
    # detail that the noise estimate reads, so a JPEG otherwise looks nearly noise-free while its errors are
    # larger than the sensor's noise (benchmarks/jpeg_inputs.py)
    jpeg_noise: float = 0.0


@dataclass
class BlurEstimate:
    """What the teacher found in one photo: the kernel (K, K), sum 1, the noise level in [0, 1], and
    the route: ``shake`` (deconvolve with the kernel), ``round`` (deconvolve with a Gaussian fitted
    against the network's output), ``network`` (the network teacher) or ``gaussian`` (deconvolve
    with a Gaussian from the edge width; files without a network)."""

    kernel: np.ndarray
    noise: float
    route: str = "shake"
    agreement: float = 1.0
    fit: float = 0.0  # round route: the Gaussian width fitted against the network's output (px)
    residual: float = 0.0  # round route: the fit's gradient residual over the noise's (sqrt(2) x noise)
    # camera shake with ``shake_average``: the L0 kernel the refined ``kernel`` came from, deconvolved as well
    unrefined: np.ndarray | None = None
    # camera shake with ``shake_average_check``: the second estimate's kernel, deconvolved as well
    check: np.ndarray | None = None

    @property
    def kernels(self) -> list[np.ndarray]:
        """The kernels whose deconvolutions are averaged: ``kernel``, then ``unrefined`` and ``check`` where set."""
        return [k for k in (self.kernel, self.unrefined, self.check) if k is not None]


class BlindTeacher(nn.Module):
    """(B, 3, H, W) in [0, 1] -> deblurred, same shape. ``forward`` = ``restore(x, estimate(x))``."""

    def __init__(self, *, config: BlindTeacherConfig | None = None):
        super().__init__()
        self.config = config or BlindTeacherConfig()
        self.denoiser = FFDNet()
        self.shake_denoiser = FFDNet() if self.config.shake_prior else None
        self.round_denoiser = FFDNet() if self.config.round_prior else None
        # what runs the priors' convolutions when no gradient is wanted, on the CPU: "onnx" (ONNX Runtime; a
        # camera-shake photo about 10 % faster on an AVX2 CPU, benchmarks/teacher_time.py; the same answer to
        # float rounding) or "torch". Not part of the file: it changes the speed, not the result.
        self.prior_backend = "onnx"
        self._runners: dict = {}
        self.network = None
        if self.config.network is not None:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config.network.items()}
            self.network = NAFTeacher(config=NAFTeacherConfig(**fields))

    @torch.no_grad()
    def estimate(self, x: torch.Tensor, jpeg_step: float | None = None) -> list[BlurEstimate]:
        """One :class:`BlurEstimate` per image of the batch. ``jpeg_step``: the images were decoded from a JPEG
        file with this median luma quantisation step (:func:`sharpkd.imageio.jpeg_step`; None: not a JPEG)."""
        return [self._estimate_one(img, jpeg_step) for img in x]

    def noise_floor(self, jpeg_step: float | None = None) -> float:
        """The least noise level an estimate takes: ``min_noise``, and for a JPEG ``jpeg_noise`` x its step."""
        cfg = self.config
        return max(cfg.min_noise, cfg.jpeg_noise * float(jpeg_step or 0.0) / 255)

    def _estimate_one(self, img: torch.Tensor, jpeg_step: float | None = None) -> BlurEstimate:
        cfg = self.config
        side = min(img.shape[-2:])
        ks = min(cfg.kernel_size, (side // 2 - 1) | 1)
        noise = max(estimate_noise(img[None]), self.noise_floor(jpeg_step))
        if ks < 5:  # too small to say anything about its blur: leave it as it is (or to the network)
            return BlurEstimate(np.ones((1, 1)), noise, "network" if self.network is not None else "none")
        k = estimate_kernel(img, self.estimate_config(ks))
        if self.network is not None:
            agreement, other = 0.0, None
            spread = kernel_spread(k)
            check = self.estimate_config(min(ks, cfg.check_kernel_size), lam=cfg.check_lam)
            if anisotropy(k) < cfg.min_anisotropy:  # too round for camera shake: round, compact shake or network
                return self._compact(img, k, noise, check)
            if spread >= cfg.min_shake_spread and float(k.max()) * spread >= cfg.min_concentration:
                other = estimate_kernel(img, check)
                agreement = kernel_match(k, other)
            if agreement < cfg.min_agreement:
                return self._round_or_network(img, k, noise, agreement)
            if cfg.round_spread_ratio > 0:  # an elongated estimate that a Gaussian of its size explains
                found = self._round(img, noise, agreement, cfg.round_spread_ratio * spread)
                if found is not None:
                    return found
            return self._shake(img, self._pick(img, k, other), noise, agreement, other)
        width = edge_sigma(img)
        if anisotropy(k) < cfg.isotropic_below or kernel_spread(k) > cfg.max_spread * width:
            # round blur (defocus, soft optics), or a free-form estimate far wider than the edges
            # say: the parametric width read from the edges is the more robust estimate
            sigma = math.sqrt(max(width**2 - cfg.intrinsic_sigma**2, 0.0))
            k = gaussian_kernel(max(sigma, 0.3), min(ks, 2 * math.ceil(3 * max(sigma, 0.3)) + 1))
            return BlurEstimate(k, noise, "gaussian")
        return BlurEstimate(k, noise, "shake")

    def estimate_config(self, kernel_size: int, **overrides) -> EstimateConfig:
        """The estimator settings of this teacher's estimates (crop, alternations per level) for a kernel size."""
        return EstimateConfig(kernel_size=kernel_size, max_side=self.config.estimate_side,
                              iters=self.config.estimate_iters, **overrides)

    def _pick(self, img: torch.Tensor, k: np.ndarray, other: np.ndarray) -> np.ndarray:
        """With ``pick_by_residual``, whichever of the photo's two estimates leaves the smaller
        :func:`reblur_residual` (same crop, same padding); else the first."""
        if not self.config.pick_by_residual:
            return k
        cfg = self.estimate_config(max(k.shape[0], other.shape[0]))
        pad = cfg.kernel_size
        return min((k, other), key=lambda kern: reblur_residual(img, kern, cfg, pad=pad))

    def _shake(self, img: torch.Tensor, k: np.ndarray, noise: float, agreement: float,
               other: np.ndarray | None = None) -> BlurEstimate:
        """The camera-shake route's estimate: ``k`` refined (:meth:`_refine`), and with ``shake_average`` ``k``
        itself to deconvolve as well (and with ``shake_average_check`` the second estimate ``other``)."""
        cfg = self.config
        average = cfg.shake_average and cfg.refine_rounds > 0
        unrefined = k if average else None
        check = other if average and cfg.shake_average_check and other is not None and other is not k else None
        return BlurEstimate(self._refine(img, k, noise), noise, "shake", agreement, unrefined=unrefined, check=check)

    def _round_or_network(self, img: torch.Tensor, k: np.ndarray, noise: float, agreement: float) -> BlurEstimate:
        """Round blur that a Gaussian re-blur of the network's output explains: that Gaussian, to be
        deconvolved (route ``round``); anything else: the network."""
        cfg = self.config
        if cfg.round_anisotropy > 0 and anisotropy(k) < cfg.round_anisotropy:
            found = self._round(img, noise, agreement)
            if found is not None:
                return found
        return BlurEstimate(k, noise, "network", agreement)

    def _compact(self, img: torch.Tensor, k: np.ndarray, noise: float, check: EstimateConfig) -> BlurEstimate:
        """An estimate too round for the camera-shake gates: the round route if a Gaussian explains the
        photo (and the estimate is round enough for it; with ``round_min_match`` set, the estimate matches
        the Gaussian that well; with ``round_doubt_residual`` set, the fit leaves no larger residual), else,
        with ``compact_agreement`` set, camera shake when the second estimate (``check``) confirms the
        kernel, else the round route if a Gaussian explained the photo, else the network."""
        cfg = self.config
        if cfg.compact_agreement <= 0 or kernel_spread(k) < cfg.compact_min_spread:
            return self._round_or_network(img, k, noise, 0.0)
        found = self._round(img, noise, 0.0)
        if found is not None:  # a Gaussian explains it: round blur (unless the estimate is unlike it)
            if not (cfg.round_anisotropy > 0 and anisotropy(k) < cfg.round_anisotropy):
                return BlurEstimate(k, noise, "network", 0.0)
            unlike = cfg.round_min_match > 0 and kernel_match(k, found.kernel) < cfg.round_min_match
            if not unlike and not 0 < cfg.round_doubt_residual < found.residual:
                return found
        other = estimate_kernel(img, check)
        agreement = kernel_match(k, other)
        if agreement >= cfg.compact_agreement:
            return self._shake(img, self._pick(img, k, other), noise, agreement, other)
        return found or BlurEstimate(k, noise, "network", agreement)

    def _round(self, img: torch.Tensor, noise: float, agreement: float, min_width: float = 0.0) -> BlurEstimate | None:
        """The round route's estimate, or None: the Gaussian that best turns the network's output on
        the central crop back into the photo (:func:`fit_gaussian_width`), if it is at least
        ``min_round_width`` (and ``min_width``) wide and leaves a gradient residual within
        ``round_residual`` x the noise's."""
        cfg = self.config
        crop = self._central(img[None])
        width, residual = fit_gaussian_width(crop[0], self._network(crop)[0])
        ratio = residual / (math.sqrt(2) * noise)
        if width >= max(cfg.min_round_width, min_width) and ratio <= cfg.round_residual:
            return BlurEstimate(gaussian_kernel(width), noise, "round", agreement, fit=width, residual=ratio)
        return None

    def _central(self, img: torch.Tensor) -> torch.Tensor:
        """The central crop (at most ``estimate_side`` square) that kernels are estimated on."""
        h, w = img.shape[-2:]
        side = self.config.estimate_side
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        return img[..., y0 : y0 + min(h, side), x0 : x0 + min(w, side)]

    @torch.no_grad()
    def restore(self, x: torch.Tensor, estimates: list[BlurEstimate]) -> torch.Tensor:
        outs = []
        for img, est in zip(x, estimates, strict=True):
            img = img[None]
            if est.route == "network" and self.network is not None:
                outs.append(self._network(img))
            elif est.kernel.shape == (1, 1):
                outs.append(img.clamp(0, 1))
            elif est.route == "shake" and self.network is not None:
                noise = max(est.noise, self.config.shake_noise)
                out = sum(self._solve(img, k, noise, route="shake") for k in est.kernels) / len(est.kernels)
                outs.append(soften(out, self.config.shake_soften))
            elif est.route == "round":
                outs.append(self._solve(img, est.kernel, max(est.noise, self.config.round_noise), route="round"))
            else:
                outs.append(self._solve(img, est.kernel, est.noise))
        return torch.cat(outs)

    def prior(self, route: str = "") -> nn.Module:
        """The denoiser of a solver run: the route's own (``shake``: the final camera-shake run,
        ``round``: the round route's run) when the file has one, else the converted FFDNet."""
        own = {"shake": self.shake_denoiser, "round": self.round_denoiser}.get(route)
        return own if own is not None else self.denoiser

    def _solve(self, img: torch.Tensor, kernel: np.ndarray, noise: float, route: str = "") -> torch.Tensor:
        """The HQS solver with the denoiser of ``route`` (see :meth:`prior`)."""
        cfg = self.config
        prior = self._runner(self.prior(route), img)
        iters = int({"shake": cfg.shake_iters, "round": cfg.round_iters, "refine": cfg.refine_iters}.get(route, 0))
        iters = iters or cfg.iters
        cg = (cfg.shake_cg_steps if route in ("shake", "refine") else 0) or cfg.cg_steps
        return hqs_deconvolve(img, kernel, prior, noise=noise, iters=iters, sigma_max=cfg.sigma_max,
                              lam=cfg.lam, cg_steps=cg, geo_ensemble=bool(cfg.geo_ensemble))

    def _runner(self, prior: nn.Module, img: torch.Tensor):
        """``prior`` itself, or with :attr:`prior_backend` "onnx", no gradient wanted and a CPU tensor, its
        :class:`OnnxFFDNet`, made once per prior and its weights' current values (a fine-tuning step
        changes the weights in place, which bumps their version counters, and so gets a new one)."""
        if (self.prior_backend != "onnx" or torch.is_grad_enabled() or img.device.type != "cpu"
                or not isinstance(prior, FFDNet)):  # (a test's stand-in prior runs as it is)
            return prior
        key = (id(prior), tuple(int(p._version) for p in prior.parameters()))
        if key not in self._runners:
            self._runners = {k: v for k, v in self._runners.items() if k[0] != id(prior)}
            self._runners[key] = OnnxFFDNet(prior)
        return self._runners[key]

    def _refine(self, img: torch.Tensor, kernel: np.ndarray, noise: float) -> np.ndarray:
        """Deconvolve (the central crop the kernel came from) conservatively, then refine the kernel
        against that result: a far better latent image than the L0 stage's. Part of the estimate, so
        every tile of a large photo is later deconvolved with the same kernel."""
        cfg = self.config
        crop = self._central(img[None])
        if min(crop.shape[-2:]) < 4 * kernel.shape[0]:
            return kernel
        for _ in range(int(cfg.refine_rounds)):
            first = self._solve(crop, kernel, max(noise, cfg.first_noise), route="refine")
            kernel = refine_kernel(crop[0], first[0], kernel, EstimateConfig(max_side=cfg.estimate_side),
                                   threshold=cfg.refine_threshold, min_mass=cfg.refine_min_mass)
        return kernel

    def _network(self, img: torch.Tensor) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(img, int(self.network.config.multiple))
        return self.network(padded)[..., :h, :w].clamp(0, 1)

    def macs_per_pixel(self, size: int = 64) -> float:
        """Multiply-accumulates per pixel of the solver's denoiser calls (``iters`` FFDNet passes per
        solver run); the FFTs and the kernel estimation are not included."""
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, size, size)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            self.denoiser(x, 0.01)
        macs = self.config.iters * fc.get_total_flops() / 2 / (size * size)
        if self.network is not None:  # the route a photo takes decides; report the deconvolution's (larger) cost
            macs *= 2  # two solver runs for camera shake
        return macs

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x, self.estimate(x))
