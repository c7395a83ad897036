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
