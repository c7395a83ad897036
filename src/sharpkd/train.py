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
from sharpkd.data import PatchSampler, limit_size, load_photos, skimage_photos, split_holdout
from sharpkd.degrade import DegradeConfig
from sharpkd.evaluate import fixed_validation_set, gains_by_kind, validate
from sharpkd.labels import LabelCache
from sharpkd.losses import FeatureAdapter, LossWeights, combined_loss
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
    kd_cache: str = ""  # folder of cached teacher labels (`sharpkd label`): the batches come from it
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
    perceptual_every: int = 1  # the perceptual term on every k-th step only (its VGG16 passes dominate a CPU step)
    perceptual_taps: int = 3  # VGG16 layers compared: 1 relu1_2, 2 + relu2_2, 3 + relu3_3 (fewer: cheaper)
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

    def loss_weights(self, step: int | None = None) -> LossWeights:
        """The loss weights (at ``step``: the perceptual term is off between its every-k-th steps)."""
        kd = self.stage == "student" and self.distill
        # cached labels carry the teacher's output only: features need a live teacher as well
        feat = kd and (bool(self.teacher) or not self.kd_cache)
        perc = self.w_perceptual if step is None or step % max(1, self.perceptual_every) == 0 else 0.0
        return LossWeights(rec=self.w_rec, perceptual=perc, recon=self.recon, perceptual_taps=self.perceptual_taps,
                           kd_out=self.w_kd_out if kd else 0.0, kd_feat=self.w_kd_feat if feat else 0.0)


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


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Raise ValueError for settings that cannot train (checked before anything is loaded)."""
    if cfg.stage not in ("teacher", "student"):
        raise ValueError(f"stage must be 'teacher' or 'student', got {cfg.stage!r}")
    if cfg.amp not in ("off", "bf16", "fp16"):
        raise ValueError(f"amp must be off, bf16 or fp16, got {cfg.amp!r}")
    if (cfg.amp != "off" or cfg.channels_last) and cfg.device != "cuda":
        raise ValueError("--amp and --channels-last are CUDA options")
    if cfg.perceptual_every < 1 or cfg.perceptual_taps not in (1, 2, 3):
        raise ValueError("--perceptual-every must be at least 1 and --perceptual-taps 1, 2 or 3")
    if cfg.batch_size < 1 or cfg.kd_extra < 0 or cfg.steps < 1:
        raise ValueError("batch size and steps must be at least 1, kd_extra at least 0")
    if cfg.batch_size % world or cfg.kd_extra % world:
        raise ValueError(f"--batch-size {cfg.batch_size} (and --kd-extra) must divide evenly over {world} ranks")
    if cfg.kd_extra > 0 and (cfg.stage != "student" or not cfg.distill):
        raise ValueError("kd_extra needs a distilled student (the teacher labels the extra patches)")
    # with --no-distill a label cache is still a set of training patches: the ablation twin of a distilled
    # run sees the same patches and only loses the teacher's term
    if cfg.kd_cache and (cfg.stage != "student" or cfg.kd_extra):
        raise ValueError("kd_cache is for training a student (and replaces kd_extra)")
    kd = cfg.loss_weights()
    if (kd.kd_out > 0 or kd.kd_feat > 0) and not cfg.teacher and not cfg.kd_cache:
        raise ValueError("the student stage needs --teacher MODEL or --kd-cache DIR (or --no-distill)")


def load_state(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and saved state: ``(cfg, None)`` for a new run; on resume, the saved
    config (with the settings that may change on resume taken from ``cfg``) and the saved state."""
    out = Path(cfg.out)
    state_path = out / "state.pt"
    if not resume:
        if state_path.exists():
            raise FileExistsError(f"{out} already holds a training run: continue it with --resume, "
                                  "or choose another --out")
        return cfg, None
    if not state_path.exists():
        raise FileNotFoundError(f"--resume: no {state_path} to resume from")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = config_from_dict(json.loads(state["config"]))
    except Exception as e:  # pickle.UnpicklingError, zip errors, a foreign dict, a bad config
        raise ValueError(f"--resume: {state_path} is not a sharpkd training state ({type(e).__name__})") from e
    # the schedule length, time limit and logging may change on resume; the rest may not
    cfg = dataclasses.replace(saved, steps=cfg.steps, max_minutes=cfg.max_minutes, out=cfg.out,
                              val_every=cfg.val_every, ckpt_every=cfg.ckpt_every, device=cfg.device,
                              threads=cfg.threads, amp=cfg.amp, channels_last=cfg.channels_last,
                              compile=cfg.compile)
    return cfg, state


@dataclass
class Run:
    """Everything a training run carries from step to step."""

    cfg: TrainConfig
    dd: Dist
    device: torch.device
    sampler: PatchSampler
    extra_sampler: PatchSampler | None
    val_blur: torch.Tensor
    val_sharp: torch.Tensor
    photo_counts: tuple[int, int]  # training and hold-out photos
    cache: LabelCache | None = None  # cached teacher labels: the training batches come from here
    arch: str = ""
    model: torch.nn.Module | None = None  # the trained network (unwrapped)
    ema: torch.nn.Module | None = None
    adapter: torch.nn.Module | None = None  # student-to-teacher feature adapter
    teacher: torch.nn.Module | None = None
    net: torch.nn.Module | None = None  # what the loop calls: DDP wrapper and/or compiled model
    adapter_net: torch.nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)  # one entry per invocation (first run and each --resume)
    blurred_each: torch.Tensor | None = None
    val_psnr: float | None = None
    log: object = None

    @property
    def blurred_psnr(self) -> float:
        return float(self.blurred_each.mean())

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters()) + (list(self.adapter.parameters()) if self.adapter else [])

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def write_log(self, **rec) -> None:
        if self.log is not None:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()


def setup_data(cfg: TrainConfig, dd: Dist, device: torch.device) -> Run:
    """Photos, their hash-based hold-out split, the patch samplers and the fixed validation set."""
    photos = load_photos(cfg.data) if cfg.data else skimage_photos()
    train_photos, val_photos = split_holdout(photos, cfg.val_fraction)
    if cfg.max_side:  # the hold-out photos stay as they are, so validation figures stay comparable
        train_photos = [limit_size(p, cfg.max_side) for p in train_photos]
    sampler = PatchSampler(train_photos, cfg.patch_size, seed=cfg.seed)
    val_blur, val_sharp = fixed_validation_set(val_photos, cfg.val_crops_per_photo, cfg.val_crop)
    extra_sampler = None
    if cfg.kd_extra > 0:
        extra_photos = load_photos(cfg.kd_extra_data) if cfg.kd_extra_data else train_photos
        extra_sampler = PatchSampler(extra_photos, cfg.patch_size, seed=cfg.seed + 7919)
    cache = LabelCache(cfg.kd_cache, seed=cfg.seed) if cfg.kd_cache else None
    return Run(cfg, dd, device, sampler, extra_sampler, val_blur.to(device), val_sharp.to(device),
               (len(train_photos), len(val_photos)), cache)


def _load_teacher(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    teacher, t_info = load_model(cfg.teacher, device)
    if t_info.get("arch") == "blind":
        raise ValueError(f"{cfg.teacher} is the blind teacher, which has no features to distil and is too slow to "
                         "label patches during training: label photos once with `sharpkd label --teacher "
                         f"{cfg.teacher}` and train with --kd-cache, and/or distil features from teacher-net "
                         "(its network)")
    return teacher.requires_grad_(False)


def setup_models(run: Run, fresh: bool) -> None:
    """The network (from ``--init`` on a fresh run), its EMA copy, the teacher and feature adapter,
    the optimiser, and the wrappers the loop calls (DDP, torch.compile)."""
    cfg, device = run.cfg, run.device
    run.arch, model = build_preset(cfg.arch)
    if cfg.init and fresh:
        init_model, _ = load_model(cfg.init)
        try:
            if type(init_model) is not type(model):
                raise RuntimeError
            model.load_state_dict(widen_inputs(init_model.state_dict(), model.state_dict()))
        except RuntimeError as e:
            raise ValueError(f"--init {cfg.init}: weights do not fit --arch {cfg.arch}") from e
    run.model = model.to(device).train()
    run.ema = copy.deepcopy(run.model).eval().requires_grad_(False) if cfg.ema > 0 else None
    weights = cfg.loss_weights()
    if (weights.kd_out > 0 or weights.kd_feat > 0) and cfg.teacher:
        run.teacher = _load_teacher(cfg, device)
        if weights.kd_feat > 0:
            run.adapter = FeatureAdapter(model.feature_channels, run.teacher.feature_channels).to(device)
    if cfg.channels_last:
        run.model = run.model.to(memory_format=torch.channels_last)
    run.opt = torch.optim.AdamW(run.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    run.net, run.adapter_net = run.model, run.adapter
    if run.dd.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        run.net = DDP(run.model, device_ids=ids)
        run.adapter_net = DDP(run.adapter, device_ids=ids) if run.adapter is not None else None
    if cfg.compile:
        run.net = torch.compile(run.net)
    run.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None


def restore(run: Run, state: dict) -> None:
    """Weights, optimiser, step, clock and random streams from a saved state."""
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    if run.adapter is not None:
        run.adapter.load_state_dict(state["adapter"])
    run.opt.load_state_dict(state["optimizer"])
    run.step, run.elapsed = int(state["step"]), float(state["elapsed"])
    run.history = json.loads(state.get("history", "[]"))
    run.sampler.rng.bit_generator.state = json.loads(state["numpy_rng"])
    if run.extra_sampler is not None and "extra_rng" in state:
        run.extra_sampler.rng.bit_generator.state = json.loads(state["extra_rng"])
    if run.cache is not None and "cache_rng" in state:
        run.cache.rng.bit_generator.state = json.loads(state["cache_rng"])
    torch.set_rng_state(state["torch_rng"])


def open_log(run: Run) -> None:
    """Rank 0 appends to ``log.jsonl``. On resume, records past the saved step (written after the
    last checkpoint by the interrupted invocation, and about to be redone) are dropped first, so the
    log holds each step once; stale ``*.tmp`` files of a killed write are removed."""
    if not run.dd.main:
        return
    out = run.out
    for tmp in out.glob("*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(run.cfg), indent=2))
    path = out / "log.jsonl"
    if run.step and path.is_file():
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if int(rec.get("step", 0)) <= run.step:
                kept.append(line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, path)
    run.log = open(path, "a")  # noqa: SIM115 (closed by train's finally)


def save_checkpoint(run: Run) -> None:
    """Training state (``state.pt``) and the model file (EMA weights when on), both written atomically."""
    run.history[-1]["end_step"] = run.step
    if not run.dd.main:
        return
    cfg = run.cfg
    _atomic_torch_save({
        "model": run.model.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else {},
        "adapter": run.adapter.state_dict() if run.adapter is not None else {}, "optimizer": run.opt.state_dict(),
        "step": run.step, "elapsed": run.elapsed, "config": json.dumps(dataclasses.asdict(cfg)),
        "numpy_rng": json.dumps(run.sampler.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
        **({"extra_rng": json.dumps(run.extra_sampler.rng.bit_generator.state)} if run.extra_sampler else {}),
        **({"cache_rng": json.dumps(run.cache.rng.bit_generator.state)} if run.cache else {}),
        "history": json.dumps(run.history),
    }, run.out / "state.pt")
    info = {"stage": cfg.stage, "preset": cfg.arch, "steps": run.step, "wall_time_s": round(run.elapsed, 1),
            "hardware": hardware(), "data": cfg.data or ["scikit-image sample photos"],
            "command": run.history[0]["command"], "history": run.history,
            "val_psnr": run.val_psnr, "val_blurred_psnr": run.blurred_psnr,
            "distilled": bool(run.teacher is not None or (run.cache is not None and cfg.distill)),
            "teacher": cfg.teacher or (run.cache.manifest.get("teacher", "") if run.cache and cfg.distill else ""),
            "train_config": dataclasses.asdict(cfg)}
    save_model(run.out / "model.safetensors", run.ema if run.ema is not None else run.model, info)


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's slice of the global batch (the same seeded draw on every rank), plus its share of
    the extra patches whose only label is the teacher's output; and the cached teacher labels of the
    batch when it comes from a label cache (else None)."""
    cfg, dd = run.cfg, run.dd
    b, e = cfg.batch_size // dd.world, cfg.kd_extra // dd.world
    if run.cache is not None:
        blurred, sharp, label = (t[dd.rank * b : (dd.rank + 1) * b].to(run.device)
                                 for t in run.cache.batch(cfg.batch_size, cfg.degrade))
        return blurred, sharp, label
    blurred, sharp = run.sampler.batch(cfg.batch_size, cfg.degrade)
    blurred, sharp = blurred[dd.rank * b : (dd.rank + 1) * b].to(run.device), sharp[dd.rank * b : (dd.rank + 1) * b]
    if run.extra_sampler is not None:
        extra, _ = run.extra_sampler.batch(cfg.kd_extra, cfg.degrade)
        blurred = torch.cat([blurred, extra[dd.rank * e : (dd.rank + 1) * e].to(run.device)])
    if cfg.channels_last:
        blurred = blurred.contiguous(memory_format=torch.channels_last)
    return blurred, sharp.to(run.device), None


def train_step(run: Run) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """One optimiser step (learning rate from the schedule, loss, backward, clipping, EMA update);
    returns the loss, its parts and the gradient norm."""
    cfg = run.cfg
    for g in run.opt.param_groups:
        g["lr"] = lr_at(run.step, cfg)
    blurred, sharp, label = next_batch(run)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    with torch.autocast(run.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
        t_out = t_feat = None
        if run.teacher is not None:
            with torch.no_grad():  # the teacher's graph is never kept
                t_out, t_feat = run.teacher(blurred, return_features=True)
        if label is not None:  # the cached label is the (slow) teacher's output for this very input
            t_out = label
        pred, s_feat = run.net(blurred, return_features=True)
        loss, parts = combined_loss(cfg.loss_weights(run.step), pred.float(), sharp,
                                    teacher_out=None if t_out is None else t_out.float(),
                                    student_feat=None if s_feat is None else s_feat.float(),
                                    teacher_feat=None if t_feat is None else t_feat.float(),
                                    adapter=run.adapter_net)
    run.opt.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.opt)
    else:
        loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip) if cfg.grad_clip > 0 else None
    if run.scaler is not None:
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()
    if run.ema is not None:
        # EMA with a warm-up of its own so early averages are not dominated by the random init
        d = min(cfg.ema, (1 + run.step) / (10 + run.step))
        with torch.no_grad():
            for pe, pm in zip(run.ema.parameters(), run.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)
    run.step += 1
    return loss, parts, gnorm


def validate_and_log(run: Run) -> None:
    """Hold-out PSNR of the EMA (or raw) weights, overall and per degradation kind."""
    val_each = validate(run.ema if run.ema is not None else run.model, run.val_blur, run.val_sharp, per_image=True)
    run.val_psnr = float(val_each.mean())
    run.write_log(event="val", step=run.step, val_psnr=run.val_psnr, val_gain=run.val_psnr - run.blurred_psnr,
                  val_gain_by_kind=gains_by_kind(val_each, run.blurred_each), elapsed_s=round(run.elapsed, 2))


def _stop_now(run: Run) -> bool:
    """The --max-minutes limit; under DDP rank 0's clock decides, so all ranks stop at one step."""
    timeout = run.cfg.max_minutes > 0 and run.elapsed > run.cfg.max_minutes * 60
    if run.dd.world > 1:
        flag = torch.tensor([float(timeout)], device=run.device if run.device.type == "cuda" else "cpu")
        dist.broadcast(flag, 0)
        timeout = bool(flag.item())
    return timeout


def setup(cfg: TrainConfig, resume: bool) -> Run:
    """Everything before the first step: config checks, process group, data, models, saved state, log."""
    cfg, state = load_state(cfg, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.arch = cfg.arch or ("nafunet" if cfg.stage == "teacher" else "student")
    check_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    dd = init_distributed(cfg.device)
    device = torch.device("cuda", dd.local_rank) if cfg.device == "cuda" and dd.world > 1 else torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    run = setup_data(cfg, dd, device)
    setup_models(run, fresh=state is None)
    if state is not None:
        restore(run, state)
    command = shlex.join(["sharpkd", *sys.argv[1:]]) if sys.argv else ""
    run.history.append({"command": command, "start_step": run.step, "end_step": run.step,
                        "threads": torch.get_num_threads(), "device": str(device), "world_size": dd.world})
    open_log(run)
    run.blurred_each = validate(torch.nn.Identity(), run.val_blur, run.val_sharp, per_image=True)
    if state is None:
        run.write_log(event="start", arch=run.arch, params=count_params(run.model),
                      macs_per_pixel=macs_per_pixel(run.model), train_photos=run.photo_counts[0],
                      val_photos=run.photo_counts[1], val_blurred_psnr=run.blurred_psnr, hardware=hardware(),
                      world_size=dd.world, global_batch=cfg.batch_size)
    return run


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a training run; returns the path of the model file.

    Under torchrun every rank runs this function. Each rank draws the same global batch from the
    shared seeded stream and trains on its own slice of it; DistributedDataParallel averages the
    gradients, so N ranks take the same steps as one process with the same global batch, and the
    saved state does not depend on the world size (a run may be resumed with any number of ranks).
    Rank 0 alone validates, logs and writes checkpoints.
    """
    run = setup(cfg, resume)
    cfg, dd = run.cfg, run.dd
    t0 = time.time() - run.elapsed
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not (progress and dd.main), desc=f"train {cfg.stage}",
               unit="step")
    steps_here, elapsed_start = 0, run.elapsed
    try:
        while run.step < cfg.steps:
            loss, parts, gnorm = train_step(run)
            steps_here += 1
            run.elapsed = time.time() - t0
            bar.update(1)
            if run.step % cfg.log_every == 0:
                loss_all = float(_all_mean(loss.detach(), dd))
                rate = steps_here * (cfg.batch_size + cfg.kd_extra) / max(1e-9, run.elapsed - elapsed_start)
                run.write_log(event="train", step=run.step, lr=run.opt.param_groups[0]["lr"], loss=loss_all, **parts,
                              grad_norm=float(gnorm) if gnorm is not None else None, samples_per_s=round(rate, 2),
                              elapsed_s=round(run.elapsed, 2))
                bar.set_postfix(loss=f"{loss_all:.4f}", val=f"{run.val_psnr:.2f}" if run.val_psnr else "-")
            timeout = _stop_now(run)
            if dd.main and (run.step % cfg.val_every == 0 or run.step == cfg.steps or timeout):
                tv = time.time()
                validate_and_log(run)
                t0 += time.time() - tv  # elapsed_s counts training only, so curves compare learning speed
            if run.step % cfg.ckpt_every == 0 or run.step == cfg.steps or timeout:
                save_checkpoint(run)
            if timeout:
                break
        if dd.world > 1:
            run.write_log(event="ddp", world_size=dd.world, step=run.step,
                          max_weight_diff_across_ranks=_ranks_agree(run.model, dd))
            dist.barrier()  # the model file is complete before any rank returns
    finally:
        bar.close()
        if run.log is not None:
            run.log.close()
        if dd.world > 1 and dist.is_initialized():
            # leaving gloo's worker threads to interpreter shutdown can abort the process
            # ("terminate called without an active exception") after a successful run
            dist.destroy_process_group()
    return run.out / "model.safetensors"
