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
