"""Time and accuracy of the blind teacher's kernel estimate on photos it was never tuned on.

    python benchmarks/estimate_speed.py --json out/estimate_speed.json
    python benchmarks/estimate_speed.py --compare OLD.json NEW.json     # two runs, case by case

Photos: the hold-out photos of the training pool plus ``--train-photos`` photos of its training split
(seeded draw), each reduced to at most 768 px (a Kodak24 photo's size; Kodak24 itself is never read),
blurred by a procedural camera-shake kernel (length 10-25 px) with the benchmark's 1/255 noise and 8-bit
rounding. The teacher's two estimates run as the teacher runs them (its kernel sizes, L0 weights, crop and
alternations): the one it deconvolves with and the agreement check. Printed: seconds per photo for each
estimate (and per megapixel), the estimate's match to the true kernel (peak normalised cross-correlation,
1 = the same shape), the agreement of the two estimates, and the gain of a Wiener filter with the
estimate against one with the true kernel (balance 3e-3), which scores the estimate alone. The same gain
for the check estimate, and for the one of the two that ``pick_by_residual`` would take (the smaller
:func:`sharpkd.deblur.estimate.reblur_residual`), with the mean over the photos whose estimates agree at
the teacher's ``min_agreement`` (those it may deconvolve).

``--full`` also runs the whole teacher (estimate, refinement, deconvolution) with ``pick_by_residual`` off and
on, on the photos whose estimates agree and where the residual picks the check (where the option changes
anything), and prints its gains. ``--refined`` refines both estimates as the teacher refines the one it
deconvolves with and records their agreement and match to the truth afterwards, and the gain of the teacher's
camera-shake deconvolution with the refined first estimate on every photo, whatever its route, and the route the
teacher takes (is the agreement of refined kernels a better confidence signal than that of the raw ones, and what
do the teacher's gates leave?). ``--estimate-set FIELD=VALUE`` changes
a setting of the first estimate (e.g. ``dark_lam=2e-3``, the dark-channel term) and leaves the check as the
teacher has it.

To time another version of the code, run this file with that version first on the path, e.g.
``git worktree add /tmp/old REV; PYTHONPATH=/tmp/old/src python benchmarks/estimate_speed.py --json old.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch


def cases(data: str, train_photos: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.degrade import make_kernel, protocol_degrade

    pool, held = split_holdout(load_photos(data))
    photos = list(held)
    if train_photos:
        pick = np.random.default_rng(1).choice(len(pool), size=min(train_photos, len(pool)), replace=False)
        photos += [pool[int(i)] for i in sorted(pick)]
    rng = np.random.default_rng(0)
    out = []
    for i, photo in enumerate(photos):
        sharp = limit_size(photo, 768).pixels
        k = make_kernel("motion", length=float(rng.uniform(10, 25)), seed=int(rng.integers(1 << 30)), size=31)
        out.append((f"photo{i}", sharp, protocol_degrade(sharp, k, 500 + i), k))
    return out


def teacher_gains(teacher, x: torch.Tensor, y: np.ndarray, sharp: np.ndarray) -> dict:
    """The whole teacher's gain (dB) and route on one photo (``x``: ``y`` as a tensor) with ``pick_by_residual``
    off and on."""
    from sharpkd.infer import tensor_to_frame
    from sharpkd.metrics import psnr

    out = {}
    base = teacher.config
    for pick in (False, True):
        teacher.config = dataclasses.replace(base, pick_by_residual=pick)
        est = teacher.estimate(x)
        res = tensor_to_frame(teacher.restore(x, est))
        out["picked" if pick else "first"] = {"gain": psnr(sharp, res) - psnr(sharp, y), "route": est[0].route}
    teacher.config = base
    return out


def refined_agreement(teacher, x: torch.Tensor, y: np.ndarray, sharp: np.ndarray, k: np.ndarray, check: np.ndarray,
                      k_true: np.ndarray) -> dict:
    """Both estimates refined as the teacher refines the one it deconvolves with (a conservative deconvolution of
    the central crop, then a kernel update against it); their agreement and match to the truth; and the gain of
    the teacher's final camera-shake deconvolution with the refined first estimate, whatever the route; and the
    route the teacher takes."""
    from sharpkd.deblur.estimate import kernel_match
    from sharpkd.deblur.solve import estimate_noise
    from sharpkd.degrade import pad_kernel
    from sharpkd.infer import tensor_to_frame
    from sharpkd.metrics import psnr

    cfg = teacher.config
    noise = max(estimate_noise(x), cfg.min_noise)
    kr, cr = (teacher._refine(x[0], kern, noise) for kern in (k, check))
    res = tensor_to_frame(teacher._solve(x, kr, max(noise, cfg.shake_noise), route="shake"))
    return {"agreement": kernel_match(kr, cr), "match": kernel_match(pad_kernel(kr, 31), k_true),
            "check_match": kernel_match(pad_kernel(cr, 31), k_true), "shake_gain": psnr(sharp, res) - psnr(sharp, y),
            "route": teacher.estimate(x)[0].route}


def teacher_line(t: dict) -> str:
    return (f"; teacher {t['first']['gain']:+.2f} ({t['first']['route']}), "
            f"picked {t['picked']['gain']:+.2f} ({t['picked']['route']})")


def measure(args: argparse.Namespace) -> dict:
    from sharpkd.checkpoint import load_model, parse_assignments, replace_fields
    from sharpkd.deblur.estimate import estimate_kernel, kernel_match, reblur_residual
    from sharpkd.deblur.solve import wiener_deconvolve
    from sharpkd.degrade import pad_kernel
    from sharpkd.infer import frame_to_tensor
    from sharpkd.metrics import psnr

    teacher = load_model(args.teacher)[0]
    cfg = teacher.config
    main_cfg = teacher.estimate_config(cfg.kernel_size)  # the teacher's own settings for both estimates
    if args.estimate_set:  # another setting of the first estimate (EstimateConfig fields)
        option = "--estimate-set"
        try:
            main_cfg = replace_fields(main_cfg, parse_assignments(args.estimate_set, option), option)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    check_cfg = teacher.estimate_config(min(cfg.kernel_size, cfg.check_kernel_size), lam=cfg.check_lam)

    def gain(y: np.ndarray, sharp: np.ndarray, k: np.ndarray) -> float:
        out = wiener_deconvolve(frame_to_tensor(y), k, 3e-3)[0].permute(1, 2, 0).numpy()
        return psnr(sharp, np.round(out * 255).clip(0, 255).astype(np.uint8)) - psnr(sharp, y)

    rows = []
    for name, sharp, y, k_true in cases(args.data, args.train_photos):
        x = frame_to_tensor(np.ascontiguousarray(y))
        blurred = x[0]
        t0 = time.perf_counter()
        k = estimate_kernel(blurred, main_cfg)
        t1 = time.perf_counter()
        check = estimate_kernel(blurred, check_cfg)
        t2 = time.perf_counter()
        crop = min(y.shape[0], cfg.estimate_side) * min(y.shape[1], cfg.estimate_side) / 1e6
        residuals = [reblur_residual(blurred, kern, main_cfg, pad=main_cfg.kernel_size) for kern in (k, check)]
        rows.append({"case": name, "megapixels": crop, "seconds": t1 - t0, "check_seconds": t2 - t1,
                     "match": kernel_match(pad_kernel(k, 31), k_true), "agreement": kernel_match(k, check),
                     "gain_true": gain(y, sharp, k_true), "gain_estimate": gain(y, sharp, k),
                     "gain_check": gain(y, sharp, check), "residuals": residuals})
        r = rows[-1]
        r["gain_picked"] = r["gain_check"] if residuals[1] < residuals[0] else r["gain_estimate"]
        if args.full and r["agreement"] >= cfg.min_agreement and residuals[1] < residuals[0]:
            r["teacher"] = teacher_gains(teacher, x, y, sharp)
        print(f"{name}: {r['seconds']:.1f} + {r['check_seconds']:.1f} s, match {r['match']:.3f}, "
              f"agreement {r['agreement']:.3f}, Wiener {r['gain_estimate']:+.2f} (check {r['gain_check']:+.2f}, "
              f"picked {r['gain_picked']:+.2f}, true kernel {r['gain_true']:+.2f})"
              + (teacher_line(r["teacher"]) if "teacher" in r else ""), flush=True)
        if args.refined:
            r["refined"] = refined_agreement(teacher, x, y, sharp, k, check, k_true)
            print(f"  refined: agreement {r['refined']['agreement']:.3f}, match {r['refined']['match']:.3f} / "
                  f"{r['refined']['check_match']:.3f}; camera-shake deconvolution {r['refined']['shake_gain']:+.2f} dB")
    return {"teacher": args.teacher, "threads": args.threads, "min_agreement": cfg.min_agreement, "rows": rows}


def summary(res: dict) -> str:
    r = res["rows"]

    def mean(key: str) -> float:
        return float(np.mean([x[key] for x in r]))

    mp = mean("megapixels")
    text = (f"{len(r)} photos: estimate {mean('seconds'):.2f} s ({mean('seconds') / mp:.1f} s/MP), check "
            f"{mean('check_seconds'):.2f} s; match to the true kernel {mean('match'):.3f}; agreement "
            f"{mean('agreement'):.3f}; Wiener gain with the estimate {mean('gain_estimate'):+.2f} dB "
            f"(true kernel {mean('gain_true'):+.2f})")
    if r and "gain_picked" in r[0]:  # files from before the residual pick have no such columns
        agree = [x for x in r if x["agreement"] >= res.get("min_agreement", 0.9)]

        def gains(rows: list[dict]) -> str:
            return " / ".join(f"{np.mean([x[k] for x in rows]):+.2f}" for k in ("gain_estimate", "gain_check",
                                                                                  "gain_picked"))

        picked = sum(x["residuals"][1] < x["residuals"][0] for x in r)
        text += (f"\nWiener gain, first / check / picked by residual: {gains(r)} dB (check picked for {picked} of "
                 f"{len(r)}); on the {len(agree)} photos whose estimates agree: {gains(agree) if agree else '-'}")
        refined = [x for x in r if "refined" in x]
        if refined:  # deconvolve where a rule says so, 0 dB elsewhere (about what the network gains on camera shake)

            def score(ok) -> str:
                sel = [x for x in refined if ok(x)]
                total = sum(x["refined"]["shake_gain"] for x in sel)
                return f"{total / len(refined):+.2f} dB ({len(sel)} deconvolved)"

            matches = [np.mean([x["refined"][k] for x in refined]) for k in ("match", "check_match")]
            text += (f"\nrefined first / check match to the truth {matches[0]:.3f} / {matches[1]:.3f}; "
                     f"camera-shake deconvolution of "
                     f"every photo {score(lambda x: True)}; where the raw estimates agree at 0.9 "
                     f"{score(lambda x: x['agreement'] >= 0.9)}; where the refined ones agree at 0.85 / 0.9 / 0.95: "
                     + " / ".join(score(lambda x, t=t: x["refined"]["agreement"] >= t) for t in (0.85, 0.9, 0.95))
                     + f"; best of deconvolution and 0 per photo {score(lambda x: x['refined']['shake_gain'] > 0)}")
            if "route" in refined[0]["refined"]:
                text += f"; the teacher's own camera-shake routes {score(lambda x: x['refined']['route'] == 'shake')}"
        full = [x["teacher"] for x in r if "teacher" in x]
        if full:
            text += (f"\nwhole teacher on the {len(full)} agreeing photos where the residual picks the check: "
                     f"{np.mean([x['first']['gain'] for x in full]):+.2f} dB with the first estimate, "
                     f"{np.mean([x['picked']['gain'] for x in full]):+.2f} with pick_by_residual")
    return text


def compare(a: dict, b: dict) -> None:
    print("A:", summary(a))
    print("B:", summary(b))
    moved = [(x["case"], x["match"], y["match"]) for x, y in zip(a["rows"], b["rows"], strict=True)
             if abs(x["match"] - y["match"]) > 0.02]
    print(f"{len(moved)} of {len(a['rows'])} estimates differ (match to the truth moved by more than 0.02):",
          ", ".join(f"{c} {m1:.2f} -> {m2:.2f}" for c, m1, m2 in moved))


def cli(doc: str, measure, summary, compare, limit: bool = False, extra=None) -> None:
    """The command line shared with ``solver_speed.py``: measure the photos of :func:`cases` with a teacher,
    print the summary and write ``--json``; or ``--compare`` two such files, or ``--show`` one. ``extra``
    adds a script's own options to the parser."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--train-photos", type=int, default=9)
    if limit:
        ap.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    if extra is not None:
        extra(ap)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two --json files and stop")
    ap.add_argument("--show", metavar="JSON", help="print the summary of a --json file and stop")
    args = ap.parse_args()
    if args.show:
        print(summary(json.loads(open(args.show).read())))
        return
    if args.compare:
        a, b = (json.loads(open(p).read()) for p in args.compare)
        compare(a, b)
        return
    torch.set_num_threads(args.threads)
    res = measure(args)
    print(summary(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


def options(ap: argparse.ArgumentParser) -> None:
    """This script's options beyond the shared ones."""
    ap.add_argument("--estimate-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="an EstimateConfig field of the first estimate, e.g. dark_lam=2e-3 (repeatable)")
    ap.add_argument("--refined", action="store_true",
                    help="also refine both estimates as the teacher does and deconvolve with the first, any route")
    ap.add_argument("--full", action="store_true",
                    help="also run the whole teacher, pick_by_residual off and on, where that changes the kernel")


def main() -> None:
    cli(__doc__, measure, summary, compare, extra=options)


if __name__ == "__main__":
    main()
