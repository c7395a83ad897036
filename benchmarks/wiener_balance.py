"""Choose the balance of the oracle Wiener row on training-pool photos (never on Kodak24).

Degrades a few training photos with the protocol's Gaussians and procedural motion kernels (the Levin
kernels are for evaluation only) and prints the mean PSNR of Wiener deconvolution per balance.

    python benchmarks/wiener_balance.py --data ../shared/datasets/train/val20
"""

import argparse

import numpy as np

from sharpkd.data import load_photos
from sharpkd.degrade import make_kernel
from sharpkd.evaluate import protocol_degrade, protocol_kernel, wiener_oracle
from sharpkd.metrics import psnr

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/datasets/train/val20")
ap.add_argument("--images", type=int, default=8)
args = ap.parse_args()
photos = load_photos([args.data])[: args.images]
balances = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05]
scores = {b: [] for b in balances}
for i, ph in enumerate(photos):
    for j in range(4):
        k = protocol_kernel(j, i, []) if j < 3 else make_kernel("motion", length=12 + i, seed=i, size=25)
        blurred = protocol_degrade(ph.pixels, k, 1000 * j + i)
        for b in balances:
            scores[b].append(psnr(ph.pixels, wiener_oracle(blurred, k, b)) - psnr(ph.pixels, blurred))
for b in balances:
    print(f"balance {b:<6}: mean gain {np.mean(scores[b]):+.2f} dB over {len(scores[b])} cases")
