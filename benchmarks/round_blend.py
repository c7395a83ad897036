"""Does a blend of the round route's deconvolution with the network's output beat either? Development photos only.

    python benchmarks/round_blend.py --photos 20 --json docs/eval/round_blend/dev20.json
    python benchmarks/round_blend.py --summary docs/eval/round_blend/dev20.json

The blind teacher deconvolves round blur with a Gaussian whose width it fits against its network's output (the
round route). Two different estimators of the same sharp photo may err in different ways, so a weighted mean of
the two could beat the better one. This script measures that on ``teacher_ab.py``'s development set (the
hold-out photos plus seeded training photos, at most 768 px, each degraded as BENCHMARK.md v2 degrades Kodak24's
photo of the same index; Kodak24 is never read): for each Gaussian case the shipped teacher routes to ``round``,
the deconvolution and the network's output on the whole photo are computed once, and each weight ``w`` of
``--weights`` is scored as ``(1 - w) * deconvolution + w * network`` (8-bit, PSNR gain in dB over the blurred
photo). Printed: mean gain per degradation and weight, and the same by the route's fitted width.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def collect(args: argparse.Namespace) -> dict:
    from teacher_ab import dev_photos

    from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel
    from sharpkd.evaluate import DEGRADATIONS, to_uint8
    from sharpkd.infer import Sharpener, frame_to_tensor
    from sharpkd.metrics import psnr

    torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.weights.split(",")]
    sh = Sharpener.from_pretrained(args.teacher, tile=0, ensemble=1)
    if not sh.blind or getattr(sh.model, "network", None) is None:
        raise SystemExit(f"{args.teacher} is not a blind teacher with a network")
    levin = load_levin_kernels(args.kernels)
    wanted = [DEGRADATIONS.index(d) for d in args.degradations.split(",")]
    rows = []
    for i, (name, sharp) in enumerate(dev_photos(args.data, args.photos, args.max_side)):
        for j in wanted:
            t0 = time.perf_counter()
            blurred = protocol_degrade(sharp, protocol_kernel(j, i, levin), 1000 * j + i)
            x = frame_to_tensor(blurred)
            est = sh.estimate_blur(x)
            row = {"i": i, "photo": name, "degradation": DEGRADATIONS[j], "route": est[0].route}
            if est[0].route == "round":
                with torch.no_grad():
                    dec = sh.sharpen_tensor(x, estimates=est)
                    net = sh.model._network(x)
                base = psnr(sharp, blurred)
                row["fit"] = float(est[0].fit)
                row["gain"] = {f"{w:g}": psnr(sharp, to_uint8(((1 - w) * dec + w * net)[0].permute(1, 2, 0).numpy()))
                               - base for w in weights}
            rows.append(row)
            shown = "  ".join(f"{w} {g:+.2f}" for w, g in row.get("gain", {}).items())
            print(f"{name} {DEGRADATIONS[j]}: {row['route']} {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"weights": weights, "rows": rows}, indent=1) + "\n")
    return {"weights": weights, "rows": rows}


def summary(data: dict) -> str:
    rows = [r for r in data["rows"] if "gain" in r]
    if not rows:
        return "no case took the round route"
    names = list(rows[0]["gain"])
    lines = [f"{len(rows)} of {len(data['rows'])} Gaussian cases take the round route; mean gain (dB) by the network's "
             "weight",
             "", "| cases | n | " + " | ".join(f"w={w}" for w in names) + " |", "|---|---|" + "---|" * len(names)]

    def line(label: str, group: list[dict]) -> None:
        if group:
            means = [np.mean([r["gain"][w] for r in group]) for w in names]
            best = int(np.argmax(means))
            cells = [f"**{m:+.3f}**" if k == best else f"{m:+.3f}" for k, m in enumerate(means)]
            lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")

    for deg in sorted({r["degradation"] for r in rows}):
        line(deg, [r for r in rows if r["degradation"] == deg])
    for lo, hi in ((0, 1.5), (1.5, 2.5), (2.5, 99)):
        line(f"fitted width {lo:g}-{hi:g} px" if hi < 99 else f"fitted width >= {lo:g} px",
             [r for r in rows if lo <= r["fit"] < hi])
    line("all", rows)
    return "\n".join(lines)


def main() -> None:
    from teacher_ab import dev_set_options

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--photos", type=int, default=20, help="hold-out photos first, then training photos")
    ap.add_argument("--degradations", default="gauss1,gauss2,gauss3")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.5", help="weights of the network's output (0: shipped)")
    dev_set_options(ap)
    ap.add_argument("--json", help="write the rows here (rewritten after every case)")
    ap.add_argument("--summary", metavar="JSON", help="print the summary of a JSON written before and stop")
    args = ap.parse_args()
    data = json.loads(Path(args.summary).read_text()) if args.summary else collect(args)
    print(summary(data))


if __name__ == "__main__":
    main()
