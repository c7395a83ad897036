"""Reading and writing photos so that what comes out matches what went in.

``read_image`` applies the EXIF orientation, keeps the alpha channel aside (it is never sharpened),
remembers whether the image was grayscale, its format, EXIF block and ICC profile, and returns RGB
float32 in [0, 1]. ``write_image`` puts all of that back: same mode, same format (chosen by the
output's extension), EXIF (with orientation reset, since the pixels are now upright) and ICC.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs outright instead of Pillow's warning-then-error behaviour.
MAX_PIXELS = 100_000_000

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}


class ImageReadError(ValueError):
    """The file is missing, not an image, truncated, or too large."""


class UnsupportedImageError(ImageReadError):
    """A readable image of a kind sharpkd does not process (animation, unusual pixel mode)."""


# Pixel modes read as they are (grayscale, 16-bit, palette, alpha) or converted (CMYK, YCbCr, ...).
SUPPORTED_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                   "I", "I;16", "I;16B", "I;16L"}


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None = None  # (H, W) original alpha channel, untouched
    mode: str = "RGB"  # the original PIL mode
    format: str | None = None
    info: dict = field(default_factory=dict)  # exif / icc_profile bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def read_image(source: str | Path | BinaryIO, name: str | None = None, max_pixels: int = MAX_PIXELS,
               first_frame: bool = False) -> LoadedImage:
    """Decode a file (a path, or a binary file object such as an upload) into a :class:`LoadedImage`.

    Raises :class:`ImageReadError` for missing, unreadable, truncated or oversized files and
    :class:`UnsupportedImageError` for animations and pixel modes that are not photographs.
    ``name`` is used in messages only (never as a path). ``first_frame`` reads the first frame of
    an animation instead of refusing it.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        source = path
    name = name or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.width * im.height > max_pixels:
                    raise ImageReadError(f"{name}: {im.width}x{im.height} is larger than {max_pixels:,} pixels")
                # phone JPEGs are often MPO (a photo plus previews): the first frame is the photo
                if im.format != "MPO" and getattr(im, "is_animated", False) and not first_frame:
                    raise UnsupportedImageError(f"{name}: animated images are not supported "
                                                "(--first-frame sharpens the first frame)")
                if im.mode not in SUPPORTED_MODES:
                    raise UnsupportedImageError(f"{name}: pixel mode {im.mode} is not supported")
                fmt = "JPEG" if im.format == "MPO" else im.format
                info = {k: im.info[k] for k in ("icc_profile",) if im.info.get(k)}
                exif = im.getexif()
                im = ImageOps.exif_transpose(im)
                im.load()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: cannot read image (not an image file, or an unsupported format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: cannot read image ({e})") from e
    if exif and fmt != "TIFF":  # a TIFF's "EXIF" is its own tag directory (sizes, layout): not carried
        exif[0x0112] = 1  # orientation: pixels are upright now
        info["exif"] = exif.tobytes()
    mode = im.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32) / 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        rgb = np.repeat((arr / scale)[..., None], 3, axis=2)
    else:
        if mode == "CMYK":
            warnings.warn(f"{name}: CMYK image converted to RGB", stacklevel=2)
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(np.ascontiguousarray(rgb.clip(0, 1)), alpha, mode, fmt, info)


def to_pil(img: LoadedImage) -> Image.Image:
    """Back to a PIL image in (nearly) the original mode."""
    rgb8 = (np.clip(img.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    mode = img.mode
    if mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I"):
        y = Image.fromarray(rgb8).convert("L")
        if mode.startswith("I"):
            luma = np.clip(img.rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 0, 1)
            return Image.fromarray((luma * 65535 + 0.5).astype(np.uint16))
        if img.alpha is not None:
            y.putalpha(Image.fromarray(img.alpha))
        return y
    out = Image.fromarray(rgb8)
    if img.alpha is not None:
        out.putalpha(Image.fromarray(img.alpha))
    return out


def write_image(path: str | Path, img: LoadedImage, quality: int = 95) -> None:
    """Write atomically (a partial file never replaces an existing one); format from the extension."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported output extension (use one of {sorted(FORMATS)})")
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            save_image(f, img, fmt, quality)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def encode_image(img: LoadedImage, fmt: str, quality: int = 95) -> bytes:
    """The image as the bytes of a file in PIL format ``fmt`` (PNG, JPEG, WEBP, TIFF, BMP)."""
    buf = io.BytesIO()
    save_image(buf, img, fmt, quality)
    return buf.getvalue()


def save_image(f: BinaryIO, img: LoadedImage, fmt: str, quality: int = 95) -> None:
    """Encode ``img`` into an open binary file, restoring mode, alpha, EXIF and ICC profile."""
    if fmt not in FORMATS.values():
        raise ValueError(f"unsupported output format {fmt!r} (use one of {sorted(set(FORMATS.values()))})")
    pil = to_pil(img)
    if fmt in ("JPEG", "BMP") and pil.mode in ("RGBA", "LA"):
        pil = pil.convert("RGB" if pil.mode == "RGBA" else "L")
    kwargs: dict = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and "icc_profile" in img.info:
        kwargs["icc_profile"] = img.info["icc_profile"]
    if fmt in ("JPEG", "PNG", "WEBP") and "exif" in img.info:
        kwargs["exif"] = img.info["exif"]
    pil.save(f, format=fmt, **kwargs)
