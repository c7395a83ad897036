"""One training loop for both stages: the teacher (ground truth only) and the student
(ground truth + teacher outputs and features).

Read it top to bottom: configuration, data, model, optimiser, then the loop. Every ``val_every``
steps the (EMA) model is scored on a fixed hold-out set of patches cut from photos that are never
trained on; every ``ckpt_every`` steps the run folder gets, atomically:

* ``state.pt``          everything ``--resume`` needs (weights, EMA, optimiser, step, RNG states),
                        read back with ``torch.load(weights_only=True)``;
* ``model.safetensors`` the model to use (EMA weights when EMA is on), self-describing;
* ``config.json``       the resolved configuration; ``log.jsonl`` one JSON line per log event.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sharpkd.checkpoint import build_preset, count_params, load_model, macs_per_pixel, save_model
from sharpkd.data import PatchSampler, fixed_validation_set, limit_size, load_photos, skimage_photos, split_holdout
from sharpkd.degrade import PROTOCOL_DEGRADATIONS, DegradeConfig
from sharpkd.losses import FeatureAdapter, LossWeights, combined_loss
from sharpkd.metrics import batch_psnr
from sharpkd.provenance import hardware


@dataclass
class TrainConfig:
    stage: str = "teacher"  # "teacher" or "student"
    arch: str = ""  # preset name; "" -> nafunet for the teacher, student for the student
    out: str = "runs/teacher"
    data: list[str] = field(default_factory=list)  # folders/files; empty -> scikit-image sample photos
    teacher: str = ""  # model file of the teacher (student stage)
    init: str = ""  # start from these weights (fine-tuning); optimiser and schedule start fresh
    distill: bool = True  # student stage: False trains the same student on ground truth only
    kd_extra: int = 0  # extra patches per step labelled by the teacher only (no ground truth used)
    kd_extra_data: list[str] = field(default_factory=list)  # their photos (empty: the training pool)
    max_side: int = 0  # reduce training photos whose longer side exceeds this (0: keep full size)
    steps: int = 2000
    batch_size: int = 8
    patch_size: int = 96
    lr: float = 1e-3
    min_lr_ratio: float = 0.02
    warmup: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables the exponential moving average of the weights
    recon: str = "charbonnier"
    w_rec: float = 1.0
    w_perceptual: float = 0.0
    w_kd_out: float = 1.0
    w_kd_feat: float = 0.1
    val_fraction: float = 0.1
    val_crops_per_photo: int = 2
    val_crop: int = 192
    val_every: int = 250
    ckpt_every: int = 250
    log_every: int = 10
    max_minutes: float = 0.0  # stop early after this much wall time (0: no limit)
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads (0: PyTorch's default)
    amp: str = "off"  # CUDA mixed precision: "off", "bf16" or "fp16"
    channels_last: bool = False  # CUDA: NHWC memory layout
    compile: bool = False  # torch.compile the trained network
    degrade: DegradeConfig = field(default_factory=DegradeConfig)

    def loss_weights(self) -> LossWeights:
        kd = self.stage == "student" and self.distill
        return LossWeights(rec=self.w_rec, perceptual=self.w_perceptual, recon=self.recon,
                           kd_out=self.w_kd_out if kd else 0.0, kd_feat=self.w_kd_feat if kd else 0.0)


def config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    deg = d.pop("degrade", {})
    deg = DegradeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in deg.items()})
    return TrainConfig(**d, degrade=deg)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up (avoids early blow-ups with Adam's noisy second-moment estimates), then
    cosine decay to ``min_lr_ratio * lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def validate(model: torch.nn.Module, blurred: torch.Tensor, sharp: torch.Tensor, chunk: int = 8,
             per_image: bool = False) -> float | torch.Tensor:
    """Mean PSNR of the model's 8-bit output over the validation set (or the per-image PSNRs)."""
    model.eval()
    scores = []
    for i in range(0, len(blurred), chunk):
        out = model(blurred[i : i + chunk]).clamp(0, 1)
        out = torch.round(out * 255) / 255  # score what would be saved to disk
        scores.append(batch_psnr(out, sharp[i : i + chunk]))
    model.train()
    scores = torch.cat(scores)
    return scores if per_image else float(scores.mean())


VAL_KINDS = PROTOCOL_DEGRADATIONS  # the interleaving of fixed_validation_set: the benchmark's four kinds


def gains_by_kind(out_psnr: torch.Tensor, blurred_psnr: torch.Tensor) -> dict[str, float]:
    """Mean gain per degradation of the validation set, rounded for the log."""
    gain = out_psnr - blurred_psnr
    return {k: round(float(gain[j :: len(VAL_KINDS)].mean()), 3) for j, k in enumerate(VAL_KINDS)}


@dataclass(frozen=True)
class Dist:
    """This process's place in a (torchrun) process group; the defaults mean a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def widen_inputs(old: dict, new: dict) -> dict:
    """Fit ``old`` weights to a network that takes extra input channels (a Wiener bank added in
    fine-tuning): a weight whose input dimension grew keeps its old slice and gets zeros for the new
    channels, so the widened network starts out computing exactly what the old one did."""
    out = dict(old)
    for k, v in old.items():
        t = new.get(k)
        if t is not None and v.dim() == 4 and t.dim() == 4 and v.shape[0] == t.shape[0] \
                and v.shape[2:] == t.shape[2:] and t.shape[1] > v.shape[1]:
            w = torch.zeros_like(t)
            w[:, :v.shape[1]] = v
            out[k] = w
    return out


def init_distributed(device: str) -> Dist:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT): gloo on CPU, NCCL on CUDA. Without torchrun: a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_mean(x: torch.Tensor, dd: Dist) -> torch.Tensor:
    """Mean of a tensor over the ranks (the tensor itself for one process)."""
    if dd.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dd.world


def _ranks_agree(module: torch.nn.Module, dd: Dist) -> float:
    """Largest difference of any weight between this rank and the others (0.0 when in sync)."""
    if dd.world == 1:
        return 0.0
    flat = torch.cat([p.detach().float().flatten() for p in module.parameters()]).cpu()
    gathered = [torch.empty_like(flat) for _ in range(dd.world)]
    dist.all_gather(gathered, flat)
    return float(max((g - gathered[0]).abs().max() for g in gathered))


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a training run; returns the path of the model file.

    Under torchrun every rank runs this function. Each rank draws the same global batch from the
    shared seeded stream and trains on its own slice of it; DistributedDataParallel averages the
    gradients, so N ranks take the same steps as one process with the same global batch, and the
    saved state does not depend on the world size (a run may be resumed with any number of ranks).
    Rank 0 alone validates, logs and writes checkpoints.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"--resume: no {state_path} to resume from")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = config_from_dict(json.loads(state["config"]))
        # the schedule length, time limit and logging may change on resume; the rest may not
        cfg = dataclasses.replace(saved, steps=cfg.steps, max_minutes=cfg.max_minutes, out=cfg.out,
                                  val_every=cfg.val_every, ckpt_every=cfg.ckpt_every, device=cfg.device,
                                  threads=cfg.threads, amp=cfg.amp, channels_last=cfg.channels_last,
                                  compile=cfg.compile)
    else:
        if state_path.exists():
            raise FileExistsError(f"{out} already holds a training run: continue it with --resume, "
                                  "or choose another --out")
        state = None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.stage not in ("teacher", "student"):
        raise ValueError(f"stage must be 'teacher' or 'student', got {cfg.stage!r}")
    cfg.arch = cfg.arch or ("nafunet" if cfg.stage == "teacher" else "student")
    if cfg.amp not in ("off", "bf16", "fp16"):
        raise ValueError(f"amp must be off, bf16 or fp16, got {cfg.amp!r}")
    if (cfg.amp != "off" or cfg.channels_last) and cfg.device != "cuda":
        raise ValueError("--amp and --channels-last are CUDA options")
    dd = init_distributed(cfg.device)
    if cfg.batch_size % dd.world or cfg.kd_extra % dd.world:
        raise ValueError(f"--batch-size {cfg.batch_size} (and --kd-extra) must divide evenly over {dd.world} ranks")
    device = torch.device("cuda", dd.local_rank) if cfg.device == "cuda" and dd.world > 1 else torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)

    # ---- data: a hash-based hold-out split of the pool; validation patches are fixed -------------
    photos = load_photos(cfg.data) if cfg.data else skimage_photos()
    train_photos, val_photos = split_holdout(photos, cfg.val_fraction)
    if cfg.max_side:  # the hold-out photos stay as they are, so validation figures stay comparable
        train_photos = [limit_size(p, cfg.max_side) for p in train_photos]
    sampler = PatchSampler(train_photos, cfg.patch_size, seed=cfg.seed)
    val_blur, val_sharp = fixed_validation_set(val_photos, cfg.val_crops_per_photo, cfg.val_crop)
    val_blur, val_sharp = val_blur.to(device), val_sharp.to(device)
    extra_sampler = None
    if cfg.kd_extra > 0:
        if cfg.stage != "student" or not cfg.distill:
            raise ValueError("kd_extra needs a distilled student (the teacher labels the extra patches)")
        extra_photos = load_photos(cfg.kd_extra_data) if cfg.kd_extra_data else train_photos
        extra_sampler = PatchSampler(extra_photos, cfg.patch_size, seed=cfg.seed + 7919)

    # ---- models ---------------------------------------------------------------------------------
    arch, model = build_preset(cfg.arch)
    if cfg.init and state is None:
        init_model, _ = load_model(cfg.init)
        try:
            if type(init_model) is not type(model):
                raise RuntimeError
            model.load_state_dict(widen_inputs(init_model.state_dict(), model.state_dict()))
        except RuntimeError as e:
            raise ValueError(f"--init {cfg.init}: weights do not fit --arch {cfg.arch}") from e
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema > 0 else None
    weights = cfg.loss_weights()
    teacher, adapter = None, None
    if weights.kd_out > 0 or weights.kd_feat > 0:
        if not cfg.teacher:
            raise ValueError("the student stage needs --teacher MODEL (or --no-distill)")
        teacher, t_info = load_model(cfg.teacher, device)
        if t_info.get("arch") == "blind":
            raise ValueError(f"{cfg.teacher} is the blind teacher, which has no features to distil and is too slow to "
                             "label patches during training; distil from teacher (the network teacher) or "
                             "another trained network")
        teacher.requires_grad_(False)
        if weights.kd_feat > 0:
            adapter = FeatureAdapter(model.feature_channels, teacher.feature_channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters()) + (list(adapter.parameters()) if adapter else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    # what the loop calls: DDP wrappers (which average gradients over the ranks) and/or compiled code
    net, adapter_net = model, adapter
    if dd.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        net = DDP(model, device_ids=ids)
        adapter_net = DDP(adapter, device_ids=ids) if adapter is not None else None
    if cfg.compile:
        net = torch.compile(net)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None

    step, elapsed = 0, 0.0
    history: list[dict] = []  # one entry per invocation (first run and each --resume)
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if adapter is not None:
            adapter.load_state_dict(state["adapter"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads(state.get("history", "[]"))
        sampler.rng.bit_generator.state = json.loads(state["numpy_rng"])
        if extra_sampler is not None and "extra_rng" in state:
            extra_sampler.rng.bit_generator.state = json.loads(state["extra_rng"])
        torch.set_rng_state(state["torch_rng"])
    command = shlex.join(["sharpkd", *sys.argv[1:]]) if sys.argv else ""
    history.append({"command": command, "start_step": step, "end_step": step, "threads": torch.get_num_threads(),
                    "device": str(device), "world_size": dd.world})
    log = None
    if dd.main:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        log = open(out / "log.jsonl", "a")  # noqa: SIM115 (closed in finally)

    def write_log(**rec) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    blurred_each = validate(torch.nn.Identity(), val_blur, val_sharp, per_image=True)
    blurred_psnr = float(blurred_each.mean())
    if state is None:
        write_log(event="start", arch=arch, params=count_params(model), macs_per_pixel=macs_per_pixel(model),
                  train_photos=len(train_photos), val_photos=len(val_photos), val_blurred_psnr=blurred_psnr,
                  hardware=hardware(), world_size=dd.world, global_batch=cfg.batch_size)

    def checkpoint(val_psnr: float | None) -> None:
        history[-1]["end_step"] = step
        if not dd.main:
            return
        _atomic_torch_save({
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {},
            "adapter": adapter.state_dict() if adapter is not None else {}, "optimizer": opt.state_dict(),
            "step": step, "elapsed": elapsed, "config": json.dumps(dataclasses.asdict(cfg)),
            "numpy_rng": json.dumps(sampler.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
            **({"extra_rng": json.dumps(extra_sampler.rng.bit_generator.state)} if extra_sampler else {}),
            "history": json.dumps(history),
        }, state_path)
        info = {"stage": cfg.stage, "preset": cfg.arch, "steps": step, "wall_time_s": round(elapsed, 1),
                "hardware": hardware(), "data": cfg.data or ["scikit-image sample photos"],
                "command": history[0]["command"], "history": history,
                "val_psnr": val_psnr, "val_blurred_psnr": blurred_psnr,
                "distilled": bool(teacher is not None), "teacher": cfg.teacher,
                "train_config": dataclasses.asdict(cfg)}
        save_model(out / "model.safetensors", ema if ema is not None else model, info)

    # ---- the loop ---------------------------------------------------------------------------------
    t0 = time.time() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and dd.main), desc=f"train {cfg.stage}",
               unit="step")
    val_psnr = None
    b, e = cfg.batch_size // dd.world, cfg.kd_extra // dd.world  # this rank's share of the global batch
    mine = slice(dd.rank * b, (dd.rank + 1) * b)
    steps_here, elapsed_start = 0, elapsed
    try:
        while step < cfg.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            blurred, sharp = sampler.batch(cfg.batch_size, cfg.degrade)  # the global batch, same on every rank
            blurred, sharp = blurred[mine].to(device), sharp[mine].to(device)
            if extra_sampler is not None:  # fresh inputs whose only label is the teacher's output
                extra, _ = extra_sampler.batch(cfg.kd_extra, cfg.degrade)
                blurred = torch.cat([blurred, extra[dd.rank * e : (dd.rank + 1) * e].to(device)])
            if cfg.channels_last:
                blurred = blurred.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                t_out = t_feat = None
                if teacher is not None:
                    with torch.no_grad():  # the teacher's graph is never kept
                        t_out, t_feat = teacher(blurred, return_features=True)
                pred, s_feat = net(blurred, return_features=True)
                loss, parts = combined_loss(weights, pred.float(), sharp,
                                            teacher_out=None if t_out is None else t_out.float(),
                                            student_feat=None if s_feat is None else s_feat.float(),
                                            teacher_feat=None if t_feat is None else t_feat.float(),
                                            adapter=adapter_net)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if ema is not None:
                # EMA with a warm-up of its own so early averages are not dominated by the random init
                d = min(cfg.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.lerp_(pm, 1 - d)
            step += 1
            steps_here += 1
            elapsed = time.time() - t0
            bar.update(1)
            if step % cfg.log_every == 0:
                loss_all = float(_all_mean(loss.detach(), dd))
                rate = steps_here * (cfg.batch_size + cfg.kd_extra) / max(1e-9, elapsed - elapsed_start)
                write_log(event="train", step=step, lr=opt.param_groups[0]["lr"], loss=loss_all, **parts,
                          grad_norm=float(gnorm) if gnorm is not None else None, samples_per_s=round(rate, 2),
                          elapsed_s=round(elapsed, 2))
                bar.set_postfix(loss=f"{loss_all:.4f}", val=f"{val_psnr:.2f}" if val_psnr else "-")
            timeout = cfg.max_minutes > 0 and elapsed > cfg.max_minutes * 60
            if dd.world > 1:  # every rank must stop at the same step: rank 0's clock decides
                flag = torch.tensor([float(timeout)], device=device if device.type == "cuda" else "cpu")
                dist.broadcast(flag, 0)
                timeout = bool(flag.item())
            if dd.main and (step % cfg.val_every == 0 or step == cfg.steps or timeout):
                tv = time.time()
                val_each = validate(ema if ema is not None else model, val_blur, val_sharp, per_image=True)
                val_psnr = float(val_each.mean())
                write_log(event="val", step=step, val_psnr=val_psnr, val_gain=val_psnr - blurred_psnr,
                          val_gain_by_kind=gains_by_kind(val_each, blurred_each),
                          elapsed_s=round(elapsed, 2))
                t0 += time.time() - tv  # elapsed_s counts training only, so curves compare learning speed
            if step % cfg.ckpt_every == 0 or step == cfg.steps or timeout:
                checkpoint(val_psnr)
            if timeout:
                break
        if dd.world > 1:
            write_log(event="ddp", world_size=dd.world, step=step, max_weight_diff_across_ranks=_ranks_agree(model, dd))
            dist.barrier()  # the model file is complete before any rank returns
    finally:
        bar.close()
        if log is not None:
            log.close()
        if dd.world > 1 and dist.is_initialized():
            # leaving gloo's worker threads to interpreter shutdown can abort the process
            # ("terminate called without an active exception") after a successful run
            dist.destroy_process_group()
    return out / "model.safetensors"


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m sharpkd.train teacher --data ... --out ...
    from sharpkd.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
