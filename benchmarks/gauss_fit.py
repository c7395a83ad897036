"""Round blur: a Gaussian width fitted against the network teacher's output, then deconvolved.

    python benchmarks/gauss_fit.py [--photos 7] [--crop 384] [--motion 3] [--json docs/eval/gauss_fit.json]
                                   [--teacher FILE]

Hold-out photos of the training pool (never Kodak24), reduced to a 768 px longer side, one central
crop each, blurred by Gaussians (sigma 1, 2, 3) and by procedural camera-shake kernels, with 1/255
noise and 8-bit rounding (BENCHMARK.md's recipe). Per case it prints the gain (dB) of:

* ``net``: the network teacher (``teacher-net``), which took all round blur before the round route;
* ``hqs_true``: HQS + FFDNet with the true kernel (the ceiling of any estimate);
* ``hqs_fit``: HQS + FFDNet with the Gaussian fitted against the network's output (``fit`` px),
  whatever the blur: what the round route would cost if it let every photo in;
* ``teacher``: the teacher (``--teacher``, the shipped one by default), whose ``route`` shows what its checks decided,

Both HQS columns use the round route's prior (the fine-tuned ``round_denoiser`` when the file has one),
and ``resid`` is the fit's gradient residual over sqrt(2) x the estimated noise (the round route
needs at most ``round_residual``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.round(a.clamp(0, 1) * 255) / 255
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--photos", type=int, default=7)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--sigmas", default="1,2,3")
    ap.add_argument("--motion", type=int, default=3, help="this many procedural camera-shake kernels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--teacher", default="teacher", help="the blind-teacher file (its round prior, if any, solves)")
    ap.add_argument("--teacher-only", action="store_true", help="score only the teacher (its route and gain; "
                    "no network-alone or fixed-kernel solver columns): to compare teacher files quickly")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.deblur.estimate import fit_gaussian_width
    from sharpkd.degrade import gaussian_kernel, make_kernel, protocol_degrade
    from sharpkd.infer import Sharpener

    _, held = split_holdout(load_photos(args.data))
    held = [limit_size(p, 768) for p in held][: args.photos]
    teacher = Sharpener.from_pretrained(args.teacher, tile=0).model
    cfg = teacher.config
    cases = [(f"gauss{s:g}", gaussian_kernel(s)) for s in (float(v) for v in args.sigmas.split(",") if v)]
    rng = np.random.default_rng(5)
    cases += [(f"motion{m}", make_kernel("motion", length=float(rng.uniform(8, 25)), seed=int(rng.integers(1 << 30)),
                                         size=27)) for m in range(args.motion)]
    rows = []
    for kind, k in cases:
        for n, photo in enumerate(held):
            h, w = photo.pixels.shape[:2]
            c = min(args.crop, h, w)
            y0, x0 = (h - c) // 2, (w - c) // 2
            sharp_np = np.ascontiguousarray(photo.pixels[y0 : y0 + c, x0 : x0 + c])
            sharp = torch.from_numpy(sharp_np).permute(2, 0, 1)[None].float() / 255
            y = torch.from_numpy(protocol_degrade(sharp_np, k, 777 + n)).permute(2, 0, 1)[None].float() / 255
            base = psnr(y, sharp)
            with torch.no_grad():
                est = teacher.estimate(y)[0]
                row = {"kind": kind, "photo": n, "blurred": base}
                if not args.teacher_only:  # the fit and the fixed-kernel solver runs
                    noise = est.noise  # the teacher's own estimate, floored as it floors it
                    z = teacher._network(y)
                    fit, resid = fit_gaussian_width(y[0], z[0])
                    floor = max(noise, cfg.round_noise)
                    row |= {"fit": fit, "resid": resid / (math.sqrt(2) * noise), "net": psnr(z, sharp) - base,
                            "hqs_true": psnr(teacher._solve(y, k, floor, route="round"), sharp) - base,
                            "hqs_fit": psnr(teacher._solve(y, gaussian_kernel(max(fit, 0.3)), floor, route="round"),
                                            sharp) - base}
                row |= {"teacher": psnr(teacher.restore(y, [est]), sharp) - base, "route": est.route}
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    keys = ["blurred", "teacher"] if args.teacher_only else ["blurred", "net", "hqs_true", "hqs_fit", "teacher"]
    print("\nmean gain (dB) per blur; routes taken by the teacher\n")
    print("| blur | " + " | ".join(keys) + " | routes |\n|---|" + "---|" * (len(keys) + 1))
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sel = [r for r in rows if r["kind"] == kind]
        routes = ", ".join(f"{r} {sum(x['route'] == r for x in sel)}" for r in sorted({x["route"] for x in sel}))
        print(f"| {kind} | {np.mean([r['blurred'] for r in sel]):.2f} | "
              + " | ".join(f"{np.mean([r[k] for r in sel]):+.2f}" for k in keys[1:]) + f" | {routes} |")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
