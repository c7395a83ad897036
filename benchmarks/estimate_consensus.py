"""Several kernel estimates per photo: how often does one of them succeed where the teacher's fails, and can
their agreement pick it?

    python benchmarks/estimate_consensus.py --json runs/consensus/train.jsonl             # record (resumable)
    python benchmarks/estimate_consensus.py --analyze runs/consensus/train.jsonl          # replay routing rules
    python benchmarks/estimate_consensus.py --analyze runs/consensus/train.jsonl --average  # and averaged kernels

The teacher estimates the kernel once (support 31, L0 weight 2e-3) and checks it with a second estimate (27,
3e-3); it deconvolves camera shake only when the two agree (and the kernel is elongated, not tiny, not a
diffuse cloud). This script runs ``--variants`` estimates (support sizes and L0 weights; the first two are the
teacher's pair) on the same blurred photo and records every kernel with its match to the true one and the
gain of a Wiener filter with it (balance 3e-3; a proxy that scores the kernel alone). ``--analyze`` then
replays rules: the shipped pair, and a consensus that takes the estimate most others agree with.

Photos: ``--set train`` draws ``--photos`` photos of the training pool's training split (seeded; hold-out
photos and Kodak24 are never read), ``--set holdout`` takes the hold-out photos. Each is reduced to at most
768 px and blurred twice: by a procedural camera-shake kernel (length 8-25 px) and by a Gaussian (sigma 1, 2,
3 in turn), with the benchmark's 1/255 noise and 8-bit rounding. Gaussian cases count how often a rule would
send round blur to the camera-shake route. Each case is appended to the JSONL file as it is finished, so a
stopped run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = "31:2e-3,27:3e-3,31:1.4e-3,31:3e-3,29:2.5e-3,25:2e-3,23:3e-3,27:1.4e-3"


def parse_variants(text: str) -> list[tuple[int, float]]:
    out = []
    for item in text.split(","):
        ks, lam = item.split(":")
        out.append((int(ks), float(lam)))
    return out


def cases(data: str, which: str, photos: int, seed: int):
    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.degrade import gaussian_kernel, make_kernel, pad_kernel, protocol_degrade

    pool, held = split_holdout(load_photos(data))
    if which == "holdout":
        chosen = list(held)[:photos] if photos else list(held)
    else:
        pick = np.random.default_rng(seed).choice(len(pool), size=min(photos, len(pool)), replace=False)
        chosen = [pool[int(i)] for i in pick]
    rng = np.random.default_rng(seed + 1)
    for i, photo in enumerate(chosen):
        sharp = limit_size(photo, 768).pixels
        shake = make_kernel("motion", length=float(rng.uniform(8, 25)), seed=int(rng.integers(1 << 30)), size=31)
        sigma = 1.0 + i % 3
        yield f"{which}{i}-shake", "shake", sharp, protocol_degrade(sharp, shake, 700 + 2 * i), shake
        g = pad_kernel(gaussian_kernel(sigma), 31)
        yield f"{which}{i}-gauss{sigma:.0f}", "gauss", sharp, protocol_degrade(sharp, g, 701 + 2 * i), g


def record(args: argparse.Namespace) -> None:
    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.estimate import anisotropy, estimate_kernel, kernel_match, kernel_spread
    from sharpkd.deblur.solve import wiener_deconvolve
    from sharpkd.degrade import pad_kernel
    from sharpkd.metrics import psnr

    teacher = load_model(args.teacher)[0]
    variants = parse_variants(args.variants)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["case"] for r in load(str(out))} if out.exists() else set()

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255

    def gain(y: np.ndarray, sharp: np.ndarray, k: np.ndarray) -> float:
        restored = wiener_deconvolve(to_t(y), k, 3e-3)[0].permute(1, 2, 0).numpy()
        return psnr(sharp, np.round(restored * 255).clip(0, 255).astype(np.uint8)) - psnr(sharp, y)

    for name, kind, sharp, y, k_true in cases(args.data, args.set, args.photos, args.seed):
        if name in done:
            continue
        blurred = to_t(y)[0]
        rec = {"case": name, "kind": kind, "gain_true": gain(y, sharp, k_true), "estimates": []}
        for ks, lam in variants:
            t0 = time.perf_counter()
            k = estimate_kernel(blurred, teacher.estimate_config(ks, lam=lam))
            rec["estimates"].append({
                "kernel_size": ks, "lam": lam, "seconds": time.perf_counter() - t0,
                "match": kernel_match(pad_kernel(k, 31), k_true), "gain": gain(y, sharp, k),
                "anisotropy": anisotropy(k), "spread": kernel_spread(k), "peak": float(k.max()),
                "kernel": np.round(pad_kernel(k, 31), 6).tolist()})
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        e = rec["estimates"]
        print(f"{name}: true {rec['gain_true']:+.1f} | " + " ".join(f"{x['gain']:+.1f}/{x['match']:.2f}" for x in e)
              + f" | {sum(x['seconds'] for x in e):.0f} s", flush=True)


def load(path: str) -> list[dict]:
    """Records of a JSONL file (``.gz``: gzip-compressed, as stored in docs/eval/)."""
    if path.endswith(".gz"):
        import gzip

        text = gzip.decompress(Path(path).read_bytes()).decode()
    else:
        text = Path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def align(ref: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``k`` shifted (circularly, within its array) to where it correlates best with ``ref`` (same size)."""
    from scipy.signal import correlate

    c = correlate(ref, k, mode="full")
    i, j = np.unravel_index(int(c.argmax()), c.shape)
    return np.roll(k, (i - (k.shape[0] - 1), j - (k.shape[1] - 1)), axis=(0, 1))


def averages(args: argparse.Namespace, recs: list[dict]) -> None:
    """Wiener gain of kernels averaged over the estimates (aligned to the teacher's): the mean of those that
    agree with it at 0.9 or more, and the pixelwise median of all. The camera-shake cases are made again
    from ``--data/--set/--photos/--seed``, which must be those of the recording."""
    from sharpkd.deblur.estimate import kernel_match
    from sharpkd.deblur.solve import wiener_deconvolve
    from sharpkd.degrade import center_kernel
    from sharpkd.metrics import psnr

    by_name = {r["case"]: r for r in recs}

    def gain(y: np.ndarray, sharp: np.ndarray, k: np.ndarray) -> float:
        t = torch.from_numpy(np.ascontiguousarray(y)).permute(2, 0, 1)[None].float() / 255
        out = wiener_deconvolve(t, k, 3e-3)[0].permute(1, 2, 0).numpy()
        return psnr(sharp, np.round(out * 255).clip(0, 255).astype(np.uint8)) - psnr(sharp, y)

    rows = []
    for name, kind, sharp, y, _ in cases(args.data, args.set, args.photos, args.seed):
        if kind != "shake" or name not in by_name:
            continue
        ks = [np.asarray(e["kernel"]) for e in by_name[name]["estimates"]]
        agreeing = [ks[0]] + [align(ks[0], k) for k in ks[1:] if kernel_match(ks[0], k) >= 0.9]
        mean_k = center_kernel(np.mean(agreeing, axis=0))
        med = np.clip(np.median([ks[0]] + [align(ks[0], k) for k in ks[1:]], axis=0), 0, None)
        rows.append((by_name[name]["estimates"][0]["gain"], gain(y, sharp, mean_k / mean_k.sum()),
                     gain(y, sharp, center_kernel(med / med.sum()))))
    r = np.array(rows)
    print(f"averaged kernels, {len(r)} camera-shake cases, Wiener gain (dB): the teacher's estimate "
          f"{r[:, 0].mean():+.2f}, mean of the estimates agreeing with it at 0.9 {r[:, 1].mean():+.2f}, "
          f"median of all {r[:, 2].mean():+.2f}")


def agreement_matrix(rec: dict) -> np.ndarray:
    from sharpkd.deblur.estimate import kernel_match

    ks = [np.asarray(e["kernel"]) for e in rec["estimates"]]
    n = len(ks)
    m = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = kernel_match(ks[i], ks[j])
    return m


def shake_gates(e: dict, min_aniso: float = 1.5, min_spread: float = 1.5, min_conc: float = 0.12) -> bool:
    return e["anisotropy"] >= min_aniso and e["spread"] >= min_spread and e["peak"] * e["spread"] >= min_conc


def consensus_pick(m: np.ndarray, use: list[int], threshold: float) -> tuple[int, int]:
    """Among the estimates ``use``, the one with the most others agreeing at ``threshold`` or more (ties:
    the higher summed agreement, then the earlier variant); returns (index, supporters)."""
    best = None
    for i in use:
        support = sum(1 for j in use if j != i and m[i, j] >= threshold)
        score = (support, sum(m[i, j] for j in use if j != i), -i)
        if best is None or score > best[0]:
            best = (score, i)
    return best[1], best[0][0]


def analyze(paths: list[str], n_use: list[int], thresholds: list[float]) -> None:
    recs = [r for p in paths for r in load(p)]
    shake = [r for r in recs if r["kind"] == "shake"]
    gauss = [r for r in recs if r["kind"] == "gauss"]
    mats = {r["case"]: agreement_matrix(r) for r in recs}
    print(f"{len(shake)} camera-shake cases, {len(gauss)} Gaussian cases; Wiener gain with the true kernel "
          f"{np.mean([r['gain_true'] for r in shake]):+.2f} dB on camera shake")
    n_var = len(recs[0]["estimates"])
    for v in range(n_var):
        e = [r["estimates"][v] for r in shake]
        print(f"  variant {v} ({e[0]['kernel_size']}, {e[0]['lam']:g}): match {np.mean([x['match'] for x in e]):.3f}, "
              f"Wiener {np.mean([x['gain'] for x in e]):+.2f}, {np.mean([x['seconds'] for x in e]):.1f} s")
    best = [max(x["gain"] for x in r["estimates"]) for r in shake]
    print(f"  best variant per case (oracle): Wiener {np.mean(best):+.2f}, "
          f"cases with one at match >= 0.9: {sum(max(x['match'] for x in r['estimates']) >= 0.9 for r in shake)}")

    def rule_rows(pick):
        """pick(rec) -> estimate index to deconvolve with, or None. Score: the Wiener gain where it deconvolves
        camera shake, 0 elsewhere (the network gains about that on camera shake); Gaussian cases it would send
        to the camera-shake route are counted."""
        gains, sent, good = [], 0, 0
        for r in shake:
            i = pick(r)
            gains.append(r["estimates"][i]["gain"] if i is not None else 0.0)
            sent += i is not None
            good += i is not None and r["estimates"][i]["match"] >= 0.9
        false = sum(pick(r) is not None for r in gauss)
        return np.mean(gains), sent, good, false

    def shipped(r):
        m = mats[r["case"]]
        return 0 if shake_gates(r["estimates"][0]) and m[0, 1] >= 0.9 else None

    print("| rule | camera shake, Wiener gain (dB) | shake cases deconvolved | of them match >= 0.9 "
          "| Gaussian cases sent |")
    print("|---|---|---|---|---|")
    rows = [("shipped pair (0 checked by 1, agreement 0.9, gates)", shipped)]
    for n in n_use:
        for t in thresholds:
            for need in range(1, n):
                def rule(r, n=n, t=t, need=need):
                    m = mats[r["case"]]
                    i, support = consensus_pick(m, list(range(n)), t)
                    return i if support >= need and shake_gates(r["estimates"][i]) else None
                rows.append((f"first {n}: pick most agreed at {t}, at least {need} agree, gates", rule))
    for n in n_use:
        for t in thresholds:
            def fallback(r, n=n, t=t):
                m = mats[r["case"]]
                first = shipped(r)
                if first is not None or n <= 2:
                    return first
                i, support = consensus_pick(m, list(range(n)), t)
                return i if support >= 2 and shake_gates(r["estimates"][i]) else None
            rows.append((f"shipped pair, else first {n}: most agreed at {t}, at least 2 agree, gates", fallback))
    for label, rule in rows:
        g, sent, good, false = rule_rows(rule)
        print(f"| {label} | {g:+.2f} | {sent}/{len(shake)} | {good} | {false}/{len(gauss)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--set", choices=("train", "holdout"), default="train")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--variants", default=VARIANTS, help="KERNEL_SIZE:LAM,... (the first two: the teacher's pair)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="JSONL file to append cases to (resumes)")
    ap.add_argument("--analyze", nargs="+", metavar="JSONL", help="replay routing rules on recorded files")
    ap.add_argument("--use", default="2,3,4,6,8", help="--analyze: numbers of variants to take (first N)")
    ap.add_argument("--thresholds", default="0.85,0.9")
    ap.add_argument("--average", action="store_true", help="--analyze: also score averaged kernels (remakes the "
                    "photos: pass the recording's --set, --photos and --seed)")
    args = ap.parse_args()
    if args.analyze:
        analyze(args.analyze, [int(x) for x in args.use.split(",")], [float(x) for x in args.thresholds.split(",")])
        if args.average:
            averages(args, [r for p in args.analyze for r in load(p)])
        return
    if not args.json:
        ap.error("--json is required to record")
    torch.set_num_threads(args.threads)
    record(args)


if __name__ == "__main__":
    main()
