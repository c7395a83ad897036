"""Gains of models on the hold-out photos of the training pool, per degradation.

    python benchmarks/holdout.py teacher student student-nokd runs/abl/kd ...

The hold-out set is the one every training run validates on: 7 photos never trained on (hash
split), 2 crops of 192x192 each, degraded by Gaussian sigma 1, 2, 3 and one procedural camera-shake
kernel, with 1/255 noise and 8-bit rounding (``sharpkd.evaluate.fixed_validation_set``). Use it to
compare with Kodak24 (generalisation) without touching Kodak24.

``--max-side PX`` first reduces the hold-out photos (Lanczos) so their longer side is at most PX:
the same scenes with crisper pixels, closer to typical photos than full-size wallpapers are.

A model goes through its ``Sharpener`` with the self-ensemble it gets by default (the shipped kernel student's
photo default: 8 copies); ``NAME@xN`` chooses one, as in ``sharpkd eval``. With one copy the network itself is
scored, as before the twenty-second session.

``--set FIELD=VALUE`` (repeatable) overrides a field of the models' config before evaluating, e.g.
``--set min_shake_spread=0`` to try a routing threshold of the blind teacher without a new file.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/datasets/train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-side", type=int, default=0, help="reduce the hold-out photos to this longer side first")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field of the models (a float), e.g. min_shake_spread=0")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.checkpoint import parse_assignments, replace_fields
    from sharpkd.data import limit_size, load_photos, split_holdout
    from sharpkd.evaluate import DEGRADATIONS, fixed_validation_set, gains_by_kind, parse_model_spec, validate
    from sharpkd.infer import Sharpener

    _, held = split_holdout(load_photos(args.data))
    if args.max_side:
        held = [limit_size(p, args.max_side) for p in held]
    blurred, sharp = fixed_validation_set(held)
    base = validate(torch.nn.Identity(), blurred, sharp, per_image=True)
    rows = []
    print(f"hold-out: {len(held)} photos, {len(blurred)} crops, blurred {float(base.mean()):.3f} dB\n")
    print("| model | " + " | ".join(DEGRADATIONS) + " | mean gain |\n|---|" + "---|" * (len(DEGRADATIONS) + 1))
    for m in args.models:
        name, ensemble = parse_model_spec(m)
        sh = Sharpener.from_pretrained(name, tile=0, ensemble=ensemble)
        if args.set:  # each value takes its field's type (an int field stays an int)
            try:
                sh.model.config = replace_fields(sh.model.config, parse_assignments(args.set))
            except ValueError as err:
                raise SystemExit(str(err)) from None
        net = sh.model if isinstance(sh.model, torch.nn.Module) and sh.ensemble == 1 else _Wrap(sh.sharpen_tensor)
        out = validate(net, blurred, sharp, per_image=True)
        kinds = gains_by_kind(out, base)
        mean = float((out - base).mean())
        rows.append({"model": m, "ensemble": sh.ensemble, "gain_by_kind": kinds, "mean_gain": round(mean, 3)})
        print(f"| {m} | " + " | ".join(f"{kinds[k]:+.2f}" for k in DEGRADATIONS) + f" | {mean:+.3f} |")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps({"blurred_psnr": float(base.mean()), "max_side": args.max_side,
                                               "rows": rows}, indent=1) + "\n")


class _Wrap(torch.nn.Module):
    """A callable backend (ONNX, unsharp) as a module for ``validate``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


if __name__ == "__main__":
    main()
