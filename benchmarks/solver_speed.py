"""Time and quality of the blind teacher's camera-shake solver (HQS with its FFDNet prior) on photos it was
never tuned on.

    python benchmarks/solver_speed.py --json out/solver_speed.json
    python benchmarks/solver_speed.py --compare OLD.json NEW.json     # two runs, photo by photo

The photos and kernels are those of ``benchmarks/estimate_speed.py`` (the hold-out photos of the training pool
and ``--train-photos`` training photos, at most 768 px, a procedural camera-shake kernel each, the benchmark's
noise and rounding; Kodak24 is never read). The solver runs as the teacher's final camera-shake run does
(its iterations, CG steps, noise floor and fine-tuned prior) with the **true** kernel, so the figure depends
on the solver alone, not on the estimate. Printed per photo: seconds for the whole run, seconds of one
FFDNet pass at the solver's padded size, and the gain over the blurred photo.

``--prior-backend torch`` times the prior's convolutions in PyTorch instead of ONNX Runtime (the teacher's
default since the twenty-seventh session); ``--compare`` the two JSON files to see that they agree.

To time another version of the code, run this file with that version first on the path, e.g.
``git worktree add /tmp/old REV; PYTHONPATH=/tmp/old/src python benchmarks/solver_speed.py --json old.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(args: argparse.Namespace) -> dict:
    from estimate_speed import cases

    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.solve import estimate_noise
    from sharpkd.metrics import psnr

    teacher = load_model(args.teacher)[0]
    teacher.prior_backend = args.prior_backend
    cfg = teacher.config

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255

    rows = []
    for name, sharp, y, k_true in cases(args.data, args.train_photos)[: args.limit or None]:
        img = to_t(y)
        noise = max(estimate_noise(img), cfg.min_noise, cfg.shake_noise)
        with torch.no_grad():
            prior = teacher._runner(teacher.prior("shake"), img)  # what the solver runs (made before timing)
            t0 = time.perf_counter()
            out = teacher._solve(img, k_true, noise, route="shake")
            t1 = time.perf_counter()
            probe = torch.rand(1, 3, y.shape[0] + 2 * 31, y.shape[1] + 2 * 31)
            prior(probe, 0.05)
            t2 = time.perf_counter()
            prior(probe, 0.05)
            t3 = time.perf_counter()
        restored = np.round(out[0].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
        rows.append({"case": name, "seconds": t1 - t0, "ffdnet_seconds": min(t2 - t1, t3 - t2),
                     "gain": psnr(sharp, restored) - psnr(sharp, y), "psnr": psnr(sharp, restored)})
        r = rows[-1]
        print(f"{name}: {r['seconds']:.1f} s (one FFDNet pass {r['ffdnet_seconds']:.2f} s), gain {r['gain']:+.2f} dB",
              flush=True)
    return {"teacher": args.teacher, "threads": args.threads, "prior_backend": args.prior_backend, "rows": rows}


def summary(res: dict) -> str:
    r = res["rows"]
    return (f"{len(r)} photos: solver {np.mean([x['seconds'] for x in r]):.2f} s per photo, one FFDNet pass "
            f"{np.mean([x['ffdnet_seconds'] for x in r]):.2f} s, gain with the true kernel "
            f"{np.mean([x['gain'] for x in r]):+.3f} dB")


def compare(a: dict, b: dict) -> None:
    print("A:", summary(a))
    print("B:", summary(b))
    d = [y["psnr"] - x["psnr"] for x, y in zip(a["rows"], b["rows"], strict=True)]
    print(f"B - A per photo: mean {np.mean(d):+.4f} dB, from {min(d):+.4f} to {max(d):+.4f}")


def main() -> None:
    from estimate_speed import cli

    def extra(ap) -> None:
        ap.add_argument("--prior-backend", choices=("onnx", "torch"), default="onnx",
                        help="what runs the prior's convolutions (BlindTeacher.prior_backend; default onnx)")

    cli(__doc__, measure, summary, compare, limit=True, extra=extra)


if __name__ == "__main__":
    main()
