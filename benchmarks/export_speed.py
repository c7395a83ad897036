"""Frames per second of a student's exported network in each graph form, the network alone.

For a model (default: the shipped ``student``) this exports the network as written and in the graph
forms of ``sharpkd.models.export_forms`` (fp32 form; int8 form, quantised like ``sharpkd export --int8``,
calibrated on 32 training-pool patches), checks that every fp32 file computes the model's function, and
times each file in ONNX Runtime on one reused random frame per resolution (2 threads, no busy-waiting,
batch 1, median of the timed runs after warm-up). ``sharpkd bench`` times the whole path a video
frame takes (conversion, padding, clamping); this times only what the exported graph costs, and with
``--profile`` prints where that time goes, by operator type. The frame form (the shipped INT8 student)
is timed on RGBA bytes, its input.

    python benchmarks/export_speed.py                       # shipped student, 640x480 and 1280x720
    python benchmarks/export_speed.py --model kstudent --profile
    python benchmarks/export_speed.py --json docs/eval/export_speed/student_xeon.json

Run it with nothing else running on the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FORMS = (("as written", None, "fp32"), ("fp32 form", "fp32", "fp32"), ("as written", None, "int8"),
         ("int8 form", "int8", "int8"), ("frame form (RGBA bytes in and out)", "frame", "int8"))


def session(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as sharpkd's OnnxBackend
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def frame_input(sess, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A random input for ``sess``: (1, channels, H, W) floats, or (1, H, W, 4) bytes for a frame graph."""
    rng = np.random.default_rng(0)
    if sess.get_inputs()[0].type == "tensor(uint8)":
        return rng.integers(0, 256, size=(1, size[1], size[0], 4), dtype=np.uint8)
    return rng.random((1, channels, size[1], size[0]), dtype=np.float32)


def time_file(path: Path, channels: int, size: tuple[int, int], threads: int, runs: int) -> float:
    """Median seconds per run of ``path`` on one random frame (:func:`frame_input`)."""
    sess = session(path, threads)
    x = frame_input(sess, channels, size)
    for _ in range(3):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def profile_file(path: Path, channels: int, size: tuple[int, int], threads: int, runs: int = 10) -> dict:
    """Milliseconds per run by operator type (ONNX Runtime's profiler, after the warm-up runs)."""
    sess = session(path, threads, profile=True)
    x = frame_input(sess, channels, size)
    for _ in range(runs):
        sess.run(None, {"image": x})
    trace = Path(sess.end_profiling())
    total: collections.Counter = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
    trace.unlink()
    return {op: round(us / runs / 1000, 2) for op, us in total.most_common() if us / runs >= 50}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="student", help="shipped name or model file of a student or kernel student")
    ap.add_argument("--sizes", default="640x480,1280x720")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--profile", action="store_true", help="also print the time per operator type (largest size)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.backends import OnnxBackend
    from sharpkd.bench import environment
    from sharpkd.checkpoint import load_model
    from sharpkd.export import calibration_inputs, export_int8, export_int8_model, export_onnx, guided_calibration
    from sharpkd.models.export_forms import ExportStudent, export_graph
    from sharpkd.models.kstudent import GuidedNet, KernelStudent

    model, info = load_model(args.model)
    channels = 6 if info.get("arch") == "kstudent" else 3
    train = ROOT.parent / "shared" / "datasets" / "train"
    cal = calibration_inputs([str(train)] if train.is_dir() else None, 32)
    if channels == 6:
        cal = guided_calibration(cal)
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    rows = []
    print("| graph | precision | " + " | ".join(f"{w}x{h} FPS" for w, h in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    with tempfile.TemporaryDirectory() as tmp:
        ref_x = torch.rand(1, channels, 48, 64)
        reference = OnnxBackend(export_onnx(model, Path(tmp) / "ref.onnx", target=None))(ref_x)
        net = GuidedNet(model) if isinstance(model, KernelStudent) else model
        for i, (name, target, precision) in enumerate(FORMS):
            if target is not None and not isinstance(export_graph(net, target), ExportStudent):
                continue  # no such form for this model (a kernel student takes no frames)
            if target == "frame":  # what `sharpkd export --int8` ships for a student
                path = export_int8_model(model, Path(tmp) / f"q{i}.onnx", cal)
            elif precision == "int8":
                fp32 = export_onnx(model, Path(tmp) / f"f{i}.onnx", target=target)
                path = export_int8(fp32, Path(tmp) / f"q{i}.onnx", cal)
            else:  # every fp32 form computes the same function
                path = export_onnx(model, Path(tmp) / f"f{i}.onnx", target=target)
                err = float((OnnxBackend(path)(ref_x) - reference).abs().max())
                assert err < 1e-4, f"{name}: differs from the model by {err}"
            fps = [1 / time_file(path, channels, s, args.threads, args.runs) for s in sizes]
            row = {"graph": name, "precision": precision, **{f"fps_{w}x{h}": round(f, 1) for (w, h), f in
                                                             zip(sizes, fps, strict=True)}}
            if args.profile:
                row["ms_by_op"] = profile_file(path, channels, sizes[-1], args.threads)
            rows.append(row)
            print(f"| {name} | {precision} | " + " | ".join(f"{f:.1f}" for f in fps) + " |", flush=True)
            if args.profile:
                print(f"  ms per run by operator at {sizes[-1][0]}x{sizes[-1][1]}: {row['ms_by_op']}", flush=True)
    env = environment(args.threads)
    print(f"\n{args.model}; network alone, ONNX Runtime {env['onnxruntime']}, {args.threads} threads, batch 1; "
          f"{env['cpu']}, {env['logical_cpus']} logical CPUs ({env['cpu_flags']}).")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "environment": env, "runs": args.runs,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
