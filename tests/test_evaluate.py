import json

import numpy as np
import pytest
from scipy.ndimage import convolve

from sharpkd.checkpoint import build_preset, save_model
from sharpkd.degrade import gaussian_kernel
from sharpkd.evaluate import protocol_degrade, protocol_kernel, run_benchmark, unsharp, wiener_oracle
from sharpkd.metrics import psnr


def test_protocol_degrade_follows_the_steps(photo):
    k = gaussian_kernel(2.0)
    out = protocol_degrade(photo, k, seed=1003)
    x = photo / 255.0
    y = np.stack([convolve(x[..., c], k, mode="reflect") for c in range(3)], -1)
    y = y + np.random.default_rng(1003).normal(0, 1 / 255, y.shape)
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.clip(np.round(y * 255), 0, 255).astype(np.uint8))
    # the reflect mode repeats the edge sample: a constant image stays constant but for noise
    flat = np.full((9, 11, 3), 100, np.uint8)
    assert np.abs(protocol_degrade(flat, k, 0).astype(int) - 100).max() <= 4


def test_version2_recentres_levin_kernels(shared_datasets):
    from scipy.ndimage import center_of_mass

    from sharpkd.degrade import load_levin_kernels, recenter_levin

    v1 = load_levin_kernels(shared_datasets / "kernels" / "levin09.npz", version=1)
    v2 = load_levin_kernels(shared_datasets / "kernels" / "levin09.npz")
    moved = 0.0
    for a, b in zip(v1, v2, strict=True):
        assert b.shape == (a.shape[0] + 8, a.shape[1] + 8) and b.sum() == pytest.approx(1.0)
        off = np.array(center_of_mass(b)) - (np.array(b.shape) - 1) / 2
        assert np.abs(off).max() <= 0.5 + 1e-9
        moved = max(moved, float(np.abs(np.array(center_of_mass(a)) - (np.array(a.shape) - 1) / 2).max()))
    assert moved > 2  # version 1 kernels really were off centre
    # a delta two pixels right of centre is rolled back onto the centre
    d = np.zeros((5, 5))
    d[2, 4] = 1
    r = recenter_levin(d)
    assert r.shape == (13, 13) and r[6, 6] == 1


def test_protocol_kernels():
    levin = [np.full((3, 3), 1 / 9) * (n + 1) / (n + 1) for n in range(8)]
    assert protocol_kernel(0, 5, levin).shape == (7, 7)
    assert protocol_kernel(2, 5, levin).shape == (19, 19)
    assert protocol_kernel(3, 9, levin) is levin[1]


def test_classical_baselines_help_where_they_should(photo):
    k = gaussian_kernel(1.0)
    blurred = protocol_degrade(photo, k, 0)
    assert psnr(photo, wiener_oracle(blurred, k)) > psnr(photo, blurred) + 1.0
    assert unsharp(blurred).shape == photo.shape


def test_blurred_row_reproduces_benchmark_md(shared_datasets, tmp_path):
    res = run_benchmark(shared_datasets / "eval" / "kodak24", [], tmp_path, shared_datasets / "kernels" / "levin09.npz",
                        progress=False, classical=False)
    row = res["rows"][0]
    # BENCHMARK.md version 2, reference figures
    reference = {"gauss1": (28.99, 0.8429), "gauss2": (25.48, 0.6866), "gauss3": (24.13, 0.6181),
                 "motion": (23.24, 0.5919)}
    for d, (ref_psnr, ref_ssim) in reference.items():
        assert row["per_degradation"][d]["psnr"] == pytest.approx(ref_psnr, abs=0.01)
        assert row["per_degradation"][d]["ssim"] == pytest.approx(ref_ssim, abs=1e-4)
    assert row["mean_psnr"] == pytest.approx(25.46, abs=0.01)
    assert res["protocol_version"] == 2


def test_benchmark_writes_tables_for_a_model(shared_datasets, tmp_path):
    _, model = build_preset("student")
    path = save_model(tmp_path / "m.safetensors", model, {"steps": 0})
    res = run_benchmark(shared_datasets / "eval" / "kodak24", [str(path)], tmp_path / "o",
                        shared_datasets / "kernels" / "levin09.npz", limit=1, progress=False)
    methods = [r["method"] for r in res["rows"]]
    assert methods[:3] == ["blurred input", "unsharp mask (r=1, a=1)", "Wiener, true kernel (oracle)"]
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    student = data["rows"][3]
    assert student["params"] < 150_000 and student["macs_per_pixel"] > 0
    # an untrained student is the identity: zero gain
    assert student["gain_db"] == pytest.approx(0.0, abs=1e-9)
    assert "| blurred input |" in (tmp_path / "o" / "results.md").read_text()


def test_feature_distance_orders_blur(photo):
    from sharpkd.evaluate import feature_distance

    assert feature_distance(photo, photo) == pytest.approx(0.0, abs=1e-6)
    light = protocol_degrade(photo, gaussian_kernel(1.0), 0)
    heavy = protocol_degrade(photo, gaussian_kernel(3.0), 0)
    assert 0 < feature_distance(photo, light) < feature_distance(photo, heavy)


def test_benchmark_vgg_distance_column(shared_datasets, tmp_path):
    res = run_benchmark(shared_datasets / "eval" / "kodak24", [], tmp_path, shared_datasets / "kernels" / "levin09.npz",
                        limit=1, progress=False, vgg_distance=True)
    rows = {r["method"]: r for r in res["rows"]}
    blurred, oracle = rows["blurred input"], rows["Wiener, true kernel (oracle)"]
    # the oracle restores detail, so its features are closer to the ground truth's
    assert 0 < oracle["vgg_distance"] < blurred["vgg_distance"]
    assert set(blurred["per_degradation"]["motion"]) == {"psnr", "ssim", "vgg_distance"}
    assert "VGG dist" in res["markdown"].splitlines()[3]


def test_motion_alignment_finds_the_shift(load_script):
    """The motion diagnostic's aligned PSNR undoes a whole-pixel shift and reports it."""
    mod = load_script("benchmarks/motion_alignment.py")
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    moved = np.roll(gt, (2, -3), axis=(0, 1))  # out[y] = gt[y - 2]: aligned by looking 2 rows further
    plain, best, shift = mod.aligned_psnr(gt, moved, 4)
    assert shift == (2, -3)
    assert best > 90 and plain < 15
    same = mod.aligned_psnr(gt, gt, 4)
    assert same[2] == (0, 0) and same[0] == same[1]

    # the blind ceiling moves the sharp image exactly as the benchmark's convolution does
    from sharpkd.evaluate import protocol_degrade

    smooth = (np.stack(np.meshgrid(np.linspace(0, 6, 48), np.linspace(0, 5, 40)), -1).sum(-1))
    img = np.repeat((127 + 100 * np.sin(smooth))[..., None], 3, -1).astype(np.uint8)
    delta = np.zeros((9, 9))
    delta[2, 7] = 1.0  # mass 2 rows up and 3 columns right of the centre
    assert mod.kernel_centroid(delta) == (-2.0, 3.0)
    convolved = protocol_degrade(img, delta, 0)  # includes 1/255 noise
    moved = mod.centroid_shifted(img, delta)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(moved[inner].astype(int) - convolved[inner].astype(int)).max() <= 5
    opposite = mod.centroid_shifted(img, delta[::-1, ::-1])  # the same shift with the sign flipped
    err = np.abs(opposite[inner].astype(int) - convolved[inner].astype(int)).mean()
    assert err > 5 * np.abs(moved[inner].astype(int) - convolved[inner].astype(int)).mean()


def test_kernel_pilot_wiener_inverts_a_known_blur_and_the_net_outputs_kernels(load_script):
    import torch

    from sharpkd.degrade import blur, motion_kernel

    mod = load_script("benchmarks/kernel_pilot.py")
    torch.manual_seed(0)
    sharp = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 96, 96), 3, 1, 1)  # mildly smooth texture
    k = torch.from_numpy(np.stack([motion_kernel(np.random.default_rng(s), 12.0, size=mod.KSIZE)
                                   for s in range(2)]).astype(np.float32))
    blurred = blur(sharp, k)
    inner = (..., slice(20, -20), slice(20, -20))
    restored = mod.wiener(blurred, k, lam=1e-4)
    wrong = mod.wiener(blurred, k.flip(-1).flip(-2).transpose(-1, -2), lam=1e-4)
    p = [mod.psnr_8bit(x[inner], sharp[inner]).mean().item() for x in (blurred, restored, wrong)]
    assert p[1] > p[0] + 5  # the true kernel undoes the blur
    assert p[2] < p[1] - 5  # a different kernel does not
    net = mod.KernelNet()
    est = net(mod.rgb_to_grayscale(blurred))
    assert est.shape == (2, mod.KSIZE, mod.KSIZE)
    assert torch.all(est >= 0) and torch.allclose(est.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    c = mod.KSIZE // 2
    assert est[0, c, c] == est[0].max()  # the untrained estimate is a centred blob
