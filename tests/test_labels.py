"""The teacher-label cache: made once, resumable, and what a student run trains on."""

import json

import numpy as np
import pytest
import torch

from sharpkd.cli import main
from sharpkd.data import Photo
from sharpkd.infer import Sharpener
from sharpkd.labels import LabelCache, label_photos


def _photos(n=3, size=(90, 120)):
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(*size, 3)
    return [Photo(f"p{i}", np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)) for i in range(n)]


def test_labels_are_the_teachers_output_on_the_whole_photo_and_resume_identically(tmp_path):
    teacher = Sharpener.from_pretrained("unsharp", tile=0)
    photos = _photos()
    full = label_photos(teacher, "unsharp", photos, tmp_path / "a", per_photo=3, patch=32, progress=False)
    assert full["shards"] == 3
    # interrupted after the first photo, then resumed: the same cache
    label_photos(teacher, "unsharp", photos, tmp_path / "b", per_photo=3, patch=32, progress=False)
    (tmp_path / "b" / "shard-00001.npz").unlink()
    label_photos(teacher, "unsharp", photos, tmp_path / "b", per_photo=3, patch=32, progress=False)
    for i in range(3):
        a, b = np.load(tmp_path / "a" / f"shard-{i:05d}.npz"), np.load(tmp_path / "b" / f"shard-{i:05d}.npz")
        for k in ("blurred", "label", "sharp"):
            assert a[k].shape == (3, 3, 32, 32) and a[k].dtype == np.uint8 and np.array_equal(a[k], b[k])
    # the label is the teacher's output for that blurred patch (unsharp masking is local: inside a
    # patch, away from its border, the whole-photo output and the patch's own output agree)
    z = np.load(tmp_path / "a" / "shard-00000.npz")
    x = torch.from_numpy(z["blurred"][:1]).float() / 255
    own = (teacher.sharpen_tensor(x)[0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(own[:, 6:-6, 6:-6].astype(int) - z["label"][0, :, 6:-6, 6:-6]).max() <= 1
    # more rounds extend the folder: the first round's shards stay, the new ones carry other blurs
    more = label_photos(teacher, "unsharp", photos, tmp_path / "a", per_photo=3, patch=32, rounds=2, progress=False)
    assert more["shards"] == 6 and more["rounds"] == 2
    assert np.array_equal(np.load(tmp_path / "a" / "shard-00000.npz")["blurred"],
                          np.load(tmp_path / "b" / "shard-00000.npz")["blurred"])
    r0, r1 = np.load(tmp_path / "a" / "shard-00000.npz"), np.load(tmp_path / "a" / "shard-00003.npz")
    assert not np.array_equal(r0["blurred"], r1["blurred"])  # photo 0 again, another blur and other crops
    assert len(LabelCache(tmp_path / "a")) == 18
    # fewer rounds asked later never forget the labelled ones
    assert label_photos(teacher, "unsharp", photos, tmp_path / "a", per_photo=3, patch=32,
                        progress=False)["shards"] == 6
    # other settings in the same folder are refused, not mixed in
    with pytest.raises(ValueError, match="other settings"):
        label_photos(teacher, "unsharp", photos, tmp_path / "a", per_photo=5, patch=32, progress=False)


def test_cache_batches_keep_the_three_images_aligned(tmp_path):
    teacher = Sharpener.from_pretrained("unsharp", tile=0)
    label_photos(teacher, "unsharp", _photos(), tmp_path, per_photo=4, patch=24, progress=False)
    cache = LabelCache(tmp_path, seed=1)
    assert len(cache) == 12 and cache.manifest["teacher"] == "unsharp"
    blurred, sharp, label = cache.batch(16)
    assert blurred.shape == sharp.shape == label.shape == (16, 3, 24, 24)
    # the same flips/rotations for all three: the blurred patch stays closest to its own ground truth
    err = (blurred[:, None] - sharp[None]).abs().mean(dim=(2, 3, 4))
    assert float(err.diagonal().mean()) < float(err.mean())
    with pytest.raises(ValueError, match="sharpkd label"):
        LabelCache(tmp_path / "empty")
    # --jpeg-prob: the blurred patches come back as decoded JPEGs, sharp patch and label as they were; a
    # probability of 0 draws nothing, so runs without it keep their batches
    from sharpkd.degrade import DegradeConfig, jpeg

    plain = LabelCache(tmp_path, seed=2).batch(8)
    torch.testing.assert_close(LabelCache(tmp_path, seed=2).batch(8, DegradeConfig()), plain)
    packed = LabelCache(tmp_path, seed=2)
    b, s, lab = packed.batch(8, DegradeConfig(jpeg_prob=1.0, jpeg_quality_range=(30, 30)))
    torch.testing.assert_close((s, lab), plain[1:])
    torch.testing.assert_close(b, jpeg(plain[0], 30))
    assert float((b - plain[0]).abs().mean()) > 1 / 255


def test_student_distils_from_a_label_cache_without_a_live_teacher(tmp_path, capsys):
    import skimage.data
    from PIL import Image

    data = tmp_path / "photos"
    data.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        Image.fromarray(getattr(skimage.data, name)()[:160, :160]).save(data / f"{i}.png")
    labels = tmp_path / "labels"
    assert main(["-q", "label", "--teacher", "unsharp", "--data", str(data), "--out", str(labels),
                 "--per-photo", "2", "--patch-size", "48", "--max-side", "0"]) == 0
    assert "labelled by unsharp" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["-q", "train", "student", "--kd-cache", str(labels), "--data", str(data), "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--patch-size", "48", "--val-every", "2",
                 "--log-every", "1"]) == 0
    from sharpkd.checkpoint import read_info

    info = read_info(out)
    assert info["distilled"] is True and info["teacher"] == "unsharp" and info["steps"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in log if r["event"] == "train"]
    assert train_recs and all("kd_out" in r and "kd_feat" not in r for r in train_recs)
    assert main(["-q", "train", "student", "--kd-cache", str(tmp_path / "none"), "--out", str(tmp_path / "r2")]) == 2
    # the ablation twin: the same cached patches, ground truth only
    twin = tmp_path / "twin"
    assert main(["-q", "train", "student", "--no-distill", "--kd-cache", str(labels), "--data", str(data),
                 "--out", str(twin), "--steps", "2", "--batch-size", "2", "--patch-size", "48", "--val-every", "2",
                 "--log-every", "1"]) == 0
    assert read_info(twin)["distilled"] is False and read_info(twin)["teacher"] == ""
    log = [json.loads(line) for line in (twin / "log.jsonl").read_text().splitlines()]
    assert all("kd_out" not in r for r in log if r["event"] == "train")
