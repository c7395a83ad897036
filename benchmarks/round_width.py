"""The round route's width: fitted against the network's output, or read by the learned estimate.

    python benchmarks/round_width.py --width runs/width/width.safetensors [--scales 0.9,1] [--guards 0.1,0.2]
                                     [--set holdout|skimage] [--sigmas 1,2,3] [--json docs/eval/round_width.json]

Hold-out photos of the training pool (``--set holdout``, reduced to a 768 px longer side) or
scikit-image's colour photos (``--set skimage``): never Kodak24, never seen by the width network. One
central crop each, blurred by Gaussians with BENCHMARK.md's noise and rounding.
The shipped teacher decides the route as it always does. Per case it prints the fitted width, the
learned one, and the gain (dB) of the round route's solver (HQS with its own prior) with:

* ``teacher``: what the shipped teacher does (the fitted width, or the network where it does not take
  the round route);
* ``learned@s``: the learned width x ``s`` on the photos that take the round route (the rest as the teacher);
* ``x{s}g{d}``: that width where it exceeds the fit by at most ``d`` px, the fit elsewhere (the
  teacher's ``width_scale`` and ``width_guard``);
* ``true``: the true width on those photos (the ceiling of any width estimate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.round(a.clamp(0, 1) * 255) / 255
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def load_width_net(path: str):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sharpkd.deblur.width import WidthNet, WidthNetConfig

    with safe_open(path, framework="pt") as f:
        cfg = json.loads(f.metadata()["sharpkd"])["config"]
    net = WidthNet(config=WidthNetConfig(**cfg))
    net.load_state_dict(load_file(path))
    return net.eval()


def strategies(fit: float, learned: float, scales: list[float], guards: list[float]) -> dict[str, float]:
    """The width each rule would deconvolve with: ``learned@s`` the learned width x s; ``x{s}g{d}`` that
    width unless it exceeds the fit by more than d px (then the fit: a learned width far above the fit
    is more likely the photo's own softness than blur; the teacher's ``width_guard``)."""
    out = {f"learned@{s:g}": s * learned for s in scales}
    out.update({f"x{s:g}g{d:g}": s * learned if s * learned <= fit + d else fit for s in scales for d in guards})
    return out


def run_case(teacher, net, sharp_np: np.ndarray, sigma: float, seed: int, scales: list[float],
             guards: list[float]) -> dict:
    from sharpkd.deblur.width import predict_width
    from sharpkd.degrade import gaussian_kernel, protocol_degrade

    sharp = torch.from_numpy(sharp_np).permute(2, 0, 1)[None].float() / 255
    y = torch.from_numpy(protocol_degrade(sharp_np, gaussian_kernel(sigma), seed)).permute(2, 0, 1)[None].float() / 255
    base = psnr(y, sharp)
    est = teacher.estimate(y)[0]
    noise = max(est.noise, teacher.config.round_noise)
    pred, err = predict_width(net, y[0])
    row = {"sigma": sigma, "blurred": base, "route": est.route, "learned": pred, "learned_se": err,
           "teacher": psnr(teacher.restore(y, [est]), sharp) - base}
    names = list(strategies(1.0, 1.0, scales, guards))
    if est.route != "round":
        row.update({k: row["teacher"] for k in names})
        return row
    row["fit"] = est.fit
    gains: dict[float, float] = {}  # width (0.01 px grid) -> gain, each width solved once

    def gain(width: float) -> float:
        w = round(max(width, 0.3), 2)
        if w not in gains:
            gains[w] = psnr(teacher._solve(y, gaussian_kernel(w), noise, route="round"), sharp) - base
        return gains[w]

    for k, w in strategies(row["fit"], pred, scales, guards).items():
        row[k] = gain(w)
    row["true"] = gain(sigma)
    return row


def photo_set(name: str, data: str, n: int) -> list:
    from sharpkd.data import limit_size, load_photos, skimage_photos, split_holdout

    if name == "skimage":  # scikit-image's colour photos (motorcycle_right repeats motorcycle_left)
        return [p for p in skimage_photos() if p.name != "skimage:motorcycle_right"][:n]
    return [limit_size(p, 768) for p in split_holdout(load_photos(data))[1]][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--width", required=True, help="a width-network file (python -m sharpkd.deblur.width)")
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--photos", type=int, default=7)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--sigmas", default="1,1.5,2,2.5,3")
    ap.add_argument("--scales", default="0.9,1")
    ap.add_argument("--guards", default="0.1,0.2,0.3")
    ap.add_argument("--set", default="holdout", choices=("holdout", "skimage"),
                    help="hold-out photos of the training pool, or scikit-image's colour photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import sharpkd.models  # noqa: F401  (registers the architectures before the teacher module)
    from sharpkd.infer import Sharpener

    held = photo_set(args.set, args.data, args.photos)
    teacher = Sharpener.from_pretrained(args.teacher, tile=0).model
    net = load_width_net(args.width)
    scales = [float(s) for s in args.scales.split(",")]
    guards = [float(d) for d in args.guards.split(",")]
    rows = []
    with torch.no_grad():
        for sigma in (float(s) for s in args.sigmas.split(",")):
            for n, photo in enumerate(held):
                h, w = photo.pixels.shape[:2]
                c = min(args.crop, h, w)
                y0, x0 = (h - c) // 2, (w - c) // 2
                sharp_np = np.ascontiguousarray(photo.pixels[y0 : y0 + c, x0 : x0 + c])
                row = {"photo": n, **run_case(teacher, net, sharp_np, sigma, 777 + n, scales, guards)}
                rows.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    keys = ["teacher", *strategies(1.0, 1.0, scales, guards)]
    print("\nmean gain (dB) per width; fitted and learned width (mean |error| px) on the round-route photos\n")
    print("| sigma | round | fit error | learned error | " + " | ".join(keys) + " | true (round only) |")
    print("|---|---|---|---|" + "---|" * (len(keys) + 1))
    for sigma in dict.fromkeys(r["sigma"] for r in rows):
        sel = [r for r in rows if r["sigma"] == sigma]
        rnd = [r for r in sel if r["route"] == "round"]
        fe = np.mean([abs(r["fit"] - sigma) for r in rnd]) if rnd else float("nan")
        le = np.mean([abs(r["learned"] - sigma) for r in sel])
        true = np.mean([r["true"] for r in rnd]) if rnd else float("nan")
        print(f"| {sigma:g} | {len(rnd)}/{len(sel)} | {fe:.3f} | {le:.3f} | "
              + " | ".join(f"{np.mean([r[k] for r in sel]):+.2f}" for k in keys) + f" | {true:+.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
