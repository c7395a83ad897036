"""Teacher networks.

``ResNetTeacher`` (preset ``resnet8``) is the original design: "an initial convolution, 8 residual
blocks, a reconstruction layer" in the manner of EDSR (Lim et al., CVPR 2017 workshops), predicting
a residual added to the blurred input.

``NAFTeacher`` (preset ``nafunet``) is a U-Net of NAFNet blocks (Chen et al., "Simple Baselines for
Image Restoration", ECCV 2022): LayerNorm, point-wise and depth-wise convolutions and the
SimpleGate nonlinearity. The simplified channel attention of NAFNet pools over the whole image,
which makes the output depend on image size and breaks tiled inference; it is left out here so the
network stays translation-equivariant.

Both take RGB in [0, 1], shape (B, 3, H, W), and return the same shape; ``forward(x,
return_features=True)`` also returns the feature map used for feature distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sharpkd.models.blocks import ResBlock
from sharpkd.models.wiener import WienerBank, with_bank


@dataclass(frozen=True)
class ResNetTeacherConfig:
    channels: int = 64
    blocks: int = 8

    multiple = 1  # input size constraint


class ResNetTeacher(nn.Module):
    def __init__(self, *, config: ResNetTeacherConfig = ResNetTeacherConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(c) for _ in range(config.blocks)])
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as the identity: output = input
        nn.init.zeros_(self.tail.bias)
        self.feature_channels = c
        self.feature_stride = 1

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.body(self.head(x))
        out = x + self.tail(f)
        return (out, f) if return_features else out


@dataclass(frozen=True)
class NAFTeacherConfig:
    width: int = 24
    enc_blocks: tuple[int, ...] = (1, 1, 2)
    middle_blocks: int = 4
    dec_blocks: tuple[int, ...] = (1, 1, 1)
    # Gaussian widths of a Wiener-deconvolution bank whose outputs join the input (empty: none)
    wiener: tuple[float, ...] = ()
    wiener_lam: float = 3e-3

    @property
    def multiple(self) -> int:
        return 2 ** len(self.enc_blocks)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class NAFBlock(nn.Module):
    """NAFNet block without the global channel attention: a gated depth-wise conv mixer and a
    gated feed-forward, each with a learnable residual scale (initialised to zero)."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        dw = c * expand
        self.norm1 = LayerNorm2d(c)
        self.pw1 = nn.Conv2d(c, dw, 1)
        self.dw = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.pw2 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ff1 = nn.Conv2d(c, c * expand, 1)
        self.ff2 = nn.Conv2d(c * expand // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @staticmethod
    def gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.gate(self.dw(self.pw1(self.norm1(x)))))
        x = x + self.beta * y
        y = self.ff2(self.gate(self.ff1(self.norm2(x))))
        return x + self.gamma * y


class NAFTeacher(nn.Module):
    def __init__(self, *, config: NAFTeacherConfig = NAFTeacherConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.bank = WienerBank(config.wiener, config.wiener_lam) if config.wiener else None
        in_channels = 3 * (1 + len(config.wiener))  # the image, then each bank output
        self.intro = nn.Conv2d(in_channels, w, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = w
        for n in config.enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c) for _ in range(config.middle_blocks)])
        self.feature_channels = c
        self.feature_stride = config.multiple
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in config.dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.ending = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.ending.weight)  # start as the identity: output = input
        nn.init.zeros_(self.ending.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = with_bank(self.bank, x)
        h = self.intro(z)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.middle(h)
        feat = h
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            h = dec(up(h) + skip)
        out = x + self.ending(h)
        return (out, feat) if return_features else out
