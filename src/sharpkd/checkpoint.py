"""Self-describing model files.

A model file is one ``.safetensors`` file: the weights, plus a JSON document in the safetensors
metadata under the key ``sharpkd`` with the architecture name, the config that rebuilds the network
and the training provenance (command, steps, data, wall time, hardware). Loading never unpickles
anything. Training state for ``--resume`` (optimizer, RNG) is kept separately by :mod:`sharpkd.train`
and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sharpkd.models import ARCHS, PRESETS

WEIGHTS_DIR = Path(__file__).parent / "weights"
# teacher: teacher v2 (blur estimate + deconvolution for camera shake, the network otherwise); teacher-net: that
# network alone (the live distillation teacher, exportable to ONNX)
# kstudent: the student with a Wiener step on the teacher's per-photo blur estimate (camera shake)
SHIPPED = {n: WEIGHTS_DIR / f"{n}.safetensors"
           for n in ("student", "teacher", "student-nokd", "teacher-net", "kstudent", "kstudent-nokd")}


class CheckpointError(ValueError):
    """A model file is missing, unreadable or not a sharpkd model."""


def config_to_dict(config: Any) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def parse_assignments(items: list[str], option: str = "--set") -> dict[str, str]:
    """``["field=value", ...]`` (command-line overrides) -> ``{field: value}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def replace_fields(config: Any, fields: dict[str, Any], option: str = "--set") -> Any:
    """A copy of the dataclass ``config`` with numeric ``fields`` replaced, each value (text or number) cast to
    its field's type: an int stays an int, a bool is a number (0: false), an unset optional number
    (``float | None``) takes its number type. A nested config such as the blind
    teacher's ``network`` cannot be set this way."""
    names = {f.name for f in dataclasses.fields(config)}
    typed = {}
    for key, value in fields.items():
        if key not in names:
            raise ValueError(f"{option}: {key!r} is not a field of {type(config).__name__}")
        kind = type(getattr(config, key))
        if getattr(config, key) is None:  # an optional number that is unset: the number type it may take
            hint = typing.get_type_hints(type(config)).get(key)
            kind = next((t for t in typing.get_args(hint) if t in (bool, int, float)), type(None))
        if kind not in (bool, int, float):
            raise ValueError(f"{option}: {key} is not a number field of {type(config).__name__}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{option}: {key}={value!r} is not a number") from None
        if kind is int and number != int(number):
            raise ValueError(f"{option}: {key} takes a whole number, got {value!r}")
        typed[key] = bool(number) if kind is bool else kind(number)
    return dataclasses.replace(config, **typed)


def build_model(arch: str, config: dict | Any | None = None) -> nn.Module:
    """Instantiate architecture ``arch`` from a config dataclass, a dict of its fields, or defaults."""
    if arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    cfg_cls, cls = ARCHS[arch]
    if config is None:
        config = cfg_cls()
    elif isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        unknown = set(config) - fields
        if unknown:
            raise CheckpointError(f"unknown {arch} config fields: {sorted(unknown)}")
        config = cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return cls(config=config)


def build_preset(name: str) -> tuple[str, nn.Module]:
    if name not in PRESETS:
        raise CheckpointError(f"unknown architecture preset {name!r}; choose from {sorted(PRESETS)}")
    arch, cfg = PRESETS[name]
    return arch, build_model(arch, cfg)


def arch_of(model: nn.Module) -> str:
    for name, (_, cls) in ARCHS.items():
        if type(model) is cls:
            return name
    raise CheckpointError(f"{type(model).__name__} is not a sharpkd architecture")


def save_model(path: str | Path, model: nn.Module, info: dict | None = None, half: bool = False) -> Path:
    """Write weights + description atomically (temporary file, then rename). A network trained with
    re-parameterisable branches is written collapsed (its ``deploy()`` form)."""
    path = Path(path)
    if hasattr(model, "deploy"):
        model = model.deploy()
    path.parent.mkdir(parents=True, exist_ok=True)
    # the model's own format, architecture and config always win over same-named keys of ``info``
    # (e.g. the description of the file a model was loaded from)
    doc = {**(info or {}), "format": 1, "arch": arch_of(model), "config": config_to_dict(model.config)}
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"sharpkd": json.dumps(doc)})
    os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; a model file is meant to be shared
    os.replace(tmp, path)
    return path


def resolve(name_or_path: str | Path) -> Path:
    """``student``/``teacher`` -> the shipped file; a run folder -> its ``model.safetensors``."""
    if str(name_or_path) in SHIPPED:
        p = SHIPPED[str(name_or_path)]
        if not p.exists():
            raise CheckpointError(f"the shipped {name_or_path} model is missing from {p.parent}")
        return p
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"no model file at {name_or_path} (expected 'student', 'teacher', a .safetensors "
                              "file or a training run folder)")
    return p


def read_info(name_or_path: str | Path) -> dict:
    """The JSON description stored in a model file."""
    p = resolve(name_or_path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"{p} is not a readable safetensors file: {e}") from e
    if "sharpkd" not in meta:
        raise CheckpointError(f"{p} is a safetensors file but not a sharpkd model (no 'sharpkd' metadata)")
    try:
        info = json.loads(meta["sharpkd"])
    except ValueError as e:
        raise CheckpointError(f"{p}: its sharpkd description is not valid JSON") from e
    if not isinstance(info, dict) or not isinstance(info.get("arch"), str) or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{p}: its sharpkd description lacks an architecture and config")
    return info


MAX_PARAMS = 50_000_000  # far above any sharpkd network (the teacher has 1.3M); bounds what a file can ask for


def _checked_model(p: Path, info: dict) -> nn.Module:
    """Build the described network, after checking on PyTorch's meta device (no memory) that the
    config is valid, not absurdly large, and matches the file's tensors name for name and shape."""
    try:
        with torch.device("meta"):
            probe = build_model(info["arch"], info["config"])
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile configs raise all sorts (types, ranges, shapes)
        raise CheckpointError(f"{p}: the stored config cannot build a {info['arch']} network "
                              f"({type(e).__name__})") from e
    n = sum(t.numel() for t in probe.state_dict().values())
    if n > MAX_PARAMS:
        raise CheckpointError(f"{p}: the stored config asks for {n:,} weights (more than {MAX_PARAMS:,})")
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    try:
        with safe_open(str(p), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a readable safetensors file: {e}") from e
    if stored != expected:
        diff = sorted(set(stored) ^ set(expected)) or [k for k in expected if stored[k] != expected[k]]
        raise CheckpointError(f"{p}: weights do not match the stored config (first differences: {diff[:3]})")
    return build_model(info["arch"], info["config"])


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network described by a model file, load its weights (as float32), eval mode."""
    p = resolve(name_or_path)
    info = read_info(p)
    model = _checked_model(p, info)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(p)).items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{p}: weights do not match the stored config: {e}") from e
    if hasattr(model, "attach_estimator"):  # the kernel student: its blur estimator is a shipped teacher file
        model.attach_estimator(_shared_estimator(model.config.estimator, str(device)))
    return model.to(device).eval(), info


@functools.lru_cache(maxsize=2)
def _shared_estimator(name: str, device: str) -> nn.Module:
    """The blind teacher a kernel student estimates with, loaded once per process and shared (kernel
    students never change it), so two of them estimate each photo once (see ``KernelStudent.estimate``)."""
    teacher, info = load_model(name, device)
    if info.get("arch") != "blind":
        raise CheckpointError(f"the estimator {name!r} of a kernel student is not a blind-teacher file")
    return teacher


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(model: nn.Module, size: int = 64) -> float:
    """Multiply-accumulates per input pixel, counted by PyTorch's FLOP counter on a size x size input,
    plus an estimate for the FFTs of a Wiener bank (which the counter does not see; see
    :meth:`sharpkd.models.wiener.WienerBank.macs_per_pixel`)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sharpkd.models.wiener import WienerBank

    if hasattr(model, "macs_per_pixel"):  # iterative models count themselves
        return float(model.macs_per_pixel())

    m = getattr(model.config, "multiple", 1)
    size = -(-size // m) * m
    p = next(model.parameters())
    x = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    fft = sum(b.macs_per_pixel() for b in model.modules() if isinstance(b, WienerBank))
    return fc.get_total_flops() / 2 / (size * size) + fft


def load_denoiser(name_or_path: str | Path = "teacher") -> nn.Module:
    """The FFDNet denoiser of a blind-teacher model file (default: the shipped teacher), float32,
    eval mode, gradients off."""
    model, info = load_model(name_or_path)
    if info.get("arch") != "blind":
        raise CheckpointError(f"{name_or_path} is not a blind-teacher model file (arch {info.get('arch')!r})")
    net = model.denoiser
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
