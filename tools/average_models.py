"""Average the weights of several runs of one network (stochastic weight averaging, Izmailov et al. 2018).

    python tools/average_models.py runs/teacher-ds2 runs/teacher-ds3 -o runs/teacher-swa

The runs must share architecture and config, and should come from one fine-tuning chain (one run
continued from the other): weights of independently trained networks do not average into a working
one. The result is an ordinary model file; its provenance is the first run's, with the list of
averaged files and this command added. Pick between the inputs and their average on the hold-out
photos (``python benchmarks/holdout.py``), never on the evaluation set.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from sharpkd.checkpoint import CheckpointError, load_model, resolve, save_model


def average(paths: list[str], out: str | Path) -> Path:
    if len(paths) < 2:
        raise ValueError("give at least two models to average")
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / "model.safetensors"
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another output")
    models, infos = zip(*(load_model(p) for p in paths), strict=True)
    for p, info in zip(paths[1:], infos[1:], strict=True):
        if info["arch"] != infos[0]["arch"] or info["config"] != infos[0]["config"]:
            raise CheckpointError(f"{p} is a different network from {paths[0]} (architecture or config)")
    states = [m.state_dict() for m in models]
    avg = {k: (torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v)
           for k, v in states[0].items()}
    model = models[0]
    model.load_state_dict(avg)
    info = dict(infos[0])
    info["averaged_from"] = [str(resolve(p)) for p in paths]
    info["average_command"] = "python tools/average_models.py " + shlex.join(sys.argv[1:])
    info["notes"] = [*info.get("notes", []),
                     "Weights are the plain average of " + ", ".join(f"`{p}`" for p in paths)
                     + " (stochastic weight averaging of one fine-tuning chain; `tools/average_models.py`)."]
    return save_model(out, model, info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model files or run folders")
    ap.add_argument("-o", "--out", required=True, help="a run folder or a .safetensors path")
    args = ap.parse_args()
    try:
        print(average(args.models, args.out))
    except (ValueError, FileExistsError) as e:  # CheckpointError is a ValueError
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
