"""Peak memory and time of sharpening one large photo through the CLI (tiled).

    python benchmarks/large_image.py --size 6000x4000 --model student

Writes a 24-megapixel JPEG made from a real photograph (scikit-image's astronaut, tiled and
resized; not a flat colour, so compression and the network see real texture), runs
``sharpkd sharpen`` on it in a child process and reports the child's wall time and peak resident
memory (``ru_maxrss``), plus a check that the output has the input's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="6000x4000")
    ap.add_argument("--model", default="student")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    import skimage.data

    from sharpkd.provenance import hardware

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "big.jpg", Path(tmp) / "big_sharp.jpg"
        base = skimage.data.astronaut()
        reps = (h // base.shape[0] + 1, w // base.shape[1] + 1, 1)
        Image.fromarray(np.tile(base, reps)[:h, :w]).save(src, quality=92)
        cmd = [sys.executable, "-m", "sharpkd.cli", "-q", "sharpen", str(src), "-o", str(dst), "--model", args.model,
               "--backend", args.backend, "--tile", str(args.tile)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        out_size = Image.open(dst).size
    res = {"hardware": hardware(), "image": f"{w}x{h} JPEG ({w * h / 1e6:.1f} MP)", "model": args.model,
           "backend": args.backend, "tile": args.tile, "wall_s": round(seconds, 1),
           "peak_rss_mb": round(peak_mb, 1), "output_size_ok": out_size == (w, h)}
    for k, v in res.items():
        print(f"{k:16s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["output_size_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
