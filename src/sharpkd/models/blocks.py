"""Building blocks shared by the networks, and the padding every network input goes through.

:class:`RepConv` is a 3x3 convolution that trains as several linear branches and collapses into one
plain 3x3 convolution for inference (structural re-parameterisation: RepVGG, Ding et al. CVPR 2021;
ECBSR, Zhang et al. ACM MM 2021; the expand-then-contract branch follows ExpandNets, Guo et al.
NeurIPS 2020). Every branch is linear in the input and uses zero padding, so their sum *is* a 3x3
convolution: the extra branches change how training moves through weight space, not what the
deployed network can compute or costs. :func:`fuse_rep` swaps each RepConv of a module for its
collapsed convolution.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom/right to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class RepConv(nn.Module):
    """A 3x3 convolution (stride 1, padding 1) trained as the sum of: a 3x3 convolution, a 1x1
    convolution, the identity (when input and output widths agree) and a 1x1 expansion to
    ``expand`` x the output width followed by a bias-free 3x3 convolution. :meth:`fused` returns
    the single ``nn.Conv2d`` that computes the same function."""

    def __init__(self, cin: int, cout: int, expand: int = 2):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.conv3 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        mid = max(1, expand * cout)
        self.expand = nn.Conv2d(cin, mid, 1, bias=False)
        self.contract = nn.Conv2d(mid, cout, 3, padding=1, bias=False)
        self.identity = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(x) + self.conv1(x) + self.contract(self.expand(x))
        return y + x if self.identity else y

    def fused_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel (cout, cin, 3, 3), bias (cout,)) of the equivalent single convolution."""
        w = self.conv3.weight.detach().clone()
        w[:, :, 1, 1] += self.conv1.weight.detach()[:, :, 0, 0]
        # contract(expand(x)): sum over the middle channels of the 3x3 taps times the 1x1 mixing
        w += torch.einsum("omyx,mi->oiyx", self.contract.weight.detach(), self.expand.weight.detach()[:, :, 0, 0])
        if self.identity:
            w[:, :, 1, 1] += torch.eye(self.cout, dtype=w.dtype, device=w.device)
        return w, self.conv3.bias.detach().clone()

    def fused(self) -> nn.Conv2d:
        w, b = self.fused_weight()
        conv = nn.Conv2d(self.cin, self.cout, 3, padding=1).to(device=w.device, dtype=w.dtype)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b)
        return conv

    def zero_(self) -> RepConv:
        """All branches zero and no identity: a convolution that starts at exactly 0 (for output layers)."""
        for p in self.parameters():
            nn.init.zeros_(p)
        self.identity = False
        return self


def conv3x3(cin: int, cout: int, rep: int = 0) -> nn.Module:
    """A plain 3x3 convolution (``rep`` 0) or a :class:`RepConv` with expansion ``rep``."""
    return RepConv(cin, cout, rep) if rep else nn.Conv2d(cin, cout, 3, padding=1)


def fuse_rep(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every :class:`RepConv` inside it replaced by its collapsed convolution."""
    module = copy.deepcopy(module)
    for _, child in list(module.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, RepConv):
                setattr(child, cname, sub.fused())
    return module


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))): two 3x3 convolutions with a skip connection, width unchanged
    (re-parameterisable ones when ``rep`` > 0, see :class:`RepConv`)."""

    def __init__(self, channels: int, rep: int = 0):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, rep)
        self.conv2 = conv3x3(channels, channels, rep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))
