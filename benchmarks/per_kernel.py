"""Per-kernel motion gains from a ``sharpkd eval`` results.json (no model is run).

    python benchmarks/per_kernel.py docs/eval/results.json

Under BENCHMARK.md the motion column gives image i the Levin kernel k{i mod 8 + 1}, so each kernel
is used on three Kodak24 images; this prints each method's mean gain over the blurred input per
kernel (dB), then, for blind models whose rows record them, the route each photo took per column, the
mean gain of each route per column and the time per photo on each route.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    args = ap.parse_args()
    res = json.loads(open(args.results).read())
    rows = res["rows"]
    base = np.asarray(rows[0]["per_image_psnr"]["motion"])
    kernel_of = np.arange(len(base)) % 8
    print(f"Motion column per Levin kernel (BENCHMARK.md version {res.get('protocol_version', 1)}), "
          "gain over the blurred input in dB; the blurred row is its PSNR.\n")
    print("| method | " + " | ".join(f"k{k + 1}" for k in range(8)) + " | mean |\n|---|" + "---|" * 9)
    print("| blurred input | " + " | ".join(f"{base[kernel_of == k].mean():.2f}" for k in range(8))
          + f" | {base.mean():.2f} |")
    for r in rows[1:]:
        gain = np.asarray(r["per_image_psnr"]["motion"]) - base
        print(f"| {r['method']} | " + " | ".join(f"{gain[kernel_of == k].mean():+.2f}" for k in range(8))
              + f" | {gain.mean():+.2f} |")
    routed = [r for r in rows if "per_image_route" in r]
    if routed:
        print("\nRoutes the blind models took (photos per column):\n")
        for r in routed:
            cols = "; ".join(f"{d} " + ", ".join(f"{n} {v.count(n)}" for n in sorted(set(v)))
                             for d, v in r["per_image_route"].items())
            print(f"- {r['method']}: {cols}")
        print("\nMean gain (dB) by route, per column:\n")
        for r in routed:
            cols = []
            for d, v in r["per_image_route"].items():
                gain = np.asarray(r["per_image_psnr"][d]) - np.asarray(rows[0]["per_image_psnr"][d])
                cols.append(f"{d} " + ", ".join(f"{n} {gain[[x == n for x in v]].mean():+.2f}" for n in sorted(set(v))))
            print(f"- {r['method']}: " + "; ".join(cols))
    timed = [r for r in rows if "per_image_seconds" in r]
    if timed:
        print("\nSeconds per photo by route (all columns; mean / largest):\n")
        for r in timed:
            by: dict[str, list] = {}
            for d, routes in r["per_image_route"].items():
                for route, s in zip(routes, r["per_image_seconds"][d], strict=True):
                    by.setdefault(route, []).append(s)
            print(f"- {r['method']}: " + "; ".join(f"{n} ({len(v)} photos) {np.mean(v):.1f} / {max(v):.1f}"
                                                   for n, v in sorted(by.items())))


if __name__ == "__main__":
    main()
