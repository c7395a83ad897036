from pathlib import Path

import numpy as np
import pytest
import torch

from sharpkd.checkpoint import CheckpointError, load_model, parse_assignments, read_info, replace_fields, save_model
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


def test_command_line_overrides_take_each_fields_type_and_refuse_the_rest():
    """parse_assignments + replace_fields (the benchmarks' and tools' ``--set FIELD=VALUE``)."""
    from sharpkd.deblur.teacher import BlindTeacherConfig

    cfg = BlindTeacherConfig()
    new = replace_fields(cfg, parse_assignments(["shake_average=1", " refine_rounds = 2", "lam=0.5"]))
    assert new.shake_average is True and new.refine_rounds == 2 and type(new.refine_rounds) is int
    assert new.lam == 0.5 and new.kernel_size == cfg.kernel_size
    assert cfg.shake_average is False and cfg.refine_rounds == 1  # a copy; the config itself is unchanged
    assert replace_fields(new, {"shake_average": "0"}).shake_average is False
    from sharpkd.models.kstudent import KernelStudentConfig  # an unset optional number takes its number type

    assert replace_fields(KernelStudentConfig(), {"round_balance": "0.05"}).round_balance == 0.05
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_assignments(["lam"])
    for fields, message in [({"nope": "1"}, "not a field"), ({"refine_rounds": "1.5"}, "whole number"),
                            ({"lam": "abc"}, "not a number"), ({"network": "1"}, "not a number field")]:
        with pytest.raises(ValueError, match=message):
            replace_fields(cfg, fields)


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


def test_dihedral_inverse_undoes_each_transform():
    from sharpkd.infer import dihedral

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    outs = [dihedral(x, k) for k in range(8)]
    for k, y in enumerate(outs):
        assert torch.equal(dihedral(y, k, inverse=True), x)
    # the eight transforms are distinct
    assert len({tuple(y.flatten().tolist()) + tuple(y.shape) for y in outs}) == 8


class _Shift(torch.nn.Module):
    """Not flip-equivariant: moves the image one pixel right (zero fill); or the identity."""

    def __init__(self, shift: bool = True):
        super().__init__()
        self.shift = shift
        self.config = type("Config", (), {"multiple": 1})()

    def forward(self, x):
        return torch.nn.functional.pad(x, (1, 0))[..., :-1] if self.shift else x


def test_self_ensemble_averages_the_transformed_runs():
    x = torch.rand(1, 3, 9, 13)
    ident = Sharpener(_Shift(shift=False), tile=0, ensemble=8)
    assert torch.allclose(ident.sharpen_tensor(x), x, atol=1e-6)  # every transform is undone
    plain = Sharpener(_Shift(), tile=0).sharpen_tensor(x)
    ens = Sharpener(_Shift(), tile=0, ensemble=8).sharpen_tensor(x)
    # x8 = half the runs shift along width (right, left), half along height (down, up)
    right = torch.nn.functional.pad(x, (1, 0))[..., :-1]
    left = torch.nn.functional.pad(x, (0, 1))[..., 1:]
    down = torch.nn.functional.pad(x, (0, 0, 1, 0))[..., :-1, :]
    up = torch.nn.functional.pad(x, (0, 0, 0, 1))[..., 1:, :]
    assert torch.allclose(plain, right)
    assert torch.allclose(ens, (right + left + down + up) / 4, atol=1e-6)
    ens2 = Sharpener(_Shift(), tile=0, ensemble=2).sharpen_tensor(x)
    assert torch.allclose(ens2, (right + left) / 2, atol=1e-6)


def test_self_ensemble_with_tiles_and_bad_sizes(perturbed):
    model = perturbed("student")
    x = torch.rand(1, 3, 131, 157)
    a = Sharpener(model, tile=0, ensemble=4).sharpen_tensor(x)
    b = Sharpener(model, tile=96, overlap=64, ensemble=4).sharpen_tensor(x)
    assert a.shape == x.shape and (a - b).abs().max() < 1e-4
    with pytest.raises(ValueError, match="ensemble"):
        Sharpener(model, ensemble=3)


def test_model_spec_parses_ensemble():
    from sharpkd.evaluate import parse_model_spec

    assert parse_model_spec("teacher@x8") == ("teacher", 8)
    assert parse_model_spec("runs/a@b/model.safetensors") == ("runs/a@b/model.safetensors", None)
    assert parse_model_spec("student") == ("student", None)
    assert parse_model_spec("kstudent@x1") == ("kstudent", 1)


def test_average_models_tool(tmp_path, perturbed, load_script):
    """tools/average_models.py: the plain mean of each weight, provenance kept, mismatches refused."""
    mod = load_script("tools/average_models.py")
    torch.manual_seed(0)
    a, b = perturbed("student"), perturbed("student")
    pa = save_model(tmp_path / "a.safetensors", a, {"steps": 5, "stage": "student"})
    pb = save_model(tmp_path / "b.safetensors", b, {"steps": 9})
    out = mod.average([str(pa), str(pb)], tmp_path / "avg")
    avg, info = load_model(out)
    for k, v in avg.state_dict().items():
        assert torch.allclose(v, (a.state_dict()[k] + b.state_dict()[k]) / 2, atol=1e-7)
    assert info["steps"] == 5 and len(info["averaged_from"]) == 2 and info["notes"]
    with pytest.raises(FileExistsError):
        mod.average([str(pa), str(pb)], tmp_path / "avg")
    pc = save_model(tmp_path / "c.safetensors", perturbed("student-n"))
    with pytest.raises(CheckpointError, match="different network"):
        mod.average([str(pa), str(pc)], tmp_path / "avg2")
    with pytest.raises(ValueError, match="at least two"):
        mod.average([str(pa)], tmp_path / "avg3")


def test_model_card_carries_provenance_and_the_benchmark_rows(load_script, tmp_path):
    import json

    from sharpkd.checkpoint import build_preset, save_model

    ship = load_script("tools/ship_model.py")
    _, model = build_preset("student")
    info = {"stage": "student", "preset": "student", "steps": 120, "distilled": True, "teacher": "teacher",
            "command": "sharpkd train student --steps 120", "wall_time_s": 600.0, "hardware": "2 test cores",
            "data": ["photos/"], "val_psnr": 30.0, "val_blurred_psnr": 28.5,
            "train_config": {"batch_size": 8, "patch_size": 96, "w_kd_out": 1.0, "w_kd_feat": 0.1}}
    path = save_model(tmp_path / "m.safetensors", model, info)
    loaded, full_info = load_model(path)
    rows = json.loads((Path(__file__).parents[1] / "docs/eval/results.json").read_text())["rows"][:2]
    text = ship.card("student", loaded, full_info, rows, protocol_version=2)
    assert "sharpkd train student --steps 120" in text and "steps: 120" in text and "10.0 min" in text
    assert "version 2" in text and "distillation output 1.0" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| blurred input |") and "+0.00" in table[1]


@pytest.mark.parametrize("change", [
    {"config": {"width": 20000}},  # would ask for gigabytes
    {"config": {"width": "wide"}},
    {"config": {"width": -3}},
    {"config": {"no_such_field": 1}},
    {"config": [1, 2]},
    {"arch": "unknown"},
    {"arch": 7},
])
def test_hostile_model_metadata_is_a_clear_error_without_allocating(tmp_path, change):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(__file__).parents[1] / "src/sharpkd/weights/student.safetensors"
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        info = json.loads(f.metadata()["sharpkd"])
    if "config" in change and isinstance(change["config"], dict):
        info["config"] = {**info["config"], **change["config"]}
    else:
        info.update(change)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"sharpkd": json.dumps(info)})
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_model_file_with_broken_description_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"sharpkd": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bad)
