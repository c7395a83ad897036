"""Figures for the results page.

    python benchmarks/figures.py quality-speed --eval docs/eval/results.json --out docs/quality_speed.png
    python benchmarks/figures.py crops --out docs/crops.png

``quality-speed`` plots each method's Kodak24 gain (from ``sharpkd eval``'s results.json, any number
of files) against its measured CPU throughput. ``crops`` degrades Kodak24 images exactly as the
benchmark does and shows the same region as blurred / unsharp / student / teacher / ground truth,
with each crop's PSNR over the whole image. The region is the 128x128 window with the most
gradient energy in the ground truth (chosen without looking at any method's output).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def quality_speed(evals: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for path in evals:
        res = json.loads(Path(path).read_text())
        for row in res["rows"]:
            name, gain, mps = row["method"], row["gain_db"], row.get("megapixels_per_s")
            if name in seen or not mps or name == "blurred input":  # the input row costs nothing
                continue
            seen.add(name)
            kind = "o" if row.get("params") else "s"
            ax.scatter(mps, gain, marker=kind, s=50)
            # the INT8 and no-distillation students sit next to the fp32 student: label them underneath
            below = name.endswith(".onnx") or name.endswith("nokd")
            label = f"{Path(name).stem} (ONNX)" if name.endswith(".onnx") else name
            ax.annotate(f"{label}\n{gain:+.2f} dB", (mps, gain), textcoords="offset points",
                        xytext=(6, -22 if below else 4), fontsize=8)
        hardware = res.get("hardware", "")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylim(top=ax.get_ylim()[1] + 0.3)  # room for the top label under the title
    ax.set_xscale("log")
    ax.set_xlabel("throughput, megapixels/s (log; 768x512 Kodak images, PyTorch fp32)")
    ax.set_ylabel("Kodak24 gain over the blurred input (dB)")
    ax.set_title(f"Quality vs speed, {hardware}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def best_window(img: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most gradient energy (on a coarse grid)."""
    g = img.astype(np.float64).mean(axis=2)
    e = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1, :]
    best, corner = -1.0, (0, 0)
    for y in range(0, e.shape[0] - size, size // 4):
        for x in range(0, e.shape[1] - size, size // 4):
            s = e[y : y + size, x : x + size].sum()
            if s > best:
                best, corner = s, (y, x)
    return corner


def crops(out: str, models: list[str], images: list[int], degradations: list[str], size: int = 128) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sharpkd.evaluate import (
        DEGRADATIONS,
        load_eval_images,
        load_levin_kernels,
        protocol_degrade,
        protocol_kernel,
        to_uint8,
        unsharp,
    )
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr

    data = ROOT.parent / "shared" / "datasets"
    pics = load_eval_images(data / "eval" / "kodak24")
    levin = load_levin_kernels(data / "kernels" / "levin09.npz")
    sharpeners = {m: Sharpener.from_pretrained(m) for m in models}
    columns = ["blurred", "unsharp", *models, "ground truth"]
    rows = [(i, d) for i in images for d in degradations]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.4 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (i, d) in enumerate(rows):
        name, sharp = pics[i]
        j = DEGRADATIONS.index(d)
        blurred = protocol_degrade(sharp, protocol_kernel(j, i, levin), 1000 * j + i)
        outs = {"blurred": blurred, "unsharp": unsharp(blurred)}
        for m, sh in sharpeners.items():
            outs[m] = to_uint8(sh.sharpen_array(blurred.astype(np.float32) / 255.0))
        outs["ground truth"] = sharp
        y, x = best_window(sharp, size)
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(outs[col][y : y + size, x : x + size], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = col if col == "ground truth" else f"{col}\n{psnr(outs[col], sharp):.2f} dB"
            ax.set_title(label, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{Path(name).stem}, {d}", fontsize=8)
    fig.suptitle("Kodak24 under the benchmark protocol (PSNR of the whole image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("quality-speed")
    p.add_argument("--eval", nargs="+", default=[str(ROOT / "docs/eval/results.json")])
    p.add_argument("--out", default=str(ROOT / "docs/quality_speed.png"))
    p = sub.add_parser("crops")
    p.add_argument("--models", default="student,teacher")
    p.add_argument("--images", default="4,18", help="Kodak24 indices (sorted file order)")
    p.add_argument("--degradations", default="gauss2,motion")
    p.add_argument("--out", default=str(ROOT / "docs/crops.png"))
    args = ap.parse_args()
    if args.cmd == "quality-speed":
        quality_speed(args.eval, args.out)
    else:
        crops(args.out, args.models.split(","), [int(i) for i in args.images.split(",")], args.degradations.split(","))


if __name__ == "__main__":
    main()
