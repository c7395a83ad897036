"""Quality-speed front of student variants: hold-out gain after equal training vs CPU frame rate.

Train the variants first (same data, steps and seed; ground truth only, so the comparison is
about the architecture, not the teacher):

    for a in student student-n student-x4 student-x4d; do
        sharpkd -q train student --no-distill --arch $a --data ../shared/datasets/train \\
            --out runs/pareto/$a --steps 1500 --threads 1 --val-every 250
    done
    python benchmarks/student_pareto.py runs/pareto/* --out docs/student_pareto

For each run it reads the final hold-out gain from the model file, and times 640x480 frames with
ONNX Runtime in fp32 and in INT8 (static, calibrated on training-pool patches), median of runs
after warm-up. Writes <out>.json, <out>.md and <out>.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def fps(runner, w: int, h: int, runs: int) -> float:
    from sharpkd.infer import Sharpener

    sh = Sharpener(runner, tile=0)
    x = torch.rand(1, 3, h, w)
    for _ in range(2):
        sh.sharpen_tensor(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sh.sharpen_tensor(x)
        times.append(time.perf_counter() - t)
    return 1 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training run folders")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timed-runs", type=int, default=15)
    ap.add_argument("--out", default="docs/student_pareto")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    torch.set_num_threads(args.threads)

    from sharpkd.backends import OnnxBackend
    from sharpkd.bench import environment
    from sharpkd.checkpoint import count_params, load_model, macs_per_pixel
    from sharpkd.export import calibration_inputs, export_int8_model, export_onnx

    cal = calibration_inputs(["../shared/datasets/train"], 32)
    rows = []
    for run in args.runs:
        path = Path(run) / "model.safetensors"
        if not path.is_file():
            continue
        model, info = load_model(path)
        with tempfile.TemporaryDirectory() as tmp:
            f32 = export_onnx(model, Path(tmp) / "m.onnx", info)
            i8 = export_int8_model(model, Path(tmp) / "m8.onnx", cal, info)
            r32, r8 = OnnxBackend(f32, args.threads), OnnxBackend(i8, args.threads)
            row = {"arch": info.get("preset"), "run": str(run), "steps": info.get("steps"),
                   "holdout_gain_db": round(info["val_psnr"] - info["val_blurred_psnr"], 3),
                   "params": count_params(model), "macs_per_pixel": macs_per_pixel(model),
                   "fps_onnx_fp32": round(fps(r32, w, h, args.timed_runs), 1),
                   "fps_onnx_int8": round(fps(r8, w, h, args.timed_runs), 1)}
        rows.append(row)
        print(row, flush=True)
    env = environment(args.threads)
    res = {"size": args.size, "environment": env, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"Student variants at {args.size}, ONNX Runtime {env['onnxruntime']} with {args.threads} threads on "
             f"{env['cpu']} ({env['logical_cpus']} logical CPUs; {env.get('cpu_flags', '')}). Hold-out gain after "
             "the same training (ground truth only).", "",
             "| variant | steps | hold-out gain (dB) | params | MACs/px | FPS fp32 | FPS INT8 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['steps']} | {r['holdout_gain_db']:+.3f} | {r['params']:,} | "
                     f"{r['macs_per_pixel']:,.0f} | {r['fps_onnx_fp32']} | {r['fps_onnx_int8']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        for key, marker in (("fps_onnx_fp32", "o"), ("fps_onnx_int8", "^")):
            ax.scatter(r[key], r["holdout_gain_db"], marker=marker, color="C0" if marker == "o" else "C1")
        ax.plot([r["fps_onnx_fp32"], r["fps_onnx_int8"]], [r["holdout_gain_db"]] * 2, color="grey", lw=0.6)
        ax.annotate(r["arch"], (r["fps_onnx_fp32"], r["holdout_gain_db"]), textcoords="offset points",
                    xytext=(4, 5), fontsize=8)
    ax.axvline(30, color="grey", ls="--", lw=0.8)
    ax.scatter([], [], marker="o", color="C0", label="ONNX fp32")
    ax.scatter([], [], marker="^", color="C1", label="ONNX INT8")
    ax.set_xscale("log")
    ax.set_xlabel(f"frames per second at {args.size} ({args.threads} threads, log scale; dashed: 30 FPS)")
    ax.set_ylabel("hold-out gain (dB)")
    ax.set_title(f"Student variants: quality vs speed ({env['cpu']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')}, .md and .png")


if __name__ == "__main__":
    main()
