"""Distil the kernel student (:mod:`sharpkd.models.kstudent`) from the blind teacher.

    python -m sharpkd.distill_kernel --out runs/kstudent                                  # distilled
    python -m sharpkd.distill_kernel --out runs/kstudent-nokd --init student-nokd --w-kd 0  # the ablation

Data (training-pool photos only; the hold-out photos form the validation banks; Kodak24 is never read):
the fine-tuning banks of the teacher's priors (:func:`sharpkd.deblur.finetune.build_bank`, same seeds
and sizes, so a folder made by ``sharpkd.deblur.finetune`` can be copied in and is resumed): crops
blurred as the benchmark does, by procedural camera shake (``bank.pt``, two cases in three) or a
Gaussian (the rest, and every case of ``bank-round.pt``), each with the kernel the teacher's route
estimates for it: the refined L0 kernel for camera shake, the fitted width for round blur. These are
estimates with the estimator's real errors, the kernels the student will meet. ``--narrow-cases N``
adds a third bank of N Gaussians of sigma 0.8 to ``--narrow-sigma`` (``bank-narrow.pt``; its hold-out
twin is validated as ``gauss_narrow``), where the teacher's lead over the student is largest.
``--teacher-only-cases N`` adds a bank of N more crops (mixed blur, ``bank-teacher-only.pt``) whose
sharp originals are never read: the student learns them from the teacher's labels alone, as it would
photos that have no sharp original. A twin trained without the teacher cannot use them.

Teacher labels: the teacher's own deconvolution of each training crop with that kernel, through the
route's solver and prior (cached in ``labels.pt``, resumable). With ``--w-kd-net W`` also the teacher
network's restoration of each crop (``labels-net.pt``): what the teacher outputs where its router does not
deconvolve, the target of a distillation term of weight W on the windows that carry no kernel. Banks built since
the twenty-sixth session also keep a camera-shake case's L0 kernel and second estimate: ``--label-average 1``
labels camera shake with the mean of the teacher's deconvolutions with them (``labels-avg.pt``), as a teacher
with ``shake_average`` restores a photo, and ``--guide-average 1`` trains on the guide a photo gets with
``guide_average`` (the mean of the three Wiener deconvolutions) and sets that in the file. Both are off by
default (measured, not shipped: docs/realtime.md).

Training: random windows (flipped and rotated), the guide being the Wiener deconvolution with the
estimate. In ``no_kernel_share`` of them the photo itself takes the guide's place: the case where the
router does not trust an estimate, so the student keeps working as a plain student there. The loss is
the mission's: ``w_rec`` x L1 to the ground truth + ``w_kd`` x L1 to the teacher's output (windows with
a kernel; the teacher's labels are deconvolutions) + ``w_perceptual`` x the VGG16 perceptual distance
(``perceptual_taps`` layers, every ``perceptual_every``-th step). The network starts from ``--init``
(a student file: its weights, zeros for the guide's channels), so it first computes exactly what that
student does; a kernel-student file there is trained further as it is. ``--deepen N`` appends N residual
blocks to the network's encoder and to its decoder, each starting as the identity (more capacity, same
starting function). ``--round-balance`` gives the
guides of Gaussian cases (the round route, whose kernel is a fitted Gaussian) a Wiener weight of their
own, stored in the model so that it guides the same way at run time. ``--passes 2`` trains a network that
runs twice on windows with a kernel (:attr:`KernelStudentConfig.passes`): the second pass is guided by the
first pass's output corrected towards the photo by a Wiener step on the residual, a half-quadratic-splitting
step with the network as its prior, and the gradient runs through both passes (``--refine-*`` set that
step, ``--round-refine-*`` its weights for Gaussian cases; the windows grow by ``--margin`` on each side).
``--jpeg-share P`` cuts that share of the windows from the crop saved as a JPEG (a seeded quality per crop,
``--jpeg-quality-min`` to ``--jpeg-quality-max``) and decoded, the guide made from the decoded file, as a JPEG
photo is guided at run time; the kernel and the teacher's label stay the lossless crop's. Validation then adds
rows ``<kind>_jpeg``: the hold-out cases saved at ``--val-jpeg-quality``, gains over the decoded JPEG.
Validation: the hold-out banks, mean gain (dB) per blur kind with the estimate's guide (the last pass) and
with the photo in its place (and the first pass alone, for a multi-pass network).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass
class KernelDistillConfig:
    train_cases: int = 96  # cases in each training bank (mixed, Gaussian-only)
    val_cases: int = 21  # cases in each validation bank
    crop: int = 320
    steps: int = 8000
    batch: int = 16
    patch: int = 96
    lr: float = 2e-4
    no_kernel_share: float = 0.5  # windows whose guide is the photo itself
    narrow_cases: int = 0  # cases in a third, narrow-Gaussian training bank (0: none)
    narrow_sigma: float = 1.6  # its widest sigma (drawn from 0.8 to this)
    teacher_only_cases: int = 0  # cases (mixed blur) whose ground truth is never read: the teacher's labels are
    # their only target, as for photos without a sharp original (needs w_kd > 0)
    w_rec: float = 1.0
    w_kd: float = 1.0
    w_kd_net: float = 0.0  # L1 to the teacher's network output on windows without a kernel (photo as guide)
    w_perceptual: float = 0.005
    perceptual_every: int = 4
    perceptual_taps: int = 2
    balance: float = 1e-2  # Wiener regularisation of the guide
    round_balance: float = 0.0  # the guide's weight for Gaussian cases (the round route); 0: ``balance``
    deepen: int = 0  # residual blocks appended to the encoder and to the decoder, each starting as the identity
    estimate_side: int = 384  # the shipped model's estimate crop (inference only)
    # network passes on windows with a kernel (KernelStudentConfig.passes), trained end to end. With more than
    # one, windows are ``margin`` px wider on each side (the later passes' guides need the photo around a
    # window) and the loss reads the final output inside that border, plus ``w_first`` x the L1 of the first
    # pass to the ground truth (so the first pass stays a result of its own, for video)
    passes: int = 1
    refine_balance: float = 3e-3
    refine_damping: float = 1.0
    round_refine_balance: float = 0.0  # the Gaussian (round-route) cases' own (0: the two above)
    round_refine_damping: float = 0.0
    margin: int = 16
    w_first: float = 0.5
    w_first_kd: float = 0.0  # L1 of the first pass to the teacher's label on windows with a kernel (needs w_kd)
    # 1: camera shake's first-pass guide is the mean of the Wiener deconvolutions with the case's three kernels
    # (KernelStudentConfig.guide_average, set in the trained file too), in training and validation alike;
    # needs banks that carry the kernels (built since the twenty-sixth session)
    guide_average: int = 0
    # 1: camera shake's teacher labels average the teacher's deconvolutions with the case's kernels, as a teacher
    # with ``shake_average`` restores a photo (cached in labels-avg.pt); 0: the refined kernel's alone (labels.pt)
    label_average: int = 0
    # share of training windows cut from the crop saved as a JPEG (a seeded quality per crop, from
    # jpeg_quality_min to jpeg_quality_max) and decoded, with the guide made from that decoded file: most photos
    # reach users as JPEGs, whose compression errors a guide trained on lossless crops amplifies. The kernel
    # and the teacher's label stay the lossless crop's. Where it is set, validation adds each hold-out case
    # saved at ``val_jpeg_quality`` (rows ``<kind>_jpeg``; gains over the decoded JPEG)
    jpeg_share: float = 0.0
    jpeg_quality_min: int = 70
    jpeg_quality_max: int = 95
    val_jpeg_quality: int = 85
    val_every: int = 1000
    seed: int = 0


def cached_labels(bank: list[dict], path: Path, desc: str, label, progress: bool = True,
                  save_every: int = 1) -> list[torch.Tensor]:
    """``label(case)`` (a (1, 3, H, W) float image) as uint8 for every bank case, cached in ``path`` (written
    every ``save_every`` cases and at the end) and resumed from it."""
    from tqdm import tqdm

    labels = torch.load(path, weights_only=True) if path.is_file() else []
    for c in tqdm(bank[len(labels):], desc=desc, initial=len(labels), total=len(bank), disable=not progress):
        with torch.no_grad():
            out = label(c)
        labels.append((out[0].clamp(0, 1) * 255).round().to(torch.uint8))
        if len(labels) % save_every == 0 or len(labels) == len(bank):
            tmp = path.with_name(path.name + ".tmp")
            torch.save(labels, tmp)
            tmp.replace(path)
    return labels


def teacher_labels(teacher, bank: list[dict], path: Path, progress: bool = True,
                   average: bool = False) -> list[torch.Tensor]:
    """The teacher's deconvolution (uint8) of every bank case with its estimated kernel, through its
    route's solver and prior; cached in ``path`` and resumed from it. With ``average``, a camera-shake case that
    carries its other kernels is labelled as a teacher with ``shake_average`` (and ``shake_average_check``)
    restores it: the mean of the deconvolutions with the refined kernel, the L0 kernel (and the second estimate)."""
    from sharpkd.deblur.finetune import case_kernels, solve

    cfg = teacher.config
    average = bool(average and cfg.shake_average and cfg.refine_rounds > 0)

    shake_kernels = 3 if cfg.shake_average_check else 2  # as many as the teacher's camera-shake route averages

    def label(c: dict) -> torch.Tensor:
        y = c["blurred"][None].float() / 255
        kernels = case_kernels(c)[: shake_kernels if average and c["kind"] == "motion" else 1]
        return sum(solve(teacher, y, k[None], c["kind"]) for k in kernels) / len(kernels)

    return cached_labels(bank, path, "teacher labels", label, progress)


def network_labels(teacher, bank: list[dict], path: Path, progress: bool = True) -> list[torch.Tensor]:
    """The teacher network's restoration (uint8) of every bank case: the teacher's own output where its
    router keeps a photo from deconvolution, as the kernel student does without a kernel. Cached in
    ``path`` and resumed from it."""
    return cached_labels(bank, path, "network labels", lambda c: teacher._network(c["blurred"][None].float() / 255),
                         progress, save_every=16)


def prepare(bank: list[dict], balance: float, labels: list[torch.Tensor] | None = None,
            round_balance: float = 0.0, net_labels: list[torch.Tensor] | None = None,
            guide_average: bool = False) -> list[dict]:
    """Float crops with their guide (Wiener deconvolution with the estimated kernel, weight
    ``round_balance`` for Gaussian cases where it is set, else ``balance``; with ``guide_average``, camera shake's
    guide is the mean of the Wiener deconvolutions with every kernel the case carries, as
    ``KernelStudentConfig.guide_average`` makes it at run time) made once; a case's ``group`` (its validation row)
    is kept."""
    from sharpkd.deblur.finetune import case_kernels
    from sharpkd.deblur.solve import wiener_deconvolve

    out = []
    for i, c in enumerate(bank):
        y = c["blurred"][None].float() / 255
        b = round_balance if c["kind"] == "gauss" and round_balance > 0 else balance
        kernels = case_kernels(c)
        k = kernels[0]
        if not (guide_average and c["kind"] == "motion"):
            kernels = kernels[:1]
        case = {"kind": c["kind"], "y": y, "x": c["sharp"][None].float() / 255 if "sharp" in c else None,
                "g": sum(wiener_deconvolve(y, kern, b) for kern in kernels) / len(kernels), "k": k}
        if "group" in c:
            case["group"] = c["group"]
        if labels is not None:
            case["t"] = labels[i][None].float() / 255
        if net_labels is not None:
            case["n"] = net_labels[i][None].float() / 255
        if c.get("teacher_only"):  # no ground truth: the teacher's label stands in for it everywhere
            case["x"] = case["t"]
            case["gt"] = 0.0
        out.append(case)
    return out


def as_jpeg(bank: list[dict], qualities: list[int]) -> list[dict]:
    """The bank with each case's blurred crop saved as a JPEG at its quality (Pillow, as
    :func:`sharpkd.degrade.jpeg`) and decoded; the rest of each case (truth, kernels) is kept."""
    from sharpkd.degrade import jpeg

    out = []
    for c, q in zip(bank, qualities, strict=True):
        decoded = jpeg(c["blurred"][None].float() / 255, int(q))[0]
        out.append({**c, "blurred": (decoded * 255).round().to(torch.uint8), "jpeg_quality": int(q)})
    return out


def with_jpeg(cases: list[dict], jpeg_cases: list[dict]) -> list[dict]:
    """Training cases that carry their JPEG variant (:func:`as_jpeg`, then :func:`prepare`) as ``yj`` and
    ``gj``: the photo and guide a window takes in their place with probability ``jpeg_share``."""
    return [{**c, "yj": j["y"], "gj": j["g"]} for c, j in zip(cases, jpeg_cases, strict=True)]


def jpeg_qualities(n: int, cfg: KernelDistillConfig, seed: int) -> list[int]:
    """One seeded JPEG quality per case, from ``jpeg_quality_min`` to ``jpeg_quality_max``."""
    rng = np.random.default_rng(seed)
    return [int(q) for q in rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1, size=n)]


def windows(cases: list[dict], cfg: KernelDistillConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A batch of random windows: photo ``y``, guide ``g``, truth ``x``, teacher ``t`` (cases with
    labels only), ``kd`` (1 where the window has a kernel and so a teacher label) and ``gt`` (0 for a
    teacher-only case, whose ``x`` is the teacher's label). Where a case has a network label ``n``, a
    window without a kernel takes it as its ``t`` (a teacher-only case keeps its deconvolution). Where a case
    carries a JPEG variant (:func:`with_jpeg`), a window takes its photo and guide from it with probability
    ``cfg.jpeg_share``."""
    keys = ("y", "g", "x", "t") if "t" in cases[0] else ("y", "g", "x")
    batch: dict[str, list] = {k: [] for k in (*keys, "kd", "gt", "k", "round")}
    size = cfg.patch + (2 * cfg.margin if cfg.passes > 1 else 0)
    for _ in range(cfg.batch):
        c = cases[int(rng.integers(len(cases)))]
        h, w = c["y"].shape[-2:]
        p = min(size, h, w)
        y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        # (drawn only where the option is on, so that runs without it keep their random stream)
        src = {"y": "yj", "g": "gj"} if cfg.jpeg_share > 0 and "yj" in c and rng.random() < cfg.jpeg_share else {}
        crop = {}
        for k in keys + (("n",) if "t" in keys and "n" in c else ()):
            t = torch.rot90(c[src.get(k, k)][0, :, y0 : y0 + p, x0 : x0 + p], rot, dims=(-2, -1))
            crop[k] = t.flip(-1) if flip else t
        kernel = rng.random() >= cfg.no_kernel_share
        if not kernel:
            crop["g"] = crop["y"]
            if "n" in crop and c.get("gt", 1.0):
                crop["t"] = crop["n"]
        for k in keys:
            batch[k].append(crop[k])
        batch["kd"].append(float(kernel))
        batch["gt"].append(float(c.get("gt", 1.0)))
        k = torch.rot90(c["k"], rot, dims=(-2, -1))  # the window's kernel: turned as the window was
        batch["k"].append(k.flip(-1) if flip else k)
        batch["round"].append(c["kind"] == "gauss")  # Gaussian cases stand for the round route
    out = {k: torch.stack(v) if k not in ("kd", "gt") else torch.tensor(v) for k, v in batch.items()
           if k not in ("k", "round")}
    return out | {"k": batch["k"], "round": batch["round"]}


def q(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.clamp(0, 1) * 255) / 255


@torch.no_grad()
def validate(model, cases: list[dict]) -> dict[str, dict[str, float]]:
    """Mean gain (dB) per kind (per ``group`` where a case has one): ``guide`` with the estimate's
    guide, ``no_kernel`` with the photo."""
    from sharpkd.metrics import batch_psnr

    model.eval()
    rows: dict[str, dict[str, list[float]]] = {}
    passes = model.config.passes
    for c in cases:
        r = rows.setdefault(c.get("group", c["kind"]), {"guide": [], "no_kernel": []} |
                            ({"first_pass": []} if passes > 1 else {}))
        base = float(batch_psnr(c["y"], c["x"])[0])
        outs = {}
        for name, g in (("guide", c["g"]), ("no_kernel", c["y"])):
            outs[name] = model.run(c["y"], g)
        if passes > 1:  # the guide row is the final pass; the first pass is its own row
            outs["first_pass"] = outs["guide"]
            outs["guide"] = model.later_passes(c["y"], outs["guide"], [c["k"]],
                                               ["round" if c["kind"] == "gauss" else "shake"])
        for name, out in outs.items():
            r[name].append(float(batch_psnr(q(out), c["x"])[0]) - base)
    return {k: {m: round(float(np.mean(v)), 3) for m, v in r.items()} for k, r in rows.items()}


def build_student(init: str, cfg: KernelDistillConfig):
    """A kernel student whose network starts as the student file ``init`` (zeros for the guide), or,
    where ``init`` is a kernel-student file, that model itself (its run-time settings kept), so a run
    can continue training a shipped kernel student."""
    from dataclasses import replace

    from sharpkd.checkpoint import load_model
    from sharpkd.models.kstudent import KernelStudent, KernelStudentConfig
    from sharpkd.train import widen_inputs

    base, info = load_model(init)
    round_balance = cfg.round_balance or None
    passes = {"passes": cfg.passes, "refine_balance": cfg.refine_balance, "refine_damping": cfg.refine_damping,
              "round_refine_balance": cfg.round_refine_balance or None,
              "round_refine_damping": cfg.round_refine_damping or None}
    if cfg.guide_average:  # trained on the averaged guide: the file guides photos so too
        passes["guide_average"] = True
    if info.get("arch") == "kstudent":
        if abs(base.config.balance - cfg.balance) > 1e-12:
            raise SystemExit(f"--init {init} was trained with --balance {base.config.balance}, not {cfg.balance}")
        model = KernelStudent(config=replace(base.config, round_balance=round_balance or base.config.round_balance,
                                             high_blocks=base.config.high_blocks + cfg.deepen, **passes))
        load_deepened(model.net, base.float().net.state_dict())
        return model
    if info.get("arch") != "student" or base.config.wiener or base.config.guide:
        raise SystemExit(f"--init {init}: expected a plain student file (no Wiener bank) or a kernel-student "
                         f"file, got {info.get('arch')}")
    b = base.config
    model = KernelStudent(config=KernelStudentConfig(
        unshuffle=b.unshuffle, width=b.width, low_width=b.low_width, low_blocks=b.low_blocks,
        high_blocks=b.high_blocks + cfg.deepen, balance=cfg.balance, round_balance=round_balance,
        estimate_side=cfg.estimate_side, **passes))
    load_deepened(model.net, widen_inputs(base.float().state_dict(), model.net.state_dict()))
    return model


def load_deepened(net, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net``, which may have more encoder/decoder residual blocks than ``state``
    (``--deepen``): those start as the identity (their second convolution zero), so ``net`` computes
    what ``state``'s network did. Any other mismatch is an error."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    new_blocks = {".".join(k.split(".")[:2]) for k in missing}  # e.g. "enc.1" from "enc.1.conv1.weight"
    if unexpected or any(not b.startswith(("enc.", "dec.")) for b in new_blocks):
        raise SystemExit(f"the init file does not fit this network (missing {missing}, unexpected {unexpected})")
    modules = dict(net.named_modules())
    for b in sorted(new_blocks):
        conv = modules[b + ".conv2"]
        torch.nn.init.zeros_(conv.weight)  # kernel students train plain convolutions
        torch.nn.init.zeros_(conv.bias)


def passes_forward(model, b: dict, cfg: KernelDistillConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """The network's passes on a batch of windows: the final output and the batch, both cut to the windows'
    inside (``margin`` px in from each side) where there is more than one pass, and the loss terms of the
    first pass (``first``: L1 to the ground truth on the windows with a kernel)."""
    pred = model.run(b["y"], b["g"])
    if cfg.passes <= 1:
        return pred, b, {}
    kd = b["kd"].bool()
    extra = {}
    if kd.any():
        gt = kd & b["gt"].bool()
        if gt.any():
            extra["first"] = F.l1_loss(pred[gt], b["x"][gt])
        if cfg.w_first_kd > 0 and "t" in b:
            extra["first_kd"] = F.l1_loss(pred[kd], b["t"][kd])
        rows = kd.nonzero()[:, 0].tolist()
        out = model.later_passes(b["y"][kd], pred[kd], [b["k"][i] for i in rows],
                                 ["round" if b["round"][i] else "shake" for i in rows])
        pred = pred.clone()
        pred[kd] = out
    m = cfg.margin
    inside = {k: (v[..., m:-m, m:-m] if isinstance(v, torch.Tensor) and v.ndim == 4 else v) for k, v in b.items()}
    return pred[..., m:-m, m:-m], inside, extra


def loss_terms(model, b: dict[str, torch.Tensor], cfg: KernelDistillConfig, step: int, vgg):
    from sharpkd.losses import perceptual

    pred, b, first = passes_forward(model, b, cfg)
    gt = b["gt"].bool()
    # reconstruction: windows with a ground truth; distillation: windows with a kernel (the teacher's labels
    # are deconvolutions), and every teacher-only window (its label is all it has)
    parts = {"rec": F.l1_loss(pred[gt], b["x"][gt]) if gt.any() else pred.sum() * 0}
    total = cfg.w_rec * parts["rec"]
    m = b["kd"].bool() | ~gt
    if cfg.w_kd > 0 and m.any():
        parts["kd"] = F.l1_loss(pred[m], b["t"][m])
        total = total + cfg.w_kd * parts["kd"]
    net = ~b["kd"].bool() & gt  # windows without a kernel: the teacher's network output, where labelled
    if cfg.w_kd_net > 0 and net.any():
        parts["kd_net"] = F.l1_loss(pred[net], b["t"][net])
        total = total + cfg.w_kd_net * parts["kd_net"]
    if "first" in first:
        parts["first"] = first["first"]
        total = total + cfg.w_first * parts["first"]
    if "first_kd" in first:
        parts["first_kd"] = first["first_kd"]
        total = total + cfg.w_first_kd * parts["first_kd"]
    if cfg.w_perceptual > 0 and step % max(1, cfg.perceptual_every) == 0:
        parts["perceptual"] = perceptual(pred, b["x"], vgg, taps=cfg.perceptual_taps)
        total = total + cfg.w_perceptual * parts["perceptual"]
    return total, {k: round(float(v.detach()), 5) for k, v in parts.items()}


def train(model, train_cases: list[dict], val_cases: list[dict], cfg: KernelDistillConfig, out: Path,
          progress: bool = True) -> dict:
    """Train ``model.net``; logs to ``out/log.jsonl``; returns the summary (validation before and after)."""
    from tqdm import tqdm

    from sharpkd.losses import vgg16_features

    rng = np.random.default_rng(cfg.seed)
    vgg = vgg16_features() if cfg.w_perceptual > 0 else None
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    before = validate(model, val_cases)
    log = (out / "log.jsonl").open("w")
    log.write(json.dumps({"step": 0, "val": before}) + "\n")
    t0, val = time.time(), before
    bar = tqdm(range(1, cfg.steps + 1), desc="kernel student", disable=not progress)
    for step in bar:
        model.train()
        loss, parts = loss_terms(model, windows(train_cases, cfg, rng), cfg, step, vgg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(rec=parts["rec"])
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = validate(model, val_cases)
            log.write(json.dumps({"step": step, "loss": parts, "minutes": round((time.time() - t0) / 60, 2),
                                  "val": val}) + "\n")
            log.flush()
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v['guide']:+.3f}" for k, v in val.items()))
    model.eval()
    return {"val_before": before, "val": val, "wall_time_s": round(time.time() - t0, 1)}


def run(data: str, teacher_name: str, init: str, out: Path, cfg: KernelDistillConfig, threads: int = 0,
        progress: bool = True) -> Path:
    from sharpkd.checkpoint import save_model
    from sharpkd.deblur.finetune import build_bank, start_run
    from sharpkd.provenance import hardware

    if cfg.teacher_only_cases > 0 and cfg.w_kd <= 0:  # before any bank is built
        raise SystemExit("--teacher-only-cases needs --w-kd > 0: those cases have no other target")
    if cfg.w_first_kd > 0 and (cfg.w_kd <= 0 or cfg.passes < 2):
        raise SystemExit("--w-first-kd needs --w-kd > 0 and --passes 2 or more")
    if cfg.w_kd_net > 0 and cfg.w_kd <= 0:
        raise SystemExit("--w-kd-net needs --w-kd > 0 (a twin without the teacher has neither)")
    if not 0 <= cfg.jpeg_share <= 1 or not (1 <= cfg.jpeg_quality_min <= cfg.jpeg_quality_max <= 100
                                           and 1 <= cfg.val_jpeg_quality <= 100):
        raise SystemExit("--jpeg-share must be in [0, 1] and the JPEG qualities in 1-100 (min <= max)")
    teacher, _, train_photos, held = start_run(data, teacher_name, out, cfg.seed, threads)
    bank, val_bank = [], []
    for tag, gauss in (("", False), ("-round", True)):
        bank += build_bank(teacher, train_photos, cfg.train_cases, cfg.crop, cfg.seed, out / f"bank{tag}.pt", gauss,
                           progress=progress)
        val_bank += build_bank(teacher, held, cfg.val_cases, cfg.crop, cfg.seed + 1, out / f"val_bank{tag}.pt", gauss,
                               progress=progress)
    if cfg.narrow_cases > 0:  # more narrow Gaussians, validated in a row of their own
        sigmas = (0.8, cfg.narrow_sigma)
        bank += build_bank(teacher, train_photos, cfg.narrow_cases, cfg.crop, cfg.seed + 2, out / "bank-narrow.pt",
                           True, sigmas, progress)
        narrow = build_bank(teacher, held, cfg.val_cases, cfg.crop, cfg.seed + 3, out / "val_bank-narrow.pt", True,
                            sigmas, progress)
        val_bank += [{**c, "group": "gauss_narrow"} for c in narrow]
    if cfg.teacher_only_cases > 0:  # photos the student learns from the teacher alone
        extra = build_bank(teacher, train_photos, cfg.teacher_only_cases, cfg.crop, cfg.seed + 4,
                           out / "bank-teacher-only.pt", progress=progress)
        bank += [{k: v for k, v in c.items() if k != "sharp"} | {"teacher_only": True} for c in extra]
    name = "labels-avg.pt" if cfg.label_average else "labels.pt"
    labels = teacher_labels(teacher, bank, out / name, progress, bool(cfg.label_average)) if cfg.w_kd > 0 else None
    net_labels = network_labels(teacher, bank, out / "labels-net.pt", progress) if cfg.w_kd_net > 0 else None
    model = build_student(init, cfg)
    balance = float(model.config.balance)
    round_balance = float(model.config.round_balance or 0.0)  # the model's (an --init kernel student may set it)
    average = bool(cfg.guide_average)
    train_cases = prepare(bank, balance, labels, round_balance, net_labels, average)
    val_cases = prepare(val_bank, balance, round_balance=round_balance, guide_average=average)
    if cfg.jpeg_share > 0:  # JPEG variants of the training crops, and JPEG rows in validation
        qualities = jpeg_qualities(len(bank), cfg, cfg.seed + 5)
        train_cases = with_jpeg(train_cases, prepare(as_jpeg(bank, qualities), balance, round_balance=round_balance,
                                                     guide_average=average))
        jpeg_val = prepare(as_jpeg(val_bank, [cfg.val_jpeg_quality] * len(val_bank)), balance,
                           round_balance=round_balance, guide_average=average)
        val_cases += [{**c, "group": c.get("group", c["kind"]) + "_jpeg"} for c in jpeg_val]
    summary = train(model, train_cases, val_cases, cfg, out, progress)
    info = {"stage": "kernel student", "command": "python -m sharpkd.distill_kernel " + " ".join(sys.argv[1:]),
            "steps": cfg.steps, "data": [data], "teacher": teacher_name, "init": init, "distilled": cfg.w_kd > 0,
            "hardware": hardware(), "train_cases": len(bank), "val_cases": len(val_bank),
            "distill_config": dataclasses.asdict(cfg), **summary}
    info["earlier"] = earlier_training(init)
    path = save_model(out / "model.safetensors", model, info)
    (out / "summary.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {path}: hold-out gain with the guide " +
          ", ".join(f"{k} {v['guide']:+.3f}" for k, v in summary["val"].items()))
    return path


def earlier_training(init: str) -> list[dict]:
    """Where ``init`` is a kernel-student file: its own training, oldest first (the stages it continued,
    then its run), with the run-time settings changed after it; empty for a plain student."""
    from sharpkd.checkpoint import load_model

    _, info = load_model(init)
    if info.get("arch") != "kstudent":
        return []
    keys = ("command", "init", "steps", "wall_time_s", "hardware", "train_cases", "val_before", "val")
    return [*info.get("earlier", []), {"file": init, **{k: info.get(k) for k in keys},
                                       "settings": [h["command"] for h in info.get("settings_history", [])]}]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/train", help="photo folder (hold-out split = validation; "
                    "scikit-image's sample photos when it does not exist)")
    ap.add_argument("--teacher", default="teacher", help="the blind-teacher file (estimates and labels)")
    ap.add_argument("--init", default="student", help="the student file the network starts from")
    ap.add_argument("--out", required=True, help="folder for the banks, labels, log and model.safetensors")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    for f in dataclasses.fields(KernelDistillConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    cfg = KernelDistillConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(KernelDistillConfig)})
    run(args.data, args.teacher, args.init, Path(args.out), cfg, args.threads, not args.quiet)


if __name__ == "__main__":
    main()
