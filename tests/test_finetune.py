"""End-to-end fine-tuning of the blind teacher's solver: gradients, augmentation, a short run."""

import json

import numpy as np
import torch
from scipy.ndimage import convolve

from sharpkd.deblur.finetune import FinetuneConfig, case_kernel, sample_batch, train, validate
from sharpkd.deblur.solve import hqs_deconvolve, hqs_unrolled
from sharpkd.degrade import gaussian_kernel, make_kernel, pad_kernel


class TinyDenoiser(torch.nn.Module):
    """A residual 3x3 convolution that ignores the strength: enough to carry gradients."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        torch.nn.init.zeros_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x, sigma):
        return x + self.conv(x)


def kernel_sigma(k: np.ndarray) -> float:
    """The standard deviation of a normalised, centred 2-D kernel along one axis."""
    r = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    return float(np.sqrt((k.sum(1) * r**2).sum() / k.sum()))


def test_bank_blurs_mix_camera_shake_and_gaussians_of_the_asked_widths():
    rng = np.random.default_rng(0)
    kinds = [case_kernel(i, rng, 31)[0] for i in range(6)]
    assert kinds == ["motion", "motion", "gauss"] * 2
    widths = [kernel_sigma(case_kernel(i, rng, 31, True, (0.8, 1.6))[1]) for i in range(40)]
    assert all(k == "gauss" for k, _ in (case_kernel(i, rng, 31, True) for i in range(3)))
    assert 0.75 < min(widths) and max(widths) < 1.65 and np.std(widths) > 0.1
    wide = [kernel_sigma(case_kernel(2, rng, 31, False, (2.5, 3.2))[1]) for _ in range(10)]
    assert min(wide) > 2.4


def test_unrolled_solver_matches_the_solver_and_carries_gradients():
    torch.manual_seed(0)
    y = torch.rand(2, 3, 24, 20)
    k = torch.from_numpy(np.stack([gaussian_kernel(1.0, 7), make_kernel("motion", length=5, seed=3, size=7)])).float()
    den = TinyDenoiser()
    with torch.no_grad():
        den.conv.weight.normal_(0, 0.01)
    out = hqs_unrolled(y, k, den, noise=2 / 255, iters=3)
    assert torch.allclose(out, hqs_deconvolve(y, k, den, noise=2 / 255, iters=3), atol=1e-6)
    out.mean().backward()
    assert den.conv.weight.grad is not None and float(den.conv.weight.grad.abs().sum()) > 0


def _case(seed: int, kind: str, size: int = 40, noise: float = 0.0) -> dict:
    """A bank case whose blurred crop is the sharp one convolved with its (asymmetric) kernel, plus
    ``noise`` (standard deviation) of white noise."""
    rng = np.random.default_rng(seed)
    sharp = rng.random((size, size, 3))
    if noise:  # a smooth picture, so that a denoiser has something to learn
        sharp = np.clip(0.5 + 4 * (convolve(sharp, gaussian_kernel(2.0, 9)[..., None], mode="wrap") - 0.5), 0, 1)
    k = make_kernel("motion", length=6, seed=seed, size=9) if kind == "motion" else gaussian_kernel(1.2, 9)
    blurred = np.stack([convolve(sharp[..., c], k, mode="wrap") for c in range(3)], -1)
    blurred = np.clip(blurred + rng.normal(0, noise, blurred.shape), 0, 1)
    to8 = lambda a: torch.from_numpy(np.round(a * 255).astype(np.uint8)).permute(2, 0, 1).contiguous()  # noqa: E731
    kt = torch.from_numpy(pad_kernel(k, 9)).float()
    return {"kind": kind, "sharp": to8(sharp), "blurred": to8(blurred), "true": kt, "est": kt.clone()}


def test_training_windows_turn_the_kernel_with_the_picture():
    """Flips and rotations are applied to window and kernel alike: the sampled kernel still maps the
    sampled sharp window to the sampled blurred one (away from the window's border)."""
    bank = [_case(1, "motion"), _case(2, "motion")]
    cfg = FinetuneConfig(patch=24, batch=8, true_share=0.5)
    y, x, k = sample_batch(bank, "motion", cfg, np.random.default_rng(0))
    assert y.shape == x.shape == (8, 3, 24, 24) and k.shape == (8, 9, 9)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(8))
    for i in range(8):
        reblur = np.stack([convolve(x[i, c].numpy().astype(np.float64), k[i].numpy(), mode="wrap") for c in range(3)])
        err = np.abs(reblur - y[i].numpy())[:, 5:-5, 5:-5].max()
        assert err < 3 / 255, i
    wrong = np.stack([convolve(x[0, c].numpy().astype(np.float64), k[0].numpy().T[::-1], mode="wrap")
                      for c in range(3)])
    assert np.abs(wrong - y[0].numpy())[:, 5:-5, 5:-5].max() > 5 / 255  # a mismatched turn would show


def test_fine_tuning_improves_the_solver_on_its_cases(tmp_path):
    """A denoiser that starts as the identity learns, through the unrolled solver, to do better on
    the cases it trains on; the best state is kept and written."""
    from sharpkd.models import BlindTeacher, BlindTeacherConfig

    teacher = BlindTeacher(config=BlindTeacherConfig(iters=3, cg_steps=2))
    teacher.denoiser = TinyDenoiser()
    bank = [_case(3, "motion", 32, 0.05), _case(4, "gauss", 32, 0.05)]
    before = validate(teacher, bank)
    summary = train(teacher, bank, bank, FinetuneConfig(patch=32, batch=2, steps=40, lr=1e-2, val_every=10,
                                                        true_share=1.0), tmp_path)
    after = validate(teacher, bank)
    assert summary["best_step"] > 0
    assert np.mean(list(after.values())) > np.mean(list(before.values())) + 0.05
    assert (tmp_path / "denoiser.pt").is_file() and (tmp_path / "log.jsonl").read_text().count("\n") >= 4
    assert not any(p.requires_grad for p in teacher.denoiser.parameters())


def test_shake_prior_serves_only_the_final_camera_shake_run(tmp_path):
    """A file with ``shake_prior`` deconvolves camera shake with its own denoiser and everything else
    (round blur, the refinement's first run) with the converted one; it saves and loads as one file."""
    from sharpkd.checkpoint import load_model, save_model
    from sharpkd.deblur.teacher import BlurEstimate
    from sharpkd.models import BlindTeacher, BlindTeacherConfig

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net, shake_prior=True, iters=2, cg_steps=1))
    calls = []

    class Tag(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x, sigma):
            calls.append(self.name)
            return x

    teacher.denoiser, teacher.shake_denoiser = Tag("converted"), Tag("shake")
    x = torch.rand(1, 3, 40, 40)
    k = gaussian_kernel(1.0, 7)
    teacher.restore(x, [BlurEstimate(k, 0.01, "shake")])
    assert calls == ["shake", "shake"]
    calls.clear()
    teacher.restore(x, [BlurEstimate(k, 0.01, "round")])
    assert calls == ["converted", "converted"]
    calls.clear()
    teacher._refine(torch.rand(3, 40, 40), gaussian_kernel(1.0, 5), 0.01)  # the refinement's first run
    assert calls == ["converted", "converted"]

    both = BlindTeacher(config=BlindTeacherConfig(network=net, shake_prior=True, round_prior=True, iters=2,
                                                  cg_steps=1))
    both.denoiser, both.shake_denoiser, both.round_denoiser = Tag("converted"), Tag("shake"), Tag("round")
    calls.clear()
    both.restore(x, [BlurEstimate(k, 0.01, "round")])
    assert calls == ["round", "round"]
    calls.clear()
    both.restore(x, [BlurEstimate(k, 0.01, "shake")])
    assert calls == ["shake", "shake"]

    fresh = BlindTeacher(config=BlindTeacherConfig(network=net, shake_prior=True))
    with torch.no_grad():
        fresh.shake_denoiser.body[0].weight.add_(1.0)
    path = save_model(tmp_path / "t.safetensors", fresh, {"stage": "teacher"}, half=False)
    loaded, _ = load_model(path)
    assert loaded.config.shake_prior
    assert torch.equal(loaded.shake_denoiser.body[0].weight, fresh.shake_denoiser.body[0].weight)
    assert not torch.equal(loaded.denoiser.body[0].weight, loaded.shake_denoiser.body[0].weight)


def test_fine_tuning_command_writes_a_teacher_file_that_loads(tmp_path):
    """The whole command on the scikit-image photos (no dataset), tiny: bank, one step, a file whose
    stored config has the camera-shake prior it holds weights for, and the run's provenance."""
    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.finetune import run

    cfg = FinetuneConfig(train_cases=2, val_cases=1, crop=96, patch=48, batch=1, steps=1, val_every=1)
    path = run(str(tmp_path / "no-such-folder"), "teacher", tmp_path / "ft", cfg, threads=2)
    model, info = load_model(path)
    assert model.config.shake_prior and model.shake_denoiser is not None
    assert info["finetune"]["steps"] == 1 and "sharpkd.deblur.finetune" in info["command"]
    assert (tmp_path / "ft" / "bank.pt").is_file() and (tmp_path / "ft" / "val_bank.pt").is_file()


def test_round_only_fine_tuning_trains_a_third_prior_and_keeps_the_others(tmp_path):
    """``round_only``: an all-Gaussian bank in its own files, a ``round_denoiser`` that moves, and the
    converted and camera-shake priors left exactly as they were."""
    from sharpkd.checkpoint import load_model
    from sharpkd.deblur.finetune import run

    before, _ = load_model("teacher")
    cfg = FinetuneConfig(train_cases=2, val_cases=1, crop=96, patch=48, batch=1, steps=2, val_every=1,
                         round_only=1, lr=1e-3)
    path = run(str(tmp_path / "no-such-folder"), "teacher", tmp_path / "ft", cfg, threads=2)
    model, info = load_model(path)
    assert model.config.round_prior and model.round_denoiser is not None
    assert model.config.shake_prior == before.config.shake_prior
    bank = torch.load(tmp_path / "ft" / "bank-round.pt", weights_only=True)
    assert [c["kind"] for c in bank] == ["gauss", "gauss"]
    assert not (tmp_path / "ft" / "bank.pt").exists()
    for name, a in before.denoiser.state_dict().items():
        assert torch.equal(a, model.denoiser.state_dict()[name])
        assert torch.equal(before.shake_denoiser.state_dict()[name], model.shake_denoiser.state_dict()[name])
    logged = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2] and all(set(r["val"]) == {"gauss"} for r in logged)
