import numpy as np
import pytest
import torch

from sharpkd.degrade import (
    DegradeConfig,
    add_noise,
    blur,
    defocus_kernel,
    degrade_batch,
    gaussian_kernel,
    make_kernel,
    motion_kernel,
    random_kernel,
)
from sharpkd.metrics import psnr


def test_gaussian_kernel_support_and_sum():
    k = gaussian_kernel(2.0)
    assert k.shape == (13, 13)  # 2*ceil(3*2)+1
    assert k.sum() == pytest.approx(1.0)
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1])
    assert k.argmax() == 13 * 6 + 6


@pytest.mark.parametrize("kind", ["gaussian", "defocus", "motion"])
def test_every_kernel_sums_to_one_and_is_non_negative(kind):
    rng = np.random.default_rng(3)
    for _ in range(5):
        k = make_kernel(kind, sigma=rng.uniform(0.3, 3.5), radius=rng.uniform(0.5, 5), length=rng.uniform(2, 25),
                        seed=int(rng.integers(100)))
        assert k.sum() == pytest.approx(1.0)
        assert (k >= 0).all()
        assert k.shape[0] % 2 == 1


def test_random_kernels_fit_the_configured_size():
    cfg = DegradeConfig(kernel_size=31)
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = random_kernel(rng, cfg)
        assert k.shape == (31, 31)
        assert k.sum() == pytest.approx(1.0)


def test_motion_kernel_is_centred_and_has_length():
    k = motion_kernel(np.random.default_rng(1), length=15, size=31)
    yy, xx = np.mgrid[:31, :31]
    assert abs((k * yy).sum() - 15) <= 1.0 and abs((k * xx).sum() - 15) <= 1.0
    # a 15-pixel path covers many pixels; a delta would cover one
    assert (k > 1e-3).sum() >= 8


def test_defocus_small_radius_is_nearly_a_delta():
    assert defocus_kernel(0.3).max() > 0.9


def test_stronger_blur_gives_lower_psnr(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    scores = [psnr(x, blur(x, gaussian_kernel(s)), data_range=1.0) for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False))


def test_blur_keeps_size_and_constant_images():
    x = torch.full((2, 3, 17, 23), 0.4)
    y = blur(x, make_kernel("motion", length=20, seed=2))
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-6)


def test_blur_handles_kernel_larger_than_image():
    x = torch.rand(1, 3, 5, 7)
    assert blur(x, gaussian_kernel(3.0)).shape == x.shape


def test_blur_matches_scipy_convolution_away_from_borders(photo):
    from scipy.ndimage import convolve

    k = make_kernel("motion", length=9, seed=4)
    x = photo.astype(np.float64) / 255
    ref = convolve(x[..., 0], k, mode="reflect")
    out = blur(torch.from_numpy(x).permute(2, 0, 1)[None], k)[0, 0].numpy()
    r = k.shape[0] // 2 + 1
    assert np.allclose(out[r:-r, r:-r], ref[r:-r, r:-r], atol=1e-6)


def test_noise_level_and_seed():
    x = torch.zeros(4, 3, 64, 64)
    n1 = add_noise(x, torch.tensor([0.0, 0.01, 0.02, 0.05]), torch.Generator().manual_seed(0))
    n2 = add_noise(x, torch.tensor([0.0, 0.01, 0.02, 0.05]), torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2)
    assert n1[0].abs().max() == 0
    assert n1[3].std().item() == pytest.approx(0.05, rel=0.05)


def test_degrade_batch_is_reproducible_and_quantised():
    sharp = torch.rand(3, 3, 33, 29)
    cfg = DegradeConfig(jpeg_prob=0.5)
    a = degrade_batch(sharp, cfg, np.random.default_rng(7))
    b = degrade_batch(sharp, cfg, np.random.default_rng(7))
    c = degrade_batch(sharp, cfg, np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a * 255, torch.round(a * 255), atol=1e-4)
    assert a.min() >= 0 and a.max() <= 1


def test_bad_kernel_arguments():
    with pytest.raises(ValueError):
        gaussian_kernel(0)
    with pytest.raises(ValueError):
        make_kernel("swirl")
    with pytest.raises(ValueError):
        DegradeConfig(kinds=("gaussian",), kind_probs=(0.5, 0.5))
