"""Compare two rows of a ``sharpkd eval`` results.json image by image, per degradation.

    python benchmarks/compare_rows.py docs/eval/results.json teacher teacher-net

For each column: on how many images the two methods differ (a photo the blind teacher sends to its
network scores exactly what teacher-net scores, so this counts the photos it deconvolved), on how
many the first is worse, and the smallest and largest difference in dB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    rows = {r["method"]: r for r in json.loads(Path(args.results).read_text())["rows"]}
    a, b = rows[args.a]["per_image_psnr"], rows[args.b]["per_image_psnr"]
    print(f"| column | images | differ | {args.a} worse | min diff (dB) | max diff (dB) |\n|---|---|---|---|---|---|")
    for col in a:
        d = np.asarray(a[col]) - np.asarray(b[col])
        print(f"| {col} | {d.size} | {int((np.abs(d) > 1e-6).sum())} | {int((d < -1e-6).sum())} | "
              f"{d.min():+.2f} | {d.max():+.2f} |")


if __name__ == "__main__":
    main()
