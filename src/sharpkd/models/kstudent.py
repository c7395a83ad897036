"""The kernel student: the real-time student, told the photo's blur.

A small local network cannot undo camera shake: the blur spreads a point over 10-30 pixels along a
path it has no way to guess (docs/realtime.md). The teacher can guess it, but slowly. The kernel
student splits the work the way the teacher's router does, with the expensive part done once:

1. **estimate** (once per photo, or once every N frames of a video): the shipped teacher's blur
   estimate on a reduced central crop (``estimate_side``, 384 px by default): the route (``shake``,
   ``round``, ``network``) and, for the first two, the kernel; where that crop does not show camera shake
   and ``fallback_side`` is set, the estimate on a larger crop instead (off in the shipped files: it
   doubles the time per photo for +0.07 dB on Kodak24, docs/realtime.md);
2. **guide** (one FFT per channel): a Laplacian-regularised Wiener deconvolution of the photo with that
   kernel (:func:`sharpkd.deblur.solve.wiener_deconvolve`); where the router does not trust a kernel,
   the photo itself;
3. **restore** (the network): a :class:`~sharpkd.models.student.Student` that sees the photo and the
   guide (six channels) and adds its residual to the guide, removing the ringing and noise the
   linear filter leaves and finishing what it could not do;
4. (``config.passes`` > 1; two in the shipped ``kstudent`` since the twenty-second session) **further passes**
   of the same network on photos with a deconvolved route, each guided by the previous output corrected
   towards the photo by a Wiener step on what it leaves of it (:func:`refine_guide`): half-quadratic
   splitting with the network as its prior (docs/realtime.md, "A second, guided pass"). ``Sharpener``
   averages each pass over the photo's ``photo_ensemble`` flipped copies; video runs the first pass alone.

The model file holds the network only; the estimator is the shipped blind teacher named by
``config.estimator``, which :func:`sharpkd.checkpoint.load_model` attaches. ``restore(x, estimates)``
and ``estimate(x)`` follow the blind teacher's interface, so ``Sharpener``, ``sharpkd eval``, the CLI
and the web app drive it like the teacher (one estimate per photo, shared by its tiles).
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn as nn

from sharpkd.deblur.solve import wiener_deconvolve, wiener_filter, wiener_grid, wiener_refine
from sharpkd.models.blocks import pad_to_multiple
from sharpkd.models.student import Student, StudentConfig

DECONVOLVED_ROUTES = ("shake", "round")  # the routes whose kernel the guide deconvolves with


def deconvolves(est) -> bool:
    """Whether the guide (and each later pass) uses this blur estimate: a deconvolved route with a real kernel."""
    return est.route in DECONVOLVED_ROUTES and est.kernel.shape[0] > 1
ESTIMATE_CACHE = 256  # blur estimates kept (a few KB each), most recently used first
_ESTIMATES: OrderedDict = OrderedDict()
_TOKENS = itertools.count()
ESTIMATORS = ("teacher",)  # shipped blind-teacher files a kernel student may name


@dataclass(frozen=True)
class KernelStudentConfig:
    # the network (StudentConfig fields; the real-time student's layout)
    unshuffle: int = 2
    width: int = 16
    low_width: int = 48
    low_blocks: int = 2
    high_blocks: int = 1
    balance: float = 1e-2  # Wiener regularisation weight of the guide
    # (None: ``balance``) the weight for the round route, whose kernel is a fitted Gaussian rather than a
    # free-form camera-shake estimate, so it can take a sharper guide
    round_balance: float | None = None
    estimator: str = "teacher"  # the shipped blind teacher whose estimate is used
    estimate_side: int = 384  # central crop the kernel is estimated on (the teacher itself uses 768)
    # camera shake is deconvolved when the estimator's two estimates agree at least this well (None: the
    # estimator's own threshold, which was set for the teacher's solver; benchmarks/kstudent_side.py --trust)
    min_agreement: float | None = None
    # (None: off) where the estimate on ``estimate_side`` does not deconvolve camera shake, estimate again on a
    # central crop this large and use that: more pixels for the round fit, while camera shake is still trusted
    # from the small crop (benchmarks/kstudent_side.py --sides 384+768)
    fallback_side: int | None = None
    # L0 / kernel alternations per pyramid level of the estimate (None: the estimator's own). 5 is what the
    # shipped kernel students were trained and measured with; the teacher's file may set another value.
    estimate_iters: int | None = 5
    # the estimator's choice between its two camera-shake estimates by reblur residual (BlindTeacherConfig
    # .pick_by_residual; None: the estimator's own). False is what the shipped kernel students were measured with.
    pick_by_residual: bool | None = False
    # the estimator's kernel refinement (BlindTeacherConfig.refine_rounds / refine_threshold / refine_min_mass;
    # None: the estimator's own). These values are the ones the shipped kernel students were measured with.
    refine_rounds: int | None = 1
    refine_threshold: float | None = 0.05
    refine_min_mass: float | None = 0.1
    # network passes on photos with a deconvolved route. Each pass after the first is guided by the previous
    # output corrected towards the photo: plus ``refine_damping`` x the Wiener deconvolution (weight
    # ``refine_balance``) of what the output leaves of the photo (``refine_guide``), a step of half-quadratic
    # splitting with the network as its prior. The first pass alone is still a whole result (video may stop there).
    passes: int = 1
    refine_balance: float = 3e-3
    refine_damping: float = 1.0
    # (None: the two above) the round route's own: its kernel is a fitted width, whose small errors a sharp
    # correction amplifies, so its later passes may lean on the previous output more
    round_refine_balance: float | None = None
    round_refine_damping: float | None = None
    # copies of the self-ensemble a photo gets when the caller does not say (``Sharpener(ensemble=None)``, the CLI's
    # and web page's default): a photo waits seconds for its blur estimate, and the network's eight flipped copies
    # add well under a second to that. Video and the frame benchmark always run one copy.
    photo_ensemble: int = 1
    # (False: off, as trained) on camera shake, the guide is the mean of the Wiener deconvolutions with every kernel
    # the estimator deconvolves with (the refined kernel, and the L0 kernel and the second estimate where the
    # estimator's file sets shake_average / shake_average_check); later passes still correct with the refined one
    guide_average: bool = False

    @property
    def multiple(self) -> int:
        return 2 * self.unshuffle

    def student(self) -> StudentConfig:
        return StudentConfig(unshuffle=self.unshuffle, width=self.width, low_width=self.low_width,
                             low_blocks=self.low_blocks, high_blocks=self.high_blocks, guide=1)


class KernelStudent(nn.Module):
    """(B, 3, H, W) in [0, 1] -> sharpened, same shape. ``forward(x)`` = ``restore(x, estimate(x))``;
    ``run(x, guide)`` is the network alone (what is exported and timed per frame)."""

    def __init__(self, *, config: KernelStudentConfig | None = None):
        super().__init__()
        self.config = config or KernelStudentConfig()
        if self.config.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.config.estimator!r}")
        if not 64 <= self.config.estimate_side <= 4096 or not 0 < self.config.balance < 1:
            raise ValueError("estimate_side must be 64-4096 px and balance in (0, 1)")
        if self.config.photo_ensemble not in (1, 2, 4, 8):
            raise ValueError(f"photo_ensemble must be 1, 2, 4 or 8, got {self.config.photo_ensemble}")
        if self.config.round_balance is not None and not 0 < self.config.round_balance < 1:
            raise ValueError("round_balance must be in (0, 1) (or None: balance)")
        if self.config.fallback_side is not None and not 64 <= self.config.fallback_side <= 4096:
            raise ValueError("fallback_side must be 64-4096 px (or None: off)")
        if self.config.min_agreement is not None and not 0 <= self.config.min_agreement <= 1:
            raise ValueError("min_agreement must be in [0, 1] (or None: the estimator's own)")
        if self.config.estimate_iters is not None and not 1 <= self.config.estimate_iters <= 50:
            raise ValueError("estimate_iters must be 1-50 (or None: the estimator's own)")
        if not 1 <= self.config.passes <= 4:
            raise ValueError("passes must be 1-4")
        for route in ("shake", "round"):
            balance, damping = self.refine_settings(route)
            if not 0 < balance < 1 or not 0 < damping <= 2:
                raise ValueError("refine balances must be in (0, 1) and refine dampings in (0, 2]")
        self.net = Student(config=self.config.student())
        self.__dict__["_estimator"] = None  # not a submodule: its weights live in their own file
        self.__dict__["_fallback"] = None  # the estimator at ``fallback_side`` (set with the estimator)
        self.runner = None  # when set (an exported network, see sharpkd.backends): runs in place of ``net``

    def attach_estimator(self, teacher: nn.Module) -> KernelStudent:
        """Use ``teacher`` (a blind teacher) for :meth:`estimate`, on ``config.estimate_side`` crops
        (and ``config.fallback_side`` ones). ``teacher`` itself is not changed (shallow copies with these
        settings share its weights), so kernel students with other settings can share it."""
        if "_estimate_token" not in teacher.__dict__:  # names this estimator in the estimate cache
            teacher.__dict__["_estimate_token"] = next(_TOKENS)
        c = self.config
        own = {"min_agreement": c.min_agreement, "estimate_iters": c.estimate_iters,
               "pick_by_residual": c.pick_by_residual, "refine_rounds": c.refine_rounds,
               "refine_threshold": c.refine_threshold, "refine_min_mass": c.refine_min_mass}
        own = {k: v for k, v in own.items() if v is not None}  # the student's settings; None: the teacher's

        def at(side: int) -> nn.Module:
            est = copy.copy(teacher)
            # the refinement's run with the teacher's cg_steps whatever the file's camera-shake route uses
            # (shake_cg_steps): that is the estimate the shipped kernel students were measured with
            est.config = replace(teacher.config, estimate_side=side, shake_cg_steps=0, **own)
            return est.eval()

        self.__dict__["_estimator"] = at(self.config.estimate_side)
        fallback = self.config.fallback_side
        self.__dict__["_fallback"] = None if fallback is None else at(fallback)
        return self

    @property
    def estimator(self) -> nn.Module:
        if self._estimator is None:
            raise RuntimeError("no blur estimator attached (load the model with sharpkd.checkpoint.load_model)")
        return self._estimator

    @torch.no_grad()
    def estimate(self, x: torch.Tensor, jpeg_step: float | None = None) -> list:
        """One :class:`sharpkd.deblur.teacher.BlurEstimate` per image of the batch: the estimate on
        ``config.estimate_side`` crops, or where that does not take the camera-shake route and
        ``config.fallback_side`` is set, the estimate on crops that large. Estimates are kept for the last
        photos seen (by content), so kernel students sharing an estimator (a benchmark of two of them, a
        photo sharpened again) estimate each photo once. ``jpeg_step``: as the teacher's
        (:meth:`sharpkd.deblur.teacher.BlindTeacher.estimate`)."""
        import hashlib

        out = []
        for img in x:
            arr = img.detach().cpu().float().contiguous().numpy()
            digest = (arr.shape, hashlib.sha1(arr.tobytes()).digest(), jpeg_step)
            est = _cached(self.estimator, digest, img, jpeg_step)
            if est.route != "shake" and self._fallback is not None:
                est = _cached(self._fallback, digest, img, jpeg_step)
            out.append(est)
        return out

    def balance_for(self, route: str) -> float:
        """The guide's Wiener weight on ``route``: ``round_balance`` on the round route where it is set."""
        c = self.config
        return c.round_balance if route == "round" and c.round_balance is not None else c.balance

    def guide(self, x: torch.Tensor, estimates: list) -> torch.Tensor:
        """The Wiener deconvolution of each image with its kernel (weight :meth:`balance_for` its route),
        or the image itself where the route is not one the guide deconvolves for."""
        out = []
        for img, est in zip(x, estimates, strict=True):
            if deconvolves(est):
                balance = self.balance_for(est.route)
                kernels = est.kernels if self.config.guide_average and est.route == "shake" else [est.kernel]
                out.append(sum(wiener_deconvolve(img[None], k, balance, filt=self._filter(k, *img.shape[-2:], balance))
                               for k in kernels) / len(kernels))
            else:
                out.append(img[None])
        return torch.cat(out)

    def _filter(self, kernel, h: int, w: int, balance: float) -> torch.Tensor:
        """The Wiener filter for ``kernel`` at this image size and weight, kept for the next call (video
        frames between two estimates share both)."""
        k = np.ascontiguousarray(kernel, dtype=np.float32)
        key = (k.shape, k.tobytes(), h, w, balance)
        cache = self.__dict__.setdefault("_filter_cache", {})
        if key not in cache:
            if len(cache) >= 3:  # the kernels of one estimate (guide_average: up to three)
                cache.pop(next(iter(cache)))
            _, hp, wp = wiener_grid(h, w, k.shape[-1])
            cache[key] = wiener_filter(k, hp, wp, balance)
        return cache[key]

    def run(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """The network on photo and guide (any size; padded to its multiple), residual on the guide:
        :class:`GuidedNet`, or the exported copy of it in ``runner``."""
        return self.run_joined(torch.cat([x, guide], dim=1))

    def run_joined(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`run` on photo and guide already joined as six channels (what ``Sharpener`` tiles)."""
        zp, (h, w) = pad_to_multiple(z, self.config.multiple)
        if self.runner is None and zp.device.type == "cpu":  # faster on the CPU, as in TorchBackend
            zp = zp.contiguous(memory_format=torch.channels_last)
        return (self.runner or GuidedNet(self))(zp)[..., :h, :w]

    def refine_settings(self, route: str) -> tuple[float, float]:
        """The Wiener weight and damping of the later passes' guides on ``route``."""
        c = self.config
        if route == "round":
            return (c.refine_balance if c.round_refine_balance is None else c.round_refine_balance,
                    c.refine_damping if c.round_refine_damping is None else c.round_refine_damping)
        return c.refine_balance, c.refine_damping

    def refine_guide(self, x: torch.Tensor, out: torch.Tensor, estimates: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide of a further pass for each image whose route is deconvolved (:func:`refine_guide`, the
        previous output ``out`` corrected towards the photo ``x``), and the boolean mask of those images
        (the others keep ``out``; their rows of the guide are ``out`` itself)."""
        mask = torch.tensor([deconvolves(e) for e in estimates], dtype=torch.bool, device=x.device)
        guide = out.float().clone()
        if mask.any():
            guided = [e for e in estimates if deconvolves(e)]
            guide[mask] = self._corrected(x[mask], out[mask], [e.kernel for e in guided], [e.route for e in guided])
        return guide, mask

    def _corrected(self, x: torch.Tensor, out: torch.Tensor, kernels: list, routes: list[str]) -> torch.Tensor:
        """Each output corrected towards its photo (:func:`refine_guide`) with its kernel and its route's settings."""
        return torch.cat([refine_guide(o[None], img[None], torch.as_tensor(k, dtype=torch.float32),
                                       *self.refine_settings(r)) for img, o, k, r in zip(x, out, kernels, routes,
                                                                                         strict=True)])

    def later_passes(self, x: torch.Tensor, out: torch.Tensor, kernels: list, routes: list[str]) -> torch.Tensor:
        """The passes after the first (``config.passes`` - 1) on images that all have a kernel: each guided by the
        previous output ``out`` corrected towards the photo ``x`` with the image's kernel and its route's
        settings. Differentiable (training runs it end to end); the final output."""
        for _ in range(self.config.passes - 1):
            out = self.run(x, self._corrected(x, out, kernels, routes))
        return out

    @torch.no_grad()
    def restore(self, x: torch.Tensor, estimates: list) -> torch.Tensor:
        out = self.run(x, self.guide(x, estimates))
        flags = [deconvolves(e) for e in estimates]
        if self.config.passes > 1 and any(flags):
            guided = [e for e, f in zip(estimates, flags, strict=True) if f]
            m = torch.tensor(flags, device=x.device)
            out[m] = self.later_passes(x[m], out[m], [e.kernel for e in guided], [e.route for e in guided])
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x, self.estimate(x))

    def macs_per_pixel(self, size: int = 64) -> float:
        """Multiply-accumulates per pixel of the network plus the guide's FFTs (a real FFT of n points
        taken as 2.5 n log2 n: forward and inverse per channel on the photo padded by 16 px, a 512 px
        tile). Each later pass (``passes``, on deconvolved photos) adds the network again and a correction
        that costs two such transform pairs (its blur and its Wiener step). The per-photo estimate is not
        included (it is made once per photo or per N frames)."""
        import math

        from torch.utils.flop_counter import FlopCounterMode

        m = self.config.multiple
        size = -(-size // m) * m
        with torch.no_grad(), FlopCounterMode(display=False) as fc:  # the network itself, not an exported copy
            GuidedNet(self)(torch.zeros(1, 6, size, size))
        n = (512 + 32) ** 2
        fft = 3 * 2 * (2.5 * math.log2(n) + 2) * n / 512**2
        passes = self.config.passes
        return passes * fc.get_total_flops() / 2 / (size * size) + (2 * passes - 1) * fft


def refine_guide(out: torch.Tensor, photo: torch.Tensor, kernel: torch.Tensor, balance: float,
                 damping: float) -> torch.Tensor:
    """(1, 3, H, W) ``out`` (a restoration of ``photo``) plus ``damping`` x the Wiener deconvolution of the
    photo's residual ``photo - kernel * out`` (:func:`sharpkd.deblur.solve.wiener_refine`): the guide of a
    further network pass. ``out`` is clamped to [0, 1] first, as a finished result would be. Differentiable in
    ``out`` (training runs the passes end to end)."""
    return wiener_refine(out.clamp(0, 1), photo, kernel, balance, damping)


def _cached(estimator: nn.Module, digest: tuple, img: torch.Tensor, jpeg_step: float | None = None):
    """``estimator``'s estimate of ``img`` (told its JPEG step; ``digest``: its shape, content hash and that
    step), from the cache when this estimator, at these settings, has seen it."""
    cfg = estimator.config  # every setting but the network's (which the token names)
    settings = tuple((f.name, getattr(cfg, f.name)) for f in fields(cfg) if f.name != "network")
    key = (estimator.__dict__["_estimate_token"], settings, *digest)
    if key not in _ESTIMATES:
        _ESTIMATES[key] = estimator.estimate(img[None], jpeg_step=jpeg_step)[0]
        while len(_ESTIMATES) > ESTIMATE_CACHE:
            _ESTIMATES.popitem(last=False)
    _ESTIMATES.move_to_end(key)
    return _ESTIMATES[key]


class GuidedNet(nn.Module):
    """The kernel student's network with one six-channel input (photo, then guide), sizes multiples of
    ``config.multiple``: the part that is exported to ONNX and run per frame. It shares the kernel
    student's weights (made per call, so the student's state dict holds them once)."""

    input_channels = 6

    def __init__(self, model: KernelStudent):
        super().__init__()
        self.net, self.config = model.net, model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (the exporter names the input after ``x``)
        x, g = x[:, :3], x[:, 3:]
        return self.net(x, guide=g) - x + g
