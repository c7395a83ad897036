"""Figure: camera shake through the blind teacher -- blurred, estimated vs true kernel, result, ground truth.

    python benchmarks/blind_figure.py --images 2 7 --out docs/blind_motion.png

Kodak24 images under the BENCHMARK.md (version 2) motion degradation; a 256x256 centre crop of
each panel is shown at full resolution, with the PSNR of the whole image.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/eval/kodak24")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--images", type=int, nargs="+", default=[2, 7])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--out", default="docs/blind_motion.png")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel
    from sharpkd.evaluate import load_eval_images, to_uint8
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr

    images = load_eval_images(args.data)
    levin = load_levin_kernels(args.kernels)
    teacher = Sharpener.from_pretrained("teacher", tile=0)
    fig, axes = plt.subplots(len(args.images), 5, figsize=(17, 3.6 * len(args.images)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1, 1, 3, 3]})
    for row, i in zip(axes, args.images, strict=True):
        name, sharp = images[i]
        k = protocol_kernel(3, i, levin)
        blurred = protocol_degrade(sharp, k, 3000 + i)
        x = torch.from_numpy(blurred.astype(np.float32) / 255).permute(2, 0, 1)[None]
        est = teacher.estimate_blur(x)
        out = to_uint8(teacher.sharpen_tensor(x, est)[0].permute(1, 2, 0).numpy())
        h, w = sharp.shape[:2]
        c = args.crop
        y0, x0 = (h - c) // 2, (w - c) // 2

        def crop(a: np.ndarray, y0=y0, x0=x0, c=c) -> np.ndarray:
            return a[y0 : y0 + c, x0 : x0 + c]

        size = max(k.shape[0], est[0].kernel.shape[0])

        def padk(a: np.ndarray, size=size) -> np.ndarray:
            p = (size - a.shape[0]) // 2
            return np.pad(a, p)

        panels = [(crop(blurred), f"{name} blurred (Levin k{i % 8 + 1}): {psnr(sharp, blurred):.2f} dB"),
                  (padk(est[0].kernel), "estimated kernel"), (padk(k), "true kernel"),
                  (crop(out), f"blind teacher: {psnr(sharp, out):.2f} dB"), (crop(sharp), "ground truth")]
        for ax, (img, title) in zip(row, panels, strict=True):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
