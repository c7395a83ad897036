import math

import numpy as np
import pytest
import torch

from sharpkd.degrade import blur, gaussian_kernel
from sharpkd.losses import (
    FeatureAdapter,
    LossWeights,
    VGG16Features,
    charbonnier,
    combined_loss,
    feature_distillation,
    l1,
    perceptual,
    psnr_loss,
)
from sharpkd.metrics import batch_psnr, psnr, sharpness, ssim


def test_l1_and_charbonnier_known_values():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.5)
    assert l1(a, b).item() == pytest.approx(0.5)
    assert charbonnier(a, b, eps=1e-3).item() == pytest.approx(math.sqrt(0.25 + 1e-6))
    assert charbonnier(a, a, eps=1e-3).item() == pytest.approx(1e-3)


def test_psnr_loss_is_minus_mean_psnr_and_weighs_images_by_relative_error():
    target = torch.zeros(2, 3, 8, 8)
    pred = torch.stack([torch.full((3, 8, 8), 0.1), torch.full((3, 8, 8), 0.01)])
    # PSNR 20 dB and 40 dB: the loss is minus their mean over 100
    assert psnr_loss(pred, target).item() == pytest.approx(-0.30, abs=1e-5)
    # halving an image's error gains the same 6 dB whether that error was large or small: both
    # images get gradients of the same total size, unlike with L1 or MSE
    p = pred.clone().requires_grad_(True)
    psnr_loss(p, target).backward()
    g = p.grad.flatten(1)
    assert (g[0] * pred[0].flatten()).sum() == pytest.approx((g[1] * pred[1].flatten()).sum().item(), rel=1e-4)


def test_psnr_known_value():
    a = np.zeros((4, 4, 3))
    b = np.full((4, 4, 3), 10.0)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == float("inf")
    t = torch.zeros(2, 3, 5, 5)
    u = t + 0.1
    assert batch_psnr(u, t).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    with pytest.raises(ValueError):
        psnr(a, b[:2])


def test_ssim_identity_and_drop(photo):
    assert ssim(photo, photo) == pytest.approx(1.0)
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 20, photo.shape), 0, 255)
    assert ssim(photo, noisy) < 0.9


def test_sharpness_drops_with_blur(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    y = blur(x, gaussian_kernel(2.0))[0].permute(1, 2, 0).numpy()
    assert sharpness(photo / 255.0) > 2 * sharpness(y)


def test_vgg_weights_load_and_layer_shapes():
    vgg = VGG16Features()
    feats = vgg(torch.rand(1, 3, 20, 28))
    assert [f.shape[1] for f in feats] == [64, 128, 256]
    assert [tuple(f.shape[-2:]) for f in feats] == [(20, 28), (10, 14), (5, 7)]
    assert not any(p.requires_grad for p in vgg.parameters())


def test_perceptual_distance_grows_with_blur(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    d = [perceptual(blur(x, gaussian_kernel(s)), x).item() for s in (0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(d, d[1:], strict=False))
    assert perceptual(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_feature_distillation_resizes_and_is_zero_when_matched():
    adapter = FeatureAdapter(8, 16)
    s = torch.rand(2, 8, 5, 7)
    t = torch.rand(2, 16, 10, 14)
    loss = feature_distillation(s, t, adapter)
    loss.backward()
    assert adapter.proj.weight.grad is not None
    ident = FeatureAdapter(4, 4)
    with torch.no_grad():
        ident.proj.weight.copy_(torch.eye(4)[..., None, None])
        ident.proj.bias.zero_()
    f = torch.rand(1, 4, 6, 6)
    assert feature_distillation(f, f, ident).item() == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_reports_each_part():
    pred = torch.rand(2, 3, 16, 16, requires_grad=True)
    sharp, tout = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    w = LossWeights(rec=1.0, perceptual=0.01, kd_out=0.5, kd_feat=0.0, recon="l1")
    total, parts = combined_loss(w, pred, sharp, teacher_out=tout)
    assert set(parts) == {"rec", "perceptual", "kd_out"}
    expected = parts["rec"] + 0.01 * parts["perceptual"] + 0.5 * parts["kd_out"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert pred.grad is not None
    with pytest.raises(ValueError):
        combined_loss(LossWeights(kd_out=1.0), pred, sharp)


def test_cheaper_perceptual_term_fewer_taps_and_every_kth_step():
    from sharpkd.losses import perceptual, vgg16_features
    from sharpkd.train import TrainConfig, check_config

    vgg = vgg16_features()
    x, y = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    assert [f.shape[1] for f in vgg(x, 1)] == [64] and [f.shape[1] for f in vgg(x, 2)] == [64, 128]
    one, three = perceptual(x, y, vgg, taps=1), perceptual(x, y, vgg, taps=3)
    assert torch.isclose(one, (vgg(x, 1)[0] - vgg(y, 1)[0]).abs().mean()) and not torch.isclose(one, three)
    cfg = TrainConfig(stage="student", distill=False, w_perceptual=0.01, perceptual_every=4, perceptual_taps=1)
    assert [cfg.loss_weights(s).perceptual for s in range(5)] == [0.01, 0, 0, 0, 0.01]
    assert cfg.loss_weights(0).perceptual_taps == 1
    with pytest.raises(ValueError, match="perceptual-every"):
        check_config(TrainConfig(stage="student", distill=False, perceptual_every=0), 1)
