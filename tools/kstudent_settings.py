"""Write a kernel student file with other run-time settings of its blur estimate; the weights are unchanged.

    python tools/kstudent_settings.py kstudent --min-agreement 0.8 --out runs/kstudent-a08
    sharpkd eval --models runs/kstudent-a08,... --out /tmp/ev          # measure it
    python tools/kstudent_settings.py kstudent --min-agreement 0.8 --out src/sharpkd/weights/kstudent.safetensors

The settings are ``estimate_side`` (the central crop the kernel is estimated on), ``min_agreement``
(how well the estimator's two estimates must agree before camera shake is deconvolved) and
``fallback_side`` (where the first crop shows no camera shake, the larger crop estimated instead; 0: off) and
``photo_ensemble`` (the self-ensemble a photo gets by default; video runs one copy) and ``guide_average`` (on
camera shake, the guide averaged over the estimator's kernels: 1 on, 0 off). None is
learned: the network was trained on the estimator's kernels and sees only the guide. The change is
recorded in the file's description (``settings_history``), so its model card can say what was
measured with which settings.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from sharpkd.checkpoint import load_model, read_info, save_model


def apply(model_ref: str, out: str | Path, changes: dict, command: str) -> Path:
    """Write ``model_ref`` with its config's ``changes`` to ``out`` (a folder: its model.safetensors)."""
    model, info = load_model(model_ref)
    if info.get("arch") != "kstudent":
        raise SystemExit(f"{model_ref} is a {info.get('arch')} file, not a kernel student")
    if not changes:
        raise SystemExit("nothing to change: give --estimate-side, --min-agreement, --fallback-side, "
                         "--photo-ensemble or --guide-average")
    model.config = replace(model.config, **changes)
    type(model)(config=model.config)  # the same checks as loading (ranges)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / "model.safetensors"
    history = [*info.get("settings_history", []), {"command": command, "changes": changes}]
    return save_model(out, model, {**info, "settings_history": history})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a kernel student (shipped name, file or run folder)")
    ap.add_argument("--out", required=True, help="the new file (a folder: its model.safetensors)")
    ap.add_argument("--estimate-side", type=int)
    ap.add_argument("--min-agreement", type=float)
    ap.add_argument("--fallback-side", type=int, help="larger crop where the first shows no camera shake (0: off)")
    ap.add_argument("--photo-ensemble", type=int, help="self-ensemble copies a photo gets by default (1, 2, 4, 8)")
    ap.add_argument("--guide-average", type=int, choices=(0, 1),
                    help="1: on camera shake, the guide is the mean of the Wiener results with the estimator's kernels")
    args = ap.parse_args()
    changes = {k: v for k, v in (("estimate_side", args.estimate_side), ("min_agreement", args.min_agreement),
                                 ("fallback_side", args.fallback_side), ("photo_ensemble", args.photo_ensemble),
                                 ("guide_average", None if args.guide_average is None else bool(args.guide_average)))
               if v is not None}
    if changes.get("fallback_side") == 0:
        changes["fallback_side"] = None
    try:
        path = apply(args.model, args.out, changes, "python tools/kstudent_settings.py " + " ".join(sys.argv[1:]))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {path}: config {json.dumps(read_info(path)['config'])}")


if __name__ == "__main__":
    main()
