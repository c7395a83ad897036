"""Pilot for the real-time student on camera shake: a Wiener step with a per-photo kernel in front of it.

    python benchmarks/kernel_student_pilot.py --banks runs/shake-ft2/bank.pt runs/round-ft/bank-round.pt \
        --val runs/shake-ft2/val_bank.pt runs/round-ft/val_bank-round.pt [--steps 3000] [--json OUT]

The shipped student is a local network: it cannot undo camera shake without the kernel (realtime.md).
This pilot asks how much a kernel buys it. The kernel is the one the teacher's route would use (the
banks of ``python -m sharpkd.deblur.finetune``: for camera shake the refined L0 estimate, for Gaussian
blur the width fitted against the network teacher's output), so it is an estimate with the
estimator's real errors, never the true kernel. The photo is deconvolved by a Laplacian-regularised
Wiener filter with that kernel (``solve.wiener_deconvolve``, one FFT per channel), and a student with
six input channels (the photo and its Wiener deconvolution) restores the result.

The six-channel student starts as the shipped one (the new input channels' weights at zero, so it
first computes exactly what the shipped student does) and is fine-tuned on windows of the training
banks' crops, half of them with the Wiener channel and half with the photo itself in its place (the
"no kernel" case, so it keeps working where the teacher's router would not trust an estimate).
With ``--base wiener`` the network's residual is added to the Wiener channel instead of the photo
(the two are the same in the "no kernel" case). Loss: L1 to the ground truth. Validation: the
hold-out banks (whole crops, every case deconvolved with its estimate: no routing), mean gain in dB
per kind, for the shipped student, the Wiener step alone, the shipped student after the Wiener step,
and the fine-tuned six-channel student (with the Wiener channel, and with the photo in its place).

It measures the network part only: the per-photo estimate (seconds per photo with the teacher's
estimator) is timed only in the ``--kodak`` run. Training and validation never read Kodak24;
``--kodak`` scores the one trained model once, after training, with the teacher's router deciding
per photo whether the Wiener channel gets the deconvolution or the photo itself.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class GivenChannels(nn.Module):
    """Stands in for the student's Wiener bank: returns the channels set on it before the call.
    ``on_channels``: the student's residual is added to these channels rather than to the photo."""

    def __init__(self, on_channels: bool = False):
        super().__init__()
        self.channels: torch.Tensor | None = None
        self.on_channels = on_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.channels is None else self.channels


def six_channel_student(name: str = "student", on_channels: bool = False):
    """The shipped student with three more input channels whose weights start at zero."""
    from dataclasses import replace

    from sharpkd.checkpoint import load_model
    from sharpkd.models import Student
    from sharpkd.train import widen_inputs

    base, _ = load_model(name)
    wide = Student(config=replace(base.config, wiener=(1.0,)))  # a one-filter bank: 6 input channels
    wide.load_state_dict(widen_inputs(base.float().state_dict(), wide.state_dict()))
    wide.bank = GivenChannels(on_channels)
    return base.float().eval(), wide.float()


def run_net(net: nn.Module, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """``net`` on ``x`` padded to its multiple (``extra``: the six-channel student's given channels)."""
    m = int(net.config.multiple)
    h, w = x.shape[-2:]
    pad = (0, (-w) % m, 0, (-h) % m)
    if extra is not None:
        net.bank.channels = F.pad(extra, pad, mode="replicate")
    out = net(F.pad(x, pad, mode="replicate"))[..., :h, :w]
    if extra is not None:
        net.bank.channels = None
        if net.bank.on_channels:
            out = out + extra - x
    return out


def prepare(bank: list[dict], balance: float) -> list[dict]:
    """Float crops with their Wiener deconvolution (estimated kernel) computed once."""
    from sharpkd.deblur.solve import wiener_deconvolve

    out = []
    for c in bank:
        y = c["blurred"][None].float() / 255
        k = c["est"] / c["est"].sum()
        out.append({"kind": c["kind"], "y": y, "x": c["sharp"][None].float() / 255,
                    "w": wiener_deconvolve(y, k, balance)})
    return out


def q(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.clamp(0, 1) * 255) / 255


def gain(out: torch.Tensor, c: dict) -> float:
    from sharpkd.metrics import batch_psnr

    return float(batch_psnr(q(out), c["x"])[0] - batch_psnr(c["y"], c["x"])[0])


@torch.no_grad()
def evaluate(cases: list[dict], base: nn.Module, wide: nn.Module) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, list[float]]] = {}
    for c in cases:
        r = rows.setdefault(c["kind"], {"student": [], "wiener": [], "wiener+student": [], "six-channel": [],
                                        "six-channel, no kernel": []})
        r["student"].append(gain(run_net(base, c["y"]), c))
        r["wiener"].append(gain(c["w"], c))
        r["wiener+student"].append(gain(run_net(base, c["w"]), c))
        r["six-channel"].append(gain(run_net(wide, c["y"], c["w"]), c))
        r["six-channel, no kernel"].append(gain(run_net(wide, c["y"], c["y"]), c))
    return {k: {m: round(float(np.mean(v)), 3) for m, v in r.items()} | {"cases": len(r["student"])}
            for k, r in rows.items()}


def windows(cases: list[dict], n: int, p: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    ys, ws, xs = [], [], []
    for _ in range(n):
        c = cases[int(rng.integers(len(cases)))]
        h, w = c["y"].shape[-2:]
        y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        crop = [t[0, :, y0 : y0 + p, x0 : x0 + p] for t in (c["y"], c["w"], c["x"])]
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        crop = [torch.rot90(t, rot, dims=(-2, -1)) for t in crop]
        if flip:
            crop = [t.flip(-1) for t in crop]
        if rng.random() < 0.5:  # the "no kernel" case: the photo itself in the Wiener channel
            crop[1] = crop[0]
        ys.append(crop[0])
        ws.append(crop[1])
        xs.append(crop[2])
    return torch.stack(ys), torch.stack(ws), torch.stack(xs)


@torch.no_grad()
def kodak(data: str, kernels: str, base: nn.Module, wide: nn.Module, balance: float, limit: int = 0,
          estimate_side: int = 0) -> dict:
    """BENCHMARK.md v2 cases; the kernel comes from the shipped teacher's estimate of each photo, and
    the Wiener channel is used only where the teacher's router would deconvolve (``shake``/``round``)."""
    from tqdm import tqdm

    from sharpkd.deblur.solve import wiener_deconvolve
    from sharpkd.degrade import load_levin_kernels
    from sharpkd.evaluate import DEGRADATIONS, load_eval_images, protocol_cases
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr

    teacher = Sharpener.from_pretrained("teacher", tile=0).model
    if estimate_side:  # a cheaper estimate: the kernel from a smaller central crop
        from dataclasses import replace

        teacher.config = replace(teacher.config, estimate_side=estimate_side)
    images = load_eval_images(data, limit)
    cases = protocol_cases(images, load_levin_kernels(kernels))
    rows: dict[str, dict[str, list]] = {d: {"blurred": [], "student": [], "six-channel": [], "routes": [],
                                            "estimate_s": []} for d in DEGRADATIONS}
    for i, j, blurred, _ in tqdm(cases, desc="kodak"):
        sharp = images[i][1]
        y = torch.from_numpy(blurred).permute(2, 0, 1)[None].float() / 255
        t0 = time.time()
        est = teacher.estimate(y)[0]
        seconds = time.time() - t0
        w = wiener_deconvolve(y, est.kernel, balance) if est.route in ("shake", "round") else y
        r = rows[DEGRADATIONS[j]]
        for name, out in (("blurred", y), ("student", run_net(base, y)), ("six-channel", run_net(wide, y, w))):
            r[name].append(psnr(np.round(out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255), sharp))
        r["routes"].append(est.route)
        r["estimate_s"].append(seconds)
    return {d: {"blurred": round(float(np.mean(r["blurred"])), 2),
                "student_gain": round(float(np.mean(r["student"]) - np.mean(r["blurred"])), 2),
                "six_channel_gain": round(float(np.mean(r["six-channel"]) - np.mean(r["blurred"])), 2),
                "routes": {k: r["routes"].count(k) for k in sorted(set(r["routes"]))},
                "estimate_s": round(float(np.mean(r["estimate_s"])), 1)} for d, r in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--banks", nargs="+", required=True, help="training banks (sharpkd.deblur.finetune)")
    ap.add_argument("--val", nargs="+", required=True, help="validation banks (hold-out photos)")
    ap.add_argument("--student", default="student")
    ap.add_argument("--balance", type=float, default=1e-2, help="Wiener regularisation weight")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", choices=["photo", "wiener"], default="photo",
                    help="what the six-channel student's residual is added to")
    ap.add_argument("--json", help="write the validation figures here")
    ap.add_argument("--kodak", help="after training, also score BENCHMARK.md v2 on this folder (e.g. "
                    "../shared/datasets/eval/kodak24) with the teacher's per-photo kernel estimate")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--limit", type=int, default=0, help="only the first N Kodak images")
    ap.add_argument("--estimate-side", type=int, default=0,
                    help="estimate the kernel on a central crop this large (0: the teacher's own, 768)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train = prepare([c for b in args.banks for c in torch.load(b, weights_only=True)], args.balance)
    val = prepare([c for b in args.val for c in torch.load(b, weights_only=True)], args.balance)
    base, wide = six_channel_student(args.student, on_channels=args.base == "wiener")
    log = [{"step": 0, "val": evaluate(val, base, wide.eval())}]
    print(json.dumps(log[-1]), flush=True)
    opt = torch.optim.Adam(wide.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        wide.train()
        y, w, x = windows(train, args.batch, args.patch, rng)
        wide.bank.channels = w
        pred = wide(y) + (w - y if wide.bank.on_channels else 0)
        wide.bank.channels = None
        loss = F.l1_loss(pred, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            log.append({"step": step, "loss": round(loss.item(), 5), "minutes": round((time.time() - t0) / 60, 2),
                        "val": evaluate(val, base, wide.eval())})
            print(json.dumps(log[-1]), flush=True)
    summary = {"args": vars(args), "train_cases": len(train), "val_cases": len(val), "log": log}
    if args.kodak:
        summary["kodak"] = kodak(args.kodak, args.kernels, base, wide.eval(), args.balance, args.limit,
                                 args.estimate_side)
        print(json.dumps(summary["kodak"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
