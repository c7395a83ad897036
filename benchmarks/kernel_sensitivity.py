"""How much does a wrong kernel cost the HQS solver? Training-pool photos only (never Kodak24).

    python benchmarks/kernel_sensitivity.py

Three training photos (reduced to 320 px), Gaussian sigma 1 blur with the protocol's noise and
rounding, deconvolved by the blind teacher's solver (HQS + FFDNet, noise 1/255) given sigma 1 (the
true kernel), 1.5 and 2; and the same solve with the true kernel but plain circular FFT and no
padding (``pad=0, cg_steps=0``), the boundary handling the solver replaces. Prints the gains in dB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def main() -> None:
    torch.set_num_threads(2)
    from PIL import Image

    from sharpkd.checkpoint import load_denoiser
    from sharpkd.deblur.solve import hqs_deconvolve
    from sharpkd.degrade import gaussian_kernel, protocol_degrade
    from sharpkd.evaluate import to_uint8
    from sharpkd.metrics import psnr

    files = sorted(Path("../shared/datasets/train").rglob("*.*"))
    net = load_denoiser()
    print("| photo | true sigma 1 | sigma 1.5 | sigma 2 | true, no boundary handling |\n|---|---|---|---|---|")
    for fi in (5, 90, 40):
        img = Image.open(files[fi]).convert("RGB")
        img.thumbnail((320, 320))
        gt = np.asarray(img)
        blurred = protocol_degrade(gt, gaussian_kernel(1.0), fi)
        y = torch.from_numpy(blurred.astype(np.float32) / 255).permute(2, 0, 1)[None]

        def gain(kernel: np.ndarray, y=y, gt=gt, blurred=blurred, **kw) -> float:
            out = hqs_deconvolve(y, kernel, net, noise=1 / 255, **kw)
            return psnr(gt, to_uint8(out[0].permute(1, 2, 0).numpy())) - psnr(gt, blurred)

        cells = [gain(gaussian_kernel(s)) for s in (1.0, 1.5, 2.0)] + [gain(gaussian_kernel(1.0), pad=0, cg_steps=0)]
        print(f"| {files[fi].name} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
