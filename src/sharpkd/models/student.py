"""The student: a small encoder-decoder CNN built for CPU speed.

A pixel-unshuffle front end (Shi et al., CVPR 2016, run backwards) folds each ``unshuffle`` x
``unshuffle`` block of pixels into channels, so every convolution runs at 1/unshuffle (and the
bottleneck at 1/(2*unshuffle)) of the input resolution. Only plain 3x3 convolutions and ReLUs are
used: they are the operations that ONNX Runtime and INT8 kernels run fastest. The network predicts
a residual that is added to the blurred input.

Input and output: RGB in [0, 1], shape (B, 3, H, W), H and W multiples of ``config.multiple``
(the :class:`~sharpkd.infer.Sharpener` pads for you).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from sharpkd.models.blocks import ResBlock, conv3x3, fuse_rep
from sharpkd.models.wiener import WienerBank, with_bank


@dataclass(frozen=True)
class StudentConfig:
    unshuffle: int = 2
    width: int = 32  # channels at 1/unshuffle resolution
    low_width: int = 48  # channels at the bottleneck, 1/(2*unshuffle) resolution
    low_blocks: int = 2
    high_blocks: int = 1  # residual blocks before and after the bottleneck
    # Gaussian widths of a Wiener-deconvolution bank whose outputs join the input (empty: none)
    wiener: tuple[float, ...] = ()
    wiener_lam: float = 3e-3
    # train the 3x3 convolutions as re-parameterisable branches with this expansion (0: plain);
    # model files always hold the collapsed, plain network (see Student.deploy)
    rep: int = 0
    # extra 3-channel images the caller passes next to the input (``forward(x, guide=...)``): the
    # kernel student's Wiener deconvolution with a per-photo kernel (sharpkd.models.kstudent)
    guide: int = 0

    @property
    def multiple(self) -> int:
        return 2 * self.unshuffle


class Student(nn.Module):
    def __init__(self, *, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.config = config
        s, w, lw = config.unshuffle, config.width, config.low_width
        self.bank = WienerBank(config.wiener, config.wiener_lam) if config.wiener else None
        in_channels = 3 * (1 + len(config.wiener) + config.guide)  # the image, each bank output, each guide
        self.unshuffle = nn.PixelUnshuffle(s)
        r = config.rep
        self.head = conv3x3(in_channels * s * s, w, r)
        self.enc = nn.Sequential(*[ResBlock(w, r) for _ in range(config.high_blocks)])
        self.down = nn.Conv2d(w, lw, 2, stride=2)
        self.low = nn.Sequential(*[ResBlock(lw, r) for _ in range(config.low_blocks)])
        self.up = nn.Sequential(nn.Conv2d(lw, 4 * w, 1), nn.PixelShuffle(2))
        self.dec = nn.Sequential(*[ResBlock(w, r) for _ in range(config.high_blocks)])
        self.tail = conv3x3(w, 3 * s * s, r)
        self.shuffle = nn.PixelShuffle(s)
        if r:
            self.tail.zero_()  # start as the identity
        else:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        self.feature_channels = lw
        self.feature_stride = 2 * s

    def deploy(self) -> Student:
        """The same function as a plain network (every re-parameterisable convolution collapsed);
        ``self`` when there is nothing to collapse."""
        if not self.config.rep:
            return self
        plain = fuse_rep(self)
        plain.config = replace(self.config, rep=0)
        return plain

    def forward(self, x: torch.Tensor, return_features: bool = False, guide: torch.Tensor | None = None):
        z = with_bank(self.bank, x)
        if self.config.guide:
            if guide is None or guide.shape[1] != 3 * self.config.guide or guide.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"this student takes {self.config.guide} guide image(s) of the input's size")
            z = torch.cat([z, guide], dim=1)
        h = self.enc(F.relu(self.head(self.unshuffle(z))))
        feat = self.low(F.relu(self.down(h)))
        h = self.dec(F.relu(self.up(feat)) + h)
        out = x + self.shuffle(self.tail(h))
        return (out, feat) if return_features else out
