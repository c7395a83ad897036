"""Which photos should the blind teacher deconvolve? Routing features and outcomes on training photos.

    python benchmarks/route_study.py --json docs/eval/route_study.json      # collect (about 70 CPU-minutes)
    python benchmarks/route_study.py --analyze docs/eval/route_study.json   # the rule table, in seconds

Training-pool photos only (never the hold-out photos, never Kodak24): ``--photos`` of them, reduced
to 768 px, one central crop of ``--crop`` px each, blurred (BENCHMARK.md's noise and rounding) by two
procedural camera-shake kernels (length 8-25 px) and one Gaussian (sigma 1, 2, 3 or 1.5 in turn).
Per case it records the teacher's routing features (anisotropy, spread and peak of the L0 estimate,
agreement with the second estimate, the round route's fitted width and residual, the data residual of
a conservative deconvolution) and the gain (dB) of every route: HQS with the true kernel (the
ceiling), with the L0 estimate, with the refined estimate (what the shake route does), with the
fitted Gaussian (the round route), the network alone, and the shipped teacher.

``--analyze`` replays routing rules on the recorded outcomes: the shipped rule reproduces the
shipped teacher's figure, and the others show what relaxing each camera-shake gate would gain or cost.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def psnr(a, b) -> float:
    """PSNR (dB) of what would be saved to disk (8 bit)."""
    import torch

    from sharpkd.metrics import batch_psnr

    return float(batch_psnr(torch.round(a.clamp(0, 1) * 255) / 255, b)[0])


def grad_residual(y, x, k: np.ndarray, noise: float) -> float:
    """RMS of the grey gradients of k * x - y over the interior, over sqrt(2) x noise (1: noise only)."""
    from scipy.signal import fftconvolve

    from sharpkd.deblur.estimate import to_grey

    d = (fftconvolve(to_grey(x[0]).numpy(), k, mode="same") - to_grey(y[0]).numpy())[32:-32, 32:-32]
    return float(np.sqrt((np.mean(np.diff(d, axis=0) ** 2) + np.mean(np.diff(d, axis=1) ** 2)) / 2)
                 / (math.sqrt(2) * noise))


def shake_kernel(rng: np.random.Generator, compact: bool) -> np.ndarray:
    """A procedural camera-shake kernel, 8-25 px of path; ``compact``: drawn again until its anisotropy is
    below 1.5 (the blob-like shakes the camera-shake gates turn away; about one draw in ten)."""
    from sharpkd.deblur.estimate import anisotropy
    from sharpkd.degrade import make_kernel

    while True:
        k = make_kernel("motion", length=float(rng.uniform(8, 25)), seed=int(rng.integers(1 << 30)), size=31)
        if not compact or anisotropy(k) < 1.5:
            return k


def study_photos(args: argparse.Namespace):
    """The study's photos, in the order of their seeded draw (``--photos`` training-pool photos, ``--seed``):
    yields (place in the draw, file name, central ``--crop``-px crop of the photo reduced to 768 px as uint8
    H x W x 3, the same as a (1, 3, H, W) tensor in [0, 1])."""
    import torch

    from sharpkd.data import limit_size, load_photos, split_holdout

    train, _ = split_holdout(load_photos(args.data))
    idx = np.random.default_rng(args.seed).choice(len(train), args.photos, replace=False)
    for j, i in enumerate(idx):
        p = limit_size(train[i], 768)
        h, w = p.pixels.shape[:2]
        c = min(args.crop, h, w)
        s_np = np.ascontiguousarray(p.pixels[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
        yield j, train[i].name, s_np, torch.from_numpy(s_np.copy()).permute(2, 0, 1)[None].float() / 255


def blurred_case(s_np: np.ndarray, k: np.ndarray, j: int, ci: int):
    """Case ``ci`` of the ``j``-th photo blurred by ``k`` (BENCHMARK.md's noise and 8-bit rounding, a seed of its
    own), as a (1, 3, H, W) tensor in [0, 1]."""
    import torch

    from sharpkd.degrade import protocol_degrade

    return torch.from_numpy(protocol_degrade(s_np, k, 500 + 3 * j + ci)).permute(2, 0, 1)[None].float() / 255


def collect(args: argparse.Namespace) -> list[dict]:
    import torch

    from sharpkd.deblur.estimate import (
        EstimateConfig,
        anisotropy,
        estimate_kernel,
        fit_gaussian_width,
        kernel_match,
        kernel_spread,
        nearest_gaussian,
        refine_kernel,
    )
    from sharpkd.degrade import gaussian_kernel
    from sharpkd.infer import Sharpener

    torch.set_num_threads(args.threads)
    teacher = Sharpener.from_pretrained("teacher", tile=0).model
    cfg = teacher.config
    rows = []
    for j, name, s_np, sharp in study_photos(args):
        krng = np.random.default_rng(1000 + j)
        cases = [("motion", shake_kernel(krng, args.compact)) for _ in range(2)]
        cases.append(("gauss", gaussian_kernel([1.0, 2.0, 3.0, 1.5][j % 4])))
        for ci, (kind, k) in enumerate(cases):
            y = blurred_case(s_np, k, j, ci)
            base = psnr(y, sharp)
            with torch.no_grad():
                est = teacher.estimate(y)[0]
                noise = est.noise
                k0 = estimate_kernel(y[0], EstimateConfig(kernel_size=cfg.kernel_size, max_side=cfg.estimate_side))
                k1 = estimate_kernel(y[0], EstimateConfig(kernel_size=cfg.check_kernel_size, lam=cfg.check_lam,
                                                          max_side=cfg.estimate_side))
                z = teacher._network(y)
                fit, resid = fit_gaussian_width(y[0], z[0])

                def solve(kk, floor, y=y, noise=noise, route=""):
                    return teacher._solve(y, kk, max(noise, floor), route=route)

                first = solve(k0, cfg.first_noise, route="refine")  # the run the teacher refines against
                final0 = solve(k0, cfg.shake_noise)
                kr = refine_kernel(y[0], first[0], k0, EstimateConfig(max_side=cfg.estimate_side))
                gfit = gaussian_kernel(max(fit, 0.3), k0.shape[0])  # the round route's Gaussian, on the estimate's grid
                row = {"photo": name, "kind": kind, "ktrue_spread": kernel_spread(k), "blurred": base,
                       "route": est.route, "noise": noise, "aniso": anisotropy(k0), "spread": kernel_spread(k0),
                       "peak": float(k0.max()), "agree": kernel_match(k0, k1), "fit": fit,
                       "resid": resid / (math.sqrt(2) * noise), "res_first": grad_residual(y, first, k0, noise),
                       "res_final": grad_residual(y, final0, k0, noise),
                       "g_true": psnr(solve(k, cfg.shake_noise), sharp) - base, "g_k0": psnr(final0, sharp) - base,
                       "g_ref": psnr(solve(kr, cfg.shake_noise), sharp) - base,
                       "g_round": psnr(solve(gaussian_kernel(max(fit, 0.3)), cfg.round_noise), sharp) - base,
                       "g_net": psnr(z, sharp) - base, "g_teacher": psnr(teacher.restore(y, [est]), sharp) - base,
                       "match0": kernel_match(k0, k),
                       # how Gaussian the estimates look: L1 distance to the nearest Gaussian (0-2), and the
                       # match of the estimate and of the refined kernel with the round route's fitted Gaussian
                       "gdist0": nearest_gaussian(k0)[0], "gdist_ref": nearest_gaussian(kr)[0],
                       "gmatch0": kernel_match(k0, gfit), "gmatch_ref": kernel_match(kr, gfit)}
            rows.append(row)
            print(" ".join(f"{a}={b:.2f}" if isinstance(b, float) else f"{a}={b}" for a, b in row.items()), flush=True)
    return rows


def analyze(rows: list[dict]) -> None:
    """Replay routing rules: round route first (as the shipped checks), then a camera-shake gate, else network."""

    def fits(r):
        return r["fit"] >= 0.5 and r["resid"] <= 1.2

    def is_round(r, below=1.4):
        return r["aniso"] < below and fits(r)

    def route(r, gate, ratio, round_below=1.4):
        """The route a rule takes: round route first, then the camera-shake gate (where a Gaussian of
        the estimate's size explains the photo and ``ratio`` is set, round again), else the network.
        ``round_below``: the round route's anisotropy limit (``round_anisotropy``); above 1.4 it is offered
        only what the camera-shake gate refuses, as in the teacher."""
        if is_round(r, min(round_below, 1.4)):
            return "round"
        if not gate(r):
            return "round" if is_round(r, round_below) else "net"
        return "round" if ratio and fits(r) and r["fit"] >= ratio * r["spread"] else "ref"

    def conc(r):
        return r["peak"] * r["spread"] >= 0.12

    def agreed(r):
        return r["agree"] >= 0.9 and r["aniso"] >= 1.5

    def shipped_gates(t):  # the shipped camera-shake gates with agreement threshold ``t``
        return lambda r: r["agree"] >= t and r["aniso"] >= 1.5 and r["spread"] >= 1.5 and conc(r)

    def compact(t):  # the shipped gates, plus compact shake (nineteenth session) at agreement ``t``
        return lambda r: (agreed(r) and r["spread"] >= 1.5 and conc(r)) or (
            r["aniso"] < 1.5 and not fits(r) and r["agree"] >= t)

    rules = {  # name: (camera-shake gate, round_spread_ratio[, round_anisotropy])
        "before (shipped until the nineteenth session): agreement >= 0.9, anisotropy >= 1.5, spread >= 1.5, "
        "concentration >= 0.12":
            (lambda r: agreed(r) and r["spread"] >= 1.5 and conc(r), 0),
        "without the spread gate": (lambda r: agreed(r) and conc(r), 0),
        "without the concentration gate": (lambda r: agreed(r) and r["spread"] >= 1.5, 0),
        "without either (agreement >= 0.9, anisotropy >= 1.5)": (agreed, 0),
        "anisotropy >= 1.4 alone": (lambda r: r["aniso"] >= 1.4, 0),
        **{f"shipped gates, agreement >= {t:g}": (shipped_gates(t), 0) for t in (0.85, 0.8)},
        "without the concentration gate, round_spread_ratio 0.8": (lambda r: agreed(r) and r["spread"] >= 1.5, 0.8),
        "without either, round_spread_ratio 0.8": (agreed, 0.8),
        **{f"before, plus compact shake (anisotropy < 1.5, no Gaussian fit) at agreement >= {t:g}": (compact(t), 0)
           for t in (0.9, 0.95)},
        "compact shake at 0.9, round route up to anisotropy 1.5 (shipped since the nineteenth session)":
            (compact(0.9), 0, 1.5),
    }
    kinds = ("motion", "gauss")
    count = {k: sum(r["kind"] == k for r in rows) for k in kinds}
    print(f"cases: {count}\n\n| rule | camera shake | Gaussian | shake cases deconvolved with the estimate "
          "| worst loss vs network |")
    print("|---|---|---|---|---|")
    for name, (gate, ratio, *below) in rules.items():
        routes = [route(r, gate, ratio, *below) for r in rows]
        gains = np.array([r[f"g_{x}"] for r, x in zip(rows, routes, strict=True)])
        m = {k: gains[[r["kind"] == k for r in rows]].mean() for k in kinds}
        n = sum(x == "ref" and r["kind"] == "motion" for r, x in zip(rows, routes, strict=True))
        worst = min(g - r["g_net"] for r, g in zip(rows, gains, strict=True))
        print(f"| {name} | {m['motion']:+.2f} | {m['gauss']:+.2f} | {n}/{count['motion']} | {worst:+.2f} |")
    first, *_, last = rules.values()
    print("\ncases whose route the shipped rule (last row) changes from the first row's, gain in dB:\n")
    for r in rows:
        a, b = route(r, *first), route(r, *last)
        if a != b:
            print(f"- {r['kind']}, anisotropy {r['aniso']:.2f}, agreement {r['agree']:.2f}: "
                  f"{a} {r[f'g_{a}']:+.2f} -> {b} {r[f'g_{b}']:+.2f}")
    took = [r for r in rows if r["kind"] == "motion" and route(r, *last) == "round"]
    if took:
        own, ref = np.array([r["g_teacher"] for r in took]), np.array([r["g_ref"] for r in took])
        print(f"\ncamera shake the shipped rule sends to the round route: {len(took)}/{count['motion']}; there the "
              f"fitted Gaussian gains {np.mean([r['g_round'] for r in took]):+.2f} dB on average (the teacher's "
              f"run recorded with the study {own.mean():+.2f}, worst {own.min():+.2f}), the refined estimate "
              f"{ref.mean():+.2f} (better than the teacher's run on {int((ref > own).sum())})")
        for r in took:
            print(f"- gmatch0 {r.get('gmatch0', float('nan')):.2f}: fitted Gaussian {r['g_round']:+.2f}, "
                  f"refined estimate {r['g_ref']:+.2f}, network {r['g_net']:+.2f}")
        if "gmatch0" in took[0]:  # recorded since the nineteenth session
            gauss = [r["gmatch0"] for r in rows if r["kind"] == "gauss" and route(r, *last) == "round"]
            print(f"match with the fitted Gaussian (gmatch0): {min(r['gmatch0'] for r in took):.2f}-"
                  f"{max(r['gmatch0'] for r in took):.2f} for those, {min(gauss):.2f}-{max(gauss):.2f} for the "
                  "Gaussian cases the round route takes")
    gate_table(rows, lambda r: route(r, *last), kinds, count)
    print("\nmean gain (dB) of each route applied to every case:\n\n| blur | true kernel | L0 estimate | refined "
          "| fitted Gaussian | network | shipped teacher | best of estimate/network/Gaussian |")
    print("|---|---|---|---|---|---|---|---|")
    for k in kinds:
        sel = [r for r in rows if r["kind"] == k]
        cols = [np.mean([r[c] for r in sel]) for c in ("g_true", "g_k0", "g_ref", "g_round", "g_net", "g_teacher")]
        best = np.mean([max(r["g_k0"], r["g_net"], r["g_round"]) for r in sel])
        print(f"| {k} | " + " | ".join(f"{v:+.2f}" for v in cols) + f" | {best:+.2f} |")


def gate_table(rows: list[dict], shipped, kinds: tuple[str, ...], count: dict) -> None:
    """The round route's doubt gates replayed (``BlindTeacherConfig.round_min_match``, ``round_doubt_residual``):
    a photo the shipped rule sends to the round route whose L0 estimate matches the fitted Gaussian less than
    the match gate (``gmatch0``), or whose fit leaves a residual above the residual gate (``resid``, over the
    noise's), takes the camera-shake route (refined estimate) if its two estimates agree at 0.9 (the
    compact-shake check), and stays on the round route otherwise."""

    def doubted(r, match, resid):
        return (match and r["gmatch0"] < match) or (resid and r["resid"] > resid)

    def gated(r, match, resid):
        x = shipped(r)
        return "ref" if x == "round" and doubted(r, match, resid) and r["agree"] >= 0.9 else x

    print("\nthe round route's doubt gates, mean gain in dB:\n\n| gate | camera shake | Gaussian | camera shake moved "
          "off the round route (gain before -> after) | Gaussian cases moved |")
    print("|---|---|---|---|---|")
    # the match gates need gmatch0, recorded since the nineteenth session
    matches = (0.8, 0.85, 0.9, 0.92, 0.95) if all("gmatch0" in r for r in rows) else ()
    gates = [(0, 0), *((t, 0) for t in matches), *((0, t) for t in (0.85, 0.9, 0.95, 1.0))]
    for match, resid in gates:
        routes = [gated(r, match, resid) for r in rows]
        gains = np.array([r[f"g_{x}"] for r, x in zip(rows, routes, strict=True)])
        m = {k: gains[[r["kind"] == k for r in rows]].mean() for k in kinds}
        moved = {k: [r for r, x in zip(rows, routes, strict=True) if r["kind"] == k and x != shipped(r)] for k in kinds}

        def changes(sel):
            return ", ".join(f"{r[f'g_{shipped(r)}']:+.2f} -> {r['g_ref']:+.2f}" for r in sel) or "-"

        name = f"match < {match:g}" if match else f"residual > {resid:g}" if resid else "off (shipped)"
        print(f"| {name} | {m['motion']:+.2f} | {m['gauss']:+.2f} | "
              f"{len(moved['motion'])}/{count['motion']}: {changes(moved['motion'])} | "
              f"{len(moved['gauss'])}/{count['gauss']}: {changes(moved['gauss'])} |")
    print("\nthe round route's cases by fit residual (over the noise's):\n")
    for k in kinds:
        res = sorted(r["resid"] for r in rows if shipped(r) == "round" and r["kind"] == k)
        print(f"- {k}: " + ", ".join(f"{v:.2f}" for v in res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the collected rows here")
    ap.add_argument("--compact", action="store_true",
                    help="camera-shake kernels with anisotropy below 1.5 only (the compact-shake route's cases)")
    ap.add_argument("--analyze", help="read rows from this JSON instead of collecting (several: comma-separated)")
    args = ap.parse_args()
    if args.analyze:
        rows, seen = [], set()
        for r in (r for f in args.analyze.split(",") for r in json.loads(Path(f).read_text())["rows"]):
            key = (r["photo"], r["kind"], round(r["blurred"], 6), round(r["ktrue_spread"], 6))
            if key not in seen:  # two seeds can draw the same photo at the same place, hence the same case
                seen.add(key)
                rows.append(r)
    else:
        rows = collect(args)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=0) + "\n")
    analyze(rows)


if __name__ == "__main__":
    main()
