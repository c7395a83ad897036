"""A cache of teacher labels, so that distilling a student never waits on a slow teacher.

``label_photos`` degrades each training photo as a whole (one random blur, noise level and JPEG
quality from :class:`sharpkd.degrade.DegradeConfig`), lets the teacher restore the whole photo (the
blind teacher estimates its kernel from all of it, which a small patch could not support), and cuts
``per_photo`` aligned patches of (blurred, teacher output, ground truth), stored as uint8 in one
``shard-NNNNN.npz`` per photo. Each shard is written atomically and its seed depends only on the
photo's index, so an interrupted run resumes where it stopped (existing shards are kept) and gives
the same cache as an uninterrupted one.

``LabelCache`` loads a folder of shards and draws training batches from it: ``sharpkd train student
--kd-cache DIR`` trains on the cached patches, with the ground truth for the reconstruction terms and
the teacher's output for the output-distillation term.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sharpkd.data import Photo, limit_size
from sharpkd.degrade import DegradeConfig, compress_some, degrade_batch

MANIFEST = "labels.json"


def _to_u8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> (3, H, W) uint8."""
    return (x[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def label_photo(teacher, photo: Photo, index: int, *, per_photo: int, patch: int, degrade: DegradeConfig,
                seed: int, max_side: int) -> dict[str, np.ndarray] | None:
    """The labelled patches of one photo (arrays of shape (N, 3, P, P), uint8), or None when the photo
    is smaller than a patch."""
    rng = np.random.default_rng([seed, index])
    if max_side:
        photo = limit_size(photo, max_side)
    h, w = photo.pixels.shape[:2]
    if min(h, w) < patch:
        return None
    sharp = torch.from_numpy(np.array(photo.pixels)).permute(2, 0, 1)[None].float() / 255
    blurred = degrade_batch(sharp, degrade, rng)
    label = teacher.sharpen_tensor(blurred)
    ys = rng.integers(0, h - patch + 1, size=per_photo)
    xs = rng.integers(0, w - patch + 1, size=per_photo)
    out = {}
    for key, img in (("blurred", blurred), ("label", label), ("sharp", sharp)):
        full = _to_u8(img)
        out[key] = np.stack([full[:, y : y + patch, x : x + patch] for y, x in zip(ys, xs, strict=True)])
    return out


def label_photos(teacher, teacher_name: str, photos: Sequence[Photo], out_dir: str | Path, *, per_photo: int = 8,
                 patch: int = 128, degrade: DegradeConfig | None = None, seed: int = 0, max_side: int = 768,
                 rounds: int = 1, progress: bool = True) -> dict:
    """Label every photo into ``out_dir`` (resumable); returns the manifest. ``teacher``: a
    :class:`sharpkd.infer.Sharpener`. With ``rounds`` > 1 every photo is labelled that many times,
    each time with another random degradation (round r of photo i is shard ``r * len(photos) + i``,
    so a folder made with fewer rounds is kept and extended)."""
    from tqdm.auto import tqdm

    degrade = degrade or DegradeConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"teacher": teacher_name, "per_photo": per_photo, "patch": patch, "seed": seed, "max_side": max_side,
                "degrade": asdict(degrade), "photos": [p.name for p in photos]}
    manifest_path = out / MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if old and {k: old.get(k) for k in settings} != json.loads(json.dumps(settings)):
        raise ValueError(f"{out} holds labels made with other settings (teacher, photos, patches or "
                         "degradations); choose another folder")
    rounds = max(rounds, old.get("rounds", 1))  # never forget labelled rounds
    _atomic_write(manifest_path, (json.dumps({**settings, "rounds": rounds}, indent=1) + "\n").encode())
    done = 0
    todo = [(r * len(photos) + i, photo) for r in range(rounds) for i, photo in enumerate(photos)]
    for i, photo in tqdm(todo, desc="label", unit="photo", disable=not progress):
        shard = out / f"shard-{i:05d}.npz"
        if shard.exists():
            done += 1
            continue
        arrays = label_photo(teacher, photo, i, per_photo=per_photo, patch=patch, degrade=degrade, seed=seed,
                             max_side=max_side)
        if arrays is None:
            continue
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _atomic_write(shard, buf.getvalue())
        done += 1
    return {**settings, "rounds": rounds, "shards": done}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class LabelCache:
    """All shards of a label folder in memory; ``batch`` draws (blurred, sharp, teacher label) patches,
    each randomly flipped and rotated (the same transform for the three), as float tensors in [0, 1]."""

    def __init__(self, folder: str | Path, seed: int = 0):
        folder = Path(folder)
        shards = sorted(folder.glob("shard-*.npz"))
        if not shards:
            raise ValueError(f"no labelled patches in {folder} (make them with `sharpkd label`)")
        parts: dict[str, list[np.ndarray]] = {"blurred": [], "label": [], "sharp": []}
        for s in shards:
            with np.load(s, allow_pickle=False) as z:
                for k in parts:
                    parts[k].append(z[k])
        self.arrays = {k: np.concatenate(v) for k, v in parts.items()}
        self.manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).exists() else {}
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.arrays["sharp"])

    def batch(self, n: int, degrade: DegradeConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` random patches; with ``degrade``, its ``jpeg_prob`` share of the blurred patches saved as JPEGs
        and decoded (:func:`sharpkd.degrade.compress_some`): sharp patch and teacher label stay the lossless
        patch's, so the student learns to undo the compression too."""
        idx = self.rng.integers(0, len(self), size=n)
        flips, rots = self.rng.random(n) < 0.5, self.rng.integers(0, 4, size=n)

        def take(key: str) -> torch.Tensor:
            out = []
            for i, f, r in zip(idx, flips, rots, strict=True):
                a = self.arrays[key][i]
                a = a[:, :, ::-1] if f else a
                out.append(np.rot90(a, k=int(r), axes=(1, 2)))
            return torch.from_numpy(np.ascontiguousarray(np.stack(out))).float() / 255

        blurred = take("blurred")
        if degrade is not None:
            blurred = compress_some(blurred, degrade, self.rng)
        return blurred, take("sharp"), take("label")
