"""Reading and writing photos so that what comes out matches what went in.

``read_image`` applies the EXIF orientation, keeps the alpha channel aside (it is never sharpened),
remembers whether the image was grayscale, its format, EXIF block and ICC profile, and returns RGB
float32 in [0, 1]. ``write_image`` puts all of that back: same mode, same format (chosen by the
output's extension), EXIF (with orientation reset, since the pixels are now upright) and ICC.
"""

from __future__ import annotations

import io
import os
import tempfile
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


class ImageTooLargeError(ImageReadError):
    """The image's header declares more pixels than allowed (refused before any decoding)."""


# The photo formats sharpkd decodes. Pillow would otherwise try every plugin it has, including
# EPS/PostScript (handed to Ghostscript), whatever the file is called.
READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG covers MPO (phone photos)


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
    # a JPEG file's compression: the median step of its luma quantisation table (None: not a JPEG); the blind
    # models raise their noise floor by it (sharpkd.deblur.teacher.BlindTeacherConfig.jpeg_noise)
    jpeg_step: float | None = None

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
            with Image.open(source, formats=READ_FORMATS) as im:
                if im.width * im.height > max_pixels:  # the header's size: nothing is decoded yet
                    raise ImageTooLargeError(f"{name}: {im.width}x{im.height} is larger than {max_pixels:,} pixels")
                # phone JPEGs are often MPO (a photo plus previews): the first frame is the photo
                if im.format != "MPO" and getattr(im, "is_animated", False) and not first_frame:
                    raise UnsupportedImageError(f"{name}: animated images are not supported "
                                                "(--first-frame sharpens the first frame)")
                if im.mode not in SUPPORTED_MODES:
                    raise UnsupportedImageError(f"{name}: pixel mode {im.mode} is not supported")
                fmt = "JPEG" if im.format == "MPO" else im.format
                step = jpeg_step(im)  # before exif_transpose, whose copy forgets the tables
                # 16-bit colour: Pillow would decode it to 8 bit, so OpenCV reads those pixels below
                # (checked before getexif(), which may decode the image and forget its tiles)
                deep = (im.mode in ("RGB", "RGBA") and fmt in ("PNG", "TIFF")
                        and any(";16" in str(t.args) for t in im.tile))
                info = {k: im.info[k] for k in ("icc_profile",) if im.info.get(k)}
                exif = im.getexif()
                orientation = int(exif.get(0x0112, 1) or 1) if exif else 1
                if not deep:  # 16-bit colour pixels are decoded (and turned upright) by OpenCV below
                    im = ImageOps.exif_transpose(im)
                    im.load()
                if exif and fmt != "TIFF":  # a TIFF's "EXIF" is its own tag directory (sizes, layout): not carried
                    exif[0x0112] = 1  # orientation: pixels are upright now
                    info["exif"] = exif.tobytes()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires while opening headers that declare several hundred megapixels
        raise ImageTooLargeError(f"{name}: declares more than {max_pixels:,} pixels (far more: Pillow refused "
                                 "to open it)") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: cannot read image (not an image file, or not one of the supported formats: "
                             f"{', '.join(READ_FORMATS)})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile files make Pillow raise many kinds (struct, zlib, key errors)
        raise ImageReadError(f"{name}: cannot read image ({type(e).__name__}: {str(e)[:120]})") from e
    try:
        rgb, alpha, mode = _pixels(im, source, name, deep, orientation, info)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a palette transparency longer than the palette
        raise ImageReadError(f"{name}: cannot read image ({type(e).__name__}: {str(e)[:120]})") from e
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    np.clip(rgb, 0, 1, out=rgb)
    return LoadedImage(rgb, alpha, mode, fmt, info, step)


def jpeg_step(im: Image.Image) -> float | None:
    """The median step of a JPEG's luma quantisation table (the 64 divisors of its DCT coefficients, in 8-bit
    levels): 6 at quality 95, 11 at 90, 17 at 85, 28.5 at 75 with Pillow's (libjpeg's) tables. None for other images
    and for tables that are not 64 positive numbers."""
    tables = getattr(im, "quantization", None)
    if not isinstance(tables, dict) or not tables:
        return None
    luma = tables.get(0, next(iter(tables.values())))
    try:
        steps = [int(v) for v in luma]
    except (TypeError, ValueError):
        return None
    if len(steps) != 64 or min(steps) < 1:
        return None
    return float(np.median(steps))


def _pixels(im: Image.Image, source, name: str, deep: bool, orientation: int,
            info: dict) -> tuple[np.ndarray, np.ndarray | None, str]:
    """RGB float pixels, the alpha channel (or None) and the mode to write back."""
    mode = im.mode
    alpha = None
    if deep:
        arr = _orient(_decode16(source, name), orientation)
        alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
        rgb = arr[..., :3].astype(np.float32) / 65535.0
        mode = "RGBA;16" if alpha is not None else "RGB;16"
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32) / 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        rgb = np.repeat((arr / scale)[..., None], 3, axis=2)
    else:
        if mode == "CMYK":
            warnings.warn(f"{name}: CMYK image converted to RGB", stacklevel=3)
            im = _cmyk_to_srgb(im, info.pop("icc_profile", None))  # the CMYK profile no longer applies
        rgb = np.asarray(im.convert("RGB")).astype(np.float32)
        rgb /= 255.0  # in place: no second full-size float copy for large photos
    return rgb, alpha, mode


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK pixels as sRGB: through the embedded profile when there is a usable one (LittleCMS),
    otherwise Pillow's plain conversion."""
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain conversion
            pass
    return im.convert("RGB")


def _decode16(source: Path | BinaryIO, name: str) -> np.ndarray:
    """16-bit RGB(A) pixels as (H, W, 3|4) uint16 in RGB order, decoded by OpenCV."""
    import cv2

    if isinstance(source, Path):
        data = source.read_bytes()
    else:
        source.seek(0)
        data = source.read()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageReadError(f"{name}: cannot read its 16-bit colour pixels")
    return np.ascontiguousarray(arr[..., [2, 1, 0, 3][: arr.shape[2]]])


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as ImageOps.exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _png_with_metadata(data: bytes, info: dict) -> bytes:
    """Insert iCCP (ICC profile) and eXIf chunks after a PNG's IHDR chunk."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    extra = b""
    if info.get("icc_profile"):
        extra += chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(info["icc_profile"]))
    if info.get("exif"):
        exif = info["exif"]
        extra += chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    return data[:33] + extra + data[33:]  # 8-byte signature + 25-byte IHDR chunk


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> rounded uint8 with a single float temporary (large photos)."""
    tmp = np.clip(rgb, 0, 1)
    tmp *= 255
    tmp += 0.5
    return tmp.astype(np.uint8)


def to_pil(img: LoadedImage) -> Image.Image:
    """Back to a PIL image in (nearly) the original mode."""
    rgb8 = _to_uint8(img.rgb)
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
        a = img.alpha if img.alpha.dtype == np.uint8 else (img.alpha // 257).astype(np.uint8)
        out.putalpha(Image.fromarray(a))
    return out


def write_image(path: str | Path, img: LoadedImage, quality: int = 95) -> None:
    """Write atomically (a partial file never replaces an existing one); format from the extension."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported output extension (use one of {sorted(FORMATS)})")
    # a fresh name created exclusively (O_EXCL, never an existing file or a planted link), short enough
    # for any output name; os.replace swaps it in atomically (a link at ``path`` is replaced, not followed)
    fd, tmp_name = tempfile.mkstemp(prefix=".sharpkd-", suffix=".partial", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            save_image(f, img, fmt, quality)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def encode_image(img: LoadedImage, fmt: str, quality: int = 95) -> bytes:
    """The image as the bytes of a file in PIL format ``fmt`` (PNG, JPEG, WEBP, TIFF, BMP)."""
    buf = io.BytesIO()
    save_image(buf, img, fmt, quality)
    return buf.getvalue()


def save_image(f: BinaryIO, img: LoadedImage, fmt: str, quality: int = 95) -> None:
    """Encode ``img`` into an open binary file, restoring mode, alpha, EXIF and ICC profile."""
    if fmt not in FORMATS.values():
        raise ValueError(f"unsupported output format {fmt!r} (use one of {sorted(set(FORMATS.values()))})")
    if img.mode in ("RGB;16", "RGBA;16") and fmt in ("PNG", "TIFF"):  # 16-bit colour stays 16-bit (OpenCV encodes it)
        import cv2

        arr = (np.clip(img.rgb, 0, 1) * 65535 + 0.5).astype(np.uint16)[..., ::-1]
        if img.alpha is not None:
            a = img.alpha.astype(np.uint16) * (257 if img.alpha.dtype == np.uint8 else 1)
            arr = np.dstack([arr, a])
        ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tif", np.ascontiguousarray(arr))
        if not ok:
            raise ValueError(f"could not encode a 16-bit {fmt}")
        f.write(_png_with_metadata(buf.tobytes(), img.info) if fmt == "PNG" else buf.tobytes())
        return
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
