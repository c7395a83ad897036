"""Two settings of the blind teacher on a development set built like Kodak24's benchmark, case by case.

    python benchmarks/teacher_ab.py --set min_shake_spread=0 --set min_concentration=0 --out runs/ab/gates
    python benchmarks/teacher_ab.py --show runs/ab/gates/journal.jsonl     # the summary of a run, in seconds

Photos: the hold-out photos of the training pool plus ``--photos`` minus that many photos of its training split
(seeded draw), each reduced to at most 768 px (Kodak24's size; Kodak24 itself is never read). Each photo is
degraded exactly as ``../shared/BENCHMARK.md`` (version 2) degrades Kodak24 photo ``i``: Gaussian sigma 1, 2, 3
and the re-centred Levin kernel ``k(i mod 8 + 1)``, with its noise seeds and 8-bit rounding. Earlier development
sets blurred with procedural camera shake, which did not predict Kodak24's Levin kernels (docs/results.md,
"Routing study"); these photos are not Kodak24's, so the benchmark's kernels can be used on them.

Setting A is the teacher file as it is (``--set-a FIELD=VALUE`` changes it), setting B is A with every
``--set FIELD=VALUE`` (a field of ``BlindTeacherConfig``). Each case is estimated under both settings; the photo
is restored once when both give the same route, kernel and noise level and the settings agree on every field
the restoration reads (``RESTORE_FIELDS``), otherwise once per setting. Every case
goes to ``OUT/journal.jsonl`` as it is measured (a rerun with the same ``--out`` skips the cases already there),
and the summary prints the mean gain of each setting per degradation and every case whose route or kernel
changed. Training photos were seen by the teacher's network in training, which flatters the network route a
little: a conservative test for a change that sends more photos to the solver.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def typed_settings(config, items: list[str], option: str = "--set"):
    """``config`` with each ``FIELD=VALUE`` applied, the value taking the field's type."""
    from sharpkd.checkpoint import parse_assignments, replace_fields

    try:
        return replace_fields(config, parse_assignments(items, option), option)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def dev_set_options(ap: argparse.ArgumentParser) -> None:
    """The options of the development set and its degradations that this script and round_blend.py share."""
    ap.add_argument("--max-side", type=int, default=768, help="photos reduced to this longer side (Kodak24's)")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--threads", type=int, default=2)


def dev_photos(data: str, count: int, max_side: int = 768) -> list[tuple[str, np.ndarray]]:
    """The hold-out photos, then training photos (seeded draw) up to ``count``, each at most ``max_side``."""
    from sharpkd.data import limit_size, load_photos, split_holdout

    pool, held = split_holdout(load_photos(data))
    photos = list(held)[:count]
    extra = count - len(photos)
    if extra > 0:
        pick = np.random.default_rng(2).choice(len(pool), size=min(extra, len(pool)), replace=False)
        photos += [pool[int(i)] for i in sorted(pick)]
    return [(Path(str(p.name)).name, limit_size(p, max_side).pixels) for p in photos]


# the BlindTeacherConfig fields that BlindTeacher.restore may read (a superset: the refinement's fields too): two
# settings that agree on these restore one estimate to the same photo
RESTORE_FIELDS = ("cg_steps", "estimate_side", "first_noise", "geo_ensemble", "iters", "lam", "multiple",
                  "refine_iters", "refine_rounds", "round_iters", "round_noise", "shake_iters", "shake_noise",
                  "shake_cg_steps", "sigma_max", "shake_prior", "round_prior", "shake_average", "shake_average_check",
                  "shake_soften")


def same_estimate(a, b) -> bool:
    return (a.route == b.route and a.noise == b.noise and a.kernel.shape == b.kernel.shape
            and bool(np.array_equal(a.kernel, b.kernel)))


def measure_case(sh, configs: tuple, x: torch.Tensor, blurred: np.ndarray, sharp: np.ndarray) -> dict:
    """Both settings' routes and gains (dB) on one degraded photo."""
    from sharpkd.evaluate import to_uint8
    from sharpkd.metrics import psnr

    teacher = sh.model
    base = psnr(sharp, blurred)
    out: dict = {}
    estimates, results = [], []
    reuse = all(getattr(configs[0], f) == getattr(configs[1], f) for f in RESTORE_FIELDS)
    for name, config in zip("ab", configs, strict=True):
        teacher.config = config
        t0 = time.perf_counter()
        est = sh.estimate_blur(x)
        t1 = time.perf_counter()
        if reuse and estimates and same_estimate(estimates[0][0], est[0]):
            gain, seconds = results[0]
        else:
            res = to_uint8(sh.sharpen_tensor(x, estimates=est)[0].permute(1, 2, 0).numpy())
            gain, seconds = psnr(sharp, res) - base, time.perf_counter() - t0
        estimates.append(est)
        results.append((gain, seconds))
        out[name] = {"route": est[0].route, "agreement": round(float(est[0].agreement), 4), "gain": gain,
                     "estimate_seconds": t1 - t0, "seconds": seconds}
    out["changed"] = not same_estimate(estimates[0][0], estimates[1][0])
    return out


def measure(args: argparse.Namespace) -> Path:
    from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel
    from sharpkd.evaluate import DEGRADATIONS
    from sharpkd.infer import Sharpener, frame_to_tensor

    sh = Sharpener.from_pretrained(args.teacher, tile=0, ensemble=1)
    if not sh.blind or hasattr(sh.model, "guide"):
        raise SystemExit(f"{args.teacher} is not a blind teacher file")
    shipped = sh.model.config
    first = typed_settings(shipped, args.set_a, "--set-a")
    configs = (first, typed_settings(first, args.set))
    if configs[0] == configs[1]:
        raise SystemExit("settings A and B are the same: give --set FIELD=VALUE")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    done = {(r["i"], r["j"]) for r in read_journal(journal)} if journal.exists() else set()
    header = {"teacher": args.teacher, "set_a": args.set_a, "set_b": args.set, "photos": args.photos,
              "degradations": args.degradations, "max_side": args.max_side}
    (out / "settings.json").write_text(json.dumps(header, indent=1) + "\n")
    levin = load_levin_kernels(args.kernels)
    wanted = [DEGRADATIONS.index(d) for d in args.degradations.split(",")]
    photos = dev_photos(args.data, args.photos, args.max_side)
    print(f"{len(photos)} photos x {len(wanted)} degradations; A: {args.set_a or 'as shipped'}; B: {args.set}",
          flush=True)
    for i, (name, sharp) in enumerate(photos):
        for j in wanted:
            if (i, j) in done:
                continue
            t0 = time.perf_counter()
            blurred = protocol_degrade(sharp, protocol_kernel(j, i, levin), 1000 * j + i)
            x = frame_to_tensor(blurred)
            row = {"i": i, "j": j, "photo": name, "degradation": DEGRADATIONS[j], **measure_case(sh, configs, x,
                                                                                                  blurred, sharp)}
            with journal.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} {DEGRADATIONS[j]}: A {row['a']['gain']:+.2f} ({row['a']['route']}), "
                  f"B {row['b']['gain']:+.2f} ({row['b']['route']}){' changed' if row['changed'] else ''}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    sh.model.config = shipped
    return journal


def read_journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary(rows: list[dict]) -> str:
    from sharpkd.evaluate import DEGRADATIONS

    lines = ["| degradation | cases | A | B | B - A | changed |", "|---|---|---|---|---|---|"]
    for d in DEGRADATIONS:
        sel = [r for r in rows if r["degradation"] == d]
        if sel:
            a, b = (float(np.mean([r[s]["gain"] for r in sel])) for s in "ab")
            moved = sum(r["changed"] for r in sel)
            lines.append(f"| {d} | {len(sel)} | {a:+.3f} | {b:+.3f} | {b - a:+.3f} | {moved} |")
    if rows:
        a, b = (float(np.mean([r[s]["gain"] for r in rows])) for s in "ab")
        lines.append(f"| all | {len(rows)} | {a:+.3f} | {b:+.3f} | {b - a:+.3f} | {sum(r['changed'] for r in rows)} |")
    lines.append("\ncases that changed (gain A -> B, route A -> B):")
    for r in rows:
        if r["changed"]:
            lines.append(f"- {r['photo']} {r['degradation']}: {r['a']['gain']:+.2f} -> {r['b']['gain']:+.2f} "
                         f"({r['a']['route']} -> {r['b']['route']}, agreement {r['b']['agreement']:.2f})")
    slow = max((r[s]["seconds"] for r in rows for s in "ab"), default=0.0)
    lines.append(f"\nslowest restoration: {slow:.1f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="setting B (repeatable)")
    ap.add_argument("--set-a", action="append", default=[], metavar="FIELD=VALUE",
                    help="setting A (default: the file as it is)")
    ap.add_argument("--photos", type=int, default=24, help="hold-out photos first, then training photos")
    ap.add_argument("--degradations", default="gauss1,gauss2,gauss3,motion")
    dev_set_options(ap)
    ap.add_argument("--out", help="folder of the journal (resumable)")
    ap.add_argument("--show", metavar="JOURNAL", help="print the summary of a journal and stop")
    args = ap.parse_args()
    if args.show:
        print(summary(read_journal(Path(args.show))))
        return
    if not args.out:
        ap.error("--out is required (or --show)")
    torch.set_num_threads(args.threads)
    journal = measure(args)
    print(summary(read_journal(journal)))


if __name__ == "__main__":
    main()
