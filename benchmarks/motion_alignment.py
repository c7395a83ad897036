"""Why the motion column is flat: how much of it is an unknowable shift, how much missing deblurring.

    python benchmarks/motion_alignment.py teacher student --json docs/eval/motion_alignment.json

A recorded camera-shake kernel (Levin et al. 2009) is not centred on its array: convolving with it
moves the picture as well as smearing it, by up to a few pixels. A blind method cannot know that
offset (the oracle Wiener filter can: it is given the kernel), so its output sits shifted against the
ground truth. This diagnostic degrades Kodak24 with the motion setting of BENCHMARK.md and scores
each method twice: as the benchmark does, and after moving the output by the whole-pixel shift
(within +-``--search`` px) that fits the ground truth best, on the image minus a border of that
width. The aligned score is *not* a benchmark number (it looks at the ground truth to align); it
only splits the motion gap into "shifted" and "not deblurred".

One more row bounds what any blind method can score as benchmarked: the ground truth itself, moved
by the kernel's centre of mass (cubic-spline shift). That is a perfect deblur placed where a blind
method would place it, since the blur's shape, not its position, is what the image reveals.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy import ndimage

from sharpkd.metrics import psnr


def aligned_psnr(gt: np.ndarray, out: np.ndarray, m: int) -> tuple[float, float, tuple[int, int]]:
    """(PSNR without shift, best PSNR over whole-pixel shifts, that shift), both on gt[m:-m, m:-m]."""
    h, w = gt.shape[:2]
    g = gt[m:h - m, m:w - m]
    plain = psnr(g, out[m:h - m, m:w - m])
    best, arg = plain, (0, 0)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            v = psnr(g, out[m + dy:h - m + dy, m + dx:w - m + dx])
            if v > best:
                best, arg = v, (dy, dx)
    return plain, best, arg


def kernel_centroid(kernel: np.ndarray) -> tuple[float, float]:
    """Centre of mass of a blur kernel relative to the array centre (the origin of scipy's convolve)."""
    k = np.asarray(kernel, np.float64)
    k = k / k.sum()
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    return float((ys * k).sum() - k.shape[0] // 2), float((xs * k).sum() - k.shape[1] // 2)


def centroid_shifted(gt: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The sharp image moved as convolving with ``kernel`` moves it (uint8 in, uint8 out)."""
    dy, dx = kernel_centroid(kernel)
    moved = ndimage.shift(gt.astype(np.float64), (dy, dx, 0), order=3, mode="reflect")
    return np.clip(np.round(moved), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["teacher", "student"])
    ap.add_argument("--data", default="../shared/datasets/eval/kodak24")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--search", type=int, default=6, help="largest shift tried, pixels")
    ap.add_argument("--limit", type=int, default=0, help="first N images only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.evaluate import (
        load_eval_images,
        load_levin_kernels,
        protocol_degrade,
        protocol_kernel,
        unsharp,
        wiener_oracle,
    )
    from sharpkd.infer import Sharpener

    images = load_eval_images(args.data, args.limit)
    levin = load_levin_kernels(args.kernels)
    methods = {"blurred input": lambda b, k: b, "unsharp mask (r=1, a=1)": unsharp,
               "Wiener, true kernel (oracle)": wiener_oracle}
    for name in args.models:
        sh = Sharpener.from_pretrained(name)
        methods[name] = lambda b, k, sh=sh: np.asarray(sh(b))
    ceiling = "ground truth moved by the kernel's centroid (blind ceiling)"
    rows = {m: {"plain": [], "aligned": [], "shift": []} for m in [*methods, ceiling]}
    for i, (_, gt) in enumerate(images):
        k = protocol_kernel(3, i, levin)
        blurred = protocol_degrade(gt, k, 1000 * 3 + i)
        outputs = {m: fn(blurred, k) for m, fn in methods.items()}
        outputs[ceiling] = centroid_shifted(gt, k)
        for m, out in outputs.items():
            plain, best, shift = aligned_psnr(gt, out, args.search)
            rows[m]["plain"].append(plain)
            rows[m]["aligned"].append(best)
            rows[m]["shift"].append(shift)
        print(f"image {i + 1}/{len(images)} done", flush=True)

    base_p = np.mean(rows["blurred input"]["plain"])
    base_a = np.mean(rows["blurred input"]["aligned"])
    print(f"\nKodak24 motion (Levin kernels), {len(images)} images, PSNR on the image minus a "
          f"{args.search}-px border")
    print("| method | as benchmarked | gain | best whole-pixel alignment | gain over aligned blurred input |")
    print("|---|---|---|---|---|")
    summary = {}
    for m, r in rows.items():
        p, a = float(np.mean(r["plain"])), float(np.mean(r["aligned"]))
        summary[m] = {"plain": p, "aligned": a, "gain": p - base_p, "aligned_gain": a - base_a,
                      "shifts": r["shift"]}
        print(f"| {m} | {p:.2f} | {p - base_p:+.2f} | {a:.2f} | {a - base_a:+.2f} |")
    # per Levin kernel (image i uses kernel i mod 8 + 1), as benchmarked: where the shift allows a gain
    nk = min(8, len(images))
    print("\nPer kernel, as benchmarked (gain over the blurred input); centre of mass (dy, dx) in px")
    print("| method | " + " | ".join(f"k{j + 1}" for j in range(nk)) + " |")
    print("|---|" + "---|" * nk)
    per_kernel = {}
    for m, r in rows.items():
        g = [float(np.mean(r["plain"][j::8]) - np.mean(rows["blurred input"]["plain"][j::8])) for j in range(nk)]
        per_kernel[m] = g
        print(f"| {m} | " + " | ".join(f"{v:+.2f}" for v in g) + " |")
    centres = [kernel_centroid(protocol_kernel(3, j, levin)) for j in range(nk)]
    print("| centre of mass | " + " | ".join(f"({dy:+.1f}, {dx:+.1f})" for dy, dx in centres) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"search": args.search, "images": len(images), "methods": summary,
                       "per_kernel_gain": per_kernel, "kernel_centres": centres}, f, indent=1)


if __name__ == "__main__":
    main()
