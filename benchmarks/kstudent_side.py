"""How large a crop should the kernel student's blur estimate see? Measured on the hold-out photos.

    python benchmarks/kstudent_side.py [--model kstudent] [--sides 384,512,768] [--json OUT]

The kernel student estimates the blur on a central crop of at most ``estimate_side`` pixels; a smaller
crop is faster and sees fewer edges. The benchmark's hold-out crops (192 px) are smaller than every
candidate, so this script uses the hold-out photos whole instead, reduced to at most 768 px (the size
of a Kodak24 photo; Kodak24 itself is never read). Each photo is degraded as the benchmark does
(1/255 noise, 8-bit rounding) by two procedural camera-shake kernels (lengths 10-25 px) and a Gaussian
of sigma 2, and restored by the same model with each estimate size. Printed per size: mean gain (dB)
per kind, the routes the photos took, and the mean seconds per photo (estimate included), on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kstudent")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--sides", default="384,512,768")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dataclasses import replace

    from sharpkd.checkpoint import load_model
    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.degrade import gaussian_kernel, make_kernel, protocol_degrade
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr

    _, held = split_holdout(load_photos(args.data))
    rng = np.random.default_rng(0)
    cases = []
    for i, photo in enumerate(held):
        sharp = limit_size(photo, 768).pixels
        for j in range(2):
            k = make_kernel("motion", length=float(rng.uniform(10, 25)), seed=int(rng.integers(1 << 30)), size=31)
            cases.append(("motion", sharp, protocol_degrade(sharp, k, 100 * i + j)))
        cases.append(("gauss2", sharp, protocol_degrade(sharp, gaussian_kernel(2.0), 100 * i + 9)))
    model, _ = load_model(args.model)
    results = {}
    for side in (int(s) for s in args.sides.split(",")):
        m = type(model)(config=replace(model.config, estimate_side=side))
        m.net.load_state_dict(model.net.state_dict())
        m.attach_estimator(model.estimator)
        sh = Sharpener(m.eval(), tile=0)
        rows: dict[str, dict[str, list]] = {}
        for kind, sharp, blurred in cases:
            x = torch.from_numpy(blurred).permute(2, 0, 1)[None].float() / 255
            t0 = time.perf_counter()
            est = sh.estimate_blur(x)
            out = sh.sharpen_tensor(x, est)[0].permute(1, 2, 0).numpy()
            seconds = time.perf_counter() - t0
            r = rows.setdefault(kind, {"gain": [], "routes": [], "seconds": []})
            r["gain"].append(psnr(np.round(out * 255), sharp) - psnr(blurred, sharp))
            r["routes"].append(est[0].route)
            r["seconds"].append(seconds)
        results[side] = {k: {"gain": round(float(np.mean(r["gain"])), 3),
                             "routes": {x: r["routes"].count(x) for x in sorted(set(r["routes"]))},
                             "seconds": round(float(np.mean(r["seconds"])), 2), "cases": len(r["gain"])}
                         for k, r in rows.items()}
        print(json.dumps({"estimate_side": side, **results[side]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "photos": len(held), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
