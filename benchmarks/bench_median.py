"""The median frame rate of each method and resolution over several ``sharpkd bench --json`` files.

    for i in 1 2 3; do sharpkd bench --methods student-onnx,student-onnx-int8 --threads 2 --json runs/b$i.json; done
    python benchmarks/bench_median.py runs/b1.json runs/b2.json runs/b3.json

On a machine whose speed drifts from minute to minute (a shared cloud CPU), one bench run can read 30 % high or low;
running the bench a few times, with the methods interleaved in each run, and taking the median of each cell gives a
figure that moves much less. Prints one Markdown row per method and resolution: every run's FPS and their median.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def medians(files: list[Path]) -> list[dict]:
    """One row per (method, width, height), in first-seen order: its FPS in each file and their median."""
    cells: dict[tuple[str, int, int], list[float]] = {}
    meta: dict[tuple[str, int, int], dict] = {}
    for f in files:
        for r in json.loads(f.read_text())["rows"]:
            key = (r["method"], r["width"], r["height"])
            cells.setdefault(key, []).append(r["fps"])
            meta.setdefault(key, {k: r[k] for k in ("backend", "precision", "threads")})
    return [{"method": m, "width": w, "height": h, **meta[(m, w, h)], "fps_each": [round(v, 1) for v in fps],
             "fps_median": round(statistics.median(fps), 1)} for (m, w, h), fps in cells.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="sharpkd bench --json files")
    args = ap.parse_args()
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise SystemExit(f"no such file: {', '.join(missing)}")
    env = json.loads(args.files[0].read_text()).get("environment", {})
    print(f"{len(args.files)} bench runs; environment of the first: {json.dumps(env)}")
    print("| method | backend | precision | threads | resolution | FPS, each run | median FPS |")
    print("|---|---|---|---|---|---|---|")
    for r in medians(args.files):
        print(f"| {r['method']} | {r['backend']} | {r['precision']} | {r['threads']} | {r['width']}x{r['height']} | "
              f"{', '.join(map(str, r['fps_each']))} | **{r['fps_median']}** |")


if __name__ == "__main__":
    main()
