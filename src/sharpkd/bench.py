"""``sharpkd bench``: frames per second of the sharpening methods at common video resolutions.

Each cell is the median over timed runs of one whole frame, an H x W x 3 uint8 frame in and out, through
``Sharpener.sharpen_frame`` as ``sharpkd video`` runs it (for most models: to a float tensor, pad, model,
clamp, crop, back to bytes; the INT8 student's frame graph takes the bytes as RGBA; no tiling), after
warm-up runs.
The kernel student's rows time what each video frame costs between blur estimates: the Wiener step
with a 31 x 31 camera-shake kernel (FFTs of the whole frame; frames use the refined kernel alone, also for a
student whose photos average the guide over the estimate's three kernels, ``guide_average``) and the network.
The estimate itself (seconds, once per photo or every N frames) is not in these rows; ``sharpkd eval``
reports it per photo.
Unsharp masking is OpenCV (Gaussian blur + weighted sum on uint8), the classical baseline. On CUDA
the frame's copy back to the CPU waits for the GPU. Each cell stops after ``max_seconds`` of timed
runs (at least ``min_runs``), so slow models do not take minutes at 1080p.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080))
METHODS = ("unsharp-opencv", "student-torch", "student-onnx", "student-onnx-int8", "kstudent-torch", "kstudent-onnx",
           "kstudent-onnx-int8", "teacher-net-torch")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_flags() -> str:
    """The CPU's SIMD features that matter for these kernels (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def environment(threads: int) -> dict:
    import cv2
    import onnxruntime

    from sharpkd.provenance import hardware

    return {"cpu": hardware().split(",")[0], "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "onnxruntime_threads": threads or "default (all cores)", "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "precision": "fp32 (onnx-int8 rows: INT8 weights and activations)",
            "cpu_flags": cpu_flags()}


def split_method(name: str) -> tuple[str, str]:
    """"student-onnx-int8" -> ("student", "onnx-int8"); "teacher-net-torch" -> ("teacher-net", "torch")."""
    for backend in ("onnx-int8", "onnx", "torch", "opencv"):
        if name.endswith("-" + backend):
            return name[: -len(backend) - 1], backend
    raise ValueError(f"method {name!r} should end in -torch, -onnx or -onnx-int8")


def _method(name: str, device: str, threads: int, passes: int = 1) -> Callable[[np.ndarray], object]:
    """A function of one uint8 H x W x 3 frame that sharpens it (what is timed)."""
    if name == "unsharp-opencv":
        import cv2

        def unsharp(frame: np.ndarray):
            blurred = cv2.GaussianBlur(frame, (0, 0), 1.0)
            return cv2.addWeighted(frame, 2.0, blurred, -1.0, 0)

        return unsharp
    from sharpkd.infer import Sharpener

    model, backend = split_method(name)
    sh = Sharpener.from_pretrained(model, device=device, tile=0, backend=backend, threads=threads,
                                   ensemble=1, passes=passes)  # per frame: one copy, as sharpkd video runs it
    est = None
    if sh.blind:  # the kernel student: a fixed camera-shake estimate, so that every frame is deconvolved
        from sharpkd.deblur.teacher import BlurEstimate
        from sharpkd.degrade import make_kernel

        # with the other kernels a teacher's estimate carries (frames leave them out, as sharpkd video does)
        est = [BlurEstimate(make_kernel("motion", length=20.0, seed=0, size=31), 1 / 255, "shake",
                            unrefined=make_kernel("motion", length=20.0, seed=1, size=31),
                            check=make_kernel("motion", length=20.0, seed=2, size=27))]

    def run(frame: np.ndarray):
        out = sh.sharpen_frame(frame, estimates=est)  # on CUDA, the copy back to the CPU waits for it
        return out

    run.passes = sh.passes  # type: ignore[attr-defined]
    return run


def run_bench(methods: tuple[str, ...] = METHODS, resolutions: tuple[tuple[int, int], ...] = RESOLUTIONS,
              warmup: int = 2, min_runs: int = 3, max_runs: int = 20, max_seconds: float = 15.0,
              device: str = "cpu", threads: int = 0, on_row: Callable[[dict], None] | None = None,
              on_start: Callable[[str, int, int], None] | None = None, passes: int = 1) -> dict:
    """Time every method at every resolution. ``on_start(method, w, h)`` is called before each cell and
    ``on_row(row)`` as soon as it is measured (``sharpkd bench`` prints it then). ``passes``: network passes
    per frame of a multi-pass kernel student (as ``sharpkd video --passes``; other models have one)."""
    rng = np.random.default_rng(0)
    rows = []
    for name in methods:
        fn = _method(name, device, threads, passes)
        model, backend = split_method(name)
        for w, h in resolutions:
            if on_start is not None:
                on_start(name, w, h)
            frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for _ in range(warmup):
                fn(frame)
            times: list[float] = []
            while len(times) < max_runs and (len(times) < min_runs or sum(times) < max_seconds):
                t = time.perf_counter()
                fn(frame)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            row = {"method": name, "backend": backend, "precision": "int8" if backend == "onnx-int8" else
                   ("uint8" if backend == "opencv" else "fp32"),
                   "threads": _threads(backend, threads), "passes": getattr(fn, "passes", 1), "width": w, "height": h,
                   "runs": len(times),
                   "median_s": med, "fps": 1 / med, "mp_per_s": w * h / 1e6 / med, "peak_rss_mb": _peak_rss_mb()}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return {"device": device, "environment": environment(threads), "rows": rows}


def _threads(backend: str, threads: int) -> int:
    if backend.startswith("onnx"):
        return threads or (os.cpu_count() or 1)
    if backend == "opencv":
        import cv2

        return cv2.getNumThreads()
    return torch.get_num_threads()


TABLE_HEAD = ["| method | backend | precision | threads | resolution | FPS | MP/s | median ms | runs | "
              "peak RSS so far (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]


def header(env: dict, device: str) -> list[str]:
    """What every figure of the table was measured on."""
    return [f"Device: {device}; CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs; "
            f"torch {env['torch']} ({env['torch_threads']} threads), onnxruntime {env['onnxruntime']} "
            f"({env['onnxruntime_threads']} threads), OpenCV {env['opencv']}; precision {env['precision']}; "
            f"CPU flags: {env.get('cpu_flags') or 'n/a'}.",
            "Median of the timed runs after warm-up; one frame per call (batch 1), no tiling.", "", *TABLE_HEAD]


def row_line(r: dict) -> str:
    return (f"| {r['method']} | {r.get('backend', '-')} | {r.get('precision', '-')} | {r.get('threads', '-')} | "
            f"{r['width']}x{r['height']} | {r['fps']:.1f} | {r['mp_per_s']:.2f} | {r['median_s'] * 1000:.1f} | "
            f"{r['runs']} | {r['peak_rss_mb']:.0f} |")


def ratios(res: dict) -> list[str]:
    by = {(r["method"], r["width"]): r for r in res["rows"]}
    widths = sorted({r["width"] for r in res["rows"]})
    lines = []
    for m in dict.fromkeys(r["method"] for r in res["rows"]):
        rs = [(w, by[(m, w)]["fps"] / by[("teacher-net-torch", w)]["fps"]) for w in widths
              if m.startswith("student") and (m, w) in by and ("teacher-net-torch", w) in by]
        if rs:
            pairs = ", ".join(f"{x:.1f}x (width {w})" for w, x in rs)
            lines.append(f"{m} / teacher-net-torch throughput: {pairs}.")
    return lines


def to_markdown(res: dict) -> str:
    r = ratios(res)
    lines = [*header(res["environment"], res["device"]), *map(row_line, res["rows"])]
    return "\n".join(lines + ([""] + r if r else []))


def plot(res: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name in dict.fromkeys(r["method"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["method"] == name]
        ax.plot([r["width"] * r["height"] / 1e6 for r in rs], [r["fps"] for r in rs], marker="o", label=name)
    ax.axhline(30, color="grey", ls="--", lw=0.8, label="30 FPS")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frame size (megapixels)")
    ax.set_ylabel("frames per second")
    ax.set_title(f"sharpkd bench: {res['environment']['cpu']} ({res['device']})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def save_json(res: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(res, indent=1))
