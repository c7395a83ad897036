"""Backends: what runs the pixels under a :class:`~sharpkd.infer.Sharpener`.

A backend is a callable on (B, 3, H, W) float tensors in [0, 1] that declares two things: ``kind``
(``torch``, ``onnx``, ``onnx-int8`` or ``classical``) and ``multiple``, the number that the input's
height and width must be multiples of (the Sharpener pads to it). There are three:

- :class:`TorchBackend`, a sharpkd network in PyTorch (any device; the blind teacher runs only here);
- :class:`OnnxBackend`, an exported ``.onnx`` file in ONNX Runtime on the CPU;
- :class:`UnsharpMask`, the classical baseline.

:func:`resolve` is the one place that turns a name (``student``, ``teacher``, ``unsharp``, a model
file, a run folder, a ``.onnx`` file) and a backend name into a backend. Loading only loads: it never
exports or quantises. An ONNX backend needs an exported file, either the one given or the
``NAME.onnx`` / ``NAME-int8.onnx`` that sits beside the model file (the shipped student has both;
``sharpkd export`` makes them for any other model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sharpkd.checkpoint import SHIPPED, CheckpointError, load_model, read_info
from sharpkd.deblur.solve import symmetric_pad

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_INPUT, ONNX_OUTPUT = "image", "sharp"


class BackendError(ValueError):
    """A model cannot run on the backend asked for (the message says what to do instead)."""


@runtime_checkable
class Backend(Protocol):
    kind: str
    multiple: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """A sharpkd network in PyTorch, in eval mode on ``device``."""

    kind = "torch"

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.multiple = int(getattr(getattr(module, "config", None), "multiple", 1))

    @property
    def blind(self) -> bool:
        """True for a model that estimates the blur of the whole photo first (the blind teacher)."""
        return hasattr(self.module, "estimate") and hasattr(self.module, "restore")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu" and not self.blind and x.ndim == 4:
            # PyTorch's CPU convolutions run the students faster on channels-last activations
            # (docs/realtime.md, "The exported graph"); the blind teacher keeps its own layout
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x)


class OnnxBackend:
    """An exported sharpkd ONNX model run by ONNX Runtime on the CPU (``threads``: intra-op threads,
    0 for ONNX Runtime's default). ``kind`` is ``onnx-int8`` for a quantised file."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no ONNX model at {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # no busy-waiting between runs: ONNX Runtime's spinning threads and PyTorch's (the pre- and
        # post-processing around each run) otherwise fight over the same cores (docs/realtime.md:
        # `sharpkd bench` on 2 cores, the 139k-weight student at 640x480, 15.5 -> 25.0 FPS)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(f"{path} is not a loadable ONNX model: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if "sharpkd" not in meta:
            raise CheckpointError(f"{path} is an ONNX model but not a sharpkd export (no 'sharpkd' metadata)")
        try:
            self.info = json.loads(meta["sharpkd"])
            self.multiple = int(self.info["multiple"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: unreadable sharpkd metadata ({e})") from e
        if not 1 <= self.multiple <= 64:
            raise CheckpointError(f"{path}: implausible size multiple {self.multiple}")
        self.kind = "onnx-int8" if self.info.get("precision") == "int8" else "onnx"
        # an INT8 student exported for frames reads and writes (B, H, W, 4) RGBA bytes (sharpkd.export)
        self.frames = self.info.get("io") == "rgba8"
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames:  # float images through the frame graph: 8-bit levels, which is what its INT8
            # input quantisation keeps of them anyway
            rgb = x.detach().cpu().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            rgba = torch.cat([rgb, rgb.new_zeros(*rgb.shape[:3], 1)], dim=3).numpy()
            out = torch.from_numpy(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: rgba})[0])
            return out[..., :3].permute(0, 3, 1, 2).float().div_(255)
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: arr})[0])

    def run_frame(self, rgba: np.ndarray) -> np.ndarray:
        """One (H, W, 4) uint8 RGBA frame, H and W multiples of :attr:`multiple` -> the sharpened frame,
        the same shape (its fourth channel carries nothing). Only for a file with :attr:`frames`."""
        if not self.frames:
            raise BackendError(f"{self.path} takes float images, not frames")
        return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: rgba[None]})[0][0]


class UnsharpMask:
    """The classical baseline as a backend: ``x + amount * (x - gaussian(x, radius))``, the same
    filter as ``skimage.filters.unsharp_mask(radius=1, amount=1)`` used by the benchmark."""

    kind = "classical"
    multiple = 1

    def __init__(self, radius: float = 1.0, amount: float = 1.0):
        from sharpkd.degrade import gaussian_kernel

        self.radius, self.amount = radius, amount
        self.kernel = gaussian_kernel(radius, 2 * int(4 * radius + 0.5) + 1)  # skimage truncates at 4 sigma

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel.shape[0] // 2
        c = x.shape[1]
        k = torch.as_tensor(self.kernel, dtype=x.dtype, device=x.device).expand(c, 1, -1, -1)
        blurred = F.conv2d(symmetric_pad(x, p), k, groups=c)
        return (x + self.amount * (x - blurred)).clamp(0, 1)


CLASSICAL = {"unsharp": UnsharpMask}


def _arch(name_or_path: str | Path) -> str:
    try:
        return str(read_info(name_or_path).get("arch"))
    except CheckpointError:
        return ""


def kernel_student_onnx(name_or_path: str | Path, int8: bool = False, threads: int = 0) -> TorchBackend:
    """The kernel student with its network run by ONNX Runtime (the exported file beside its weights);
    the blur estimate and the Wiener step stay in PyTorch, once per photo and one FFT per channel."""
    model = load_model(name_or_path)[0]
    onnx = OnnxBackend(onnx_file_for(name_or_path, int8=int8), threads)
    if onnx.info.get("input_channels") != 6:
        raise BackendError(f"{onnx.path} is not the export of a kernel student (it takes no guide)")
    model.runner = onnx
    backend = TorchBackend(model, "cpu")
    backend.kind = onnx.kind
    return backend


def onnx_file_for(name_or_path: str | Path, int8: bool = False) -> Path:
    """The exported ONNX file of a shipped name or a model file: ``NAME.onnx`` (``NAME-int8.onnx``
    with ``int8``) beside its weights. Raises :class:`BackendError` when there is none."""
    key = str(name_or_path)
    weights = SHIPPED.get(key, Path(name_or_path))
    if weights.is_dir():
        weights = weights / "model.safetensors"
    candidate = weights.with_name(f"{weights.stem}{'-int8' if int8 else ''}.onnx")
    if candidate.is_file():
        return candidate
    flag = " --int8" if int8 else ""
    raise BackendError(f"no {'INT8 ' if int8 else ''}ONNX export of {key} (looked for {candidate.name} beside the "
                       f"weights); make one with `sharpkd export --model {key}{flag} -o {candidate.name}` and pass "
                       "that file as the model, or use --backend torch")


def fastest_backend(name_or_path: str | Path, device: str | torch.device = "cpu") -> str:
    """The backend that runs ``name_or_path`` fastest on video: ``onnx-int8`` when an INT8 export sits
    beside its weights (the shipped students: 0.03 and 0.05 dB below fp32 on Kodak24, about three times
    the frame rate; docs/realtime.md), ``torch`` otherwise (the blind teacher, CUDA, models without one)."""
    key = str(name_or_path)
    if str(device) != "cpu" or key in CLASSICAL or key.endswith(".onnx") or _arch(key) == "blind":
        return "torch"
    try:
        onnx_file_for(key, int8=True)
    except BackendError:
        return "torch"
    return "onnx-int8"


def resolve(name_or_path: str | Path = "student", backend: str = "torch", *, device: str | torch.device = "cpu",
            threads: int = 0) -> Backend:
    """The backend that runs ``name_or_path`` with ``backend`` (one of :data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    key = str(name_or_path)
    if key in CLASSICAL:
        return CLASSICAL[key]()
    if str(device) == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' requested but CUDA is not available")
    if backend == "torch" and not key.endswith(".onnx"):
        return TorchBackend(load_model(name_or_path, device)[0], device)
    if str(device) != "cpu":
        raise BackendError("the onnx backends run on the CPU; use --backend torch for CUDA")
    if key.endswith(".onnx"):
        return OnnxBackend(key, threads)
    arch = _arch(name_or_path)
    if arch == "blind":
        raise BackendError(f"{key} is the blind teacher (kernel estimation + iterative solver), which runs on "
                           "the torch backend only; use --backend torch")
    if arch == "kstudent":
        return kernel_student_onnx(name_or_path, backend == "onnx-int8", threads)
    return OnnxBackend(onnx_file_for(name_or_path, int8=backend == "onnx-int8"), threads)
