"""The student's network rewritten for the ONNX Runtime kernels that run it: the same function, the same
weights re-arranged, a cheaper graph.

A :class:`~sharpkd.models.student.Student` folds 2x2 pixel blocks into channels (pixel-unshuffle) and
unfolds them at the end and after its bottleneck (pixel-shuffle). Exported as written, those become
reshape/transpose chains and ``DepthToSpace`` nodes between convolutions, and ONNX Runtime spends as much
time moving pixels around them as convolving (docs/realtime.md, "The exported graph"). Two forms:

- ``fp32`` (:data:`TARGETS`): the unshuffle and the head convolution become one strided convolution (a 3x3
  convolution over s x s blocks is a 3s x 3s convolution with stride s), and the ReLU after the
  bottleneck's shuffle moves in front of it, where ONNX Runtime fuses it into the convolution.
- ``int8``: ONNX Runtime runs quantised convolutions channels-last (NHWC) and transposes around every
  node that is not one. Here every fold and unfold is written on the NHWC view with its channels in
  depth-first order, so that the exporter's transposes cancel the runtime's and the whole network stays
  channels-last; the last convolution gets a fourth, zero colour slot (16 outputs rather than 12, which
  profiled faster), dropped after the final transpose.
- ``frame``: the int8 form for video frames, NHWC RGBA in and out (the alpha slot is ignored, and the
  fourth output channel carries nothing): with RGBA the fold and the last convolution need no padding
  or slicing, and :func:`sharpkd.export.export_int8_model` turns its float input and output into the
  bytes of the frame itself.

:func:`export_graph` picks the form; anything other than a plain student (a Wiener bank in front, an
unshuffle factor of 1) is exported as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("fp32", "int8", "frame")


def _depth_first(channels: int, s: int) -> list[int]:
    """Channel order of a depth-first fold: new channel ``k * channels + c`` is the pixel-unshuffle's
    channel ``c * s * s + k`` (``k`` = row offset * s + column offset in the s x s block)."""
    return [c * s * s + k for k in range(s * s) for c in range(channels)]


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[-2:]), bias=bias is not None, **kw)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def strided_head(head: nn.Conv2d, s: int) -> nn.Conv2d:
    """The pixel-unshuffle by ``s`` followed by ``head`` (3x3, padding 1) as one convolution of the
    unfolded image: kernel 3s x 3s, stride s, padding s."""
    w = head.weight.detach()
    out, folded = w.shape[:2]
    cin = folded // (s * s)
    k = w.reshape(out, cin, s, s, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(out, cin, 3 * s, 3 * s)
    return _conv(k, head.bias.detach(), stride=s, padding=s)


def fold_nhwc(y: torch.Tensor, s: int) -> torch.Tensor:
    """Pixel-unshuffle of an NHWC tensor: (B, H, W, C) -> NCHW (B, s*s*C, H/s, W/s), channels in
    depth-first order (:func:`_depth_first`)."""
    y = y.unflatten(1, (-1, s)).unflatten(3, (-1, s))  # B, H/s, s, W/s, s, C
    return y.permute(0, 1, 3, 2, 4, 5).flatten(3, 5).permute(0, 3, 1, 2)


def unfold_nhwc(x: torch.Tensor, channels: int, s: int) -> torch.Tensor:
    """Pixel-shuffle of an NCHW tensor whose channels are in depth-first order, written through its NHWC
    view: (B, s*s*channels, H, W) -> NHWC (B, s*H, s*W, channels)."""
    y = x.permute(0, 2, 3, 1).unflatten(3, (s, s, channels))  # B, H, W, s, s, C
    return y.permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(1, 2)


class ExportStudent(nn.Module):
    """A plain :class:`~sharpkd.models.student.Student` (``net``) in the graph form for ``target``.
    ``base``: the input channels the residual is added to (the photo; for the kernel student's
    six-channel :class:`~sharpkd.models.kstudent.GuidedNet`, the guide)."""

    def __init__(self, net: nn.Module, target: str, in_channels: int = 3, base: int = 0):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
        self.config, self.target, self.base = net.config, target, base
        self.input_channels = in_channels
        self.channels_last_io = target == "frame"  # (B, H, W, 4) in and out
        s, w = net.config.unshuffle, net.config.width
        self.s, self.width = s, w
        self.enc, self.down, self.low, self.dec = net.enc, net.down, net.low, net.dec
        up, tail = net.up[0], net.tail
        if target == "fp32":
            self.head = strided_head(net.head, s)
            self.up, self.tail = up, tail
            return
        head = net.head.weight.detach()
        if target == "frame":  # RGBA in: a fourth, ignored colour slot
            head = torch.cat([head.unflatten(1, (3, s * s)), head.new_zeros(head.shape[0], 1, s * s, 3, 3)], 1)
            head, in_channels = head.flatten(1, 2), 4
        self.head = _conv(head[:, _depth_first(in_channels, s)], net.head.bias.detach(), padding=1)
        self.input_channels = in_channels
        rows = _depth_first(w, 2)
        self.up = _conv(up.weight.detach()[rows], up.bias.detach()[rows])
        # the tail's outputs in depth-first order over four colour slots, the fourth always zero
        t_w, t_b = tail.weight.detach(), tail.bias.detach()
        weight = t_w.new_zeros(4 * s * s, *t_w.shape[1:])
        bias = t_b.new_zeros(4 * s * s)
        for k in range(s * s):
            weight[4 * k : 4 * k + 3] = t_w[k :: s * s]
            bias[4 * k : 4 * k + 3] = t_b[k :: s * s]
        self.tail = _conv(weight, bias, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.s
        if self.target == "fp32":
            h = self.enc(F.relu(self.head(x)))
            feat = self.low(F.relu(self.down(h)))
            h = self.dec(F.pixel_shuffle(F.relu(self.up(feat)), 2) + h)
            r = F.pixel_shuffle(self.tail(h), s)
        else:  # int8 and frame: channels-last throughout
            nhwc = x if self.target == "frame" else x.permute(0, 2, 3, 1)
            h = self.enc(F.relu(self.head(fold_nhwc(nhwc, s))))
            feat = self.low(F.relu(self.down(h)))
            h = self.dec(unfold_nhwc(F.relu(self.up(feat)), self.width, 2).permute(0, 3, 1, 2) + h)
            r = unfold_nhwc(self.tail(h), 4, s)
            if self.target == "frame":  # RGBA frames in and out; the fourth channel carries nothing
                return x + r
            r = r.permute(0, 3, 1, 2)[:, :3]
        return x[:, self.base : self.base + 3] + r


def export_graph(model: nn.Module, target: str | None = "fp32") -> nn.Module:
    """What :func:`sharpkd.export.export_onnx` traces for ``model``: the :class:`ExportStudent` form for
    a plain student or a kernel student's :class:`~sharpkd.models.kstudent.GuidedNet`, ``model`` itself
    for anything else or when ``target`` is None."""
    from sharpkd.models.kstudent import GuidedNet
    from sharpkd.models.student import Student

    if target is None:  # as written (benchmarks/export_speed.py compares against it)
        return model
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    guided = isinstance(model, GuidedNet)
    net = model.net if guided else model
    if not isinstance(net, Student) or net.bank is not None or net.config.unshuffle < 2:
        return model
    if guided and target == "frame":
        return model  # its input is photo and guide, not a frame
    net = net.deploy()
    return ExportStudent(net, target, in_channels=6 if guided else 3, base=3 if guided else 0).eval()
