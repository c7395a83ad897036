"""How large a crop should the kernel student's blur estimate see? Measured on the hold-out photos.

    python benchmarks/kstudent_side.py [--model kstudent] [--sides 384,512,768] [--json OUT]
    python benchmarks/kstudent_side.py --train-photos 17 --sigmas 1,2,3 --json OUT   # the larger study
    python benchmarks/kstudent_side.py --train-photos 17 --sigmas 1,2,3 --sides 384+768   # with a fallback crop

The kernel student estimates the blur on a central crop of at most ``estimate_side`` pixels; a smaller
crop is faster and sees fewer edges. The benchmark's hold-out crops (192 px) are smaller than every
candidate, so this script uses the hold-out photos whole instead, reduced to at most 768 px (the size
of a Kodak24 photo; Kodak24 itself is never read). Each photo is degraded as the benchmark does
(1/255 noise, 8-bit rounding) by two procedural camera-shake kernels (lengths 10-25 px) and a Gaussian
of sigma 2, and restored by the same model with each estimate size. Seven photos is a small sample:
``--train-photos N`` adds N photos of the training split (seeded draw; the networks were trained on
crops of them, which may flatter the absolute gains, so read the differences between settings), and ``--sigmas`` cycles
the Gaussian's sigma over the photos. Printed per size: mean gain (dB)
per kind, the routes the photos took, and the mean seconds per photo (estimate included), on 2 threads.
A size ``A+B`` estimates on A-px crops and, where that shows no camera shake, on B-px crops instead
(``KernelStudentConfig.fallback_side``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kstudent")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--sides", default="384,512,768")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-photos", type=int, default=0, help="add this many training-split photos")
    ap.add_argument("--sigmas", default="2", help="Gaussian sigmas, cycled over the photos")
    ap.add_argument("--trust", default="", help="instead: at the first --sides size, the gain if camera shake "
                    "were trusted from these agreements on (e.g. 0.6,0.7,0.8,0.9; the highest is the baseline)")
    ap.add_argument("--balance", default="", help="instead: at the first --sides size, the gain with each of these "
                    "Wiener balances of the guide (e.g. 0.003,0.01,0.02; the network was trained with 0.01)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.checkpoint import load_model
    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.degrade import gaussian_kernel, make_kernel, protocol_degrade
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr

    pool, held = split_holdout(load_photos(args.data))
    photos = list(held)
    if args.train_photos:
        pick = np.random.default_rng(1).choice(len(pool), size=min(args.train_photos, len(pool)), replace=False)
        photos += [pool[int(i)] for i in sorted(pick)]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    rng = np.random.default_rng(0)
    cases = []
    for i, photo in enumerate(photos):
        sharp = limit_size(photo, 768).pixels
        for j in range(2):
            k = make_kernel("motion", length=float(rng.uniform(10, 25)), seed=int(rng.integers(1 << 30)), size=31)
            cases.append(("motion", sharp, protocol_degrade(sharp, k, 100 * i + j)))
        sigma = sigmas[i % len(sigmas)]
        cases.append((f"gauss{sigma:g}", sharp, protocol_degrade(sharp, gaussian_kernel(sigma), 100 * i + 9)))
    model, _ = load_model(args.model)
    if args.trust or args.balance:
        side = int(args.sides.split(",")[0])
        sweep = (trust_sweep(model, cases, side, [float(t) for t in args.trust.split(",")]) if args.trust else
                 balance_sweep(model, cases, side, [float(b) for b in args.balance.split(",")]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": args.model, "photos": len(photos), "holdout_photos": len(held), **sweep}, f,
                          indent=1)
        return
    results = {}
    for side in args.sides.split(","):  # "384" or "384+768" (384, and 768 where 384 shows no camera shake)
        primary, _, fallback = side.partition("+")
        sh = Sharpener(at_side(model, int(primary), fallback_side=int(fallback) if fallback else None), tile=0)
        rows: dict[str, dict[str, list]] = {}
        for kind, sharp, blurred in tqdm(cases, desc=f"estimate side {side}", leave=False):
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
                             "seconds": round(float(np.mean(r["seconds"])), 2), "cases": len(r["gain"]),
                             "per_case": [round(float(g), 3) for g in r["gain"]], "per_case_routes": r["routes"]}
                         for k, r in rows.items()}
        every = [g for r in results[side].values() for g in r["per_case"]]
        brief = {k: {m: v for m, v in r.items() if not m.startswith("per_case")} for k, r in results[side].items()}
        print(json.dumps({"estimate_side": side, "mean_gain": round(float(np.mean(every)), 3), **brief}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "photos": len(photos), "holdout_photos": len(held),
                       "train_photos": len(photos) - len(held), "results": results}, f, indent=1)


def at_side(model, side: int, **settings):
    """The kernel student ``model`` (same network, same estimator) with its estimate on ``side``-px crops
    (and any other config ``settings``, e.g. ``min_agreement``; no fallback crop unless ``fallback_side`` is given)."""
    settings.setdefault("fallback_side", None)
    m = type(model)(config=replace(model.config, estimate_side=side, **settings))
    m.net.load_state_dict(model.net.state_dict())
    return m.attach_estimator(model.estimator).eval()


def _gain(model, x: torch.Tensor, est, sharp: np.ndarray, blurred: np.ndarray) -> float:
    """PSNR gain (dB) of the kernel student's 8-bit output with estimate ``est`` over the blurred photo."""
    from sharpkd.metrics import psnr

    out = model.restore(x, [est])[0].permute(1, 2, 0).numpy()
    return round(psnr(np.round(out.clip(0, 1) * 255), sharp) - psnr(blurred, sharp), 3)


def balance_sweep(model, cases: list, side: int, balances: list[float]) -> dict:
    """Per case: the router's estimate (the model file's settings) and the gain with each Wiener balance of
    the guide (the network unchanged). Then the mean gains per balance."""
    variants = {b: at_side(model, side, balance=b) for b in balances}
    rows = []
    for kind, sharp, blurred in tqdm(cases, desc=f"balance sweep, side {side}"):
        x = torch.from_numpy(blurred).permute(2, 0, 1)[None].float() / 255
        est = variants[balances[0]].estimate(x)[0]
        rows.append({"kind": kind, "route": est.route,
                     "gains": {f"{b:g}": _gain(m, x, est, sharp, blurred) for b, m in variants.items()}})
    table = {}
    for b in balances:
        g: dict[str, list] = {}
        for r in rows:
            g.setdefault("motion" if r["kind"] == "motion" else r["kind"], []).append(r["gains"][f"{b:g}"])
        table[f"{b:g}"] = {k: round(float(np.mean(v)), 3) for k, v in sorted(g.items())}
        print(json.dumps({"balance": b, **table[f"{b:g}"]}), flush=True)
    return {"side": side, "cases": rows, "balances": table}


def trust_sweep(model, cases: list, side: int, thresholds: list[float]) -> dict:
    """Per case: the router's estimate and gain with the highest of ``thresholds`` (whatever the model file
    sets, so the sweep does not depend on it), and where it refused a camera-shake candidate (one that
    passed the shape checks, with its agreement), the gain had it been trusted (the same estimate with
    the agreement check off). Then, per threshold, the mean gains had that been the router's."""
    m = at_side(model, side, min_agreement=max(thresholds))
    relaxed = copy.copy(m.estimator)
    relaxed.config = replace(m.estimator.config, min_agreement=-1.0)
    rows = []
    for kind, sharp, blurred in tqdm(cases, desc=f"trust sweep, side {side}"):
        x = torch.from_numpy(blurred).permute(2, 0, 1)[None].float() / 255
        t0 = time.perf_counter()
        est = m.estimate(x)[0]
        gain = _gain(m, x, est, sharp, blurred)
        row = {"kind": kind, "route": est.route, "agreement": round(float(est.agreement), 3), "gain": gain,
               "seconds": round(time.perf_counter() - t0, 2)}
        if est.route != "shake" and est.agreement > 0:  # a candidate the agreement check refused
            row["trusted_gain"] = _gain(m, x, relaxed.estimate(x)[0], sharp, blurred)
        rows.append(row)
    def trusted(r: dict, t: float) -> bool:  # a refused candidate that threshold ``t`` would deconvolve
        return "trusted_gain" in r and r["agreement"] >= t

    table = {}
    for t in thresholds:
        g = {}
        for r in rows:
            g.setdefault("motion" if r["kind"] == "motion" else "gauss", []).append(
                r["trusted_gain"] if trusted(r, t) else r["gain"])
        table[f"{t:g}"] = {k: round(float(np.mean(v)), 3) for k, v in g.items()}
        table[f"{t:g}"]["shake_routes"] = sum(r["route"] == "shake" or trusted(r, t)
                                              for r in rows if r["kind"] == "motion")
        print(json.dumps({"min_agreement": t, **table[f"{t:g}"]}), flush=True)
    return {"side": side, "cases": rows, "thresholds": table}


if __name__ == "__main__":
    main()
