import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from sharpkd.imageio import ImageReadError, read_image, write_image


def test_alpha_is_kept_untouched(tmp_path, photo):
    alpha = np.random.default_rng(0).integers(0, 256, photo.shape[:2], dtype=np.uint8)
    rgba = np.dstack([photo, alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.rgb.shape == photo.shape and np.array_equal(img.alpha, alpha)
    img.rgb = 1.0 - img.rgb  # whatever happens to the colour...
    write_image(tmp_path / "o.png", img)
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], alpha)  # ...the alpha channel comes back as it was


def test_exif_orientation_is_applied_and_reset(tmp_path, photo):
    im = Image.fromarray(photo)  # 53 wide x 37 high
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    exif[0x010F] = "TestCam"  # camera make, to check EXIF is carried over
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    img = read_image(tmp_path / "r.jpg")
    assert img.rgb.shape[:2] == (53, 37)  # upright: now 37 wide x 53 high
    write_image(tmp_path / "o.jpg", img)
    out_exif = Image.open(tmp_path / "o.jpg").getexif()
    assert out_exif.get(0x0112) == 1 and out_exif.get(0x010F) == "TestCam"
    assert Image.open(tmp_path / "o.jpg").size == (37, 53)


def test_icc_profile_is_carried_over(tmp_path, photo):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo).save(tmp_path / "c.png", icc_profile=icc)
    write_image(tmp_path / "o.png", read_image(tmp_path / "c.png"))
    assert Image.open(tmp_path / "o.png").info.get("icc_profile") == icc


def test_grayscale_and_16_bit(tmp_path, photo):
    Image.fromarray(photo[..., 1]).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.rgb.shape == photo.shape and img.mode == "L"
    write_image(tmp_path / "g2.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g2.png")), photo[..., 1])
    deep = (photo[..., 0].astype(np.uint16) * 257 + 3)
    Image.fromarray(deep).save(tmp_path / "d.png")
    img16 = read_image(tmp_path / "d.png")
    write_image(tmp_path / "d2.png", img16)
    back = np.asarray(Image.open(tmp_path / "d2.png"))
    assert back.dtype in (np.uint16, np.int32) and np.abs(back.astype(int) - deep).max() <= 1


def test_unreadable_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "none.png")
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_colour_stays_16_bit(tmp_path, photo, ext):
    """16-bit RGB(A) PNG/TIFF in -> 16-bit out, processed in float (not truncated to 8 bit first);
    a 16-bit alpha channel comes back bit for bit."""
    import cv2

    from sharpkd.cli import main

    rng = np.random.default_rng(5)
    rgb16 = photo.astype(np.uint16) * 257 + rng.integers(0, 257, photo.shape).astype(np.uint16)  # uses all 16 bits
    alpha16 = rng.integers(0, 65536, photo.shape[:2]).astype(np.uint16)
    src = tmp_path / f"deep.{ext}"
    cv2.imwrite(str(src), np.dstack([rgb16[..., ::-1], alpha16]))
    img = read_image(src)
    assert img.mode == "RGBA;16" and np.abs(img.rgb * 65535 - rgb16).max() < 0.5
    out = tmp_path / "out"
    assert main(["-q", "sharpen", str(src), "-o", str(out), "--model", "student"]) == 0
    back = cv2.imread(str(out / src.name), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (*photo.shape[:2], 4)
    assert np.array_equal(back[..., 3], alpha16)
    colour = back[..., :3]
    assert (colour % 257 != 0).mean() > 0.5  # real 16-bit values, not 8-bit ones scaled up
    assert np.abs(colour[..., ::-1].astype(float) / 257 - photo).mean() < 20  # and still the same picture


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _hostile_pngs() -> dict[str, bytes]:
    """PNGs with malformed ancillary chunks, as an attacker (or a broken encoder) writes them."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    head, rest = png[:33], png[33:]
    iend = rest.rindex(b"IEND") - 4
    pal = _io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).convert("P").save(pal, "PNG")
    p = pal.getvalue()
    plte_end = p.index(b"IDAT") - 4
    return {
        "4-byte eXIf": head + _png_chunk(b"eXIf", b"MM\x00\x2a") + rest,
        "empty iCCP after IDAT": png[:33 + iend] + _png_chunk(b"iCCP", b"") + rest[iend:],
        "300-byte tRNS": p[:plte_end] + _png_chunk(b"tRNS", bytes(300)) + p[plte_end:],
    }


@pytest.mark.parametrize("case", list(_hostile_pngs()))
def test_malformed_png_chunks_are_clear_errors_or_read(case):
    """Either the pixels are read or an ImageReadError says why; never another exception."""
    data = _hostile_pngs()[case]
    try:
        img = read_image(io.BytesIO(data), name="x.png")
    except ImageReadError as e:
        assert "x.png" in str(e)
    else:
        assert img.rgb.shape == (16, 16, 3)


def test_only_photo_formats_are_decoded_and_declared_size_is_checked_first(tmp_path):
    from sharpkd.imageio import ImageTooLargeError

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageReadError, match="supported formats"):
        read_image(io.BytesIO(eps), name="photo.png")  # never handed to Ghostscript
    # a 37-byte GIF that declares 9000 x 9000 pixels is refused from its header
    gif = b"GIF89a" + (9000).to_bytes(2, "little") * 2 + b"\x00\x00\x00" + b",\x00\x00\x00\x00" \
        + (9000).to_bytes(2, "little") * 2 + b"\x00\x02\x02D\x01\x00;"
    assert len(gif) < 40
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        read_image(io.BytesIO(gif), name="bomb.gif", max_pixels=40_000_000)


def test_writing_never_touches_other_files_and_takes_long_names(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "in.png")
    img = read_image(tmp_path / "in.png")
    # the old temporary name was ".NAME.partial" beside the output: a file or a planted link of that
    # name was overwritten or deleted; now the temporary file is fresh (O_EXCL) and randomly named
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".a.png.partial").write_bytes(b"an input")
    (tmp_path / ".b.png.partial").symlink_to(victim)
    write_image(tmp_path / "a.png", img)
    write_image(tmp_path / "b.png", img)
    assert (tmp_path / ".a.png.partial").read_bytes() == b"an input" and victim.read_text() == "keep me"
    long = tmp_path / ("x" * 251 + ".png")  # 255 bytes: the longest name most file systems allow
    write_image(long, img)
    assert read_image(long).rgb.shape == img.rgb.shape
    assert sorted(p.name for p in tmp_path.glob(".sharpkd-*")) == []  # no temporary file left behind
    assert (long.stat().st_mode & 0o777) != 0o600  # outputs get the usual permissions, not mkstemp's


def test_cmyk_jpeg_comes_back_rgb_without_its_cmyk_profile(tmp_path):
    cmyk = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 4), dtype=np.uint8), "CMYK")
    # any profile will do to mark the file; a CMYK profile must not stay on RGB pixels
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk.save(tmp_path / "c.jpg", icc_profile=icc)
    with pytest.warns(UserWarning, match="CMYK"):
        img = read_image(tmp_path / "c.jpg")
    assert "icc_profile" not in img.info
    write_image(tmp_path / "out.jpg", img)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB" and not out.info.get("icc_profile")
