"""Cost of the VGG16 perceptual term in a student training step (batch 8 of 96x96 patches).

    python benchmarks/perceptual_cost.py --threads 2
"""

import argparse
import time

import torch

from sharpkd.checkpoint import build_preset
from sharpkd.losses import LossWeights, combined_loss

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=12)
args = ap.parse_args()
torch.set_num_threads(args.threads)
_, model = build_preset("student")
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.rand(8, 3, 96, 96), torch.rand(8, 3, 96, 96)
for w in (0.0, 0.01):
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss, _ = combined_loss(LossWeights(perceptual=w), model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    times = sorted(times[2:])
    print(f"perceptual weight {w}: median step {1000 * times[len(times) // 2]:.1f} ms ({args.threads} threads)")
