"""Solver settings of the blind teacher's camera-shake route, measured on training photos.

    python benchmarks/shake_solver.py --photos 16 --json docs/eval/shake_solver/study.json
    python benchmarks/shake_solver.py --summary docs/eval/shake_solver/study.json

The camera-shake route refines its L0 kernel against a conservative deconvolution (``refine_iters``
HQS iterations, 0 = ``iters``) and then deconvolves with the refined kernel (``shake_iters``), each run
optionally with DPIR's periodical geometric self-ensemble (``geo_ensemble``). This script asks what
those settings are worth where they matter: on photos the shipped teacher routes to camera shake.

Training-pool photos only (never the hold-out photos, never Kodak24): a seeded draw of ``--photos``,
reduced to 768 px, one central crop of ``--crop`` px each, blurred (BENCHMARK.md's noise and 8-bit
rounding) by two procedural camera-shake kernels (8-25 px of path, the draws of route_study.py's
seed). The shipped teacher estimates each case once; where it takes the camera-shake route, the
refinement and the final deconvolution are rerun from the same L0 kernel under every setting of
``--settings`` (``name:field=value,field=value;...``; the first is the baseline and should be the
shipped one). Other cases are left out (the settings do not touch them). ``--levin N`` uses N whole
photos of ``teacher_ab.py``'s development set instead (hold-out photos first, at most 768 px), each
blurred as BENCHMARK.md v2 blurs Kodak24's photo of the same index (its Levin kernel, noise seed and
rounding; "case" is the kernel's number). Printed: mean gain (dB) per setting over the deconvolved
cases, how many cases each setting beats or loses to the baseline by
more than 0.1 dB, and the seconds per case of the refinement plus final run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_SETTINGS = ("shipped:;refine16:refine_iters=16;refine24:refine_iters=24;geo:geo_ensemble=1;"
                    "refine16+geo:refine_iters=16,geo_ensemble=1")


def parse_settings(text: str) -> dict[str, dict[str, str]]:
    """``name:field=value,...;name:...`` -> {name: {field: value}}."""
    from sharpkd.checkpoint import parse_assignments

    out = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, _, fields = item.partition(":")
        try:
            out[name.strip()] = parse_assignments([f for f in fields.split(",") if f.strip()], "--settings")
        except ValueError as err:
            raise SystemExit(str(err)) from None
    return out


def cases(args: argparse.Namespace):
    """(photo name, case number, blurred (1, 3, H, W) tensor in [0, 1], sharp tensor, true kernel) of the study: two
    procedural camera-shake kernels per cropped training photo, or with ``--levin`` one whole photo of
    teacher_ab.py's development set each, blurred as BENCHMARK.md v2 blurs Kodak24's photo of the same index
    with its Levin kernel."""
    import torch
    from route_study import blurred_case, shake_kernel, study_photos

    if args.levin:
        from teacher_ab import dev_photos

        from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel

        levin = load_levin_kernels(args.kernels)
        motion = 3  # the protocol's degradation index of camera shake
        for i, (name, sharp) in enumerate(dev_photos(args.data, args.levin)):
            if args.resume and i < args.resume:
                continue
            k = protocol_kernel(motion, i, levin)
            y = protocol_degrade(sharp, k, 1000 * motion + i)
            yield (name, i % 8 + 1, torch.from_numpy(y).permute(2, 0, 1)[None].float() / 255,
                   torch.from_numpy(sharp.copy()).permute(2, 0, 1)[None].float() / 255, k)
        return
    for j, photo, s_np, sharp in study_photos(args):
        krng = np.random.default_rng(1000 + j)
        for ci in range(2):
            k = shake_kernel(krng, False)
            yield photo, ci, blurred_case(s_np, k, j, ci), sharp, k


def collect(args: argparse.Namespace) -> dict:
    import torch
    from route_study import psnr

    from sharpkd.checkpoint import replace_fields
    from sharpkd.deblur.estimate import kernel_match
    from sharpkd.deblur.solve import soften
    from sharpkd.infer import Sharpener

    torch.set_num_threads(args.threads)
    settings = parse_settings(args.settings)
    teacher = Sharpener.from_pretrained("teacher", tile=0).model
    shipped = teacher.config
    try:  # each value takes its field's type
        configs = {name: replace_fields(shipped, fields, "--settings") for name, fields in settings.items()}
    except ValueError as err:
        raise SystemExit(str(err)) from None
    captured = {}
    plain_refine, plain_shake = teacher._refine, teacher._shake

    def capture(img, k, noise, agreement, other=None):  # the L0 kernel the shipped route refines, and the check
        captured["k0"], captured["check"] = k.copy(), None if other is None or other is k else other.copy()
        return plain_shake(img, k, noise, agreement, other)

    teacher._shake = capture
    rows = []
    if args.resume:  # the rows of the cases before it, from the JSON
        rows = json.loads(Path(args.json).read_text())["rows"][: args.resume]
    for photo, ci, y, sharp, k_true in cases(args):
        base = psnr(y, sharp)
        captured.clear()
        teacher.config = shipped
        est = teacher.estimate(y)[0]
        row = {"photo": photo, "case": ci, "route": est.route, "blurred": base, "gain": {}, "seconds": {},
               "match_l0": {}, "match_true": {}}
        if est.route == "shake" and "k0" in captured:
            for name, cfg in configs.items():
                teacher.config = cfg
                t0 = time.perf_counter()
                with torch.no_grad():
                    kr = plain_refine(y[0], captured["k0"], est.noise)
                    kernels = [kr]
                    if cfg.shake_average:  # as BlindTeacher.restore: the L0 kernel's result averaged in
                        kernels.append(captured["k0"])
                        if cfg.shake_average_check and captured["check"] is not None:  # and the second estimate's
                            kernels.append(captured["check"])
                    noise = max(est.noise, cfg.shake_noise)
                    out = sum(teacher._solve(y, k, noise, route="shake") for k in kernels) / len(kernels)
                    out = soften(out, cfg.shake_soften)  # as restore() does
                row["seconds"][name] = time.perf_counter() - t0
                row["gain"][name] = psnr(out, sharp) - base
                for width in args.soften:  # the same result with a light Gaussian blur (no solver run)
                    row.setdefault("softened", {}).setdefault(name, {})[str(width)] = psnr(soften(out, width),
                                                                                          sharp) - base
                row["match_l0"][name] = kernel_match(kr, captured["k0"])  # how far the refinement moved it
                row["match_true"][name] = kernel_match(kr, k_true)
                if args.aligned:
                    row.setdefault("aligned", {})[name] = aligned_gains(out, y, sharp)
            if args.aligned:  # the same solver with the true kernel, for reference
                with torch.no_grad():
                    out = teacher._solve(y, k_true, max(est.noise, shipped.shake_noise), route="shake")
                row["gain"]["true kernel"] = psnr(out, sharp) - base
                row["aligned"]["true kernel"] = aligned_gains(out, y, sharp)
            print(f"{photo} case {ci}: " + "  ".join(f"{n} {g:+.2f}" for n, g in row["gain"].items()),
                  flush=True)
        else:
            print(f"{photo} case {ci}: route {est.route}", flush=True)
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    return {"settings": settings, "rows": rows}


def aligned_gains(out, y, sharp, border: int = 20) -> dict:
    """An oracle diagnostic, never used by the teacher: the gain (dB) of ``out`` over ``y`` on the photo less a
    ``border``, as it is and after shifting ``out`` by the displacement (1/20 px steps) that best registers it
    onto the sharp photo (``skimage.registration.phase_cross_correlation``; cubic-spline shift). The difference
    is what a global misalignment of the result costs."""
    from scipy.ndimage import shift as subpixel_shift
    from skimage.registration import phase_cross_correlation

    def frame(t) -> np.ndarray:
        return np.round(t[0].clamp(0, 1).permute(1, 2, 0).double().numpy() * 255)

    o, b, g = frame(out), frame(y), frame(sharp)
    moved, _, _ = phase_cross_correlation(g.mean(2), o.mean(2), upsample_factor=20)
    o_moved = np.stack([subpixel_shift(o[..., c], moved, order=3, mode="nearest") for c in range(3)], -1)
    inner = (slice(border, -border), slice(border, -border))

    def score(a: np.ndarray) -> float:
        mse = np.mean((np.clip(np.round(a), 0, 255)[inner] - g[inner]) ** 2)
        return float(10 * np.log10(255**2 / max(mse, 1e-6)))  # (capped at 108 dB for an exact copy)

    base = score(b)
    return {"gain": score(o) - base, "aligned_gain": score(o_moved) - base, "shift": [float(v) for v in moved]}


def summary(data: dict) -> None:
    rows = [r for r in data["rows"] if r["gain"]]
    names = list(data["settings"])  # (the true kernel's row, with --aligned, is in the table below)
    base = np.array([r["gain"][names[0]] for r in rows])
    print(f"{len(rows)} of {len(data['rows'])} camera-shake cases take the camera-shake route\n")
    print(f"| setting | mean gain (dB) | vs {names[0]} | the same without its largest change | better / worse by "
          "> 0.1 dB | worst change | s per case |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        g = np.array([r["gain"][n] for r in rows])
        d = g - base
        sec = np.mean([r["seconds"][n] for r in rows])
        rest = np.delete(d, int(np.abs(d).argmax())) if len(d) > 1 else d
        print(f"| {n} | {g.mean():+.2f} | {d.mean():+.3f} | {rest.mean():+.3f} | {int((d > 0.1).sum())} / "
              f"{int((d < -0.1).sum())} "
              f"| {d.min():+.2f} | {sec:.1f} |")
    soft = [r for r in rows if "softened" in r]
    if soft:
        widths = list(soft[0]["softened"][names[0]])
        print(f"\nsoftened results (a Gaussian blur of the final result; {len(soft)} cases):\n")
        print("| setting | " + " | ".join(f"width {w} px" for w in widths) + " |")
        print("|---|" + "---|" * len(widths))
        for n in names:
            cells = []
            for w in widths:
                g = np.array([r["softened"][n][w] for r in soft])
                d = g - np.array([r["gain"][n] for r in soft])
                cells.append(f"{g.mean():+.2f} ({d.mean():+.3f}; {int((d > 0.1).sum())} / {int((d < -0.1).sum())})")
            print(f"| {n} | " + " | ".join(cells) + " |")
    aligned = [r for r in rows if "aligned" in r]
    if aligned:
        print(f"\nmisalignment (oracle diagnostic, {len(aligned)} cases; gains on the photo less a 20-px border):\n")
        print("| setting | gain | after registering onto the sharp photo | mean shift (px) | cases shifted > 0.5 px |")
        print("|---|---|---|---|---|")
        for n in aligned[0]["aligned"]:
            a = [r["aligned"][n] for r in aligned]
            shift = np.array([np.hypot(*v["shift"]) for v in a])
            print(f"| {n} | {np.mean([v['gain'] for v in a]):+.2f} | {np.mean([v['aligned_gain'] for v in a]):+.2f} "
                  f"| {shift.mean():.2f} | {int((shift > 0.5).sum())} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--levin", type=int, default=0, metavar="N",
                    help="N whole photos of teacher_ab.py's development set with the benchmark's Levin kernels instead")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--aligned", action="store_true",
                    help="also score each result after the shift that registers it onto the sharp photo (an oracle "
                         "diagnostic of misalignment), and the solver with the true kernel")
    ap.add_argument("--soften", type=lambda t: [float(v) for v in t.split(",") if v], default=[], metavar="W,W",
                    help="also score each result blurred by a Gaussian of these widths (px)")
    ap.add_argument("--resume", type=int, default=0, metavar="N",
                    help="with --levin: keep the first N rows of --json and go on from photo N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="name:field=value,...;... (first: the baseline)")
    ap.add_argument("--json", help="write the rows here (rewritten after every case)")
    ap.add_argument("--summary", help="read rows from this JSON instead of collecting")
    args = ap.parse_args()
    if args.summary:
        summary(json.loads(Path(args.summary).read_text()))
        return
    summary(collect(args))


if __name__ == "__main__":
    main()
