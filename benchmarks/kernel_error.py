"""How good is the blind teacher's blur estimate? Error ratios on Kodak24 x Levin and procedural kernels.

    python benchmarks/kernel_error.py --out docs/eval/kernel_error.json            # all 24 images
    python benchmarks/kernel_error.py --limit 4                                     # quick look

For each image the BENCHMARK.md (version 2) motion degradation is made (Levin kernel k{i mod 8 + 1},
re-centred, 1/255 noise, 8 bit), and a second copy with a procedural camera-shake kernel from
``sharpkd.degrade.make_kernel`` (seeded by the image index, length 8-25 px). The teacher estimates
the kernel from the blurred photo alone; then the *same* non-blind solver (HQS with FFDNet, the
teacher's settings, the teacher's noise estimate) runs once with the true kernel and once with
the estimate. Reported per kernel family:

* error ratio, in dB: PSNR(true kernel) - PSNR(estimate), the usual measure of blind
  deblurring (Levin et al. 2009 use the ratio of the two errors, i.e. 10^(dB/10));
* the share of images whose ratio is below 3 (4.8 dB), the threshold Levin et al. call good;
* gains of both over the blurred input, and seconds per megapixel of the estimate (with the teacher's
  second estimate and kernel refinement when it takes the camera-shake route);
* the share of photos the teacher routes to deconvolution (the rest go to its network), the error
  ratio on those, and the gain of the teacher itself (whichever route it took).

This reads Kodak24, so it is an evaluation: nothing in the estimator was tuned on its output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/eval/kodak24")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tqdm.auto import tqdm

    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.solve import hqs_deconvolve
    from sharpkd.degrade import load_levin_kernels, make_kernel, protocol_degrade, protocol_kernel
    from sharpkd.evaluate import load_eval_images, to_uint8
    from sharpkd.metrics import psnr

    teacher, _ = load_model("teacher")
    cfg = teacher.config
    images = load_eval_images(args.data, args.limit)
    levin = load_levin_kernels(args.kernels)
    rows = []
    for i, (name, sharp) in enumerate(tqdm(images, desc="kernel error", unit="img")):
        procedural = make_kernel("motion", length=float(8 + (i * 7) % 18), seed=i, size=31)
        cases = (("levin", protocol_kernel(3, i, levin), 3000 + i), ("procedural", procedural, 9000 + i))
        for family, k, seed in cases:
            blurred = protocol_degrade(sharp, k, seed)
            x = torch.from_numpy(blurred.astype(np.float32) / 255).permute(2, 0, 1)[None]
            t0 = time.perf_counter()
            est = teacher.estimate(x)[0]
            seconds = time.perf_counter() - t0

            def solve(kernel: np.ndarray, x=x, noise=est.noise, sharp=sharp) -> float:
                out = hqs_deconvolve(x, kernel, teacher.denoiser, noise=noise, iters=cfg.iters,
                                     sigma_max=cfg.sigma_max, lam=cfg.lam, cg_steps=cfg.cg_steps)
                return psnr(sharp, to_uint8(out[0].permute(1, 2, 0).numpy()))

            p_true, p_est, p_blur = solve(k), solve(est.kernel), psnr(sharp, blurred)
            routed = psnr(sharp, to_uint8(teacher.restore(x, [est])[0].permute(1, 2, 0).numpy()))
            rows.append({"image": name, "family": family, "kernel_size": int(k.shape[0]), "blurred": p_blur,
                         "true_kernel": p_true, "estimate": p_est, "error_ratio_db": p_true - p_est,
                         "route": getattr(est, "route", "shake"), "teacher": routed,
                         "seconds_per_mp": seconds / (sharp.shape[0] * sharp.shape[1] / 1e6)})
    summary = {}
    print("| kernels | images | blurred | gain, true kernel | gain, estimate | error ratio (dB) mean / median "
          "| ratio < 3 | estimate s/MP | routed to deconvolution | their ratio (dB) | teacher's gain |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for family in ("levin", "procedural"):
        r = [x for x in rows if x["family"] == family]
        ratio = np.array([x["error_ratio_db"] for x in r])
        s = {"images": len(r), "blurred": float(np.mean([x["blurred"] for x in r])),
             "gain_true": float(np.mean([x["true_kernel"] - x["blurred"] for x in r])),
             "gain_estimate": float(np.mean([x["estimate"] - x["blurred"] for x in r])),
             "error_ratio_db_mean": float(ratio.mean()), "error_ratio_db_median": float(np.median(ratio)),
             "share_below_3": float((10 ** (ratio / 10) < 3).mean()),
             "seconds_per_mp": float(np.mean([x["seconds_per_mp"] for x in r])),
             "share_routed_to_deconvolution": float(np.mean([x["route"] == "shake" for x in r])),
             "teacher_gain": float(np.mean([x["teacher"] - x["blurred"] for x in r]))}
        shake = [x["error_ratio_db"] for x in r if x["route"] == "shake"]
        s["routed_error_ratio_db_mean"] = float(np.mean(shake)) if shake else None
        summary[family] = s
        routed = "-" if s["routed_error_ratio_db_mean"] is None else f"{s['routed_error_ratio_db_mean']:.2f}"
        print(f"| {family} | {s['images']} | {s['blurred']:.2f} | {s['gain_true']:+.2f} | {s['gain_estimate']:+.2f} "
              f"| {s['error_ratio_db_mean']:.2f} / {s['error_ratio_db_median']:.2f} | {s['share_below_3']:.0%} "
              f"| {s['seconds_per_mp']:.1f} | {s['share_routed_to_deconvolution']:.0%} | {routed} "
              f"| {s['teacher_gain']:+.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
