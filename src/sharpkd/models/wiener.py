"""A bank of Wiener deconvolutions: a deconvolution prior in front of a network.

Blind deblurring asks a network to invert a blur it never sees. For the common Gaussian-like
blurs of defocus and soft optics, the inverse is known in closed form once the blur width is
known: the Wiener filter ``conj(G) / (|G|^2 + lam |L|^2)`` (``G`` the blur's frequency response,
``L`` the discrete Laplacian that keeps noise from being amplified). :class:`WienerBank` applies it
for a fixed list of Gaussian widths and hands all the results to the network next to the blurred
input. The network then only has to decide, pixel by pixel, which deconvolution is right (a
mismatched one shows as ringing or left-over blur) and to clean up what a linear filter cannot do:
large-support inverse filters come for a few FFTs instead of many layers of 3x3 convolutions.

The filters are computed from the input size on the fly (no stored weights), in the frequency
domain with ``torch.fft``; the image is padded by edge replication first so that the FFT's
wrap-around does not pull one border into the other. Everything exports to ONNX (opset 18 ``DFT``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rfft_frequencies(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed frequencies (cycles/pixel) of an ``rfft2`` of an h x w image: (h,) rows and (w // 2 + 1,)
    columns. Built from ``arange`` so that it exports to ONNX."""
    fy = torch.arange(h, dtype=dtype, device=device) / h
    fy = torch.where(fy > 0.5, fy - 1, fy)
    fx = torch.arange(w // 2 + 1, dtype=dtype, device=device) / w
    return fy, fx


def laplacian_response(fy: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """Frequency response L of the discrete 5-point Laplacian on the (fy, fx) grid (real, >= 0);
    the Wiener filters below are regularised by ``lam * |L|^2``."""
    return 4 - 2 * torch.cos(2 * math.pi * fy)[:, None] - 2 * torch.cos(2 * math.pi * fx)[None, :]


class WienerBank(nn.Module):
    """(B, C, H, W) -> (B, C * len(sigmas), H, W): Wiener deconvolutions of ``x`` for Gaussian blurs
    of the given standard deviations (pixels), bank-major (all channels of sigma 0, then sigma 1...)."""

    def __init__(self, sigmas: tuple[float, ...], lam: float = 3e-3, pad: int = 16):
        super().__init__()
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ValueError(f"WienerBank needs positive sigmas, got {sigmas}")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.lam = float(lam)
        self.pad = int(pad)
        # the continuous Gaussian's transfer function is exp(-2 pi^2 sigma^2 f^2), f in cycles/pixel
        s2 = torch.tensor([2 * math.pi ** 2 * s * s for s in self.sigmas]).view(-1, 1, 1)
        self.register_buffer("s2", s2, persistent=False)

    def filters(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The (K, h, w // 2 + 1) real frequency responses for an h x w (padded) image."""
        fy, fx = rfft_frequencies(h, w, dtype, device)
        g = torch.exp(-self.s2.to(dtype) * (fy[:, None] ** 2 + fx[None, :] ** 2))
        lap = laplacian_response(fy, fx)
        return g / (g * g + self.lam * lap * lap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        xp = F.pad(x, (p, p, p, p), mode="replicate")
        h, w = xp.shape[-2], xp.shape[-1]
        resp = self.filters(h, w, x.dtype, x.device)
        spec = torch.fft.rfft2(xp)
        # complex tensors only meet elementwise ops: the ONNX exporter cannot reshape or join them
        y = torch.cat([torch.fft.irfft2(spec * r, s=(h, w)) for r in resp.unbind(0)], dim=1)
        return y[..., p:h - p, p:w - p]

    def macs_per_pixel(self, channels: int = 3, size: int = 512) -> float:
        """An estimate of the FFT work (not seen by PyTorch's FLOP counter): a real FFT of n points
        costs about 2.5 n log2(n) multiply-adds; one forward transform per input channel, one inverse
        transform and a multiplication by the filter per output channel, on a size x size tile
        padded by ``pad``."""
        n = (size + 2 * self.pad) ** 2
        fft = 2.5 * math.log2(n)
        k = len(self.sigmas)
        return channels * (fft + k * (fft + 2)) * n / (size * size)


def with_bank(bank: WienerBank | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` followed by its Wiener bank channels (``x`` itself when there is no bank)."""
    return x if bank is None else torch.cat([x, bank(x)], dim=1)
