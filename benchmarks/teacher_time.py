"""Seconds per photo of the shipped blind teacher on the benchmark's camera-shake photos, its slowest route.

    python benchmarks/teacher_time.py --json docs/eval/teacher_time/epyc.json
    python benchmarks/teacher_time.py --teacher runs/old/teacher.safetensors      # another file
    python benchmarks/teacher_time.py --photos 0,7 --backends onnx         # a quicker look
    python benchmarks/teacher_time.py --photos 0 --backends torch --profile   # where one photo's time goes

Issue 15 allows the teacher 60 s for a 768 x 512 photo on two cores. Photos the teacher deconvolves as camera
shake cost the most (two estimates, a kernel refinement and four solver runs), so this script times those: the
Kodak24 photos of ``--photos`` blurred as BENCHMARK.md v2's motion column blurs them (their Levin kernel, noise
seed and 8-bit rounding; the first eight photos carry the eight kernels). Timing only: nothing here is tuned.

Each photo is restored once per prior backend of ``--backends`` (``BlindTeacher.prior_backend``: the solver's
FFDNet convolutions in ONNX Runtime or in PyTorch), the backends taking turns photo by photo so that a change in
the machine's speed during the run touches both. Printed per photo: the route, the seconds of each backend
(estimate and restore; the model is loaded before timing) and the largest difference between the backends'
8-bit results. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np
import torch

# where a photo's time goes (--profile): the functions whose cumulative time is reported
PARTS = {"denoiser passes": "around_stack", "kernel estimates": "estimate_kernel",
         "conjugate-gradient data steps": "masked_data_step"}


def parts(profiler: cProfile.Profile) -> dict[str, float]:
    """Seconds spent in each of :data:`PARTS` (cumulative, all calls) and in the whole profiled call."""
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive calls, own, cumulative, ..)
    out = {part: sum(v[3] for k, v in stats.items() if k[2] == fn) for part, fn in PARTS.items()}
    out["total"] = pstats.Stats(profiler).total_tt
    return out


def main() -> None:
    from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel
    from sharpkd.evaluate import load_eval_images, to_uint8
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr
    from sharpkd.provenance import hardware

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher", help="a blind teacher's name or file (default: the shipped one)")
    ap.add_argument("--data", default="../shared/datasets/eval/kodak24")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--photos", default="0,1,2,3,4,5,6,7", help="photo indices (comma-separated)")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="also print where each photo's time went (denoiser passes, kernel estimates, CG data steps; "
                         "profiling slows the run a little)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = load_eval_images(args.data)
    levin = load_levin_kernels(args.kernels)
    backends = [b for b in args.backends.split(",") if b]
    sh = Sharpener.from_pretrained(args.teacher, tile=0)
    motion = 3  # the protocol's degradation index of camera shake
    rows = []
    for i in (int(v) for v in args.photos.split(",")):
        name, sharp = images[i]
        k = protocol_kernel(motion, i, levin)
        blurred = protocol_degrade(sharp, k, 1000 * motion + i)
        row = {"photo": name, "index": i, "kernel": i % 8 + 1, "seconds": {}, "psnr": {}}
        outs = {}
        for b in backends:
            sh.model.prior_backend = b
            profiler = cProfile.Profile() if args.profile else None
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            out = to_uint8(sh.sharpen_array(blurred.astype(np.float32) / 255))
            row["seconds"][b] = time.perf_counter() - t0
            if profiler:
                profiler.disable()
                row.setdefault("profile", {})[b] = parts(profiler)
            row["psnr"][b] = psnr(sharp, out)
            row["route"] = sh.last_estimates[0].route
            outs[b] = out.astype(np.int16)
        row["max_level_difference"] = int(max(np.abs(outs[b] - outs[backends[0]]).max() for b in backends))
        rows.append(row)
        print(f"{name} (k{row['kernel']}, {row['route']}): "
              + ", ".join(f"{b} {row['seconds'][b]:.1f} s" for b in backends)
              + f"; results differ by at most {row['max_level_difference']} level(s)", flush=True)
        for b, spent in row.get("profile", {}).items():
            print(f"  {b}, profiled: " + ", ".join(f"{part} {sec:.1f} s" for part, sec in spent.items()), flush=True)
    for b in backends:
        s = [r["seconds"][b] for r in rows]
        shake = [r["seconds"][b] for r in rows if r["route"] == "shake"]
        print(f"{b}: mean {np.mean(s):.1f} s, largest {max(s):.1f} s"
              + (f"; camera-shake route {np.mean(shake):.1f} s on average ({len(shake)} photos)" if shake else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"hardware": hardware(),
                                               "threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
