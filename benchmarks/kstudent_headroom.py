"""Where does the kernel student lose to the teacher: the blur estimate, or what it makes of it?

    python benchmarks/kstudent_headroom.py --run runs/kstudent-narrow --models kstudent,runs/kstudent-narrow \
        --json docs/eval/kstudent/headroom.json

Reads the hold-out validation banks of a ``python -m sharpkd.distill_kernel`` run folder (crops of the
hold-out photos, blurred as the benchmark does, each with the kernel the teacher's route estimated for
it; ``val_bank-narrow.pt`` where the run made one). Each kernel student is scored twice, its guide made
with the estimated kernel and with the true one, and so is the teacher's own deconvolution (the solver
and prior of the case's route, as in the teacher labels). Printed: mean gain (dB) over the blurred
crop per bank and kind. The gap between the two kernels is what a better estimate could give; the gap
to the teacher with the same kernel is what the student's network and its Wiener guide leave.
``--second-pass BALANCE,DAMPING`` also scores each student run twice with the estimated kernel, the
second time guided by its first output corrected by a Wiener step on the data residual
(:func:`sharpkd.deblur.solve.wiener_refine`): what a second guided pass of the same, untrained
network gives (kernel ``est, second pass``). ``--refine "SB,SD,RB,RD;..."`` scores a student trained with
several passes (``distill_kernel --passes``) again with other run-time settings of its later passes' guides:
Wiener weight and damping for camera shake, then for the round route (a row per setting and kernel, with
``refine`` in it). Rows of a multi-pass student also give its first pass alone (``first_pass``). Kodak24 is
never read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

BANKS = {"mixed": ("val_bank.pt", "val_bank-round.pt"), "narrow": ("val_bank-narrow.pt",)}


def load_banks(run: Path) -> dict[str, list[dict]]:
    out = {}
    for name, files in BANKS.items():
        cases = [c for f in files if (run / f).is_file() for c in torch.load(run / f, weights_only=True)]
        if cases:
            out[name] = cases
    if not out:
        raise SystemExit(f"{run}: no validation banks (val_bank*.pt) there")
    return out


def student_gains(model, bank: list[dict], kernel: str) -> dict[str, float]:
    """The kernel student's mean gains with guides made as its own settings make them."""
    from sharpkd.distill_kernel import prepare, validate

    cases = prepare([{**c, "est": c[kernel]} for c in bank], model.config.balance,
                    round_balance=float(model.config.round_balance or 0.0))
    rows = validate(model, cases)
    out = {k: v["guide"] for k, v in rows.items()}
    first = {k: v["first_pass"] for k, v in rows.items() if "first_pass" in v}
    return out | ({"first_pass": first} if first else {})


def refine_settings(text: str) -> list[dict[str, float]]:
    """``--refine``'s "SB,SD,RB,RD;...": the later passes' Wiener weight and damping for camera shake and for
    the round route, each four positive numbers, or a clear exit."""
    out = []
    for part in [p for p in text.split(";") if p.strip()]:
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or min(values) <= 0:
            raise SystemExit(f"--refine wants SHAKE_BALANCE,SHAKE_DAMPING,ROUND_BALANCE,ROUND_DAMPING, got {part!r}")
        out.append(dict(zip(("refine_balance", "refine_damping", "round_refine_balance", "round_refine_damping"),
                            values, strict=True)))
    return out


def with_refine(model, settings: dict[str, float]):
    """A copy of the kernel student ``model`` (same weights) whose later passes use ``settings``."""
    from dataclasses import replace

    copy = type(model)(config=replace(model.config, **settings))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@torch.no_grad()
def second_pass_gains(model, bank: list[dict], balance: float, damping: float) -> dict[str, float]:
    """Mean gains of the kernel student's second pass: guide = its first output refined against the photo
    with the estimated kernel."""
    from sharpkd.deblur.solve import wiener_refine
    from sharpkd.distill_kernel import prepare, q
    from sharpkd.metrics import batch_psnr

    cases = prepare(bank, model.config.balance, round_balance=float(model.config.round_balance or 0.0))
    gains: dict[str, list[float]] = {}
    for c, raw in zip(cases, bank, strict=True):
        first = model.run(c["y"], c["g"]).clamp(0, 1)
        second = model.run(c["y"], wiener_refine(first, c["y"], raw["est"], balance, damping))
        gains.setdefault(c["kind"], []).append(float(batch_psnr(q(second), c["x"])[0] - batch_psnr(c["y"], c["x"])[0]))
    return {k: round(float(np.mean(v)), 3) for k, v in gains.items()}


def second_pass_settings(text: str) -> tuple[float, float]:
    """``--second-pass``'s "BALANCE,DAMPING": two positive numbers, or a clear exit."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) <= 0:
        raise SystemExit(f"--second-pass wants BALANCE,DAMPING (two positive numbers), got {text!r}")
    return values


def teacher_gains(teacher, bank: list[dict], kernel: str, progress: bool) -> dict[str, float]:
    from sharpkd.deblur.finetune import solve
    from sharpkd.metrics import batch_psnr

    gains: dict[str, list[float]] = {}
    for c in tqdm(bank, desc=f"teacher, {kernel} kernel", disable=not progress, leave=False):
        y, x = c["blurred"][None].float() / 255, c["sharp"][None].float() / 255
        k = c[kernel] / c[kernel].sum()
        with torch.no_grad():
            out = solve(teacher, y, k[None], c["kind"])
        q = torch.round(out.clamp(0, 1) * 255) / 255
        gains.setdefault(c["kind"], []).append(float(batch_psnr(q, x)[0] - batch_psnr(y, x)[0]))
    return {k: round(float(np.mean(v)), 3) for k, v in gains.items()}


def main(argv: list[str] | None = None) -> None:
    import sharpkd.models  # noqa: F401  (registers the architectures before the teacher module)
    from sharpkd.checkpoint import load_model
    from sharpkd.provenance import hardware

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a distill_kernel run folder (its val_bank*.pt)")
    ap.add_argument("--models", default="kstudent", help="comma-separated kernel-student names or files")
    ap.add_argument("--teacher", default="teacher", help="blind-teacher file ('' to skip it)")
    ap.add_argument("--second-pass", default="", metavar="BALANCE,DAMPING",
                    help="also score a second guided pass of each student (e.g. 0.003,0.5)")
    ap.add_argument("--refine", default="", metavar="SB,SD,RB,RD;...",
                    help="also score multi-pass students with these later-pass settings (camera shake, round route)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    second = second_pass_settings(args.second_pass) if args.second_pass else ()
    refines = refine_settings(args.refine)
    torch.set_num_threads(args.threads)
    banks = load_banks(args.run)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model, info = load_model(name)
        if info.get("arch") != "kstudent":
            raise SystemExit(f"{name} is not a kernel student")
        model = model.float().eval()
        for bank_name, bank in banks.items():
            for kernel in ("est", "true"):
                rows.append({"model": name, "bank": bank_name, "kernel": kernel,
                             "gain": student_gains(model, bank, kernel)})
                print(json.dumps(rows[-1]), flush=True)
            for settings in refines if model.config.passes > 1 else ():
                for kernel in ("est", "true"):
                    rows.append({"model": name, "bank": bank_name, "kernel": kernel, "refine": settings,
                                 "gain": student_gains(with_refine(model, settings), bank, kernel)})
                    print(json.dumps(rows[-1]), flush=True)
            if second:
                rows.append({"model": name, "bank": bank_name, "kernel": "est, second pass",
                             "second_pass": {"balance": second[0], "damping": second[1]},
                             "gain": second_pass_gains(model, bank, *second)})
                print(json.dumps(rows[-1]), flush=True)
    if args.teacher:
        teacher, info = load_model(args.teacher)
        if info.get("arch") != "blind":
            raise SystemExit(f"{args.teacher} is not a blind-teacher file")
        teacher = teacher.float().eval()
        for bank_name, bank in banks.items():
            for kernel in ("est", "true"):
                rows.append({"model": args.teacher, "bank": bank_name, "kernel": kernel,
                             "gain": teacher_gains(teacher, bank, kernel, not args.quiet)})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"run": str(args.run), "cases": {k: len(v) for k, v in banks.items()},
                                         "hardware": hardware(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
