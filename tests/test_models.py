import pytest
import torch

from sharpkd.checkpoint import build_preset, count_params, macs_per_pixel
from sharpkd.infer import run_padded
from sharpkd.models import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_odd_shapes(name):
    _, model = build_preset(name)
    x = torch.rand(1, 3, 37, 53)
    y = run_padded(model.eval(), x, getattr(model.config, "multiple", 1))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_untrained_models_start_near_identity(name):
    # residual output with a zero-initialised last layer (or zero residual scales)
    _, model = build_preset(name)
    m = getattr(model.config, "multiple", 1)
    x = torch.rand(2, 3, 4 * m, 4 * m)
    with torch.no_grad():
        assert torch.allclose(model(x), x, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_gradients_reach_every_parameter(name):
    _, model = build_preset(name)
    m = getattr(model.config, "multiple", 1)
    x = torch.rand(2, 3, 2 * m + m, 3 * m)
    # perturb the zero-initialised layers so gradients can flow through them
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out, feat = model(x, return_features=True)
    (out.square().mean() + feat.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_student_budget_and_feature_shape():
    _, student = build_preset("student")
    assert count_params(student) <= 150_000
    _, feat = student(torch.rand(1, 3, 32, 48), return_features=True)
    assert feat.shape[1] == student.feature_channels
    assert feat.shape[-2:] == (32 // student.feature_stride, 48 // student.feature_stride)


def test_macs_count_matches_a_hand_computed_conv():
    _, model = build_preset("resnet8")
    c = model.config.channels
    # head 3->c, 16 convs c->c, tail c->3, all 3x3: MACs per pixel
    expected = 9 * (3 * c + 16 * c * c + c * 3)
    assert macs_per_pixel(model) == pytest.approx(expected)


def test_wiener_bank_keeps_flat_images_and_orders_channels_by_sigma():
    from sharpkd.models.wiener import WienerBank

    bank = WienerBank((0.7, 2.0))
    x = torch.ones(1, 3, 20, 33) * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    y = bank(x)
    assert y.shape == (1, 6, 20, 33)
    # unit gain at zero frequency: a flat image comes back unchanged in every channel
    assert torch.allclose(y, x.repeat(1, 2, 1, 1), atol=1e-4)
    with pytest.raises(ValueError):
        WienerBank(())


def test_wiener_bank_undoes_the_blur_it_was_built_for():
    """On a blurred real photo, the bank channel whose sigma matches the blur recovers the most
    detail: it beats the blurred input by a wide margin, and it beats a channel built for a much
    wider blur (which over-sharpens and rings)."""
    import skimage.data

    from sharpkd.degrade import blur, gaussian_kernel
    from sharpkd.metrics import batch_psnr
    from sharpkd.models.wiener import WienerBank

    sharp = torch.from_numpy(skimage.data.astronaut()[60:156, 180:308].copy()).permute(2, 0, 1)[None].float() / 255.0
    g = torch.Generator().manual_seed(0)
    blurred = (blur(sharp, gaussian_kernel(1.4)) + torch.randn(sharp.shape, generator=g) / 255).clamp(0, 1)
    y = WienerBank((1.4, 3.6))(blurred).clamp(0, 1)
    c = (slice(None), slice(None), slice(16, -16), slice(16, -16))  # leave out the borders
    base = float(batch_psnr(blurred[c], sharp[c]))
    matched = float(batch_psnr(y[:, :3][c], sharp[c]))
    wide = float(batch_psnr(y[:, 3:][c], sharp[c]))
    assert matched > base + 1.5
    assert matched > wide + 1.0


@pytest.mark.parametrize("arch, first, skip", [("nafunet", "intro", 3), ("student", "head", 12)])
def test_widened_inputs_start_from_the_old_network(arch, first, skip):
    """Fine-tuning a network with an added Wiener bank from weights without one: the new input
    channels start at zero weight, so the widened network first computes what the old one did."""
    from sharpkd.checkpoint import build_model
    from sharpkd.train import widen_inputs

    small = {"width": 8, "middle_blocks": 1} if arch == "nafunet" else {"width": 8, "low_width": 8}
    torch.manual_seed(0)
    src = build_model(arch, small).eval()
    dst = build_model(arch, {**small, "wiener": [1.0, 2.0]}).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
        dst.load_state_dict(widen_inputs(src.state_dict(), dst.state_dict()))
        x = torch.rand(1, 3, 24, 40)
        assert torch.allclose(dst(x), src(x), atol=1e-5)
        w = getattr(dst, first).weight
        assert w.shape[1] == 3 * skip and w[:, skip:].abs().max() == 0  # the bank's channels follow the image's
        # and the bank reaches the output once those weights move
        w[:, skip:].normal_(0, 0.05)
        assert not torch.allclose(dst(x), src(x), atol=1e-3)


def test_reparameterised_student_collapses_to_the_same_plain_network(tmp_path):
    from sharpkd.checkpoint import build_preset, load_model, save_model

    _, rep = build_preset("student-x4r")
    with torch.no_grad():
        for p in rep.parameters():
            p.normal_(0, 0.05)  # every branch carries signal, the zero-initialised tail included
    rep.eval()
    x = torch.rand(2, 3, 40, 56)  # the borders matter: every branch must pad like one 3x3 convolution
    plain = rep.deploy()
    assert plain.config.rep == 0 and all(type(m).__name__ != "RepConv" for m in plain.modules())
    assert torch.allclose(rep(x), plain(x), atol=1e-5)
    _, x4 = build_preset("student-x4")
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in x4.state_dict().items()}
    # model files hold the collapsed network
    loaded, info = load_model(save_model(tmp_path / "m.safetensors", rep))
    assert info["config"]["rep"] == 0 and torch.allclose(loaded(x), rep(x), atol=1e-5)


def test_fresh_reparameterised_student_is_the_identity():
    from sharpkd.checkpoint import build_preset

    _, rep = build_preset("student-x4r")
    x = torch.rand(1, 3, 32, 48)
    assert torch.equal(rep.eval()(x), x)
