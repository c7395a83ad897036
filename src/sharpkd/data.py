"""Training data: image pools, random patches, a hold-out split and the CIFAR-10 batch format.

The training pool is small (a few hundred photos at most), so it is decoded once into memory as
uint8 arrays; patches are cut from it on the fly with random flips and 90-degree rotations, and
each patch gets its own fresh degradation from :mod:`sharpkd.degrade`. On two CPU cores this is
far faster than decoding files inside a ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sharpkd.degrade import DegradeConfig, degrade_batch

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Colour photographs that scikit-image installs with the package (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


@dataclass(eq=False)
class Photo:
    name: str
    pixels: np.ndarray  # (H, W, 3) uint8 RGB


def list_images(paths: Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """All image files under the given files/folders, sorted by path, duplicates removed."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found.extend(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(set(found))


def load_photos(paths: str | Path | Sequence[str | Path], min_size: int = 32) -> list[Photo]:
    """Decode images (RGB uint8). Unreadable files and images smaller than ``min_size`` are
    skipped with a warning; CIFAR-10 batch files (``data_batch_*``, ``test_batch``) are expanded."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    photos: list[Photo] = []
    files: list[Path] = []
    for p in map(Path, paths):
        cifar = find_cifar_batches(p)
        if cifar:
            for f in cifar:
                photos.extend(load_cifar_batch(f))
        else:
            files.extend(list_images([p]))
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            warnings.warn(f"skipping unreadable image {f}: {e}", stacklevel=2)
            continue
        if min(arr.shape[:2]) < min_size:
            warnings.warn(f"skipping {f}: {arr.shape[1]}x{arr.shape[0]} is smaller than {min_size} px", stacklevel=2)
            continue
        photos.append(Photo(str(f), arr))
    return photos


def limit_size(photo: Photo, max_side: int) -> Photo:
    """``photo`` reduced (Lanczos, aspect kept) so that its longer side is at most ``max_side``.

    Large photographs are often soft at the pixel level (lens, demosaicing, JPEG), and patches are
    drawn in proportion to area, so full-size wallpapers would dominate the draw and teach a
    network that fine detail is rare; reduced, they resemble typical photos pixel for pixel."""
    h, w = photo.pixels.shape[:2]
    if max(h, w) <= max_side:
        return photo
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return Photo(photo.name, np.asarray(Image.fromarray(photo.pixels).resize(size, Image.LANCZOS)))


def skimage_photos() -> list[Photo]:
    """The colour sample photographs bundled with scikit-image: the fallback training pool."""
    return [Photo(f"skimage:{n}", np.ascontiguousarray(_skimage_photo(n)[..., :3])) for n in SKIMAGE_PHOTOS]


# --------------------------------------------------------------------------------------------
# CIFAR-10 "python version" batches
# --------------------------------------------------------------------------------------------
class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds what a CIFAR batch holds: dicts, lists, bytes and NumPy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def find_cifar_batches(path: Path) -> list[Path]:
    """CIFAR-10 batch files at ``path`` (a batch file, or a folder such as ``cifar-10-batches-py``)."""
    names = ("data_batch_", "test_batch")
    if path.is_file() and path.name.startswith(names):
        return [path]
    if path.is_dir():
        return sorted(f for f in path.iterdir() if f.is_file() and f.name.startswith(names) and not f.suffix)
    return []


def load_cifar_batch(path: str | Path) -> list[Photo]:
    """Read one CIFAR-10 python batch: a pickled dict with ``data`` (N, 3072) uint8, rows R-G-B planes."""
    with open(path, "rb") as fh:
        d = _CifarUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    if data is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no 'data' entry)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    imgs = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return [Photo(f"{Path(path).name}[{i}]", np.ascontiguousarray(im)) for i, im in enumerate(imgs)]


# --------------------------------------------------------------------------------------------
# Split and patches
# --------------------------------------------------------------------------------------------
def split_holdout(photos: Sequence[Photo], val_fraction: float = 0.1) -> tuple[list[Photo], list[Photo]]:
    """Deterministic train/validation split by a hash of each photo's name (stable across runs and
    independent of the order or number of other files). At least one photo goes to each side."""
    if len(photos) < 2:
        return list(photos), list(photos)
    score = [int(hashlib.sha1(p.name.encode()).hexdigest()[:8], 16) / 2**32 for p in photos]
    is_val = [s < val_fraction for s in score]
    if not any(is_val):
        is_val[int(np.argmin(score))] = True
    if all(is_val):  # e.g. two photos whose hashes both fall below val_fraction
        is_val[int(np.argmax(score))] = False
    train = [p for p, v in zip(photos, is_val, strict=True) if not v]
    val = [p for p, v in zip(photos, is_val, strict=True) if v]
    return train, val


class PatchSampler:
    """Random sharp patches from a pool of photos, with flips and 90-degree rotations.

    Photos are chosen with probability proportional to their area; of ``tries`` random crops the
    most textured is kept; patches larger than a photo are taken at the photo's own size after
    reflect padding.
    """

    def __init__(self, photos: Sequence[Photo], patch_size: int, seed: int = 0, tries: int = 2):
        if not photos:
            raise ValueError("no training images: give --data folders with images in them")
        self.photos = list(photos)
        self.patch_size = patch_size
        self.tries = max(1, tries)
        self.rng = np.random.default_rng(seed)
        area = np.array([p.pixels.shape[0] * p.pixels.shape[1] for p in self.photos], dtype=np.float64)
        self.prob = area / area.sum()

    def random_crop(self, arr: np.ndarray) -> np.ndarray:
        ps = self.patch_size
        h, w = arr.shape[:2]
        if h < ps or w < ps:
            arr = np.pad(arr, ((0, max(0, ps - h)), (0, max(0, ps - w)), (0, 0)), mode="reflect")
            h, w = arr.shape[:2]
        best, best_energy = None, -1.0
        # Of `tries` random crops keep the one with the most gradient energy: flat sky and
        # out-of-focus backgrounds teach a sharpening network little.
        for _ in range(self.tries):
            y = self.rng.integers(0, h - ps + 1)
            x = self.rng.integers(0, w - ps + 1)
            p = arr[y : y + ps, x : x + ps]
            g = p[..., 1].astype(np.float32)
            energy = float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
            if energy > best_energy:
                best, best_energy = p, energy
        p = best
        if self.rng.random() < 0.5:
            p = p[:, ::-1]
        return np.rot90(p, k=int(self.rng.integers(4)))

    def sharp_batch(self, batch_size: int) -> torch.Tensor:
        """(B, 3, P, P) float32 in [0, 1]."""
        idx = self.rng.choice(len(self.photos), size=batch_size, p=self.prob)
        arr = np.stack([self.random_crop(self.photos[i].pixels) for i in idx])
        return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()

    def batch(self, batch_size: int, degrade: DegradeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(blurred, sharp) pair of (B, 3, P, P) tensors, each patch freshly degraded."""
        sharp = self.sharp_batch(batch_size)
        return degrade_batch(sharp, degrade, self.rng), sharp
