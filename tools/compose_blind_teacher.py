"""Put the network teacher inside the blind teacher's file, so one model routes each photo.

    python tools/convert_ffdnet.py ffdnet_color.pth -o blind.safetensors     # the denoiser (see that tool)
    python tools/compose_blind_teacher.py --blind blind.safetensors           # -> weights/teacher.safetensors
    python tools/compose_blind_teacher.py --config-only --set compact_agreement=0.9   # a routing change only

The blind file (made by ``tools/convert_ffdnet.py``) holds the FFDNet denoiser of the deconvolution;
the network file is a teacher trained here (``sharpkd train teacher``). The result is a ``blind``
model whose config names the network's architecture and whose weights hold both, fp16. Nothing is
trained by this tool; the provenance of both parts is copied into the file's description.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sharpkd.checkpoint import (
    SHIPPED,
    build_model,
    config_to_dict,
    load_model,
    parse_assignments,
    replace_fields,
    save_model,
)


def compose(blind_path: str | Path, network_path: str | Path, out: str | Path, half: bool = True,
            overrides: dict[str, float] | None = None) -> Path:
    """Write the composed teacher; ``overrides`` replaces routing thresholds of the blind config."""
    blind, blind_info = load_model(blind_path)
    net, net_info = load_model(network_path)
    if blind_info.get("arch") != "blind" or net_info.get("arch") != "nafunet":
        raise SystemExit("expected a blind-teacher file and a nafunet teacher file")
    config = {**config_to_dict(replace_fields(blind.config, overrides or {})), "network": config_to_dict(net.config)}
    model = build_model("blind", config)
    model.denoiser.load_state_dict(blind.denoiser.state_dict())
    for attr in ("shake_denoiser", "round_denoiser"):  # a route's fine-tuned prior, or a copy of the converted one
        if getattr(model, attr) is not None:
            src = getattr(blind, attr) if getattr(blind, attr) is not None else blind.denoiser
            getattr(model, attr).load_state_dict(src.state_dict())
    model.network.load_state_dict(net.state_dict())
    components = dict(blind_info.get("components", {}))
    components["network"] = (f"the network teacher trained here ({net_info.get('preset')}, {net_info.get('steps')} "
                             f"steps; its card: weights/teacher-net.md), command: {net_info.get('command', '?')}")
    info = {"stage": "teacher", "preset": "blind+network", "steps": net_info.get("steps", 0), "distilled": False,
            "command": "python tools/compose_blind_teacher.py", "components": components,
            "dtype": "float16" if half else "float32",
            "notes": ["Routes each photo: confident camera shake -> kernel estimate + HQS with FFDNet; anything "
                      "else -> the network teacher. Only the network's weights were trained here."]}
    return save_model(out, model, info, half=half)


def set_routing(blind_path: str | Path, out: str | Path, overrides: dict[str, float], why: str = "") -> Path:
    """Rewrite a composed teacher with some config fields changed: the same weights (fp16 stays fp16)
    and the same description, plus a note of what changed. Nothing is trained or re-composed."""
    model, info = load_model(blind_path)
    if info.get("arch") != "blind":
        raise SystemExit(f"{blind_path} is not a blind-teacher file")
    new = build_model("blind", config_to_dict(replace_fields(model.config, overrides)))
    new.load_state_dict(model.state_dict())
    change = ", ".join(f"{k}={v:g}" for k, v in overrides.items())
    info = {**info, "notes": [*info.get("notes", []), f"config changed by tools/compose_blind_teacher.py "
                                                      f"--config-only: {change}" + (f" ({why})" if why else "")]}
    return save_model(out, new, info, half=info.get("dtype") == "float16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blind", default=str(SHIPPED["teacher"]), help="a blind file with the denoiser (the shipped "
                    "teacher carries one)")
    ap.add_argument("--network", default=str(SHIPPED["teacher-net"]))
    ap.add_argument("-o", "--out", default=str(SHIPPED["teacher"]))
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="set a routing threshold of the blind config, e.g. round_spread_ratio=0.8 (repeatable)")
    ap.add_argument("--config-only", action="store_true",
                    help="keep --blind's weights and description, change only the --set fields (and note them)")
    ap.add_argument("--why", default="", help="with --config-only: the reason, added to the file's note")
    args = ap.parse_args()
    try:
        overrides = {k: float(v) for k, v in parse_assignments(args.set).items()}
        if args.config_only:
            print(f"wrote {set_routing(args.blind, args.out, overrides, args.why)}")
            return
        print(f"wrote {compose(args.blind, args.network, args.out, half=not args.fp32, overrides=overrides)}")
    except ValueError as err:  # a --set field that the config does not have, or a value it cannot take
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
