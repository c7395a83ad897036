"""Blind deblurring pieces: FFT conventions, the HQS solver, the kernel estimator, the teacher."""

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve

import sharpkd.models  # noqa: F401  (first: the blind teacher's module needs the model registry loaded)
from sharpkd.deblur.estimate import EstimateConfig, estimate_kernel, grad, gradient_otfs, kernel_step
from sharpkd.deblur.solve import hqs_deconvolve, psf2otf, wiener_deconvolve
from sharpkd.degrade import make_kernel, protocol_degrade
from sharpkd.metrics import psnr


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ffdnet():
    from sharpkd.checkpoint import load_denoiser

    return load_denoiser()


@pytest.fixture
def crop() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[40:137, 150:253])  # 97 x 103


def test_psf2otf_is_convolution_not_correlation():
    rng = np.random.default_rng(0)
    x = rng.random((19, 24))
    k = make_kernel("motion", length=6, seed=1, size=9)  # asymmetric
    ref = convolve(x, k, mode="wrap")
    out = torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(x)) * psf2otf(torch.from_numpy(k), 19, 24)[0], s=(19, 24))
    assert np.abs(out.numpy() - ref).max() < 1e-10
    flipped = torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(x)) * psf2otf(torch.from_numpy(k[::-1, ::-1].copy()),
                                                                              19, 24)[0], s=(19, 24))
    assert np.abs(flipped.numpy() - ref).max() > 1e-3


def test_gradient_operators_match_their_fourier_responses():
    x = torch.rand(13, 17, dtype=torch.float64)
    dxo, dyo = gradient_otfs(13, 17)
    gx, gy = grad(x)
    assert torch.allclose(torch.fft.irfft2(torch.fft.rfft2(x) * dxo, s=(13, 17)), gx)
    assert torch.allclose(torch.fft.irfft2(torch.fft.rfft2(x) * dyo, s=(13, 17)), gy)
    assert gx[3, 4] == pytest.approx(float(x[3, 5] - x[3, 4]))


def test_kernel_step_recovers_the_kernel_from_the_sharp_image():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(convolve(rng.random((48, 52)), np.ones((2, 2)) / 4, mode="wrap"))
    k = torch.from_numpy(make_kernel("motion", length=7, seed=2, size=11))
    y = torch.fft.irfft2(torch.fft.rfft2(x) * psf2otf(k, 48, 52)[0], s=(48, 52))
    k0 = torch.full((11, 11), 1 / 121, dtype=torch.float64)
    est = kernel_step(grad(x), y, k0, 0.0, torch.ones(48, 52, dtype=torch.float64), steps=60)
    assert (est - k).abs().max() < 1e-4


def test_kernel_step_solves_the_masked_ridge_problem_exactly():
    """The CG's small-window operator against a dense least-squares solve of the same problem: a photo
    mask that leaves a band out, a ridge weight, an asymmetric kernel support."""
    rng = np.random.default_rng(4)
    h, w, ks, gamma = 30, 34, 7, 0.3
    x, y = torch.from_numpy(rng.random((h, w))), torch.from_numpy(rng.random((h, w)))
    inside = torch.zeros(h, w, dtype=torch.float64)
    inside[5:24, 6:27] = 1
    est = kernel_step(grad(x), y, torch.zeros(ks, ks, dtype=torch.float64), gamma, inside, steps=ks * ks)
    # dense: one column per kernel tap, the masked gradient shifted by that tap (circular convolution)
    cols, rhs = [], torch.cat([(g * inside).flatten() for g in grad(y)])
    c = ks // 2
    for i in range(ks):
        for j in range(ks):
            cols.append(torch.cat([torch.roll(g * inside, (i - c, j - c), (0, 1)).flatten() for g in grad(x)]))
    a = torch.stack(cols, 1)
    dense = torch.linalg.solve(a.T @ a + gamma * torch.eye(ks * ks, dtype=torch.float64), a.T @ rhs)
    assert (est.flatten() - dense).abs().max() < 1e-8


def test_fast_grid_padding_keeps_the_photo_in_place_and_wraps_smoothly():
    from scipy.fft import next_fast_len

    from sharpkd.deblur.solve import pad_to_fast_grid

    y = torch.rand(1, 1, 40, 57, dtype=torch.float64)  # 40 + 2 x 11 = 62 = 2 x 31, 57 + 22 = 79 (prime)
    yp = pad_to_fast_grid(y, 11)
    assert yp.shape[-2:] == (next_fast_len(62, real=True), next_fast_len(79, real=True)) == (64, 80)
    assert torch.allclose(yp[..., 11:51, 11:68], y, rtol=0, atol=1e-12)
    mean = float(y.mean())
    for edge in (yp[..., 0, :], yp[..., -1, :], yp[..., :, 0], yp[..., :, -1]):  # the wrap meets at the mean
        assert torch.allclose(edge, torch.full_like(edge, mean))


def test_hqs_with_the_true_kernel_beats_wiener_on_camera_shake(crop, ffdnet):
    k = make_kernel("motion", length=9, seed=4, size=15)
    blurred = protocol_degrade(crop, k, 7)
    y = to_t(blurred)
    out = hqs_deconvolve(y, k, ffdnet, noise=1 / 255, iters=6)
    assert out.shape == y.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    base = psnr(crop, blurred)
    hqs = psnr(crop, to_u8(out))
    wiener = psnr(crop, to_u8(wiener_deconvolve(y, k)))
    assert hqs > base + 3 and hqs > wiener + 1


def test_hqs_boundary_handling_is_what_makes_it_work(crop, ffdnet):
    """Without the unknown-boundary data step (plain circular FFT, no padding) the same solve is far worse."""
    k = make_kernel("motion", length=9, seed=4, size=15)
    y = to_t(protocol_degrade(crop, k, 7))
    good = psnr(crop, to_u8(hqs_deconvolve(y, k, ffdnet, noise=1 / 255, iters=6)))
    bad = psnr(crop, to_u8(hqs_deconvolve(y, k, ffdnet, noise=1 / 255, iters=6, pad=0, cg_steps=0)))
    assert good > bad + 2


def test_geometric_ensemble_turns_the_denoiser_each_iteration_and_back(crop):
    """geo_ensemble: iteration i shows the denoiser the i-th orientation (a non-square photo alternates its
    sides) and turns the answer back; a denoiser that ignores orientation gives the plain solver's result,
    a directional one does not."""
    from sharpkd.deblur.solve import orient

    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seen = {orient(t, m).flatten().tolist().__repr__() for m in range(8)}
    assert len(seen) == 8 and all(torch.equal(orient(orient(t, m), m, inverse=True), t) for m in range(8))

    k = make_kernel("motion", length=7, seed=1, size=9)
    y = to_t(protocol_degrade(crop, k, 3))
    shapes = []

    def smooth(x, sigma):  # symmetric 3x3 box: the same in every orientation
        shapes.append(tuple(x.shape[-2:]))
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    plain = hqs_deconvolve(y, k, smooth, iters=4)
    assert len(set(shapes)) == 1
    shapes.clear()
    turned = hqs_deconvolve(y, k, smooth, iters=4, geo_ensemble=True)
    assert shapes[0] == shapes[2] and shapes[1] == shapes[3] == shapes[0][::-1]
    assert torch.allclose(plain, turned, atol=1e-5)

    def shift(x, sigma):  # moves the picture one pixel right: directional
        return torch.roll(x, 1, dims=-1)

    a = hqs_deconvolve(y, k, shift, iters=4)
    b = hqs_deconvolve(y, k, shift, iters=4, geo_ensemble=True)
    assert float((a - b).abs().max()) > 0.05


def squares_blurred_by_a_line(rng: np.random.Generator) -> np.ndarray:
    """A 96 x 96 grey scene of 25 sharp-edged squares, blurred by a horizontal 9-pixel line (3 channels)."""
    img = np.full((96, 96), 0.5)
    for _ in range(25):
        y0, x0, s = rng.integers(0, 80), rng.integers(0, 80), rng.integers(6, 16)
        img[y0 : y0 + s, x0 : x0 + s] = rng.random()
    k = np.zeros((15, 15))
    k[7, 3:12] = 1 / 9
    return np.stack([convolve(img, k, mode="reflect")] * 3, -1)


def test_estimator_finds_the_direction_of_a_straight_motion_blur():
    """A synthetic scene of sharp-edged squares blurred by a horizontal 9-pixel line: the estimate is
    centred, sums to 1 and spreads horizontally, not vertically."""
    blurred = squares_blurred_by_a_line(np.random.default_rng(0))
    est = estimate_kernel(blurred, EstimateConfig(kernel_size=15))
    assert est.shape == (15, 15) and est.sum() == pytest.approx(1) and est.min() >= 0
    yy, xx = np.mgrid[:15, :15]
    cy, cx = (est * yy).sum(), (est * xx).sum()
    assert abs(cy - 7) <= 0.5 and abs(cx - 7) <= 0.5
    var_x, var_y = (est * (xx - cx) ** 2).sum(), (est * (yy - cy) ** 2).sum()
    assert var_x > 2 * var_y and var_x > 3


def test_estimator_refuses_images_too_small_for_the_kernel():
    with pytest.raises(ValueError, match="too small"):
        estimate_kernel(np.zeros((20, 40, 3)), EstimateConfig(kernel_size=15))


def test_blind_teacher_through_sharpener_keeps_shape_and_tiles_share_one_kernel(crop):
    from sharpkd.infer import Sharpener

    s = Sharpener.from_pretrained("teacher", tile=64, overlap=32)
    assert s.blind
    blurred = protocol_degrade(crop, make_kernel("motion", length=7, seed=1, size=11), 0)
    x = to_t(blurred)
    est = s.estimate_blur(x)
    assert len(est) == 1 and est[0].kernel.sum() == pytest.approx(1) and 0 < est[0].noise < 0.05
    tiled = s.sharpen_tensor(x, est)
    whole = Sharpener.from_pretrained("teacher", tile=0).sharpen_tensor(x, est)
    assert tiled.shape == x.shape
    # tiles are solved with the photo's kernel: as close to the ground truth as the untiled result
    assert abs(psnr(crop, to_u8(tiled)) - psnr(crop, to_u8(whole))) < 1.0
    tiny = torch.rand(1, 3, 9, 13)
    assert s.estimate_blur(tiny)[0].route == "network"  # too small to estimate a blur: the network's job
    assert s.sharpen_tensor(tiny).shape == tiny.shape


def test_blind_teacher_has_no_onnx_backend():
    from sharpkd.infer import Sharpener

    with pytest.raises(ValueError, match="torch backend only"):
        Sharpener.from_pretrained("teacher", backend="onnx")


def test_edge_sigma_reads_the_width_of_a_gaussian_blur():
    """Zhuo-Sim re-blur ratio on blurred step edges (squares): the median estimate is the blur's sigma."""
    from scipy.ndimage import gaussian_filter

    from sharpkd.deblur.estimate import edge_sigma

    img = np.zeros((160, 160))
    for y0, x0 in ((20, 20), (20, 90), (90, 20), (90, 90)):
        img[y0 : y0 + 50, x0 : x0 + 50] = 1.0
    for sigma in (1.5, 2.5):
        est = edge_sigma(np.stack([gaussian_filter(img, sigma)] * 3, -1))
        assert est == pytest.approx(sigma, rel=0.15)
    assert edge_sigma(np.full((64, 64, 3), 0.5)) == 0.0  # no edges, no estimate


def test_kernel_shape_measures():
    from sharpkd.deblur.estimate import anisotropy, kernel_spread, nearest_gaussian
    from sharpkd.degrade import gaussian_kernel

    g = gaussian_kernel(2.0)
    assert kernel_spread(g) == pytest.approx(2.0, rel=0.02) and anisotropy(g) == pytest.approx(1.0, abs=1e-6)
    line = np.zeros((15, 15))
    line[7, 2:13] = 1 / 11
    assert anisotropy(line) > 10
    d, fit = nearest_gaussian(gaussian_kernel(1.3, 15))
    assert d < 0.05 and fit.shape == (15, 15)


def test_blind_teacher_takes_round_blur_as_gaussian(crop, ffdnet):
    """Without a network (the first blind file): a Gaussian-blurred photo gets a Gaussian kernel (the
    parametric branch) and the result is sharper than the input."""
    from sharpkd.deblur.estimate import anisotropy
    from sharpkd.deblur.teacher import BlindTeacher
    from sharpkd.degrade import gaussian_kernel

    teacher = BlindTeacher()
    teacher.denoiser = ffdnet
    blurred = protocol_degrade(crop, gaussian_kernel(2.5), 1)
    est = teacher.estimate(to_t(blurred))[0]
    assert anisotropy(est.kernel) < 1.01
    assert psnr(crop, to_u8(teacher.restore(to_t(blurred), [est]))) > psnr(crop, blurred)
    assert est.route == "gaussian"


def test_shipped_blind_teacher_deconvolves_round_blur_its_network_explains():
    """The shipped file fits a Gaussian against its network's output and deconvolves round blur with
    it (route ``round``), beating the network alone; with the round route switched off, round blur
    goes to the network: exactly the network teacher's output."""
    import dataclasses

    import skimage.data

    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.estimate import kernel_spread
    from sharpkd.degrade import gaussian_kernel
    from sharpkd.infer import run_padded

    blind, _ = load_model("teacher")
    network, _ = load_model("teacher-net")
    crop = np.ascontiguousarray(skimage.data.astronaut()[100:260, 120:280])  # 160 px: enough edges to estimate
    x = to_t(protocol_degrade(crop, gaussian_kernel(2.0), 2))
    expected = run_padded(network, x, network.config.multiple)
    est = blind.estimate(x)[0]
    assert est.route == "round" and 1.4 <= kernel_spread(est.kernel) <= 2.1
    assert psnr(crop, to_u8(blind.restore(x, [est]))) > psnr(crop, to_u8(expected)) + 0.5

    blind.config = dataclasses.replace(blind.config, round_anisotropy=0.0)
    est = blind.estimate(x)[0]
    assert est.route == "network"
    assert torch.allclose(blind.restore(x, [est]), expected, atol=1e-5)


def test_round_spread_ratio_offers_elongated_estimates_to_the_round_route(monkeypatch):
    """With ``round_spread_ratio`` set, a camera-shake candidate whose fitted Gaussian is at least that
    x the estimate's spread (and explains the photo) takes the round route; a narrower fit, a poor fit
    or the option off (as shipped) leave it to the shake route."""
    import dataclasses

    import sharpkd.deblur.teacher as tm
    from sharpkd.deblur.estimate import kernel_spread
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    line = np.zeros((31, 31))
    line[15, 9:22] = 1 / 13  # elongated, spread about 2.6 px
    monkeypatch.setattr(tm, "estimate_kernel", lambda *a, **k: line.copy())
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    monkeypatch.setattr(teacher, "_refine", lambda img, k, noise: k)
    x = torch.full((1, 3, 96, 96), 0.5)
    spread = kernel_spread(line)
    for ratio, fit, route in ((0.0, (spread, 0.0), "shake"), (0.8, (spread, 0.0), "round"),
                              (0.8, (0.5 * spread, 0.0), "shake"), (0.8, (spread, 1.0), "shake")):
        teacher.config = dataclasses.replace(teacher.config, round_spread_ratio=ratio)
        monkeypatch.setattr(tm, "fit_gaussian_width", lambda blurred, latent, fit=fit: fit)
        est = teacher.estimate(x)[0]
        assert est.route == route, (ratio, fit)
        if route == "round":
            assert kernel_spread(est.kernel) == pytest.approx(spread, abs=0.1)


def test_compact_shake_route_takes_confirmed_blobs_no_gaussian_explains(monkeypatch):
    """With ``compact_agreement`` set, an estimate too round for the camera-shake gates goes to the
    camera-shake route when no Gaussian explains the photo and the second estimate agrees; a good
    Gaussian fit keeps it on the round route, disagreement or a spread below ``compact_min_spread``
    leaves it to the network, and the option off (as shipped) never asks for the second estimate. With
    ``round_min_match`` above the estimate's match with the fitted Gaussian, the round route's photo is
    given the compact-shake check first and stays round only when the second estimate disagrees; the same
    with ``round_doubt_residual`` below the fit's residual (over the noise's)."""
    import dataclasses

    import sharpkd.deblur.teacher as tm
    from sharpkd.deblur.estimate import anisotropy, kernel_spread
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    blob = np.zeros((31, 31))
    blob[13:18, 13:18] = 1.0  # compact, anisotropy below 1.4, not a Gaussian
    blob[15, 18] = 1.0
    blob /= blob.sum()
    assert anisotropy(blob) < 1.4 and 1.0 < kernel_spread(blob) < 2.0
    other = np.zeros((31, 31))
    other[15, 8:23] = 1 / 15  # what a disagreeing second estimate finds
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    refined = []
    monkeypatch.setattr(teacher, "_refine", lambda img, k, noise: refined.append(1) or k)
    x = torch.full((1, 3, 96, 96), 0.5)
    from sharpkd.deblur.estimate import kernel_match
    from sharpkd.degrade import gaussian_kernel

    m = kernel_match(blob, gaussian_kernel(1.5))
    assert 0.5 < m < 0.98
    doubtful = 1.0 * np.sqrt(2) * teacher.config.min_noise  # a fit residual of 1.0 x the noise's (flat photo)
    for agreement, min_spread, second, fit, min_match, doubt, route, n_estimates in (
            (0.0, 0.0, blob, (1.5, 9.0), 0.0, 0.0, "network", 1),  # off: as shipped
            (0.9, 0.0, blob, (1.5, 9.0), 0.0, 0.0, "shake", 2),
            (0.9, 0.0, blob, (1.5, 0.0), 0.0, 0.0, "round", 1),  # a Gaussian explains it
            (0.9, 0.0, other, (1.5, 9.0), 0.0, 0.0, "network", 2),  # the second estimate disagrees
            (0.9, 3.0, blob, (1.5, 9.0), 0.0, 0.0, "network", 1),  # smaller than compact_min_spread
            (0.9, 0.0, blob, (1.5, 0.0), m - 0.01, 0.0, "round", 1),  # matches the Gaussian well enough
            (0.9, 0.0, blob, (1.5, 0.0), m + 0.01, 0.0, "shake", 2),  # unlike it, and confirmed
            (0.9, 0.0, other, (1.5, 0.0), m + 0.01, 0.0, "round", 2),  # unlike it, not confirmed: round
            (0.9, 0.0, blob, (1.5, doubtful), 0.0, 0.0, "round", 1),  # residual within round_residual: round
            (0.9, 0.0, blob, (1.5, doubtful), 0.0, 0.9, "shake", 2),  # above round_doubt_residual, confirmed
            (0.9, 0.0, blob, (1.5, doubtful), 0.0, 1.1, "round", 1),  # below it
            (0.9, 0.0, other, (1.5, doubtful), 0.0, 0.9, "round", 2)):  # above it, not confirmed: round
        calls = []

        def fake_estimate(img, cfg, second=second, calls=calls):
            calls.append(cfg)
            return (blob if len(calls) == 1 else second).copy()

        monkeypatch.setattr(tm, "estimate_kernel", fake_estimate)
        monkeypatch.setattr(tm, "fit_gaussian_width", lambda blurred, latent, fit=fit: fit)
        teacher.config = dataclasses.replace(teacher.config, compact_agreement=agreement, compact_min_spread=min_spread,
                                             round_min_match=min_match, round_doubt_residual=doubt)
        refined.clear()
        est = teacher.estimate(x)[0]
        assert est.route == route, (agreement, min_spread, fit, min_match, doubt)
        assert len(calls) == n_estimates
        assert bool(refined) == (route == "shake")
        if route == "shake":
            assert np.array_equal(est.kernel, blob) and est.agreement > 0.99


def test_gaussian_width_fit_recovers_the_width_and_flags_other_blur():
    """fit_gaussian_width with the sharp image as the latent: the true width, a residual at the noise
    level; a camera-shake blur leaves a residual several times larger."""
    import skimage.data

    from sharpkd.deblur.estimate import fit_gaussian_width
    from sharpkd.degrade import gaussian_kernel

    sharp = skimage.data.astronaut()[100:260, 120:280]
    noise_rms = np.sqrt(2) * np.sqrt(1 / 3) / 255  # grey gradient of 1/255 RGB noise, before rounding
    for sigma in (1.0, 2.5):
        width, resid = fit_gaussian_width(protocol_degrade(sharp, gaussian_kernel(sigma), 0), sharp)
        assert width == pytest.approx(sigma, abs=0.1) and resid < 2 * noise_rms
    _, resid = fit_gaussian_width(protocol_degrade(sharp, make_kernel("motion", length=15, seed=3, size=21), 0), sharp)
    assert resid > 4 * noise_rms


def test_gaussian_width_fit_scores_each_width_as_the_two_dimensional_kernel_does():
    """The fit blurs with two 1-D passes; its residual at each width equals the one from a 2-D convolution
    with degrade.gaussian_kernel, so the fit picks the width the 2-D kernel would."""
    from scipy.ndimage import convolve

    from sharpkd.deblur.estimate import fit_gaussian_width
    from sharpkd.degrade import gaussian_kernel

    rng = np.random.default_rng(4)
    latent = rng.random((90, 110, 3))
    blurred = np.clip(latent + rng.normal(0, 0.05, latent.shape), 0, 1)
    grey = lambda a: a @ np.array([0.299, 0.587, 0.114])  # noqa: E731  (the fit's luma)
    y, x = grey(blurred), grey(latent)
    for s in (0.45, 1.3, 3.05):
        b = convolve(x, gaussian_kernel(s), mode="reflect")
        err = sum(float(((np.diff(b, axis=a)[12:-12, 12:-12] - np.diff(y, axis=a)[12:-12, 12:-12]) ** 2).mean())
                  for a in (0, 1))
        width, resid = fit_gaussian_width(blurred, latent, sigmas=np.array([s]))
        assert width == s and resid == pytest.approx(np.sqrt(err / 2), rel=1e-9)


def test_ffdnet_channels_last_pass_matches_plain_convolutions():
    """FFDNet runs its convolutions on channels-last activations; the output equals the same layers applied
    to ordinary tensors, for odd sizes and a batch with one noise level per image."""
    import torch.nn.functional as F

    from sharpkd.deblur.denoiser import FFDNet

    torch.manual_seed(0)
    net = FFDNet(width=8, depth=3).eval()
    x = torch.rand(2, 3, 13, 18)
    sigma = torch.tensor([0.02, 0.1])
    with torch.no_grad():
        out = net(x, sigma)
        y = F.pixel_unshuffle(F.pad(x, (0, 0, 0, 1), mode="replicate"), 2)
        y = torch.cat([y, sigma.reshape(-1, 1, 1, 1).expand(2, 1, *y.shape[-2:])], 1)
        for n, conv in enumerate(net.body):
            y = F.conv2d(y, conv.weight, conv.bias, padding=1)
            y = F.relu(y) if n < 2 else y
        ref = F.pixel_shuffle(y, 2)[..., :13, :18]
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_onnx_prior_gives_the_torch_answer_for_odd_sizes_and_batches():
    """OnnxFFDNet (the priors' convolutions run by ONNX Runtime) returns FFDNet's output to float rounding, for
    odd sizes, a batch with one noise level per image and a plain float noise level."""
    from sharpkd.deblur.denoiser import FFDNet, OnnxFFDNet

    torch.manual_seed(0)
    net = FFDNet(width=8, depth=3).eval()
    runner = OnnxFFDNet(net, threads=1)
    for x, sigma in ((torch.rand(2, 3, 13, 18), torch.tensor([0.02, 0.1])), (torch.rand(1, 3, 20, 31), 0.05)):
        with torch.no_grad():
            ref = net(x, sigma)
        out = runner(x, sigma)
        assert out.shape == x.shape
        assert torch.allclose(out, ref, atol=1e-5)


def test_teacher_solver_runs_its_prior_with_onnx_runtime_only_without_gradients(crop):
    """With ``prior_backend`` "onnx" the solver's denoiser is an OnnxFFDNet made once per prior and reused; the
    deconvolution equals the PyTorch prior's; after the weights change in place a new one is made (so a
    fine-tuned prior is never run with stale weights); with gradients on, or "torch", the module itself runs."""
    from sharpkd.deblur.denoiser import OnnxFFDNet
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig
    from sharpkd.degrade import gaussian_kernel

    torch.manual_seed(0)
    teacher = BlindTeacher(config=BlindTeacherConfig(iters=3, cg_steps=2))
    teacher.denoiser = type(teacher.denoiser)(width=8, depth=3).eval()
    y = to_t(crop)
    k = gaussian_kernel(1.5)
    with torch.no_grad():
        first = teacher._runner(teacher.denoiser, y)
        assert isinstance(first, OnnxFFDNet) and teacher._runner(teacher.denoiser, y) is first
        fast = teacher._solve(y, k, 0.01)
        teacher.prior_backend = "torch"
        assert teacher._runner(teacher.denoiser, y) is teacher.denoiser
        slow = teacher._solve(y, k, 0.01)
        assert torch.allclose(fast, slow, atol=1e-4)
        teacher.prior_backend = "onnx"
        teacher.denoiser.body[0].bias.add_(0.1)
        assert teacher._runner(teacher.denoiser, y) is not first
        assert len(teacher._runners) == 1  # the stale one is dropped
    assert teacher._runner(teacher.denoiser, y) is teacher.denoiser  # gradients on


def test_refining_against_a_sharp_latent_tightens_a_thick_kernel():
    """refine_kernel: given the sharp image as the latent, a too-thick estimate moves to the true shape."""
    import skimage.data
    from scipy.ndimage import gaussian_filter

    from sharpkd.deblur.estimate import kernel_match, refine_kernel

    sharp = skimage.data.astronaut()[100:260, 120:280]
    k = make_kernel("motion", length=13, seed=3, size=21)
    blurred = protocol_degrade(sharp, k, 0)
    thick = gaussian_filter(k, 1.5)
    thick /= thick.sum()
    refined = refine_kernel(blurred, sharp, thick, EstimateConfig(kernel_size=21))
    assert refined.shape == k.shape and refined.sum() == pytest.approx(1)
    assert kernel_match(k, refined) > kernel_match(k, thick) + 0.05
    assert kernel_match(k, k) == pytest.approx(1) and kernel_match(k, np.rot90(k)) < 0.9


def test_refinement_keeps_a_faint_separate_part_of_the_kernel_only_when_told():
    """refine_kernel's cleaning: a separate faint stretch of the path (8 % of the weight, a fifth of the peak) is
    dropped with the shipped minimum part mass (0.1) and kept with ``min_mass=0``; a threshold above its level
    drops it too."""
    import skimage.data

    from sharpkd.deblur.estimate import refine_kernel

    sharp = skimage.data.astronaut()[100:260, 120:280]
    k = np.zeros((21, 21))
    k[10, 4:13] = 0.92 / 9  # the main stroke
    k[14, 15:19] = 0.08 / 4  # a faint stroke, apart from it
    blurred = protocol_degrade(sharp, k, 0)
    faint = (slice(12, 17), slice(13, 21))  # around the faint stroke, wherever the result is re-centred

    def faint_mass(**cleaning) -> float:
        out = refine_kernel(blurred, sharp, k, EstimateConfig(kernel_size=21), **cleaning)
        assert out.sum() == pytest.approx(1)
        return float(out[faint].sum())

    assert faint_mass() == 0
    assert 0.04 < faint_mass(min_mass=0.0) < 0.12
    assert faint_mass(threshold=0.5, min_mass=0.0) == 0


def test_cli_saves_the_kernel_and_the_route(tmp_path, crop):
    import json

    from PIL import Image

    from sharpkd.cli import main

    blurred = protocol_degrade(crop, make_kernel("motion", length=9, seed=2, size=15), 0)
    Image.fromarray(blurred).save(tmp_path / "b.png")
    assert main(["-q", "sharpen", str(tmp_path / "b.png"), "-o", str(tmp_path / "o.png"), "--model", "teacher",
                 "--save-kernel", str(tmp_path / "k")]) == 0
    k = np.load(tmp_path / "k" / "o.png.kernel.npy")
    report = json.loads((tmp_path / "k" / "o.png.kernel.json").read_text())
    assert k.sum() == pytest.approx(1) and report["route"] in ("shake", "round", "network") and report["noise_255"] > 0
    assert Image.open(tmp_path / "k" / "o.png.kernel.png").size == (k.shape[1] * 8, k.shape[0] * 8)


def test_estimate_iters_reaches_both_estimates_and_old_files_keep_five(monkeypatch):
    """``estimate_iters`` sets the alternations per pyramid level of the teacher's first estimate and of
    its agreement check; a config without the field (files written before it) keeps the estimator's 5."""
    import sharpkd.deblur.teacher as tm
    from sharpkd.checkpoint import config_to_dict
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    line = np.zeros((31, 31))
    line[15, 9:22] = 1 / 13  # elongated enough to ask for the second estimate
    seen = []
    monkeypatch.setattr(tm, "estimate_kernel", lambda img, cfg: seen.append(cfg) or line.copy())
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net, estimate_iters=8))
    monkeypatch.setattr(teacher, "_refine", lambda img, k, noise: k)
    assert teacher.estimate(torch.full((1, 3, 96, 96), 0.5))[0].route == "shake"
    assert [c.iters for c in seen] == [8, 8] and seen[1].lam != seen[0].lam  # the check is the other estimate
    old = config_to_dict(BlindTeacherConfig())
    old.pop("estimate_iters")
    assert BlindTeacherConfig(**old).estimate_iters == EstimateConfig().iters == 5


def test_refine_rounds_refines_the_kernel_against_each_new_deconvolution(monkeypatch):
    """``refine_rounds`` = n: n conservative deconvolutions, each with the kernel the last refinement gave (0: the
    L0 kernel as it is, no solver run); ``refine_threshold`` / ``refine_min_mass`` reach the refinement."""
    import dataclasses

    import sharpkd.deblur.teacher as teacher_module
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig
    from sharpkd.degrade import gaussian_kernel

    teacher = BlindTeacher(config=BlindTeacherConfig(iters=2, cg_steps=1))
    solved, refined = [], []
    monkeypatch.setattr(teacher, "_solve", lambda img, k, noise, route="": solved.append(k.copy()) or img)

    cleaning = []

    def fake_refine(blurred, latent, kernel, config, threshold, min_mass):
        refined.append(kernel.copy())
        cleaning.append((threshold, min_mass))
        return kernel * 0 + len(refined)  # a different kernel each round

    monkeypatch.setattr(teacher_module, "refine_kernel", fake_refine)
    k0 = gaussian_kernel(1.0, 5)
    for rounds in (0, 1, 2):
        solved.clear()
        refined.clear()
        teacher.config = dataclasses.replace(teacher.config, refine_rounds=rounds)
        out = teacher._refine(torch.rand(3, 40, 40), k0, 0.01)
        assert len(solved) == len(refined) == rounds and np.all(out == rounds if rounds else out == k0)
        if rounds:
            assert np.array_equal(solved[0], k0) and all(np.all(k == i) for i, k in enumerate(solved[1:], 1))
    assert set(cleaning) == {(0.05, 0.1)}  # as shipped
    teacher.config = dataclasses.replace(teacher.config, refine_rounds=1, refine_threshold=0.02, refine_min_mass=0.0)
    teacher._refine(torch.rand(3, 40, 40), k0, 0.01)
    assert cleaning[-1] == (0.02, 0.0)


def test_shake_average_deconvolves_with_both_kernels_and_averages(monkeypatch):
    """``shake_average``: the camera-shake estimate carries the L0 kernel it was refined from, and restore averages
    the deconvolutions with both kernels; off (as shipped), one deconvolution with the refined kernel."""
    import dataclasses

    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig, BlurEstimate
    from sharpkd.degrade import gaussian_kernel

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    k0, refined = gaussian_kernel(1.0, 5), gaussian_kernel(2.0, 5)
    monkeypatch.setattr(teacher, "_refine", lambda img, k, noise: refined)
    solved = []

    def fake_solve(img, kernel, noise, route=""):
        solved.append((route, kernel))
        return torch.full_like(img, float(kernel.max()))  # a result that names its kernel

    monkeypatch.setattr(teacher, "_solve", fake_solve)
    x = torch.rand(1, 3, 40, 40)
    off = teacher._shake(x[0], k0, 0.01, 0.95)
    assert off.unrefined is None and off.kernel is refined and off.route == "shake"
    assert torch.allclose(teacher.restore(x, [off]), torch.full_like(x, float(refined.max())))
    assert [r for r, _ in solved] == ["shake"]
    teacher.config = dataclasses.replace(teacher.config, shake_average=True)
    on = teacher._shake(x[0], k0, 0.01, 0.95)
    assert on.unrefined is k0 and on.kernel is refined
    solved.clear()
    out = teacher.restore(x, [on])
    assert [(r, k is refined or k is k0) for r, k in solved] == [("shake", True), ("shake", True)]
    assert torch.allclose(out, torch.full_like(x, (float(refined.max()) + float(k0.max())) / 2))
    # with shake_average_check, the second estimate's kernel is the third result of the mean
    other = gaussian_kernel(3.0, 5)
    assert teacher._shake(x[0], k0, 0.01, 0.95, other).check is None  # off: not kept
    teacher.config = dataclasses.replace(teacher.config, shake_average_check=True)
    three = teacher._shake(x[0], k0, 0.01, 0.95, other)
    assert three.check is other and three.unrefined is k0
    assert teacher._shake(x[0], k0, 0.01, 0.95).check is None  # no second estimate, nothing to add
    solved.clear()
    out = teacher.restore(x, [three])
    assert len(solved) == 3 and any(k is other for _, k in solved)
    mean = (float(refined.max()) + float(k0.max()) + float(other.max())) / 3
    assert torch.allclose(out, torch.full_like(x, mean))
    # the round route is not averaged
    solved.clear()
    teacher.restore(x, [BlurEstimate(refined, 0.01, "round")])
    assert [r for r, _ in solved] == ["round"]


def test_shake_soften_blurs_only_the_camera_shake_result(monkeypatch):
    """``shake_soften`` blurs the camera-shake route's result by a Gaussian of that width (0: untouched); the
    round route's result is never softened; ``soften`` keeps the mean and lowers the detail."""
    import dataclasses

    from sharpkd.deblur.solve import soften
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig, BlurEstimate
    from sharpkd.degrade import gaussian_kernel

    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 40)
    assert soften(x, 0) is x
    soft = soften(x, 0.7)
    assert soft.shape == x.shape and abs(float(soft.mean() - x.mean())) < 1e-3
    assert float(soft.diff(dim=-1).abs().mean()) < 0.7 * float(x.diff(dim=-1).abs().mean())
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    monkeypatch.setattr(teacher, "_solve", lambda img, kernel, noise, route="": x.clone())
    k = gaussian_kernel(1.0, 5)
    shake, round_ = BlurEstimate(k, 0.01, "shake"), BlurEstimate(k, 0.01, "round")
    assert torch.equal(teacher.restore(x, [shake]), x)
    teacher.config = dataclasses.replace(teacher.config, shake_soften=0.7)
    assert torch.allclose(teacher.restore(x, [shake]), soft)
    assert torch.equal(teacher.restore(x, [round_]), x)


def test_route_iterations_and_geometric_ensemble_reach_the_solver(monkeypatch):
    """``shake_iters`` / ``round_iters`` set the HQS iterations of the final camera-shake run and of the round
    route's run (0: ``iters``); the refinement's conservative run keeps ``iters``; ``geo_ensemble`` reaches
    every run. Files written before the fields existed load with them off."""
    import dataclasses

    import sharpkd.deblur.teacher as teacher_module
    from sharpkd.checkpoint import config_to_dict
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig, BlurEstimate
    from sharpkd.degrade import gaussian_kernel

    calls = []
    monkeypatch.setattr(teacher_module, "hqs_deconvolve",
                        lambda img, k, prior, **kw: calls.append((kw["iters"], kw["geo_ensemble"])) or img)
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net, iters=8))
    k = gaussian_kernel(1.0)
    img = torch.rand(1, 3, 48, 48)
    ests = [BlurEstimate(k, 0.01, route="shake"), BlurEstimate(k, 0.01, route="round")]
    for shake, rnd, geo, want in ((0, 0, False, [(8, False)] * 2), (16, 12, True, [(16, True), (12, True)])):
        calls.clear()
        teacher.config = dataclasses.replace(teacher.config, shake_iters=shake, round_iters=rnd, geo_ensemble=geo)
        teacher.restore(torch.cat([img, img]), ests)
        assert calls == want
    # shake_cg_steps: the camera-shake route's runs (final and refinement) only; the round route keeps cg_steps
    steps = []
    monkeypatch.setattr(teacher_module, "hqs_deconvolve",
                        lambda img, k, prior, **kw: steps.append(kw["cg_steps"]) or img)
    for field, want in ((0, [8, 8]), (4, [4, 8])):
        steps.clear()
        teacher.config = dataclasses.replace(teacher.config, cg_steps=8, shake_cg_steps=field)
        teacher.restore(torch.cat([img, img]), ests)
        assert steps == want
    teacher.config = dataclasses.replace(teacher.config, shake_cg_steps=0, geo_ensemble=True)
    monkeypatch.setattr(teacher_module, "hqs_deconvolve",
                        lambda img, k, prior, **kw: calls.append((kw["iters"], kw["geo_ensemble"])) or img)
    calls.clear()
    teacher.config = dataclasses.replace(teacher.config, refine_rounds=1)
    monkeypatch.setattr(teacher_module, "refine_kernel", lambda blurred, latent, kernel, config, **cleaning: kernel)
    teacher._refine(torch.rand(3, 140, 140), gaussian_kernel(1.0, 31), 0.01)
    assert calls == [(8, True)]
    old = config_to_dict(BlindTeacherConfig())
    for key in ("shake_iters", "round_iters", "geo_ensemble", "shake_cg_steps"):
        old.pop(key)
    assert BlindTeacherConfig(**old) == BlindTeacherConfig()


def test_dark_pixels_are_where_some_window_has_its_minimum():
    """The separable opening marks exactly the pixels that are the minimum of some square window (checked
    against the 2-D erosion and dilation), every pixel for a 1-pixel window."""
    import torch.nn.functional as F

    from sharpkd.deblur.estimate import dark_pixels

    x = torch.rand(40, 53, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for patch in (3, 7):
        eroded = -F.max_pool2d(-x[None, None], patch, stride=1, padding=patch // 2)
        opened = F.max_pool2d(eroded, patch, stride=1, padding=patch // 2)[0, 0]
        mask = dark_pixels(x, patch)
        assert torch.equal(mask, opened >= x) and 0 < int(mask.sum()) < x.numel()
        r = patch // 2
        for i, j in zip(*np.nonzero(mask.numpy())[:2], strict=True):  # brute force: windows centred on the
            # image, clipped at its edges, that contain the pixel
            centres = [(a, b) for a in range(max(0, i - r), min(40, i + r + 1))
                       for b in range(max(0, j - r), min(53, j + r + 1))]
            assert any(float(x[max(0, a - r) : a + r + 1, max(0, b - r) : b + r + 1].min()) == float(x[i, j])
                       for a, b in centres), (i, j)
    assert bool(dark_pixels(x, 1).all())


def test_dark_channel_term_darkens_the_latent_image_and_keeps_the_estimator_working():
    """The latent step with the dark-channel term returns an image whose dark-channel pixels are darker than
    the plain L0 step's (the term pulls them to zero), and the estimator with it still finds a horizontal
    line as horizontal."""
    from sharpkd.deblur.estimate import dark_pixels, l0_dark_latent, l0_latent

    rng = np.random.default_rng(1)
    img = np.full((64, 64), 0.6)
    for _ in range(12):
        y0, x0, s = rng.integers(0, 52), rng.integers(0, 52), rng.integers(4, 12)
        img[y0 : y0 + s, x0 : x0 + s] = rng.choice([0.05, 0.9])
    k = np.zeros((9, 9))
    k[4, 1:8] = 1 / 7
    y = torch.from_numpy(convolve(img, k, mode="wrap"))
    otf = psf2otf(torch.from_numpy(k), 64, 64)[0]
    dxo, dyo = gradient_otfs(64, 64)
    plain = l0_latent(y, otf, 2e-3, dxo, dyo)
    dark = l0_dark_latent(y, otf, 2e-3, 0.05, 9, dxo, dyo)
    mask = dark_pixels(plain, 9)
    assert float(dark[mask].mean()) < float(plain[mask].mean()) - 0.005

    blurred = squares_blurred_by_a_line(rng)
    est = estimate_kernel(blurred, EstimateConfig(kernel_size=15, dark_lam=2e-3, dark_patch=15))
    assert est.sum() == pytest.approx(1) and est.min() >= 0
    yy, xx = np.mgrid[:15, :15]
    cy, cx = (est * yy).sum(), (est * xx).sum()
    assert (est * (xx - cx) ** 2).sum() > 2 * (est * (yy - cy) ** 2).sum()


def test_reblur_residual_prefers_the_true_kernel_to_wrong_blurs(crop):
    """A photo blurred by a known camera-shake kernel is explained better (smaller residual) by that kernel
    than by the same kernel turned by 20 or 90 degrees, thickened, or twice as long. (It does not rank blur
    against no blur: a sharp cartoon of the blurred photo itself can leave less. The teacher only compares
    two estimates that already agree on a blur.)"""
    from scipy.ndimage import gaussian_filter, rotate

    from sharpkd.deblur.estimate import reblur_residual

    big = np.ascontiguousarray(np.tile(crop, (2, 2, 1)))  # 194 x 206
    cfg = EstimateConfig(kernel_size=15)
    for seed, length in ((3, 9.0), (5, 12.0)):
        k = make_kernel("motion", length=length, seed=seed, size=15)
        blurred = protocol_degrade(big, k, 7)
        turned = rotate(k, 20, reshape=False, order=1).clip(0)
        thick = gaussian_filter(k, 1.0)
        longer = make_kernel("motion", length=2 * length, seed=seed, size=15)
        true = reblur_residual(blurred, k, cfg)
        for wrong in (np.rot90(k).copy(), turned / turned.sum(), thick / thick.sum(), longer):
            assert true < 0.97 * reblur_residual(blurred, wrong, cfg), seed


def test_pick_by_residual_chooses_the_estimate_that_explains_the_photo(monkeypatch):
    """With ``pick_by_residual`` a camera-shake photo is refined and deconvolved from whichever of its two
    estimates has the smaller reblur residual; off (old files), always from the first."""
    import dataclasses

    import sharpkd.deblur.teacher as tm
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    first = np.zeros((31, 31))
    first[15, 9:22] = 1 / 13
    second = np.zeros((27, 27))
    second[13, 7:20] = 0.7 / 13
    second[14, 7:20] = 0.3 / 13  # agrees with the first (same line, a little thicker)
    calls = []

    def fake_estimate(img, cfg):
        calls.append(cfg)
        return (first if len(calls) == 1 else second).copy()

    monkeypatch.setattr(tm, "estimate_kernel", fake_estimate)
    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net))
    refined = []
    monkeypatch.setattr(teacher, "_refine", lambda img, k, noise: refined.append(k) or k)
    x = torch.full((1, 3, 96, 96), 0.5)
    for pick, residuals, chosen in ((False, (2.0, 1.0), first), (True, (2.0, 1.0), second),
                                    (True, (1.0, 2.0), first)):
        teacher.config = dataclasses.replace(teacher.config, pick_by_residual=pick)
        seen = []

        def fake_residual(img, kern, cfg, pad=None, residuals=residuals, seen=seen):
            seen.append((kern.shape[0], pad))
            return residuals[0] if kern.shape[0] == 31 else residuals[1]

        monkeypatch.setattr(tm, "reblur_residual", fake_residual)
        calls.clear()
        refined.clear()
        est = teacher.estimate(x)[0]
        assert est.route == "shake" and len(calls) == 2
        assert refined[0] is not None and np.array_equal(refined[0], chosen)
        assert len(seen) == (2 if pick else 0) and all(p == 31 for _, p in seen)


def test_a_jpeg_files_quantisation_step_raises_the_blind_models_noise_floor(tmp_path, crop):
    """JPEG compression removes the detail the noise estimate reads: a JPEG file's step (read from its tables)
    lifts the noise level of the teacher and of the kernel student's estimator to ``jpeg_noise`` x the step;
    lossless files, and configs without ``jpeg_noise``, are estimated as before."""
    import dataclasses

    from PIL import Image

    from sharpkd.imageio import read_image
    from sharpkd.infer import Sharpener

    blurred = protocol_degrade(crop, make_kernel("gaussian", sigma=1.5, size=9), 0)
    Image.fromarray(blurred).save(tmp_path / "b.jpg", quality=90)
    Image.fromarray(blurred).save(tmp_path / "b.png")
    jpg, png = read_image(tmp_path / "b.jpg"), read_image(tmp_path / "b.png")
    assert png.jpeg_step is None and jpg.jpeg_step == 11  # the median of Pillow's luma table at quality 90
    for name in ("teacher", "kstudent"):
        sh = Sharpener.from_pretrained(name, tile=0, ensemble=1)
        teacher = sh.model.estimator if name == "kstudent" else sh.model
        x = torch.from_numpy(jpg.rgb).permute(2, 0, 1)[None]
        teacher.config = dataclasses.replace(teacher.config, jpeg_noise=0.0)
        plain = sh.estimate_blur(x, jpeg_step=jpg.jpeg_step)[0].noise
        assert plain == sh.estimate_blur(x)[0].noise < 0.4 * 11 / 255  # ignored when the config does not ask
        teacher.config = dataclasses.replace(teacher.config, jpeg_noise=0.4)
        out = sh.sharpen_image(jpg)
        assert out.rgb.shape == jpg.rgb.shape and out.jpeg_step == jpg.jpeg_step
        assert sh.last_estimates[0].noise == pytest.approx(0.4 * 11 / 255)
        sh.sharpen_image(png)
        assert sh.last_estimates[0].noise == pytest.approx(sh.estimate_blur(to_t(blurred))[0].noise)
        with Image.open(tmp_path / "b.jpg") as im:  # a PIL image opened from a JPEG file: the same step
            assert sh(im).size == im.size
        assert sh.last_estimates[0].noise == pytest.approx(0.4 * 11 / 255)
