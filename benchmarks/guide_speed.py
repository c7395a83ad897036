"""What the kernel student's Wiener step costs per frame, and what the fast FFT grid saves.

    python benchmarks/guide_speed.py [--threads 2]

For 640x480 and 1280x720 frames and a 31-px camera-shake kernel it prints the median time (ms) of
a forward and inverse real FFT of three channels on the grid the image padded by 31 px would have
(``plain``: 542 x 702 at 640x480) and on the grid ``solve.wiener_grid`` pads it to (``fast``:
factors 2, 3 and 5 only), and of the whole guide (``KernelStudent.guide``: padding, FFTs, the kept
filter, crop). Take it with nothing else running.

``--refine`` also times what a second guided pass adds per frame (``KernelStudentConfig.passes``): the
correction of the first output (``kstudent.refine_guide`` with camera-shake settings), its blur by the kernel
alone (``solve.fft_blur``, what the correction uses since the twenty-second session), the same blur in space
(``degrade.blur``, what it used before), and one pass of the shipped kernel student's network.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_ms(fn, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine", action="store_true", help="also time a second guided pass's parts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sharpkd.models import KernelStudent  # sharpkd.models before sharpkd.deblur, as the package loads them

    ks = KernelStudent()

    from sharpkd.deblur.solve import wiener_grid
    from sharpkd.deblur.teacher import BlurEstimate
    from sharpkd.degrade import make_kernel

    kernel = make_kernel("motion", length=20.0, seed=0, size=31)
    est = [BlurEstimate(kernel, 1 / 255, "shake")]
    print("| frame | plain grid | ms | fast grid | ms | whole guide, ms |\n|---|---|---|---|---|---|")
    for w, h in ((640, 480), (1280, 720)):
        p, hf, wf = wiener_grid(h, w, 31)
        grids = [(h + 2 * p, w + 2 * p), (hf, wf)]
        ms = []
        for gh, gw in grids:
            z = torch.rand(1, 3, gh, gw)
            ms.append(median_ms(lambda z=z, s=(gh, gw): torch.fft.irfft2(torch.fft.rfft2(z), s=s)))
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            guide = median_ms(lambda x=x: ks.guide(x, est))
        print(f"| {w}x{h} | {grids[0][0]}x{grids[0][1]} | {ms[0]:.1f} | {hf}x{wf} | {ms[1]:.1f} | {guide:.1f} |")
    if args.refine:
        refine_table(kernel)


def refine_table(kernel) -> None:
    """Median ms of a second guided pass's parts per frame (see the module's docstring)."""
    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.solve import fft_blur
    from sharpkd.degrade import blur
    from sharpkd.models.kstudent import refine_guide

    model, _ = load_model("kstudent")
    model = model.float().eval()
    k = torch.as_tensor(kernel, dtype=torch.float32)
    print("\n| frame | refine guide, ms | its FFT blur, ms | the same blur in space (kornia), ms "
          "| one network pass, ms |\n|---|---|---|---|---|")
    for w, h in ((640, 480), (1280, 720)):
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            parts = [median_ms(lambda x=x: refine_guide(x, x, k, 3e-3, 0.5)),
                     median_ms(lambda x=x: fft_blur(x, k / k.sum())), median_ms(lambda x=x: blur(x, k / k.sum())),
                     median_ms(lambda x=x: model.run(x, x))]
        print(f"| {w}x{h} | " + " | ".join(f"{v:.1f}" for v in parts) + " |")


if __name__ == "__main__":
    main()
