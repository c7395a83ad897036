"""What the web page's edge-width score reads on a known photo: sharp, blurred, and each model's result.

    python benchmarks/edge_width.py

scikit-image's astronaut, Gaussian blur of sigma 1, 2, 3 with the benchmark's noise and rounding
(``sharpkd.degrade.protocol_degrade``); the score is ``sharpkd.web.edge_width`` (pixels, lower is
sharper), printed with each result's PSNR against the sharp photo for comparison.
"""

from __future__ import annotations

import numpy as np


def main() -> None:
    import skimage.data
    import torch

    from sharpkd.degrade import gaussian_kernel, protocol_degrade
    from sharpkd.infer import Sharpener
    from sharpkd.metrics import psnr
    from sharpkd.web import edge_width

    torch.set_num_threads(2)
    sharp = skimage.data.astronaut()
    models = ("unsharp", "student", "teacher")
    sharpeners = {m: Sharpener.from_pretrained(m) for m in models}
    print(f"sharp photo: edge width {edge_width(sharp.astype(np.float32) / 255):.2f} px\n")
    print("| blur | blurred | " + " | ".join(models) + " |\n|---|---|" + "---|" * len(models))
    for sigma in (1.0, 2.0, 3.0):
        b = protocol_degrade(sharp, gaussian_kernel(sigma), 0)
        cells = []
        for m in models:
            out = sharpeners[m].sharpen_array(b.astype(np.float32) / 255)
            out8 = (out * 255 + 0.5).astype(np.uint8)
            cells.append(f"{edge_width(out):.2f} px ({psnr(sharp, out8):.2f} dB)")
        before = f"{edge_width(b.astype(np.float32) / 255):.2f} px ({psnr(sharp, b):.2f} dB)"
        print(f"| Gaussian sigma {sigma:g} | {before} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
