"""End-to-end fine-tuning of the blind teacher's deconvolution on the kernels its estimator produces.

    python -m sharpkd.deblur.finetune --out runs/solver-ft            # bank, then training, then a teacher file

The FFDNet prior was trained (by its authors) as a plain denoiser; inside the half-quadratic-splitting
solver it meets something else: a data step that has amplified the errors of an *estimated* kernel
into ringing and ghost edges. Here the denoiser is trained through the whole unrolled solver
(:func:`sharpkd.deblur.solve.hqs_unrolled`, same schedule and noise floors as the teacher's routes),
so the loss sees what the teacher's output would be.

Data (training-pool photos only; the hold-out photos form the validation bank, Kodak24 is never read):

* a **bank** of cases, made once and cached (``bank.pt``, resumable): a crop of a photo, blurred by the
  benchmark's degradation (1/255 noise, 8-bit rounding) with a procedural camera-shake kernel or a
  Gaussian, and the kernel the teacher would deconvolve it with: for camera shake the L0 estimate
  refined against a first deconvolution (the shake route), for a Gaussian the width fitted against the
  network's output (the round route). The estimator's own errors are what the solver learns to tolerate;
* training samples are random windows of the bank's crops, flipped and rotated with their kernels,
  deconvolved with the estimated kernel (or, for ``true_share`` of them, the true one), L1 loss.

By default (``--shake-only 1``) the tuned copy becomes a second prior used only by the final
camera-shake run (``BlindTeacherConfig.shake_prior``); round blur and the refinement's first run keep
the converted FFDNet. Training one prior for both routes (``--shake-only 0``) raised camera shake but
cost round blur over a dB on the validation bank (docs/results.md, "End-to-end fine-tuning").
``--round-only 1`` does the same for the round route: a third prior (``BlindTeacherConfig.round_prior``)
trained on a bank of Gaussian cases only, each with the width the round route fits; the other two
priors are kept as they are. Run it from a file that already has its camera-shake prior to keep both.

Validation: the same routes on the hold-out bank, whole crops, mean gain (dB) per blur kind before
training and after every ``val_every`` steps; the best checkpoint is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("motion", "gauss")
ROUTES = {"motion": "shake", "gauss": "round"}  # the teacher's route for each kind of bank case


@dataclasses.dataclass
class FinetuneConfig:
    train_cases: int = 48  # bank cases from training photos (2 camera shake : 1 Gaussian)
    val_cases: int = 21  # bank cases from the hold-out photos
    crop: int = 320  # side of each bank crop
    patch: int = 96  # side of a training window
    batch: int = 4
    steps: int = 600
    lr: float = 2e-5
    true_share: float = 0.25  # windows solved with the true kernel rather than the estimate
    val_every: int = 100
    seed: int = 0
    shake_only: int = 1  # 1: train a separate prior for the final camera-shake run, on camera shake only
    # 1: train a separate prior for the round route instead, on a bank of Gaussian cases only (files
    # bank-round.pt, val_bank-round.pt); a camera-shake prior already in the file is kept as it is
    round_only: int = 0


def _square_crop(pixels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = pixels.shape[:2]
    c = min(side, h, w)
    y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    return np.ascontiguousarray(pixels[y0 : y0 + c, x0 : x0 + c])


def make_case(teacher, sharp: np.ndarray, kind: str, kernel: np.ndarray, seed: int) -> dict:
    """One bank case: blur ``sharp`` (uint8 HxWx3) as the benchmark does and find the kernel the
    teacher's route for that kind would deconvolve it with."""
    from sharpkd.deblur.estimate import estimate_kernel, fit_gaussian_width
    from sharpkd.degrade import gaussian_kernel, pad_kernel, protocol_degrade

    cfg = teacher.config
    size = int(cfg.kernel_size)
    y = torch.from_numpy(protocol_degrade(sharp, kernel, seed)).permute(2, 0, 1).float() / 255
    def padded(k: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pad_kernel(np.asarray(k, np.float64), size)).float()

    extra = {}
    with torch.no_grad():
        if kind == "motion":
            k0 = estimate_kernel(y, teacher.estimate_config(size))
            est = teacher._refine(y, k0, cfg.shake_noise)
            # the other kernels a camera-shake estimate carries (BlurEstimate.kernels): the L0 kernel the refined
            # one came from and the second estimate, so labels and guides can average over them as at run time
            second = teacher.estimate_config(min(size, int(cfg.check_kernel_size)), lam=cfg.check_lam)
            extra = {"unrefined": padded(k0), "check": padded(estimate_kernel(y, second))}
        else:
            width, _ = fit_gaussian_width(y, teacher._network(y[None])[0])
            est = gaussian_kernel(max(width, 0.3))
    return {"kind": kind, "sharp": torch.from_numpy(sharp).permute(2, 0, 1).contiguous(),
            "blurred": (y * 255).round().to(torch.uint8), "true": padded(kernel), "est": padded(est), **extra}


def case_kernels(case: dict) -> list[torch.Tensor]:
    """A bank case's kernels to average over, each normalised: its ``est``, then (camera shake, banks built since
    the twenty-sixth session) the L0 kernel and the second estimate, in :attr:`BlurEstimate.kernels`' order."""
    return [(k / k.sum()).float() for k in (case.get(n) for n in ("est", "unrefined", "check")) if k is not None]


def case_kernel(i: int, rng: np.random.Generator, size: int, gauss_only: bool = False,
                sigmas: tuple[float, float] = (0.8, 3.2)) -> tuple[str, np.ndarray]:
    """Case ``i``'s blur: two of every three are procedural camera shake (8-25 px), one a Gaussian
    (sigma drawn uniformly from ``sigmas``); with ``gauss_only`` every case is a Gaussian."""
    from sharpkd.degrade import gaussian_kernel, make_kernel

    if gauss_only or i % 3 == 2:
        return "gauss", gaussian_kernel(float(rng.uniform(*sigmas)))
    return "motion", make_kernel("motion", length=float(rng.uniform(8, 25)), seed=int(rng.integers(1 << 30)),
                                 size=size)


def build_bank(teacher, photos: list, n: int, crop: int, seed: int, path: Path, gauss_only: bool = False,
               sigmas: tuple[float, float] = (0.8, 3.2), progress: bool = True) -> list[dict]:
    """``n`` cases from ``photos`` (cycled), cached in ``path`` and resumed from it; Gaussian widths are
    drawn from ``sigmas``."""
    from tqdm import tqdm

    from sharpkd.data import limit_size

    bank = torch.load(path, weights_only=True) if path.is_file() else []
    rng = np.random.default_rng(seed)
    draws = [(int(rng.integers(len(photos))), int(rng.integers(1 << 30))) for _ in range(n)]
    for i in tqdm(range(len(bank), n), desc=f"bank {path.name}", initial=len(bank), total=n, disable=not progress):
        pi, s = draws[i]
        crng = np.random.default_rng(s)
        kind, kernel = case_kernel(i, crng, int(teacher.config.kernel_size), gauss_only, sigmas)
        sharp = _square_crop(limit_size(photos[pi], 768).pixels, crop, crng)
        bank.append(make_case(teacher, sharp, kind, kernel, s % (1 << 31)))
        tmp = path.with_name(path.name + ".tmp")
        torch.save(bank, tmp)
        tmp.replace(path)
    return bank


def noise_floor(teacher, kind: str) -> float:
    return float(teacher.config.shake_noise if kind == "motion" else teacher.config.round_noise)


def solve(teacher, y: torch.Tensor, kernels: torch.Tensor, kind: str) -> torch.Tensor:
    """The teacher's solver on a batch (one route), with gradients to the denoiser."""
    from sharpkd.deblur.solve import hqs_unrolled

    cfg = teacher.config
    return hqs_unrolled(y, kernels, teacher.prior(ROUTES[kind]), noise=noise_floor(teacher, kind), iters=cfg.iters,
                        sigma_max=cfg.sigma_max, lam=cfg.lam, cg_steps=cfg.cg_steps)


def sample_batch(bank: list[dict], kind: str, cfg: FinetuneConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows of ``kind`` cases with a random flip/rotation applied to image and kernel alike."""
    pool = [c for c in bank if c["kind"] == kind]
    ys, xs, ks = [], [], []
    for _ in range(cfg.batch):
        c = pool[int(rng.integers(len(pool)))]
        h, w = c["blurred"].shape[-2:]
        p = min(cfg.patch, h, w)
        y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        y = c["blurred"][:, y0 : y0 + p, x0 : x0 + p].float() / 255
        x = c["sharp"][:, y0 : y0 + p, x0 : x0 + p].float() / 255
        k = c["true"] if rng.random() < cfg.true_share else c["est"]
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        y, x, k = (torch.rot90(t, rot, dims=(-2, -1)) for t in (y, x, k))
        if flip:
            y, x, k = (t.flip(-1) for t in (y, x, k))
        ys.append(y)
        xs.append(x)
        ks.append(k / k.sum())
    return torch.stack(ys), torch.stack(xs), torch.stack(ks)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of the 8-bit rounded ``a`` (one image) against ``b``."""
    from sharpkd.metrics import batch_psnr

    return float(batch_psnr(torch.round(a.clamp(0, 1) * 255) / 255, b)[0])


@torch.no_grad()
def validate(teacher, bank: list[dict]) -> dict[str, float]:
    """Mean gain (dB) over the blurred crop of the route's solver with the estimated kernel, per kind."""
    gains: dict[str, list[float]] = {k: [] for k in KINDS}
    for c in bank:
        y, x = c["blurred"][None].float() / 255, c["sharp"][None].float() / 255
        out = solve(teacher, y, c["est"][None] / c["est"].sum(), c["kind"])
        gains[c["kind"]].append(psnr(out, x) - psnr(y, x))
    return {k: float(np.mean(v)) for k, v in gains.items() if v}


def train(teacher, bank: list[dict], val_bank: list[dict], cfg: FinetuneConfig, out: Path) -> dict:
    """Fine-tune ``teacher.denoiser`` through the unrolled solver; keeps the best state by validation
    (mean over kinds) in ``out/denoiser.pt``, logs to ``out/log.jsonl``. Returns the summary."""
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed)
    if cfg.round_only:
        den, kinds = teacher.round_denoiser, ("gauss",)
    elif teacher.shake_denoiser is not None:
        den, kinds = teacher.shake_denoiser, ("motion",)
    else:
        den, kinds = teacher.denoiser, KINDS
    den.train()
    for prm in den.parameters():
        prm.requires_grad_(True)
    opt = torch.optim.Adam(den.parameters(), lr=cfg.lr)
    log = (out / "log.jsonl").open("a")
    start = validate(teacher, val_bank)
    best = (float(np.mean(list(start.values()))), 0)
    best_state = {k: v.detach().clone() for k, v in den.state_dict().items()}
    log.write(json.dumps({"step": 0, "val": start}) + "\n")
    t0, losses = time.time(), []
    bar = tqdm(range(1, cfg.steps + 1), desc="fine-tune")
    for step in bar:
        kind = kinds[int(rng.random() < 1 / 3) % len(kinds)]
        y, x, k = sample_batch(bank, kind, cfg, rng)
        loss = F.l1_loss(solve(teacher, y, k, kind), x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = validate(teacher, val_bank)
            mean = float(np.mean(list(val.values())))
            log.write(json.dumps({"step": step, "loss": float(np.mean(losses[-cfg.val_every:])), "val": val,
                                  "minutes": (time.time() - t0) / 60}) + "\n")
            log.flush()
            tqdm.write(f"step {step}: val gain " + ", ".join(f"{k} {v:+.3f}" for k, v in val.items()))
            if mean > best[0]:
                best = (mean, step)
                best_state = {k: v.detach().clone() for k, v in den.state_dict().items()}
                torch.save(best_state, out / "denoiser.pt")
    den.load_state_dict(best_state)
    den.eval()
    for prm in den.parameters():
        prm.requires_grad_(False)
    return {"val_before": start, "best_step": best[1], "best_val_mean": best[0],
            "minutes": (time.time() - t0) / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train", help="photo folder (hold-out split = validation)")
    ap.add_argument("--teacher", default="teacher", help="the blind-teacher file to start from")
    ap.add_argument("--out", required=True, help="folder for the bank, log and the fine-tuned teacher file")
    ap.add_argument("--threads", type=int, default=0)
    for f in dataclasses.fields(FinetuneConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args()
    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    run(args.data, args.teacher, Path(args.out), cfg, args.threads)


def start_run(data: str, teacher_name: str, out: Path, seed: int, threads: int = 0):
    """What a run on the teacher's banks starts with: threads and seed set, ``out`` made, the blind
    teacher loaded (float32, eval) and the photos split into training pool and hold-out.
    Returns (teacher, its file's description, training photos, hold-out photos)."""
    from sharpkd.checkpoint import load_model
    from sharpkd.data import load_photos, skimage_photos, split_holdout

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    teacher, info = load_model(teacher_name)
    if info.get("arch") != "blind":
        raise SystemExit(f"{teacher_name} is not a blind-teacher file")
    photos = load_photos(data) if Path(data).is_dir() else skimage_photos()
    return teacher.float().eval(), info, *split_holdout(photos)


def run(data: str, teacher_name: str, out: Path, cfg: FinetuneConfig, threads: int = 0) -> Path:
    from sharpkd.checkpoint import save_model

    teacher, info, train_photos, held = start_run(data, teacher_name, out, cfg.seed, threads)
    if cfg.round_only:
        if teacher.round_denoiser is None:
            teacher = _with_prior(teacher, "round_prior", "round_denoiser")
    elif cfg.shake_only and teacher.shake_denoiser is None:
        teacher = _with_prior(teacher, "shake_prior", "shake_denoiser")
    tag = "-round" if cfg.round_only else ""
    bank = build_bank(teacher, train_photos, cfg.train_cases, cfg.crop, cfg.seed, out / f"bank{tag}.pt",
                      bool(cfg.round_only))
    val_bank = build_bank(teacher, held, cfg.val_cases, cfg.crop, cfg.seed + 1, out / f"val_bank{tag}.pt",
                          bool(cfg.round_only))
    summary = train(teacher, bank, val_bank, cfg, out)
    command = "python -m sharpkd.deblur.finetune " + " ".join(
        f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))
    new_info = {**info, "preset": "blind+network, solver fine-tuned", "command": f"{command} --data {data}",
                "finetune": {**dataclasses.asdict(cfg), **summary, "photos": len(train_photos)}}
    path = save_model(out / "teacher.safetensors", teacher, new_info, half=True)
    (out / "summary.json").write_text(json.dumps(new_info["finetune"], indent=1) + "\n")
    print(f"wrote {path}: validation gain before {summary['val_before']}, best mean {summary['best_val_mean']:+.3f} "
          f"at step {summary['best_step']}")
    return path


def _with_prior(teacher, flag: str, attr: str):
    """``teacher`` with one more FFDNet (config ``flag``, module ``attr``), a copy of the converted one."""
    from sharpkd.checkpoint import build_model, config_to_dict

    tuned = build_model("blind", {**config_to_dict(teacher.config), flag: True})
    tuned.load_state_dict(teacher.state_dict(), strict=False)
    getattr(tuned, attr).load_state_dict(teacher.denoiser.state_dict())
    return tuned.float().eval()


if __name__ == "__main__":
    main()
