"""The blind models on JPEG files: the benchmark's degradations, then JPEG compression, as most photos reach users.

    python benchmarks/jpeg_inputs.py --photos train:6 --qualities 0,90,75 --models teacher --out runs/jpeg/train
    python benchmarks/jpeg_inputs.py --photos holdout --models teacher,teacher:jpeg --out runs/jpeg/holdout
    python benchmarks/jpeg_inputs.py --show runs/jpeg/holdout/journal.jsonl        # the summary of a run
    python benchmarks/jpeg_inputs.py --show runs/jpeg/holdout/journal.jsonl --models teacher   # some methods

BENCHMARK.md scores lossless PNGs. A photo on a phone or a camera is a JPEG, and JPEG compression removes
exactly the finest detail that the noise estimate reads (the wavelet MAD of the finest diagonal band), so the
estimate falls below the sensor noise that the compression replaced with its own, larger errors (each case's
``noise`` is journalled, in 8-bit levels). The solver then takes the photo for almost noise-free and amplifies
the compression's errors, and the round route's fit, judged against that noise, rejects Gaussian blur it would
accept.

Photos: ``holdout`` (the training pool's 7 hold-out photos) or ``train:N`` (a seeded draw of N photos of its
training split, for choosing settings), each reduced to at most ``--max-side`` px. Photo ``i`` is degraded as
``../shared/BENCHMARK.md`` (version 2) degrades Kodak24 photo ``i`` (Gaussian sigma 1, 2, 3 and the re-centred
Levin kernel ``k(i mod 8 + 1)``, its noise seeds and 8-bit rounding), then saved as a JPEG at each of
``--qualities`` by Pillow (its default 4:2:0 chroma subsampling; 0: the lossless file itself) and decoded.
Kodak24 is never read.

A method is a model name with optional ``:jpeg`` (the model is told the file's quantisation step, as
``sharpkd sharpen`` tells it for a JPEG file) and ``+FIELD=VALUE`` overrides of a blind teacher's config
(e.g. ``teacher:jpeg+jpeg_noise=0.2``); for a kernel student, of its own config where the field is one of
``KernelStudentConfig`` (``kstudent@x1:jpeg+round_balance=0.03``), else of its estimator's. Each case goes to
``OUT/journal.jsonl`` as it is measured (a rerun with the same ``--out`` skips the cases already there). The score
is the gain over the decoded JPEG (PSNR, RGB, 8 bit, as the benchmark), with the route a blind model took.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEGRADATIONS = ("gauss1", "gauss2", "gauss3", "motion")


def photos_of(spec: str, data: str, max_side: int) -> list[tuple[str, np.ndarray]]:
    from sharpkd.data import limit_size, load_photos, split_holdout

    pool, held = split_holdout(load_photos(data))
    if spec == "holdout":
        chosen = list(held)
    elif spec.startswith("train:"):
        n = int(spec.split(":", 1)[1])
        pick = np.random.default_rng(28).choice(len(pool), size=min(n, len(pool)), replace=False)
        chosen = [pool[int(i)] for i in sorted(pick)]
    else:
        raise SystemExit(f"--photos: 'holdout' or 'train:N', not {spec!r}")
    return [(Path(str(p.name)).name, limit_size(p, max_side).pixels) for p in chosen]


def as_jpeg(rgb: np.ndarray, quality: int) -> tuple[np.ndarray, float | None]:
    """The decoded JPEG of ``rgb`` at ``quality`` (0: ``rgb`` itself) and the step sharpkd reads from the file
    (:func:`sharpkd.imageio.jpeg_step`)."""
    if quality == 0:
        return rgb, None
    from sharpkd.imageio import jpeg_step

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")), jpeg_step(im)


def parse_method(spec: str) -> tuple[str, bool, list[str]]:
    """``teacher:jpeg+min_noise=0.008`` -> ("teacher", True, ["min_noise=0.008"])."""
    name, *sets = spec.split("+")
    told = name.endswith(":jpeg")
    return name.removesuffix(":jpeg"), told, sets


def load_method(spec: str):
    from sharpkd.checkpoint import parse_assignments, replace_fields
    from sharpkd.evaluate import parse_model_spec
    from sharpkd.infer import Sharpener

    name, told, sets = parse_method(spec)
    model, ensemble = parse_model_spec(name)
    sh = Sharpener.from_pretrained(model, tile=0, ensemble=ensemble)
    model, rest = sh.model, parse_assignments(sets, "+")
    if hasattr(model, "attach_estimator"):  # a kernel student: its own fields first, the rest to its estimator
        own = {k: v for k, v in rest.items() if k in {f.name for f in dataclasses.fields(model.config)}}
        rest = {k: v for k, v in rest.items() if k not in own}
        if own:
            model.config = replace_fields(model.config, own, "+")
            model.attach_estimator(model.estimator)  # the estimate settings it copies take the new values
        model = model.estimator
    if rest:
        model.config = replace_fields(model.config, rest, "+")
    return sh, told


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def measure(args: argparse.Namespace) -> Path:
    from sharpkd.degrade import load_levin_kernels, protocol_degrade, protocol_kernel
    from sharpkd.infer import tensor_to_frame

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    done = set()
    if journal.exists():
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["photo"], r["degradation"], r["quality"]))
    levin = load_levin_kernels(args.kernels)
    photos = photos_of(args.photos, args.data, args.max_side)
    methods = [m for m in args.models.split(",") if m]
    qualities = [int(q) for q in args.qualities.split(",")]
    wanted = [d for d in args.degradations.split(",") if d]
    loaded = {m: load_method(m) for m in methods}
    print(f"{len(photos)} photos x {len(wanted)} degradations x qualities {qualities}; methods {methods}", flush=True)
    with journal.open("a") as f:
        for i, (name, sharp) in enumerate(photos):
            for d in wanted:
                j = DEGRADATIONS.index(d)
                blurred = protocol_degrade(sharp, protocol_kernel(j, i, levin), 1000 * j + i)
                for q in qualities:
                    x, step = as_jpeg(blurred, q)
                    base = psnr(x, sharp)
                    for m in methods:
                        if (m, name, d, q) in done:
                            continue
                        sh, told = loaded[m]
                        t = time.perf_counter()
                        tensor = torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255
                        est = sh.estimate_blur(tensor, jpeg_step=step if told else None) if sh.blind else None
                        y = tensor_to_frame(sh.sharpen_tensor(tensor, est), False)
                        rec = {"method": m, "photo": name, "i": i, "degradation": d, "quality": q, "jpeg_step": step,
                               "route": est[0].route if est else "",
                               "noise": round(est[0].noise * 255, 3) if est else None,
                               "input_psnr": round(base, 4), "psnr": round(psnr(y, sharp), 4),
                               "gain": round(psnr(y, sharp) - base, 4), "seconds": round(time.perf_counter() - t, 2)}
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        print(f"{m} {name} {d} q{q}: {rec['gain']:+.2f} dB ({rec['route']}, {rec['seconds']:.0f} s)",
                              flush=True)
    return journal


def show(journal: str, only: str = "") -> None:
    """The mean gains of a journal, over the cases that every method in it has measured (so a stopped run
    compares like with like), and per method the cases better or worse than the first method's by > 0.1 dB.
    ``only``: comma-separated methods to show (and to find the common cases of), in that order; default all."""
    rows = [json.loads(line) for line in Path(journal).read_text().splitlines() if line.strip()]
    methods = [m for m in only.split(",") if m] or list(dict.fromkeys(r["method"] for r in rows))
    rows = [r for r in rows if r["method"] in methods]
    if not rows:
        raise SystemExit(f"{journal}: no cases of {', '.join(methods)}")
    have: dict = defaultdict(set)
    for r in rows:
        have[(r["photo"], r["degradation"], r["quality"])].add(r["method"])
    common = {k for k, v in have.items() if len(v) == len(methods)}
    rows = [r for r in rows if (r["photo"], r["degradation"], r["quality"]) in common]
    first = {(r["photo"], r["degradation"], r["quality"]): r["gain"] for r in rows if r["method"] == methods[0]}
    moved: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        change = r["gain"] - first[(r["photo"], r["degradation"], r["quality"])]
        moved[(r["method"], r["quality"])][0] += change > 0.1
        moved[(r["method"], r["quality"])][1] += change < -0.1
    cells: dict = defaultdict(list)
    noise: dict = defaultdict(list)
    routes: dict = defaultdict(lambda: defaultdict(int))
    for r in rows:
        cells[(r["method"], r["quality"], r["degradation"])].append(r["gain"])
        if r["noise"] is not None:
            noise[(r["method"], r["quality"])].append(r["noise"])
        routes[(r["method"], r["quality"])][r["route"]] += 1
    qualities = sorted({r["quality"] for r in rows}, key=lambda q: (q != 0, -q))
    degs = [d for d in DEGRADATIONS if any(r["degradation"] == d for r in rows)]
    print(f"Mean gain over the decoded file (dB) on the {len(common)} cases every method has; quality 0 is the "
          f"lossless file. Better / worse: cases more than 0.1 dB above / below {methods[0]}.\n")
    print("| method | quality | " + " | ".join(degs) + " | mean | worst case | cases | better / worse | routes "
          "| noise level (median, 8-bit levels) |")
    print("|---|---|" + "---|" * (len(degs) + 6))
    for m in methods:
        for q in qualities:
            vals = [cells.get((m, q, d), []) for d in degs]
            every = [v for vs in vals for v in vs]
            if not every:
                continue
            cols = " | ".join(f"{np.mean(v):+.2f}" if v else "" for v in vals)
            rt = ", ".join(f"{k or '-'} {n}" for k, n in sorted(routes[(m, q)].items()))
            b, w = moved[(m, q)]
            level = f"{np.median(noise[(m, q)]):.2f}" if noise[(m, q)] else ""
            print(f"| {m} | {q or 'lossless'} | {cols} | {np.mean(every):+.3f} | {min(every):+.2f} | {len(every)} "
                  f"| {b} / {w} | {rt} | {level} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default="holdout", help="'holdout' or 'train:N'")
    ap.add_argument("--qualities", default="0,95,90,75", help="JPEG qualities (0: the lossless file)")
    ap.add_argument("--degradations", default=",".join(DEGRADATIONS))
    ap.add_argument("--models", default=None, help="comma-separated methods (see above; default "
                    "'teacher,teacher:jpeg'); with --show, the methods to show (default: all in the journal)")
    ap.add_argument("--out", help="folder of the run's journal")
    ap.add_argument("--show", metavar="JOURNAL", help="print the summary of a journal and stop")
    ap.add_argument("--max-side", type=int, default=768)
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--kernels", default="../shared/datasets/kernels/levin09.npz")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.show:
        show(args.show, args.models or "")
        return
    args.models = args.models or "teacher,teacher:jpeg"
    if not args.out:
        ap.error("--out is required (or --show JOURNAL)")
    torch.set_num_threads(args.threads)
    show(str(measure(args)))


if __name__ == "__main__":
    main()
