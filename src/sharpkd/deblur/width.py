"""A learned Gaussian-width estimate for the round route: measured, not adopted.

The blind teacher deconvolves round blur with a Gaussian whose width it fits against the network
teacher's output (:func:`sharpkd.deblur.estimate.fit_gaussian_width`). Where the network left blur
the fit comes out short, and the deconvolution is very sensitive to the width: a few tenths of a
pixel too wide can cost several dB.

:class:`WidthNet` reads the width from the blurred photo itself, one grey 64-px patch at a time, with
its own uncertainty (a Gaussian negative log-likelihood), so that flat patches, which say nothing
about blur, count for little when :func:`predict_width` combines the patches of a crop. It is trained
here on the training split, blurred with random widths, noise and 8-bit rounding
(``python -m sharpkd.deblur.width``). ``benchmarks/round_width.py`` compares it with the fit on
photos neither saw. It reads a soft photo's own softness as blur, and it was less accurate than the
fit on both photo sets, so the teacher does not use it (docs/results.md, "A learned width for the
round route"). It stays as the reproducible half of that result.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIGMA_RANGE = (0.3, 4.0)  # widths it is trained on
NOISE_MAX = 3 / 255  # training noise: uniform in [0, NOISE_MAX]


@dataclass(frozen=True)
class WidthNetConfig:
    channels: int = 16  # first layers (full resolution); then 2x and 4x at half and quarter resolution
    patch: int = 64  # side of the patches it reads
    stride: int = 32  # step between patches of a crop at run time
    side: int = 512  # central crop of the photo read at run time
    max_patches: int = 256  # evenly spread over the crop when there are more


class WidthNet(nn.Module):
    """(B, 1, P, P) grey patches in [0, 1] -> (B, 2): predicted width (px) and its log-variance."""

    def __init__(self, *, config: WidthNetConfig | None = None):
        super().__init__()
        self.config = config or WidthNetConfig()
        c = self.config.channels

        def conv(i: int, o: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*conv(1, c), *conv(c, c), *conv(c, 2 * c, 2), *conv(2 * c, 2 * c),
                                  *conv(2 * c, 4 * c, 2), *conv(4 * c, 4 * c))
        self.head = nn.Linear(4 * c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) * 4  # contrast kept: it tells signal from noise
        out = self.head(self.body(x).mean(dim=(-2, -1)))
        return torch.stack([out[:, 0] + 2.0, out[:, 1].clamp(-8, 4)], dim=1)


@torch.no_grad()
def predict_width(net: WidthNet, image: torch.Tensor) -> tuple[float, float]:
    """The Gaussian width (px) of a blurred photo ((3, H, W) or (1, 3, H, W) in [0, 1]) and its
    standard error: the patches of the central crop, each weighted by its inverse predicted variance."""
    from sharpkd.deblur.estimate import central_crop, to_grey

    cfg = net.config
    g = central_crop(to_grey(image), cfg.side).float()
    p = min(cfg.patch, *g.shape)
    tiles = g[None, None].unfold(2, p, cfg.stride).unfold(3, p, cfg.stride).reshape(-1, 1, p, p)
    if len(tiles) > cfg.max_patches:
        tiles = tiles[torch.linspace(0, len(tiles) - 1, cfg.max_patches).long()]
    out = net(tiles)
    w = torch.exp(-out[:, 1])
    width = float((w * out[:, 0]).sum() / w.sum())
    return width, float(1 / w.sum().sqrt())


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def blurred_patches(crops: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor, patch: int,
                    gen: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) sharp crops in [0, 1] -> (B, 1, patch, patch) grey patches blurred by a Gaussian of
    width ``sigmas[b]`` (BENCHMARK.md's grid), with noise of std ``noise[b]`` and 8-bit rounding."""
    from sharpkd.degrade import gaussian_kernel

    b, _, s, _ = crops.shape
    size = 2 * math.ceil(3 * SIGMA_RANGE[1]) + 1
    ks = torch.zeros(b, size, size, dtype=torch.float32)
    for i, sig in enumerate(sigmas.tolist()):
        k = torch.from_numpy(gaussian_kernel(sig)).float()
        o = (size - k.shape[0]) // 2
        ks[i, o : o + k.shape[0], o : o + k.shape[0]] = k
    y = F.conv2d(crops.reshape(1, 3 * b, s, s), ks.repeat_interleave(3, 0)[:, None].flip(-2, -1), groups=3 * b)
    y = y.reshape(b, 3, *y.shape[-2:])
    y = y + torch.randn(y.shape, generator=gen) * noise[:, None, None, None]
    y = torch.round(y.clamp(0, 1) * 255) / 255
    grey = 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]
    o = (grey.shape[-1] - patch) // 2
    return grey[:, None, o : o + patch, o : o + patch]


def sample_crops(photos: list[np.ndarray], n: int, side: int, rng: np.random.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        img = photos[int(rng.integers(len(photos)))]
        h, w = img.shape[:2]
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        c = img[y0 : y0 + side, x0 : x0 + side]
        c = np.rot90(c, int(rng.integers(4)))
        out.append(np.ascontiguousarray(c[:, ::-1] if rng.random() < 0.5 else c))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def validate(net: WidthNet, held: list, sigmas=(1.0, 2.0, 3.0), side: int = 384) -> dict[str, float]:
    """Mean absolute error (px) of :func:`predict_width` on central crops of the hold-out photos,
    blurred as BENCHMARK.md blurs (noise 1/255, rounding), per width."""
    from sharpkd.degrade import gaussian_kernel, protocol_degrade

    net.eval()
    errs: dict[str, float] = {}
    for s in sigmas:
        e = []
        for n, img in enumerate(held):
            h, w = img.shape[:2]
            c = min(side, h, w)
            sharp = np.ascontiguousarray(img[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
            y = torch.from_numpy(protocol_degrade(sharp, gaussian_kernel(s), 777 + n)).permute(2, 0, 1).float() / 255
            e.append(predict_width(net, y)[0] - s)
        errs[f"mae{s:g}"] = float(np.mean(np.abs(e)))
        errs[f"bias{s:g}"] = float(np.mean(e))
    net.train()
    return errs


def train(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from sharpkd.data import limit_size, load_photos, split_holdout

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pool, held = split_holdout(load_photos(args.data))
    crop = args.patch + 2 * math.ceil(3 * SIGMA_RANGE[1])
    photos = [p.pixels for p in (limit_size(p, 768) for p in pool) if min(p.pixels.shape[:2]) >= crop]
    held = [limit_size(p, 768).pixels for p in held]
    net = WidthNet(config=WidthNetConfig(channels=args.channels, patch=args.patch))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    t0, log = time.time(), []
    for step in range(1, args.steps + 1):
        sig = torch.empty(args.batch).uniform_(*SIGMA_RANGE, generator=gen)
        noise = torch.empty(args.batch).uniform_(0, NOISE_MAX, generator=gen)
        x = blurred_patches(sample_crops(photos, args.batch, crop, rng), sig, noise, args.patch, gen)
        out = net(x)
        loss = (0.5 * (out[:, 1] + (out[:, 0] - sig) ** 2 * torch.exp(-out[:, 1]))).mean()
        loss = loss + 0.1 * (out[:, 0] - sig).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.val_every == 0 or step == args.steps:
            row = {"step": step, "minutes": (time.time() - t0) / 60, "loss": float(loss.detach()),
                   **validate(net, held)}
            log.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    info = {"stage": "width", "steps": args.steps, "command": "python -m sharpkd.deblur.width " + args.argv,
            "wall_minutes": round((time.time() - t0) / 60, 1), "log": log, "data": args.data,
            "config": asdict(net.config)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, args.out, metadata={"sharpkd": json.dumps(info)})
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    import sys

    ap = argparse.ArgumentParser(description="Train the round route's width estimate (WidthNet).")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--out", default="runs/width/width.safetensors")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.argv = " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    train(args)


if __name__ == "__main__":
    main()
