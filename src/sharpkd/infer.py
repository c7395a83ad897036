"""Inference: the one path every front end uses.

``run_padded`` pads an image batch to the network's size multiple (reflected borders), runs the
network under ``torch.inference_mode``, clamps to [0, 1] and crops back. ``run_tiled`` splits a large
image into overlapping tiles, runs each through ``run_padded`` and blends them with weights that
ramp linearly across each overlap, so there are no seams; only one tile is on the device at a time.
``Sharpener`` wraps a model with these and reads/writes the project's image types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import overload

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from sharpkd.backends import BACKENDS, CLASSICAL, Backend, OnnxBackend, TorchBackend, UnsharpMask, resolve
from sharpkd.imageio import LoadedImage
from sharpkd.models.blocks import pad_to_multiple

__all__ = ["BACKENDS", "CLASSICAL", "MIN_TILE", "OnnxBackend", "Sharpener", "UnsharpMask", "run_padded", "run_tiled"]


def frame_to_tensor(frame: np.ndarray, bgr: bool = False) -> torch.Tensor:
    """An (H, W, 3) uint8 video frame (RGB; OpenCV's BGR with ``bgr``) -> a contiguous (1, 3, H, W) float32
    RGB tensor in [0, 1]. The channels are split off while the pixels are still bytes, which is cheaper
    than converting the interleaved frame first and re-laying the floats."""
    t = torch.from_numpy(frame).permute(2, 0, 1)
    if bgr:
        t = t.flip(0)
    return t.contiguous()[None].float().div_(255.0)


def tensor_to_frame(y: torch.Tensor, bgr: bool = False) -> np.ndarray:
    """The inverse of :func:`frame_to_tensor` for one image: (1, 3, H, W) float in [0, 1] -> (H, W, 3)
    uint8, rounded to the nearest level."""
    t = y[0].mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
    if bgr:
        t = t.flip(0)
    return t.permute(1, 2, 0).contiguous().numpy()


@torch.inference_mode()
def run_padded(model: nn.Module, x: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Model output for (B, 3, H, W) in [0, 1], any H and W; returns the same shape, clamped."""
    xp, (h, w) = pad_to_multiple(x, multiple)
    return model(xp)[..., :h, :w].clamp(0, 1)


def _ramp(n: int, overlap: int, start_edge: bool, end_edge: bool) -> torch.Tensor:
    """1-D blending weight for a tile of length n. On sides that meet another tile (not the image
    border) the weight is 0 over the outer quarter of the overlap, where the network saw padding
    instead of the true neighbourhood, rises linearly over the middle half, and is 1 inside.
    Two neighbours sharing ``overlap`` or more pixels never both have weight 0."""
    d = torch.arange(n, dtype=torch.float32)
    w = torch.ones(n)
    if overlap > 0:
        def rise(dist: torch.Tensor) -> torch.Tensor:
            return ((dist - overlap / 4 + 0.5) / (overlap / 2)).clamp(0, 1)

        if not start_edge:
            w = torch.minimum(w, rise(d))
        if not end_edge:
            w = torch.minimum(w, rise(n - 1 - d))
    return w


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, end) of tiles of about ``tile`` pixels covering ``length``, neighbours sharing at least
    ``overlap``. Starts are multiples of ``align`` (networks with pixel-unshuffle or strided layers
    are only shift-equivariant on their own grid), so the last tile may be up to ``align - 1``
    pixels longer than ``tile``."""
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    last = (length - tile) // align * align
    starts = sorted(set(list(range(0, last, stride)) + [last]))
    return [(s, min(s + tile, length) if s != last else length) for s in starts]


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              device: torch.device | str = "cpu", align: int = 1, channels: int = 0) -> torch.Tensor:
    """Apply ``fn`` to overlapping crops of (B, C, H, W) ``x`` (kept on the CPU) and blend; ``fn``
    sees tensors on ``device``. Output is on the CPU, same shape as ``x`` (``channels``: when ``fn``
    returns that many channels rather than C)."""
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    b, c, h, w = x.shape
    out = torch.zeros(b, channels or c, h, w)
    weight = torch.zeros(1, 1, h, w)
    for y0, y1 in tile_starts(h, tile, overlap, align):
        for x0, x1 in tile_starts(w, tile, overlap, align):
            res = fn(x[..., y0:y1, x0:x1].to(device)).float().cpu()
            wy = _ramp(y1 - y0, overlap, y0 == 0, y1 == h)
            wx = _ramp(x1 - x0, overlap, x0 == 0, x1 == w)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y0:y1, x0:x1] += res * wt
            weight[..., y0:y1, x0:x1] += wt
    return out.div_(weight)  # in place: a 24 MP photo's output is 288 MB as float32


MIN_TILE = 32  # smaller tiles leave no room for the blending ramps (tiles of 1-5 px gave NaN images)
ENSEMBLE_SIZES = (1, 2, 4, 8)


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th (0..7) of the eight flips/transposes of the last two axes, or its inverse.
    Bit 0 flips width, bit 1 flips height, bit 2 transposes (applied last, undone first)."""
    if inverse and k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if not inverse and k & 4:
        x = x.transpose(-1, -2)
    return x


class Sharpener:
    """Sharpen images with a trained model.

    Args:
        model: a sharpkd network (input/output RGB in [0, 1], (B, 3, H, W)), or a backend from
            :mod:`sharpkd.backends` (what :meth:`from_pretrained` builds with ``backend.resolve``).
        device: "cpu" or "cuda".
        tile: tile size in pixels for images larger than that (0: never tile).
        overlap: pixels shared by neighbouring tiles. Each output pixel keeps at least overlap/4
            pixels of real context; once that exceeds the network's effective receptive field,
            tiled equals untiled to within float error.
        ensemble: geometric self-ensemble (Lim et al., EDSR, 2017): run the network on 1, 2, 4 or
            8 flipped/transposed copies of the input, undo each transform and average. Costs that
            many times the compute; typically a few hundredths of a dB better. A blind teacher
            estimates the blur of each copy; the kernel student estimates it and builds its guide once,
            and transforms photo and guide together, so only its network runs that many times.
            None: the model's own default (a kernel student's ``photo_ensemble``, 8 for the shipped
            one; 1 for every other model). Video passes 1.
        passes: network passes of a multi-pass kernel student on deconvolved photos (None: its config's
            ``passes``; 1: the first pass alone, what ``sharpkd video`` runs by default for the frame rate).
    """

    def __init__(self, model: nn.Module | Backend, *,
                 device: str | torch.device = "cpu", tile: int = 512,
                 overlap: int = 96, name: str = "model", ensemble: int | None = None, passes: int | None = None):
        if ensemble is not None and ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble}")
        if tile < 0 or 0 < tile < MIN_TILE:
            raise ValueError(f"tile must be 0 (no tiling) or at least {MIN_TILE} pixels, got {tile}")
        if isinstance(model, nn.Module):
            model = TorchBackend(model, device)
        if not isinstance(model, Backend):
            raise TypeError(f"expected a network or a backend (kind, multiple, callable), got {type(model).__name__}")
        self.backend: Backend = model
        config = getattr(self.model, "config", None)
        if ensemble is None:  # the model's own default for photos
            ensemble = int(getattr(config, "photo_ensemble", 1))
        self.ensemble = ensemble
        if passes is not None and not 1 <= passes <= 4:
            raise ValueError(f"passes must be 1 to 4, got {passes}")
        self.passes = passes if passes is not None else int(getattr(config, "passes", 1))
        self.device = model.device if isinstance(model, TorchBackend) else torch.device("cpu")
        self.multiple = int(model.multiple)
        self.tile = tile
        self.overlap = min(overlap, tile * 3 // 4) if tile else overlap
        self.name = name
        self.last_estimates: list | None = None  # blind models: the blur estimates of the last photo sharpened

    @property
    def model(self) -> nn.Module | Backend:
        """The network for a PyTorch backend, otherwise the backend itself."""
        return self.backend.module if isinstance(self.backend, TorchBackend) else self.backend

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "student", *, device: str = "cpu", tile: int = 512,
                        overlap: int = 96, backend: str = "torch", threads: int = 0,
                        ensemble: int | None = None, passes: int | None = None) -> Sharpener:
        """``student`` or ``teacher`` (the shipped weights), ``unsharp`` (the classical filter), a
        model file, a training run folder, or an exported ``.onnx`` file.

        ``backend="onnx"`` / ``"onnx-int8"`` run ONNX Runtime on the CPU with the exported file
        beside the weights (see :func:`sharpkd.backends.resolve`; nothing is exported on the fly).
        ``threads``: ONNX Runtime intra-op threads (0: its default). ``ensemble``: see the class.
        """
        runner = resolve(name_or_path, backend, device=device, threads=threads)
        return cls(runner, device=device, tile=tile, overlap=overlap, name=str(name_or_path), ensemble=ensemble,
                   passes=passes)

    @property
    def blind(self) -> bool:
        """True for a model that estimates the blur of the whole photo first (the blind teacher, the
        kernel student)."""
        return isinstance(self.backend, TorchBackend) and self.backend.blind

    def estimate_blur(self, x: torch.Tensor, jpeg_step: float | None = None) -> list:
        """The blur the model finds in each image of a (B, 3, H, W) batch (blind models only): a list of
        :class:`sharpkd.deblur.teacher.BlurEstimate` (kernel and noise level). ``jpeg_step``: the images
        were decoded from a JPEG file (:attr:`sharpkd.imageio.LoadedImage.jpeg_step`), which raises the noise
        floor of a model whose config asks for it."""
        if not self.blind:
            raise ValueError(f"{self.name} does not estimate the blur (only the teacher and the kernel student do)")
        return self.model.estimate(x.float().to(self.device), jpeg_step=jpeg_step)

    def sharpen_tensor(self, x: torch.Tensor, estimates: list | None = None,
                       jpeg_step: float | None = None) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> same shape, on the CPU. ``estimates``: for a blind model,
        blur estimates from :meth:`estimate_blur` (made here from the whole image when omitted, so
        tiles share one kernel; ``jpeg_step`` as there)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        x = x.float()

        def prepare(t: torch.Tensor):
            """What the network pass runs on (for the kernel student, photo and guide joined) and its function."""
            if self.blind:
                est = estimates if estimates is not None and t is x else self.estimate_blur(t, jpeg_step)
                self.last_estimates = est
                if hasattr(self.model, "guide"):  # the kernel student: deconvolve the whole photo once,
                    # then tile the network over photo and guide together (six channels)
                    t = torch.cat([t, self.model.guide(t.to(self.device), est).cpu()], dim=1)

                    @torch.inference_mode()
                    def fn(tile: torch.Tensor) -> torch.Tensor:
                        return self.model.run_joined(tile).clamp(0, 1)
                else:
                    def fn(tile: torch.Tensor) -> torch.Tensor:
                        return self.model.restore(tile, est).clamp(0, 1)
            else:
                def fn(tile: torch.Tensor) -> torch.Tensor:
                    return run_padded(self.backend, tile, self.multiple)
            return t, fn

        def apply(t: torch.Tensor, fn) -> torch.Tensor:
            h, w = t.shape[-2:]
            if self.tile and (h > self.tile or w > self.tile):
                return run_tiled(fn, t.cpu(), self.tile, self.overlap, self.device, self.multiple, channels=3)
            return fn(t.to(self.device)).cpu()

        if self.blind and hasattr(self.model, "guide"):  # the kernel student: one estimate and one guide
            return self._guided_passes(x, *prepare(x), apply)
        if self.ensemble == 1:
            return apply(*prepare(x))
        # transform the whole image (not each tile), so tiles stay on the network's pixel grid
        acc = torch.zeros(x.shape)
        for k in range(self.ensemble):
            acc += dihedral(apply(*prepare(dihedral(x, k))), k, inverse=True)
        return acc.div_(self.ensemble)

    def _guided_passes(self, x: torch.Tensor, t: torch.Tensor, fn, apply) -> torch.Tensor:
        """The kernel student's network on photo and guide joined (``t``), over the self-ensemble's copies
        (photo and guide transformed together), then each further pass (``self.passes``) on the
        photos with a deconvolved route, guided by the previous result corrected towards the photo."""

        def average(joined: torch.Tensor) -> torch.Tensor:
            acc = torch.zeros(x.shape)
            for k in range(self.ensemble):
                acc += dihedral(apply(dihedral(joined, k), fn), k, inverse=True)
            return acc.div_(self.ensemble)

        out = average(t)
        for _ in range(self.passes - 1):
            g, mask = self.model.refine_guide(x.to(self.device), out.to(self.device), self.last_estimates)
            if not mask.any():
                break
            again = average(torch.cat([x, g.cpu()], dim=1)).clamp(0, 1)
            out = torch.where(mask.cpu()[:, None, None, None], again, out)
        return out

    def sharpen_frame(self, frame: np.ndarray, bgr: bool = False, estimates: list | None = None) -> np.ndarray:
        """One (H, W, 3) uint8 video frame (RGB; OpenCV's BGR with ``bgr``) -> the sharpened frame, same
        shape and order. An INT8 student exported for frames (``OnnxBackend.frames``) gets the bytes
        as they are, as RGBA; anything else goes through :meth:`sharpen_tensor`."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.dtype} of shape {frame.shape}")
        backend, (h, w) = self.backend, frame.shape[:2]
        if getattr(backend, "frames", False) and self.ensemble == 1 and not (self.tile and max(h, w) > self.tile):
            import cv2

            rgba = cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA if bgr else cv2.COLOR_RGB2RGBA)
            ph, pw = (-h) % self.multiple, (-w) % self.multiple
            if ph or pw:  # as pad_to_multiple: reflected borders (replicated for tiny frames)
                border = cv2.BORDER_REFLECT_101 if ph < h and pw < w else cv2.BORDER_REPLICATE
                rgba = cv2.copyMakeBorder(rgba, 0, ph, 0, pw, border)
            out = backend.run_frame(rgba)[:h, :w]
            return cv2.cvtColor(out, cv2.COLOR_RGBA2BGR if bgr else cv2.COLOR_RGBA2RGB)
        x = frame_to_tensor(frame, bgr)
        if self.blind:
            estimates = self.frame_estimates(estimates if estimates is not None else self.estimate_blur(x))
        return tensor_to_frame(self.sharpen_tensor(x, estimates), bgr)

    def frame_estimates(self, estimates: list) -> list:
        """Blur estimates as video frames use them: the kernel student's frames are guided by the refined kernel
        alone (a photo's ``guide_average`` would cost two more FFT pairs per frame); other models' as they are."""
        if not hasattr(self.model, "guide"):
            return estimates
        import dataclasses

        return [dataclasses.replace(e, unrefined=None, check=None) for e in estimates]

    def sharpen_array(self, rgb: np.ndarray, jpeg_step: float | None = None) -> np.ndarray:
        """(H, W, 3) float in [0, 1] -> (H, W, 3) float32 in [0, 1]. ``jpeg_step``: as :meth:`estimate_blur`'s."""
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.sharpen_tensor(x, jpeg_step=jpeg_step)[0].permute(1, 2, 0).numpy()

    def sharpen_image(self, img: LoadedImage) -> LoadedImage:
        """Sharpen the colour of a loaded image; alpha, mode and metadata are carried over. A blind model is
        told a JPEG file's compression (:attr:`~sharpkd.imageio.LoadedImage.jpeg_step`)."""
        return LoadedImage(self.sharpen_array(img.rgb, img.jpeg_step), img.alpha, img.mode, img.format,
                           dict(img.info), img.jpeg_step)

    @overload
    def __call__(self, image: Image.Image) -> Image.Image: ...
    @overload
    def __call__(self, image: np.ndarray) -> np.ndarray: ...
    @overload
    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, image):
        """Sharpen a PIL image, an (H, W, 3) NumPy array (uint8, uint16, or float in [0, 1]) or a
        (3, H, W) / (B, 3, H, W) float tensor; returns the same kind (and dtype).

        >>> s = Sharpener.from_pretrained("student")
        >>> sharp = s(Image.open("photo.jpg"))        # PIL in, PIL out (RGB)
        >>> arr16 = s(np.zeros((64, 64, 3), np.uint16))  # uint16 in, uint16 out

        For files, prefer ``sharpkd.imageio.read_image`` + :meth:`sharpen_image` + ``write_image``,
        which keep alpha, grayscale, 16-bit depth, EXIF and ICC profiles.
        """
        if isinstance(image, torch.Tensor):
            return self.sharpen_tensor(image if image.ndim == 4 else image[None]).reshape(image.shape)
        if isinstance(image, Image.Image):
            from sharpkd.imageio import jpeg_step

            arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            out = (self.sharpen_array(arr, jpeg_step(image)) * 255 + 0.5).astype(np.uint8)  # a JPEG's step, as files
            return Image.fromarray(out)
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {arr.shape}")
        if arr.dtype in (np.uint8, np.uint16):
            peak = float(np.iinfo(arr.dtype).max)
            out = self.sharpen_array(arr.astype(np.float32) / peak)
            return (out * peak + 0.5).astype(arr.dtype)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"arrays must be uint8, uint16 or float in [0, 1], got {arr.dtype}")
        return self.sharpen_array(arr).astype(arr.dtype)
