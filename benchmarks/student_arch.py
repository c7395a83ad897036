"""Learning curves of real-time student layouts: hold-out gain per training step, and frame rate.

    python benchmarks/student_arch.py train --steps 6000 [NAME ...]   # one 1-thread run per layout
    python benchmarks/student_arch.py report --out docs/student_arch   # curves + ONNX Runtime FPS
    python benchmarks/student_arch.py report --repeats 3 x2-16-48 x2-16-32   # some layouts, each timed 3 times

Every layout is trained the same way (ground truth only, same photos, degradations, seed, batch and
schedule; ``--data ../shared/datasets/train``), so the curves compare the architectures, not the
teacher. ``report`` reads each run's validation log and times the exported network (fp32, ONNX
Runtime, 2 threads, batch 1, 640x480, median of 20 after warm-up): run it with nothing else running.
The layouts: the present student, thinner and 1/4-resolution variants, and student-x4 trained with
re-parameterisable convolutions (``rep``: collapsed into plain ones before export).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from sharpkd.models import PRESETS, StudentConfig

LAYOUTS = {
    "student": PRESETS["student"][1],
    "x2-16-48": PRESETS["student-s"][1],
    "x4": PRESETS["student-x4"][1],
    "x4-rep": PRESETS["student-x4r"][1],
    "x4-24-64": StudentConfig(unshuffle=4, width=24, low_width=64, low_blocks=1),
    "x4-24-64-hb2": StudentConfig(unshuffle=4, width=24, low_width=64, low_blocks=1, high_blocks=2),
    "x4-24-48-lb2": StudentConfig(unshuffle=4, width=24, low_width=48, low_blocks=2),
    "x4-16-72": StudentConfig(unshuffle=4, width=16, low_width=72, low_blocks=1),
    "x4-32-64-hb0": StudentConfig(unshuffle=4, width=32, low_width=64, low_blocks=1, high_blocks=0),
    # thinner bottlenecks of the shipped layout (thirtieth session: what it takes on an AVX2-only CPU)
    "x2-16-40": StudentConfig(unshuffle=2, width=16, low_width=40, low_blocks=2),
    "x2-16-32": StudentConfig(unshuffle=2, width=16, low_width=32, low_blocks=2),
    "x2-16-48-lb1": PRESETS["student-s1"][1],
}


def train(names: list[str], steps: int, root: Path, data: str) -> None:
    import torch

    from sharpkd.train import TrainConfig
    from sharpkd.train import train as run_training

    torch.set_num_threads(1)
    for name in names:
        out = root / name
        if (out / "model.safetensors").exists():
            continue
        PRESETS[f"arch-{name}"] = ("student", LAYOUTS[name])  # a preset for this process only
        cfg = TrainConfig(stage="student", arch=f"arch-{name}", out=str(out), data=[data], distill=False,
                          steps=steps, val_every=1000, threads=1, seed=0)
        run_training(cfg, progress=False)
        print(f"trained {name}", flush=True)


def fps(config: StudentConfig, size: tuple[int, int] = (640, 480), runs: int = 20) -> float:
    """Frames per second of ``config``'s network (random weights), exported as the shipped fp32 graph form."""
    import numpy as np

    from sharpkd.backends import OnnxBackend
    from sharpkd.export import export_onnx
    from sharpkd.models import Student

    model = Student(config=config).eval().deploy()
    with tempfile.TemporaryDirectory() as d:
        backend = OnnxBackend(export_onnx(model, Path(d) / "m.onnx"), threads=2)
        x = np.random.default_rng(0).random((1, 3, size[1], size[0]), dtype=np.float32)
        for _ in range(3):
            backend.session.run(None, {"image": x})
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            backend.session.run(None, {"image": x})
            times.append(time.perf_counter() - t)
    return 1 / statistics.median(times)


def report(root: Path, out: Path, names: list[str], repeats: int = 1) -> None:
    """Each layout's curve from its run folder, size and speed; with ``repeats`` > 1 the speed is the median of that
    many timings taken in turn over the layouts (on a machine whose speed drifts, each layout sees the same drift)."""
    from sharpkd.checkpoint import count_params, macs_per_pixel
    from sharpkd.models import Student

    speeds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            speeds[name].append(fps(LAYOUTS[name]))
    rows = []
    for name in names:
        config = LAYOUTS[name]
        log = root / name / "log.jsonl"  # a layout not trained (yet) still gets its size and speed
        recs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        curve = {r["step"]: round(r["val_gain"], 3) for r in recs if r.get("event") == "val"}
        train_s = max((r["elapsed_s"] for r in recs if r.get("event") == "train"), default=0)
        net = Student(config=config).deploy()
        rows.append({"layout": name, "config": {k: v for k, v in vars(config).items() if k != "wiener"},
                     "params": count_params(net), "macs_per_pixel": round(macs_per_pixel(net)),
                     "curve": curve, "train_s": train_s,
                     "fps_onnx_fp32_640x480": round(statistics.median(speeds[name]), 1),
                     "fps_each_timing": [round(f, 1) for f in speeds[name]]})
        print(rows[-1], flush=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    steps = sorted({s for r in rows for s in r["curve"]})
    lines = ["| layout | params | MACs/px | FPS fp32 640x480 |" + "".join(f" {s} steps |" for s in steps),
             "|---|---|---|---|" + "---|" * len(steps)]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['params']:,} | {r['macs_per_pixel']:,} | {r['fps_onnx_fp32_640x480']} |"
                     + "".join(f" {r['curve'].get(s, '-')} |" for s in steps))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["train", "report"])
    ap.add_argument("names", nargs="*", help=f"layouts (default: all): {', '.join(LAYOUTS)}")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--runs", default="runs/arch6000", help="folder of the training runs")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--out", default="docs/student_arch")
    ap.add_argument("--repeats", type=int, default=1, help="report: time every layout this many times, in turn")
    args = ap.parse_intermixed_args()  # layout names may follow the options
    unknown = sorted(set(args.names) - set(LAYOUTS))
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; known: {', '.join(LAYOUTS)}")
    if args.action == "train":
        train(args.names or list(LAYOUTS), args.steps, Path(args.runs), args.data)
    else:
        report(Path(args.runs), Path(args.out), args.names or list(LAYOUTS), args.repeats)


if __name__ == "__main__":
    main()
