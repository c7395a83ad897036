import json

import numpy as np
import pytest
from PIL import Image

from sharpkd.checkpoint import build_preset, save_model
from sharpkd.cli import main


@pytest.fixture
def model_file(tmp_path):
    _, model = build_preset("student")
    return str(save_model(tmp_path / "tiny.safetensors", model, {"steps": 0}))


@pytest.fixture
def images(tmp_path, photo):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(photo).save(d / "a.png")
    Image.fromarray(photo[:31, :29]).save(d / "b.jpg", quality=90)
    Image.fromarray(photo).convert("L").save(d / "gray.png")
    return d


def test_sharpen_folder_keeps_names_sizes_and_modes(tmp_path, images, model_file):
    out = tmp_path / "out"
    assert main(["-q", "sharpen", str(images), "-o", str(out), "--model", model_file]) == 0
    for name in ("a.png", "b.jpg", "gray.png"):
        src, dst = Image.open(images / name), Image.open(out / name)
        assert dst.size == src.size and dst.mode == src.mode and dst.format == src.format
    # an untrained (identity) student gives the input back (up to JPEG re-encoding)
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(Image.open(images / "a.png")))


def test_sharpen_single_file_to_file(tmp_path, images, model_file):
    out = tmp_path / "single.png"
    assert main(["-q", "sharpen", str(images / "a.png"), "-o", str(out), "--model", model_file]) == 0
    assert out.is_file()


def test_sharpen_errors_exit_non_zero_without_traceback(tmp_path, images, model_file, capsys):
    assert main(["sharpen", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", model_file]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(bad / "ok.png")
    assert main(["-q", "sharpen", str(bad), "-o", str(tmp_path / "o2"), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert "x.png" in err and "Traceback" not in err
    assert (tmp_path / "o2" / "ok.png").is_file()
    assert main(["sharpen", str(images / "a.png"), "-o", str(tmp_path), "--model", str(tmp_path / "none")]) == 2
    assert "no model file" in capsys.readouterr().err


def test_sharpen_refuses_to_overwrite_input(images, model_file, capsys):
    assert main(["sharpen", str(images), "-o", str(images), "--model", model_file]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_degrade_blurs_and_is_seeded(tmp_path, images):
    o1, o2 = tmp_path / "d1", tmp_path / "d2"
    for o in (o1, o2):
        assert main(["degrade", str(images / "a.png"), "-o", str(o), "--blur", "motion", "--noise", "0.01",
                     "--seed", "3"]) == 0
    a, b = np.asarray(Image.open(o1 / "a.png")), np.asarray(Image.open(o2 / "a.png"))
    assert np.array_equal(a, b) and a.shape == np.asarray(Image.open(images / "a.png")).shape
    assert not np.array_equal(a, np.asarray(Image.open(images / "a.png")))
    assert main(["degrade", str(images / "a.png"), "-o", str(tmp_path / "g.png"), "--sigma", "-1"]) == 2
    assert main(["degrade", str(images / "a.png"), "-o", str(tmp_path / "j.png"), "--jpeg", "30"]) == 0
    assert main(["degrade", str(images / "a.png"), "-o", str(tmp_path / "j2.png"), "--jpeg", "300"]) == 2


def test_info_prints_params_and_macs(model_file, capsys):
    assert main(["info", "--model", model_file]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "MACs per pixel" in out
    # the shipped models are the last links of fine-tuning chains: info says so instead of a bare step count
    assert main(["info", "--model", "student"]) == 0
    out = capsys.readouterr().out
    assert "in the last run, fine-tuned from" in out and "note:" in out
    assert main(["info", "--model", "teacher-net"]) == 0
    assert "averaged over 2 runs" in capsys.readouterr().out


def test_train_requires_teacher_for_distillation(tmp_path, capsys):
    assert main(["train", "student", "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert "--teacher" in capsys.readouterr().err


def test_train_teacher_then_student_end_to_end(tmp_path, images, capsys):
    t_dir, s_dir = tmp_path / "t", tmp_path / "s"
    common = ["--data", str(images), "--steps", "4", "--batch-size", "2", "--patch-size", "32", "--val-every", "2",
              "--log-every", "1"]
    assert main(["-q", "train", "teacher", "--arch", "nafunet-s", "--out", str(t_dir), "--jpeg-prob", "0.5",
                 "--recon", "l1", *common]) == 0
    assert json.loads((t_dir / "config.json").read_text())["degrade"]["jpeg_prob"] == 0.5
    assert main(["-q", "train", "student", "--teacher", str(t_dir), "--out", str(s_dir), "--w-perceptual", "0.01",
                 *common]) == 0
    log = [json.loads(line) for line in (s_dir / "log.jsonl").read_text().splitlines()]
    parts = {k for r in log if r["event"] == "train" for k in r}
    assert {"rec", "perceptual", "kd_out", "kd_feat"} <= parts
    # a distilled run resumes from its saved config: --teacher need not be given again
    assert main(["-q", "train", "student", "--resume", "--out", str(s_dir), "--steps", "6", "--val-every", "2"]) == 0
    log = [json.loads(line) for line in (s_dir / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if r["event"] == "train") == 6
    assert any("kd_out" in r for r in log if r["event"] == "train" and r["step"] > 4)
    assert main(["info", "--model", str(s_dir)]) == 0
    assert "distilled:" in capsys.readouterr().out


def test_sharpen_tiled_matches_untiled(tmp_path, images, perturbed):
    path = str(save_model(tmp_path / "p.safetensors", perturbed("student", 0.01)))
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(np.asarray(Image.open(images / "a.png")), (4, 3, 1))).save(big)  # 148 x 159
    a, b = tmp_path / "whole.png", tmp_path / "tiled.png"
    assert main(["-q", "sharpen", str(big), "-o", str(a), "--model", path, "--tile", "0"]) == 0
    assert main(["-q", "sharpen", str(big), "-o", str(b), "--model", path, "--tile", "96"]) == 0
    diff = np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int))
    assert diff.max() <= 1


@pytest.mark.parametrize("tile", ["1", "5", "31", "-3"])
def test_tiny_or_negative_tiles_are_refused(tmp_path, images, capsys, tile):
    out = tmp_path / "o.png"
    assert main(["-q", "sharpen", str(images / "a.png"), "-o", str(out), "--tile", tile]) != 0
    assert "tile must be 0" in capsys.readouterr().err and not out.exists()


def test_train_blur_mix_is_parsed_and_checked(tmp_path, capsys):
    from sharpkd.cli import UserError, parse_blur_mix

    assert parse_blur_mix("gaussian=0.35, motion=0.65") == {"gaussian": 0.35, "motion": 0.65}
    for bad in ("swirl=1", "motion=abc", "motion=-1", "gaussian=0"):
        with pytest.raises(UserError):
            parse_blur_mix(bad)
    rc = main(["train", "teacher", "--out", str(tmp_path / "r"), "--blur-mix", "zoom=1"])
    assert rc == 2 and "unknown blur kind" in capsys.readouterr().err


def test_sharpen_batches_recursive_skip_overwrite_format(tmp_path, model_file, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    for rel in ("top.png", "sub/a.png", "sub/deeper/b.jpg"):
        Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(src / rel)
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    # without --recursive only the top level is taken
    assert main(["-q", "sharpen", str(src), "-o", str(out), "--model", model_file]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == ["top.png"]
    # --recursive keeps relative paths, continues past the broken file, exits 1 with a summary
    assert main(["-q", "sharpen", str(src), "-o", str(out), "-r", "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "2 image(s)" in err and "skipped 1 existing" in err and "1 failed" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "sub/a.png", "sub/deeper/b.jpg", "top.png"]
    # existing outputs are skipped (untouched) unless --overwrite
    (out / "top.png").write_bytes(b"user edit")
    main(["-q", "sharpen", str(src / "top.png"), str(src / "sub"), "-o", str(out), "--model", model_file])
    assert (out / "top.png").read_bytes() == b"user edit"
    main(["-q", "sharpen", str(src / "top.png"), "-o", str(out), "--overwrite", "--model", model_file])
    assert Image.open(out / "top.png").size == (17, 21)
    # --format and --quality
    jpg = tmp_path / "jpg"
    assert main(["-q", "sharpen", str(src / "top.png"), "-o", str(jpg), "--format", "jpeg", "--quality", "50",
                 "--model", model_file]) == 0
    assert Image.open(jpg / "top.jpg").format == "JPEG"
    # never writes over an input: not its own, and not another input's when --format renames
    assert main(["sharpen", str(src / "sub"), "-o", str(src / "sub"), "--format", "png", "--model", model_file]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "sub" / "a.jpg")
    assert main(["sharpen", str(src / "sub" / "a.jpg"), str(src / "sub" / "a.png"), "-o", str(tmp_path / "x"),
                 "--format", "png", "--model", model_file]) == 2
    assert "same output" in capsys.readouterr().err


def test_sharpen_animated_gif_needs_first_frame(tmp_path, model_file, capsys):
    frames = [Image.fromarray(np.full((12, 10, 3), v, np.uint8)) for v in (40, 200)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert main(["sharpen", str(gif), "-o", str(tmp_path / "o.png"), "--model", model_file]) == 1
    assert "animated" in capsys.readouterr().err
    assert main(["-q", "sharpen", str(gif), "-o", str(tmp_path / "o.png"), "--first-frame", "--model", model_file]) == 0
    assert Image.open(tmp_path / "o.png").size == (10, 12)


def test_sharpen_self_ensemble_flag(tmp_path, images, model_file, capsys):
    out = tmp_path / "ens.png"
    assert main(["-q", "sharpen", str(images / "a.png"), "-o", str(out), "--model", model_file, "--ensemble", "8"]) == 0
    # the identity student stays the identity under the x8 self-ensemble
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(images / "a.png")))
    with pytest.raises(SystemExit) as e:
        main(["-q", "sharpen", str(images / "a.png"), "-o", str(tmp_path / "x.png"), "--ensemble", "3"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_output_names_that_cannot_be_written_are_refused(tmp_path, photo, capsys):
    from PIL import Image

    for n in ("a", "b"):
        Image.fromarray(photo).save(tmp_path / f"{n}.png")
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    assert main(["-q", "sharpen", a, "-o", str(tmp_path / "result.gif"), "--model", "unsharp"]) == 2
    assert "cannot write .gif" in capsys.readouterr().err
    assert main(["-q", "sharpen", a, b, "-o", str(tmp_path / "one.png"), "--model", "unsharp"]) == 2
    assert "need an output folder" in capsys.readouterr().err
    assert not (tmp_path / "result.gif").exists() and not (tmp_path / "one.png").exists()
    # no extension is a folder, and the summary names the file written there
    assert main(["sharpen", a, "-o", str(tmp_path / "outdir"), "--model", "unsharp"]) == 0
    assert str(tmp_path / "outdir" / "a.png") in capsys.readouterr().out


def test_a_malformed_png_in_a_batch_fails_alone(tmp_path, photo, capsys):
    import struct
    import zlib

    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo).save(src / "good.png")
    pal = tmp_path / "p.png"
    Image.fromarray(photo[..., 0]).convert("P").save(pal)
    data = pal.read_bytes()
    at = data.index(b"IDAT") - 4
    body = bytes(300)  # a transparency table longer than the palette
    trns = struct.pack(">I", len(body)) + b"tRNS" + body + struct.pack(">I", zlib.crc32(b"tRNS" + body))
    (src / "bad.png").write_bytes(data[:at] + trns + data[at:])
    assert main(["sharpen", str(src), "-o", str(tmp_path / "out"), "--model", "unsharp"]) == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and "Traceback" not in err and "1 failed" in err
    assert (tmp_path / "out" / "good.png").exists() and not (tmp_path / "out" / "bad.png").exists()


def test_overlong_output_names_fifos_and_megapixel_limit_are_clear_errors(tmp_path, images, capsys):
    import os

    src = str(images / "a.png")  # 37 x 53
    assert main(["-q", "sharpen", src, "-o", str(tmp_path / ("y" * 252 + ".png"))]) == 2
    assert "output name too long (256 bytes" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo.png")
    assert main(["-q", "sharpen", str(tmp_path / "fifo.png"), "-o", str(tmp_path / "f.png")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    out = tmp_path / "m.png"
    assert main(["-q", "sharpen", src, "-o", str(out), "--max-megapixels", "0.001"]) != 0
    assert "larger than 1,000 pixels" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "sharpen", src, "-o", str(out), "--max-megapixels", "0.002"]) == 0 and out.exists()
