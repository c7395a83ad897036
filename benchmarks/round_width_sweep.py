"""How far off is the round route's width, and can the deconvolutions themselves tell?

    python benchmarks/round_width_sweep.py --set train --photos 8 --offsets=-0.2,-0.1,0,0.1,0.2,0.3,0.4 --no-mix \
        --json docs/eval/round_width_sweep_train.json
    python benchmarks/round_width_sweep.py --set holdout --photos 7 --json docs/eval/round_width_sweep_holdout.json
    python benchmarks/round_width_sweep.py --summary docs/eval/round_width_sweep_*.json

Photos: training-pool photos (``--set train``: a seeded draw; the round route's own training data never
includes these crops' blur) or the hold-out photos (``--set holdout``); never Kodak24. One central crop each
(384 px, photos reduced to 768 px), blurred by Gaussians of sigma 1-3 with BENCHMARK.md's noise and rounding.
The shipped teacher routes each crop as it always does. On crops that take the round route, the route's
solver (HQS with its own prior) runs at the fitted width plus each offset (px) and at the true width; per
result it records the gain (dB) and no-reference measures a width rule could use:

* ``l1l2``: the L1/L2 ratio of the grey gradients (Krishnan et al., CVPR 2011: lower for sharper images);
* ``over``: mean overshoot outside the 7x7 local range of the network's output (ringing);
* ``kurt``: the kurtosis of the grey gradients.

It also scores averages of the results at several widths (``mix``), a hedge over the width's uncertainty.
``--summary`` prints, per set, the mean gain of each offset, each mix and a few width rules built on the measures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

OFFSETS = (-0.1, 0.0, 0.1, 0.2, 0.3)  # the hold-out run's; the training-pool run had -0.2 and +0.4 as well
TRAIN_DRAW = 10  # --set train: the photos are the first --photos of a seeded draw of this many
MIXES = {"fit,+0.1": (0.0, 0.1), "-0.1,fit,+0.1": (-0.1, 0.0, 0.1), "fit..+0.2": (0.0, 0.1, 0.2)}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of ``a`` as an 8-bit image would store it, against ``b``; both in [0, 1]."""
    from sharpkd.distill_kernel import q
    from sharpkd.metrics import psnr as psnr_db

    return psnr_db(q(a), b, data_range=1.0)


def measures(x: torch.Tensor, net: torch.Tensor) -> dict[str, float]:
    from scipy.ndimage import maximum_filter, minimum_filter

    from sharpkd.deblur.estimate import to_grey

    m = 12
    g, gn = to_grey(x[0]).numpy(), to_grey(net[0]).numpy()
    a = np.abs(np.concatenate([np.diff(g, axis=ax)[m:-m, m:-m].ravel() for ax in (0, 1)]))
    over = np.clip(g - maximum_filter(gn, 7), 0, None) + np.clip(minimum_filter(gn, 7) - g, 0, None)
    return {"l1l2": float(a.sum() / np.sqrt((a**2).sum())), "over": float(over[m:-m, m:-m].mean()),
            "kurt": float((a**4).mean() / (a**2).mean() ** 2)}


def photo_set(name: str, data: str, n: int) -> list:
    from sharpkd.data import limit_size, load_photos, split_holdout

    pool, held = split_holdout(load_photos(data))
    if name == "holdout":
        return [limit_size(p, 768) for p in held][:n]
    rng = np.random.default_rng(5)
    return [limit_size(pool[i], 768) for i in rng.choice(len(pool), max(n, TRAIN_DRAW), replace=False)[:n]]


def run_case(teacher, sharp_np: np.ndarray, sigma: float, seed: int, offsets=OFFSETS, mixes=True) -> dict:
    from sharpkd.degrade import gaussian_kernel, protocol_degrade

    sharp = torch.from_numpy(sharp_np).permute(2, 0, 1)[None].float() / 255
    y = torch.from_numpy(protocol_degrade(sharp_np, gaussian_kernel(sigma), seed)).permute(2, 0, 1)[None].float() / 255
    base = psnr(y, sharp)
    est = teacher.estimate(y)[0]
    row = {"sigma": sigma, "route": est.route, "fit": est.fit, "blurred": base}
    if est.route != "round":
        return row
    noise = max(est.noise, teacher.config.round_noise)
    net = teacher._network(y)
    outs, row["cand"] = {}, {}
    for name, width in [*((f"{d:+.1f}", est.fit + d) for d in offsets), ("true", sigma)]:
        x = teacher._solve(y, gaussian_kernel(round(max(width, 0.3), 2)), noise, route="round")
        outs[name] = x
        row["cand"][name] = {"width": width, "gain": psnr(x, sharp) - base, **measures(x, net)}
    if mixes:
        row["mix"] = {k: psnr(sum(outs[f"{d:+.1f}"] for d in v) / len(v), sharp) - base for k, v in MIXES.items()}
    return row


def rule_width(row: dict, rule: str) -> str:
    """The offset a width rule picks from the measures alone."""
    c = row["cand"]
    keys = [f"{d:+.1f}" for d in OFFSETS]
    if rule == "argmin l1l2":
        return min(keys, key=lambda k: c[k]["l1l2"])
    if rule == "argmin l1l2, one step back":
        return keys[max(keys.index(min(keys, key=lambda k: c[k]["l1l2"])) - 1, 0)]
    if rule == "argmax kurtosis":
        return max(keys, key=lambda k: c[k]["kurt"])
    if rule.startswith("overshoot <= "):  # widen from the fit while the overshoot stays within t x the fit's
        t, best = float(rule.split()[-1].rstrip("x")), "+0.0"
        for k in keys[keys.index("+0.0") + 1:]:
            if c[k]["over"] > t * c["+0.0"]["over"]:
                break
            best = k
        return best
    raise ValueError(rule)


RULES = ("argmin l1l2", "argmin l1l2, one step back", "argmax kurtosis", "overshoot <= 3x", "overshoot <= 6x")


def summary(paths: list[str]) -> None:
    print("| round-route crops | " + " | ".join(Path(p).stem for p in paths) + " |")
    print("|---|" + "---|" * len(paths))
    sets = [[r for r in json.loads(Path(p).read_text())["rows"] if r.get("cand")] for p in paths]
    print("| cases | " + " | ".join(str(len(s)) for s in sets) + " |")
    lines = [(f"fit {d:+.1f} px" if d else "fitted width (shipped)", lambda r, k=f"{d:+.1f}": r["cand"][k]["gain"])
             for d in OFFSETS]
    lines += [(f"mean of the results at {k}", lambda r, k=k: r["mix"][k] if "mix" in r else float("nan"))
              for k in MIXES]
    lines += [(f"rule: {u}", lambda r, u=u: r["cand"][rule_width(r, u)]["gain"]) for u in RULES]
    lines += [("best offset per crop (oracle)", lambda r: max(r["cand"][f"{d:+.1f}"]["gain"] for d in OFFSETS)),
              ("true width", lambda r: r["cand"]["true"]["gain"])]
    for name, f in lines:
        print(f"| {name} | " + " | ".join(f"{np.mean([f(r) for r in s]):+.2f}" for s in sets) + " |")
    for p, s in zip(paths, sets, strict=True):
        err = [r["fit"] - r["sigma"] for r in s]
        if not err:
            print(f"\n{Path(p).stem}: no crop took the round route")
            continue
        print(f"\n{Path(p).stem}: fitted minus true width, mean {np.mean(err):+.3f} px, "
              f"range {min(err):+.2f} to {max(err):+.2f}; per photo: "
              + ", ".join(f"{n} {np.mean([r['fit'] - r['sigma'] for r in s if r['photo'] == n]):+.2f}"
                          for n in sorted({r['photo'] for r in s})))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--set", default="holdout", choices=("train", "holdout"))
    ap.add_argument("--photos", type=int, default=7)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--sigmas", default="1,1.5,2,2.5,3")
    ap.add_argument("--offsets", default=",".join(f"{d:g}" for d in OFFSETS), help="px added to the fitted width")
    ap.add_argument("--no-mix", action="store_true", help="skip the averaged results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--summary", nargs="+", metavar="JSON", help="summarise earlier runs instead")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary)
        return
    torch.set_num_threads(args.threads)

    import sharpkd.models  # noqa: F401  (registers the architectures before the teacher module)
    from sharpkd.infer import Sharpener

    teacher = Sharpener.from_pretrained(args.teacher, tile=0).model
    offsets = tuple(float(d) for d in args.offsets.split(","))
    rows, t0 = [], time.time()
    with torch.no_grad():
        for n, photo in enumerate(photo_set(args.set, args.data, args.photos)):
            h, w = photo.pixels.shape[:2]
            c = min(args.crop, h, w)
            y0, x0 = (h - c) // 2, (w - c) // 2
            sharp_np = np.ascontiguousarray(photo.pixels[y0 : y0 + c, x0 : x0 + c])
            for i, sigma in enumerate(float(s) for s in args.sigmas.split(",")):
                row = {"photo": n, **run_case(teacher, sharp_np, sigma, 1000 + 7 * n + i, offsets, not args.no_mix)}
                rows.append(row)
                gains = " ".join(f"{k} {v['gain']:+.2f}" for k, v in row.get("cand", {}).items())
                print(f"photo {n} sigma {sigma:g}: {row['route']} fit {row['fit']:.2f} {gains} "
                      f"({time.time() - t0:.0f} s)", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
