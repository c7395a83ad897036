"""The learned Gaussian-width estimate (sharpkd.deblur.width; measured, not adopted) and the fitted
width the round route records."""


import numpy as np
import pytest
import torch

import sharpkd.models  # noqa: F401  (architectures first: the teacher module imports them)
from sharpkd.deblur.width import WidthNet, WidthNetConfig, blurred_patches, predict_width, sample_crops


def test_blurred_patches_blur_by_the_given_width_with_benchmark_noise():
    """Patches are the grey centre of each crop, blurred by its own Gaussian: wider blur leaves less
    gradient energy; without noise a flat crop stays flat; noise has the given strength."""
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    crops = torch.from_numpy(rng.random((3, 3, 90, 90))).float()
    out = blurred_patches(crops, torch.tensor([0.3, 1.5, 3.5]), torch.zeros(3), 64, gen)
    assert out.shape == (3, 1, 64, 64)
    energy = [float(torch.diff(p[0], dim=-1).abs().mean()) for p in out]
    assert energy[0] > energy[1] > energy[2]
    flat = blurred_patches(torch.full((1, 3, 90, 90), 0.4), torch.tensor([2.0]), torch.zeros(1), 64, gen)
    assert torch.allclose(flat, flat.mean().expand_as(flat))
    noisy = blurred_patches(torch.full((1, 3, 90, 90), 0.4), torch.tensor([2.0]), torch.tensor([2 / 255]), 64, gen)
    assert 0.5 / 255 < float(noisy.std()) < 3 / 255


def test_sample_crops_are_seeded_and_in_range():
    photos = [np.random.default_rng(1).integers(0, 256, (120, 150, 3), dtype=np.uint8)]
    a = sample_crops(photos, 4, 90, np.random.default_rng(3))
    b = sample_crops(photos, 4, 90, np.random.default_rng(3))
    assert a.shape == (4, 3, 90, 90) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


class _HalfSure(WidthNet):
    """Predicts 1 px with high confidence on patches with detail and 3 px with low confidence on flat ones."""

    def forward(self, x):
        detail = x.std(dim=(-2, -1)).flatten() > 0.01
        width = torch.where(detail, 1.0, 3.0)
        logvar = torch.where(detail, -6.0, 3.0)
        return torch.stack([width, logvar], dim=1)


def test_predict_width_weights_patches_by_their_confidence():
    """Patches combine by inverse variance: confident patches decide, flat ones barely count."""
    img = torch.full((3, 128, 128), 0.5)
    img[:, :64] += 0.2 * torch.rand((1, 64, 128), generator=torch.Generator().manual_seed(0))  # detail on top
    net = _HalfSure(config=WidthNetConfig(patch=64, stride=64))
    width, se = predict_width(net, img)
    assert width == pytest.approx(1.0, abs=0.01) and 0 < se < 0.05
    net_flat = _HalfSure(config=WidthNetConfig(patch=64, stride=64))
    width, se = predict_width(net_flat, torch.full((3, 128, 128), 0.5))
    assert width == pytest.approx(3.0) and se > 1


def test_predict_width_bounds_the_number_of_patches():
    seen = []

    class Counting(WidthNet):
        def forward(self, x):
            seen.append(len(x))
            return torch.zeros(len(x), 2)

    predict_width(Counting(config=WidthNetConfig(side=512, stride=8, max_patches=50)), torch.rand(3, 600, 600))
    assert seen == [50]


def test_round_route_records_the_fitted_width(monkeypatch):
    """The round route's estimate carries the width fitted against the network's output (what
    benchmarks/round_width.py compares the learned width with); other routes carry none."""
    import sharpkd.deblur.teacher as tm
    from sharpkd.deblur.estimate import kernel_spread
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    monkeypatch.setattr(tm, "estimate_kernel", lambda *a, **k: np.full((9, 9), 1 / 81))  # round
    x = torch.full((1, 3, 96, 96), 0.5)
    for fit, route in (((1.2, 0.0), "round"), ((1.2, 1.0), "network"), ((0.2, 0.0), "network")):
        monkeypatch.setattr(tm, "fit_gaussian_width", lambda blurred, latent, fit=fit: fit)
        est = teacher.estimate(x)[0]
        assert est.route == route
        assert est.fit == (fit[0] if route == "round" else 0.0)
        if route == "round":
            assert kernel_spread(est.kernel) == pytest.approx(fit[0], abs=0.05)


def test_training_saves_a_file_the_benchmark_loads(tmp_path):
    """A few steps of ``python -m sharpkd.deblur.width`` on scikit-image photos write a width-network file
    with its log; benchmarks/round_width.py loads it and predicts a finite width."""
    import importlib.util
    import json
    from pathlib import Path

    import skimage.io
    from safetensors import safe_open

    from sharpkd.data import skimage_photos
    from sharpkd.deblur.width import main

    data = tmp_path / "photos"
    data.mkdir()
    for p in skimage_photos()[:3]:
        skimage.io.imsave(data / f"{p.name.split(':')[1]}.png", p.pixels, check_contrast=False)
    out = tmp_path / "w.safetensors"
    main(["--data", str(data), "--out", str(out), "--steps", "4", "--batch", "4", "--val-every", "2",
          "--channels", "4", "--threads", "1"])
    with safe_open(str(out), framework="pt") as f:
        info = json.loads(f.metadata()["sharpkd"])
    assert info["stage"] == "width" and info["steps"] == 4 and [r["step"] for r in info["log"]] == [2, 4]
    assert all(np.isfinite(v) for v in info["log"][-1].values())
    path = Path(__file__).parents[1] / "benchmarks" / "round_width.py"
    spec = importlib.util.spec_from_file_location("round_width", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = bench.load_width_net(str(out))
    assert net.config.channels == 4 and np.isfinite(predict_width(net, torch.rand(3, 100, 100))[0])
