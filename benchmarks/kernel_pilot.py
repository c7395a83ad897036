"""Pilot: can a small network estimate a camera-shake kernel well enough for a Wiener step to pay off?

    python benchmarks/kernel_pilot.py --steps 1000 --out runs/kernel-pilot
    python benchmarks/kernel_pilot.py --steps 3000 --out runs/kernel-pilot --resume   # go on

The shipped teacher deblurs Gaussian blur well and camera shake hardly at all (hold-out motion
gain about +0.1 to +0.6 dB). One design the issue suggests is a learned blur estimate feeding a
Wiener-style deconvolution. Before building it into the teacher, this pilot measures the first half
on its own: a kernel-estimation network (grey blurred patch -> 31 x 31 kernel, translation-invariant
by global pooling) trained on procedural camera shake (``sharpkd.degrade.motion_kernel``, as in
training), scored by the Wiener deconvolution it enables.

It trains on the training split (photos reduced to <= 768 px, as the shipped models) and validates
on the motion crops of the same fixed hold-out set the training runs log (``val_gain_by_kind
["motion"]``), so its numbers compare with the teacher's motion gain. Each validation line prints:
blurred input PSNR, Wiener with the true kernel (the ceiling of this design), Wiener with the
estimated kernel, and the gain of the latter. The Levin kernels of the benchmark are not used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale

from sharpkd.metrics import batch_psnr
from sharpkd.models.wiener import laplacian_response, rfft_frequencies

KSIZE = 31


class KernelNet(nn.Module):
    """(B, 1, H, W) grey blurred image -> (B, K, K) kernel (non-negative, sums to 1)."""

    def __init__(self, ksize: int = KSIZE, width: int = 32):
        super().__init__()
        self.ksize = ksize
        c = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GELU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.GELU())

        # image gradients are what reveal the blur; the first layer sees the patch and its two differences
        self.body = nn.Sequential(block(3, c, 2), block(c, 2 * c, 2), block(2 * c, 4 * c, 2), block(4 * c, 4 * c, 2))
        self.head = nn.Sequential(nn.Linear(8 * c, 512), nn.GELU(), nn.Linear(512, ksize * ksize))
        # start from a small centred blob (a Gaussian prior on the logits), not from a random spike:
        # a softmax that saturates on a wrong pixel early never recovers
        r2 = (torch.arange(ksize) - ksize // 2).float() ** 2
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.copy_((-(r2[:, None] + r2[None, :]) / (2 * 3.0 ** 2)).flatten())

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        x = grey - grey.mean(dim=(-2, -1), keepdim=True)
        dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
        f = self.body(torch.cat([x, 8 * dy, 8 * dx], dim=1))
        pooled = torch.cat([f.mean(dim=(-2, -1)), f.amax(dim=(-2, -1))], dim=1)
        logits = self.head(pooled)
        return logits.softmax(dim=-1).view(-1, self.ksize, self.ksize)


def wiener(x: torch.Tensor, kernel: torch.Tensor, lam: float = 5e-3) -> torch.Tensor:
    """Deconvolve (B, C, H, W) images by one kernel each (B, K, K): Laplacian-regularised Wiener
    filter in the frequency domain, after edge-replicating padding (against FFT wrap-around)."""
    k = kernel.shape[-1]
    p = k
    xp = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = xp.shape[-2:]
    kp = torch.zeros(x.shape[0], h, w, dtype=x.dtype, device=x.device)
    kp[:, :k, :k] = kernel
    kp = torch.roll(kp, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))  # kernel centre to the origin
    kf = torch.fft.rfft2(kp)[:, None]
    lap = laplacian_response(*rfft_frequencies(h, w, x.dtype, x.device))
    y = torch.fft.irfft2(torch.fft.rfft2(xp) * kf.conj() / (kf.abs() ** 2 + lam * lap * lap), s=(h, w))
    return y[..., p:h - p, p:w - p]


def psnr_8bit(x: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of ``x`` as saved to disk (clamped, 8-bit), as the training runs validate."""
    return batch_psnr(torch.round(x.clamp(0, 1) * 255) / 255, sharp)


def motion_validation(photos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The motion crops of the training runs' fixed hold-out set, with their true kernels."""
    from sharpkd.data import fixed_validation_set
    from sharpkd.degrade import pad_kernel
    from sharpkd.train import VAL_KINDS

    blurred, sharp, kernels = fixed_validation_set(photos, with_kernels=True)
    pick = slice(VAL_KINDS.index("motion"), None, len(VAL_KINDS))
    motion = np.stack([pad_kernel(k, KSIZE) for k in kernels[pick]]).astype(np.float32)
    return blurred[pick], sharp[pick], torch.from_numpy(motion)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/kernel-pilot")
    ap.add_argument("--minutes", type=float, default=30, help="stop after this much wall time")
    ap.add_argument("--steps", type=int, default=0, help="or after this many steps (0: no step limit)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--w-kernel", type=float, default=0.05, help="weight of the L1 distance to the true kernel")
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from sharpkd.data import PatchSampler, limit_size, load_photos, split_holdout
    from sharpkd.degrade import add_noise, blur, motion_kernel

    out = Path(args.out)
    if (out / "state.pt").exists() != args.resume:
        raise SystemExit(f"{out}: " + ("holds a pilot run already: add --resume or choose another --out"
                                       if not args.resume else "no state.pt to resume from"))
    out.mkdir(parents=True, exist_ok=True)
    train_photos, val_photos = split_holdout(load_photos("../shared/datasets/train"), 0.1)
    sampler = PatchSampler([limit_size(p, 768) for p in train_photos], args.patch_size, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    vb, vs, vk = motion_validation(val_photos)
    net = KernelNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    step, minutes_before = 0, 0.0
    if args.resume:
        st = torch.load(out / "state.pt", weights_only=True)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, minutes_before = st["step"], st["minutes"]
        rng = np.random.default_rng(args.seed + 1 + step)
        sampler.rng = np.random.default_rng(args.seed + step)
    log = open(out / "log.jsonl", "a")
    print(f"KernelNet: {sum(p.numel() for p in net.parameters()):,} parameters", flush=True)

    def validate() -> dict:
        net.eval()
        with torch.no_grad():
            est = torch.cat([net(rgb_to_grayscale(b)) for b in vb.split(16)])
            w_true = torch.cat([wiener(b, k) for b, k in zip(vb.split(16), vk.split(16), strict=True)])
            w_est = torch.cat([wiener(b, k) for b, k in zip(vb.split(16), est.split(16), strict=True)])
        net.train()
        p_b, p_t, p_e = (psnr_8bit(x, vs).mean().item() for x in (vb, w_true, w_est))
        return {"blurred": p_b, "wiener_true": p_t, "wiener_est": p_e, "gain_est": p_e - p_b,
                "gain_true": p_t - p_b, "kernel_l1": (est - vk).abs().sum(dim=(1, 2)).mean().item()}

    start = time.time()
    while (time.time() - start) / 60 < args.minutes and (args.steps <= 0 or step < args.steps):
        sharp = sampler.sharp_batch(args.batch_size)
        ks = np.stack([motion_kernel(rng, float(rng.uniform(3, 30)), size=KSIZE) for _ in range(args.batch_size)])
        k = torch.from_numpy(ks.astype(np.float32))
        b = blur(sharp, k)
        std = torch.from_numpy(rng.uniform(0, 0.01, args.batch_size)).float()
        b = torch.round(add_noise(b, std).clamp(0, 1) * 255) / 255
        est = net(rgb_to_grayscale(b))
        rec = wiener(b, est)
        m = 16
        loss_rec = (rec - sharp)[..., m:-m, m:-m].abs().mean()
        loss_k = (est - k).abs().sum(dim=(1, 2)).mean()
        loss = loss_rec + args.w_kernel * loss_k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.val_every == 0:
            rec_ = {"step": step, "minutes": minutes_before + (time.time() - start) / 60, "loss_rec": loss_rec.item(),
                    "loss_kernel": loss_k.item(), **validate()}
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec_.items()}), flush=True)
            log.write(json.dumps(rec_) + "\n")
            log.flush()
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "minutes": rec_["minutes"]}, out / "state.pt")
    log.close()


if __name__ == "__main__":
    main()
