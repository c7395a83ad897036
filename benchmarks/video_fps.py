"""End-to-end video frame rate of `sharpkd video` (decode, sharpen, encode) on a generated clip.

    python benchmarks/video_fps.py --model student --backend onnx-int8 [--size 640x480] [--frames 300]
    python benchmarks/video_fps.py --model kstudent --backend onnx-int8 --estimate-every 0   # one estimate

The clip is made here: a slow pan across scikit-image's astronaut photo (enlarged), blurred with a
Gaussian of sigma 1.5, written as MJPEG .avi at 30 FPS, so nothing outside the repository is needed.
Then `sharpkd video CLIP -o OUT.avi` runs as a user would run it, and its own summary line (frames,
seconds, FPS) is printed. Take the figure with nothing else running.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np


def make_clip(path: Path, w: int, h: int, frames: int) -> None:
    import skimage.data

    src = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    scale = max(2 * w / src.shape[1], 1.5 * h / src.shape[0])
    big = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    for i in range(frames):
        t = i / max(frames - 1, 1)
        x, y = int(t * (big.shape[1] - w)), int(0.5 * t * (big.shape[0] - h))
        out.write(cv2.GaussianBlur(np.ascontiguousarray(big[y:y + h, x:x + w]), (0, 0), 1.5))
    out.release()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="student")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--estimate-every", type=int, default=300,
                    help="kstudent/teacher: renew the blur estimate every N frames (0: once, from the first)")
    ap.add_argument("--passes", type=int, default=1, help="kstudent: network passes per frame (sharpkd video --passes)")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        clip, out = Path(d) / "clip.avi", Path(d) / "sharp.avi"
        make_clip(clip, w, h, args.frames)
        r = subprocess.run([sys.executable, "-m", "sharpkd", "video", str(clip), "-o", str(out), "--model", args.model,
                            "--backend", args.backend, "--threads", str(args.threads),
                            "--estimate-every", str(args.estimate_every), "--passes", str(args.passes)],
                           capture_output=True, text=True)
        print(r.stdout.strip() or r.stderr.strip())
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
