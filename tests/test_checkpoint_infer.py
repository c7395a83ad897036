import numpy as np
import pytest
import torch

from sharpkd.checkpoint import CheckpointError, load_model, read_info, save_model
from sharpkd.infer import Sharpener, run_padded, run_tiled, tile_starts


@pytest.mark.parametrize("name", ["student", "nafunet-s", "resnet8"])
def test_checkpoint_round_trip_gives_same_output(tmp_path, name, perturbed):
    model = perturbed(name)
    path = save_model(tmp_path / "m.safetensors", model, {"steps": 7})
    loaded, info = load_model(path)
    assert info["steps"] == 7 and info["config"]
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_fp16_checkpoint_is_close(tmp_path, perturbed):
    model = perturbed("student")
    loaded, _ = load_model(save_model(tmp_path / "h.safetensors", model, half=True))
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert (model(x) - loaded(x)).abs().max() < 2e-3


def test_bad_model_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no model file"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_info(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a sharpkd model"):
        load_model(foreign)


@pytest.mark.parametrize("align", [1, 4, 8])
def test_tile_starts_cover_everything_on_the_grid(align):
    for length in (1, 50, 64, 65, 200, 513):
        spans = tile_starts(length, 64, 16, align)
        covered = np.zeros(length, bool)
        for s, e in spans:
            covered[s:e] = True
            assert s % align == 0 and e - s < 64 + align
        assert covered.all() and spans[-1][1] == length
        for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
            assert e0 - s1 >= 16


@pytest.mark.parametrize("name", ["student", "nafunet-s"])
def test_tiled_equals_untiled(name, perturbed):
    model = perturbed(name)
    m = model.config.multiple
    x = torch.rand(1, 3, 131, 157)
    full = run_padded(model, x, m)
    tiled = run_tiled(lambda t: run_padded(model, t, m), x, tile=96, overlap=64, align=m)
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max() < 1e-4


def test_sharpener_accepts_arrays_pil_and_tensors(photo, perturbed):
    from PIL import Image

    sh = Sharpener(perturbed("student"), tile=32, overlap=8)
    out = sh(photo)
    assert out.shape == photo.shape and out.dtype == np.uint8
    outf = sh(photo.astype(np.float32) / 255)
    assert outf.dtype == np.float32 and np.abs(outf * 255 - out).max() <= 1.0
    pil = sh(Image.fromarray(photo))
    assert pil.size == (photo.shape[1], photo.shape[0])
    t = sh(torch.rand(3, 21, 19))
    assert t.shape == (3, 21, 19)
    with pytest.raises(ValueError):
        sh(np.zeros((5, 5)))


def test_top_level_import():
    import sharpkd

    assert sharpkd.Sharpener is Sharpener
    with pytest.raises(AttributeError):
        sharpkd.NoSuchThing  # noqa: B018


def test_api_returns_the_kind_and_dtype_it_was_given(photo):
    from PIL import Image


    s = Sharpener.from_pretrained("student", tile=0)
    u8 = s(photo)
    assert u8.dtype == np.uint8 and u8.shape == photo.shape
    u16 = s(photo.astype(np.uint16) * 257)  # the same picture on the 16-bit scale
    assert u16.dtype == np.uint16 and np.abs(u16.astype(int) // 257 - u8.astype(int)).max() <= 1
    f32 = s(photo.astype(np.float32) / 255)
    assert f32.dtype == np.float32 and np.abs(f32 * 255 - u8).max() <= 1
    pil = s(Image.fromarray(photo))
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), u8)
    with pytest.raises(ValueError, match="uint8, uint16 or float"):
        s(photo.astype(np.int32))
