"""The kernel student: a Wiener step with the photo's estimated kernel in front of the student."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpkd.checkpoint import CheckpointError, load_model, save_model
from sharpkd.deblur.solve import wiener_deconvolve
from sharpkd.deblur.teacher import BlindTeacherConfig, BlurEstimate
from sharpkd.degrade import gaussian_kernel
from sharpkd.models import Student, StudentConfig
from sharpkd.models.kstudent import KernelStudent, KernelStudentConfig

SMALL = {"unshuffle": 2, "width": 8, "low_width": 8, "low_blocks": 1, "high_blocks": 1}


class FixedEstimator:
    """Stands in for the teacher's estimator: the same route and kernel for every photo; counts calls."""

    def __init__(self, route="shake", sigma=1.5):
        self.config = BlindTeacherConfig()
        self.route, self.kernel, self.calls = route, gaussian_kernel(sigma), 0

    def estimate(self, x, jpeg_step=None):
        self.calls += 1
        return [BlurEstimate(self.kernel, 1 / 255, self.route) for _ in x]

    def eval(self):
        return self


def random_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def small_kstudent(route="shake"):
    ks = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL)))
    return ks.attach_estimator(FixedEstimator(route)).eval()


def test_student_guide_channels_are_required_and_used():
    net = random_weights(Student(config=StudentConfig(**SMALL, guide=1))).eval()
    x = torch.rand(1, 3, 16, 20)
    with pytest.raises(ValueError, match="guide"):
        net(x)
    with pytest.raises(ValueError, match="guide"):
        net(x, guide=torch.rand(1, 3, 16, 16))
    a, b = net(x, guide=x), net(x, guide=torch.rand(1, 3, 16, 20))
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_widened_student_starts_as_the_student_with_the_residual_on_the_guide(tmp_path):
    from sharpkd.distill_kernel import KernelDistillConfig, build_student

    base = random_weights(Student(config=StudentConfig(**SMALL)))
    save_model(tmp_path / "s.safetensors", base)
    ks = build_student(str(tmp_path / "s.safetensors"), KernelDistillConfig(balance=0.02, estimate_side=256))
    assert ks.config.balance == 0.02 and ks.config.estimate_side == 256 and ks.config.width == 8
    x, g = torch.rand(2, 3, 20, 28), torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        # zero weights on the guide's channels: the student's own correction, added to the guide
        torch.testing.assert_close(ks.run(x, g) - g, base.eval()(x) - x, atol=1e-5, rtol=0)
    # a kernel-student file continues as itself, run-time settings and weights kept
    trained = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL, min_agreement=0.8)))
    save_model(tmp_path / "k.safetensors", trained)
    again = build_student(str(tmp_path / "k.safetensors"), KernelDistillConfig())
    assert again.config.min_agreement == 0.8
    with torch.no_grad():
        torch.testing.assert_close(again.run(x, g), trained.eval().run(x, g))
    with pytest.raises(SystemExit, match="balance"):
        build_student(str(tmp_path / "k.safetensors"), KernelDistillConfig(balance=0.02))
    save_model(tmp_path / "w.safetensors", random_weights(Student(config=StudentConfig(**SMALL, wiener=(1.5,)))))
    with pytest.raises(SystemExit, match="plain student"):
        build_student(str(tmp_path / "w.safetensors"), KernelDistillConfig())


def test_deepened_student_starts_as_its_init_and_its_new_blocks_train(tmp_path):
    from sharpkd.distill_kernel import KernelDistillConfig, build_student

    x, g = torch.rand(2, 3, 20, 28), torch.rand(2, 3, 20, 28)
    trained = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL)))
    save_model(tmp_path / "k.safetensors", trained)
    deep = build_student(str(tmp_path / "k.safetensors"), KernelDistillConfig(deepen=1))
    assert deep.config.high_blocks == 2 and len(deep.net.enc) == 2 and len(deep.net.dec) == 2
    with torch.no_grad():
        torch.testing.assert_close(deep.run(x, g), trained.eval().run(x, g))
    # the new blocks are not frozen: one gradient step changes their weights and the output
    opt = torch.optim.SGD(deep.net.parameters(), lr=0.1)
    deep.train()
    (deep.run(x, g) - torch.rand_like(x)).abs().mean().backward()
    assert deep.net.enc[1].conv2.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(deep.eval().run(x, g), trained.run(x, g), atol=1e-4)
    # from a plain student file (trained with re-parameterisable convolutions, saved collapsed): still the
    # student's own correction
    base = random_weights(Student(config=StudentConfig(**SMALL, rep=2)))
    save_model(tmp_path / "s.safetensors", base)
    ks = build_student(str(tmp_path / "s.safetensors"), KernelDistillConfig(deepen=2))
    assert ks.config.high_blocks == 3
    with torch.no_grad():
        torch.testing.assert_close(ks.run(x, g) - g, base.eval()(x) - x, atol=1e-5, rtol=0)
    # a file with more blocks than the network is refused, not half-loaded
    save_model(tmp_path / "d.safetensors", random_weights(KernelStudent(config=KernelStudentConfig(
        **{**SMALL, "low_blocks": 2}))))
    from sharpkd.distill_kernel import load_deepened
    with pytest.raises(SystemExit, match="does not fit"):
        load_deepened(trained.net, load_model(str(tmp_path / "d.safetensors"))[0].net.state_dict())


def test_guide_deconvolves_only_on_the_deconvolving_routes():
    x = torch.rand(3, 3, 24, 24)
    k = gaussian_kernel(1.2)
    ks = small_kstudent()
    est = [BlurEstimate(k, 0.01, "shake"), BlurEstimate(k, 0.01, "network"), BlurEstimate(k, 0.01, "round")]
    g = ks.guide(x, est)
    torch.testing.assert_close(g[0:1], wiener_deconvolve(x[0:1], k, ks.config.balance))
    torch.testing.assert_close(g[1:2], x[1:2])
    torch.testing.assert_close(g[2:3], wiener_deconvolve(x[2:3], k, ks.config.balance))
    assert not torch.allclose(g[0:1], x[0:1], atol=1e-3)
    # the filter kept from the last call is not reused for another kernel or size
    k2 = gaussian_kernel(2.0)
    torch.testing.assert_close(ks.guide(x[:1], [BlurEstimate(k2, 0.01, "shake")]),
                               wiener_deconvolve(x[:1], k2, ks.config.balance))
    torch.testing.assert_close(ks.guide(x[:1, :, :20], [BlurEstimate(k2, 0.01, "shake")]),
                               wiener_deconvolve(x[:1, :, :20], k2, ks.config.balance))


def test_guide_average_deconvolves_camera_shake_with_every_kernel_of_the_estimate():
    """guide_average: on camera shake the guide is the mean of the Wiener results with the refined kernel and the
    estimate's other kernels (unrefined, check); off, or on another route, the refined kernel alone."""
    x = torch.rand(2, 3, 24, 24)
    k, k0, other = gaussian_kernel(1.2), gaussian_kernel(0.8), gaussian_kernel(2.0)
    ks = small_kstudent()
    b = ks.config.balance
    shake = BlurEstimate(k, 0.01, "shake", unrefined=k0, check=other)
    alone = wiener_deconvolve(x[:1], k, b)
    torch.testing.assert_close(ks.guide(x[:1], [shake]), alone)  # off (as trained)
    ks.config = replace(ks.config, guide_average=True)
    mean = (alone + wiener_deconvolve(x[:1], k0, b) + wiener_deconvolve(x[:1], other, b)) / 3
    torch.testing.assert_close(ks.guide(x[:1], [shake]), mean)
    torch.testing.assert_close(ks.guide(x[:1], [BlurEstimate(k, 0.01, "shake", unrefined=k0)]),
                               (alone + wiener_deconvolve(x[:1], k0, b)) / 2)
    torch.testing.assert_close(ks.guide(x[:1], [BlurEstimate(k, 0.01, "shake")]), alone)
    rnd = BlurEstimate(k, 0.01, "round", unrefined=k0)  # only camera shake is averaged
    torch.testing.assert_close(ks.guide(x[1:], [rnd]), wiener_deconvolve(x[1:], k, b))
    # the filters of the three kernels are kept side by side and stay right when the size changes
    torch.testing.assert_close(ks.guide(x[:1, :, :20], [shake]),
                               sum(wiener_deconvolve(x[:1, :, :20], kk, b) for kk in (k, k0, other)) / 3)


def test_frames_are_guided_by_the_refined_kernel_alone():
    """guide_average is for photos: a video frame (Sharpener.sharpen_frame) is guided by the refined kernel only."""
    from sharpkd.infer import Sharpener

    ks = random_weights(small_kstudent())
    ks.config = replace(ks.config, guide_average=True)
    sh = Sharpener(ks, tile=0, ensemble=1)
    frame = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    k, k0, other = gaussian_kernel(1.2), gaussian_kernel(0.8), gaussian_kernel(2.0)
    full = [BlurEstimate(k, 0.01, "shake", unrefined=k0, check=other)]
    single = sh.sharpen_frame(frame, estimates=[BlurEstimate(k, 0.01, "shake")])
    np.testing.assert_array_equal(sh.sharpen_frame(frame, estimates=full), single)
    photo = sh.sharpen_tensor(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255, full)
    assert not torch.allclose(photo, torch.from_numpy(single).permute(2, 0, 1)[None].float() / 255, atol=2 / 255)
    # sharpkd video's FrameSharpener too (BGR frames, its own estimate)
    from sharpkd.video import FrameSharpener

    sh.estimate_blur = lambda x: full
    bgr = np.ascontiguousarray(frame[..., ::-1])
    np.testing.assert_array_equal(FrameSharpener(sh)(bgr), sh.sharpen_frame(bgr, bgr=True,
                                                                           estimates=[BlurEstimate(k, 0.01, "shake")]))


def test_round_route_guide_takes_its_own_balance_and_the_file_keeps_it(tmp_path):
    x = torch.rand(2, 3, 24, 24)
    k = gaussian_kernel(1.2)
    ks = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL, round_balance=0.002)))
    est = [BlurEstimate(k, 0.01, "round"), BlurEstimate(k, 0.01, "shake")]
    g = ks.guide(x, est)
    torch.testing.assert_close(g[0:1], wiener_deconvolve(x[0:1], k, 0.002))
    torch.testing.assert_close(g[1:2], wiener_deconvolve(x[1:2], k, ks.config.balance))
    # the kept filter is not reused across the two weights for one kernel and size
    torch.testing.assert_close(ks.guide(x[:1], est[:1]), g[0:1])
    assert not torch.allclose(g[0:1], wiener_deconvolve(x[0:1], k, ks.config.balance), atol=1e-3)
    loaded, _ = load_model(save_model(tmp_path / "k.safetensors", ks))
    assert loaded.config.round_balance == 0.002
    with pytest.raises(ValueError, match="round_balance"):
        KernelStudent(config=KernelStudentConfig(**SMALL, round_balance=0.0))


def test_training_guides_follow_the_round_balance(tmp_path):
    from sharpkd.distill_kernel import KernelDistillConfig, build_student, prepare

    k = torch.from_numpy(gaussian_kernel(1.5)).float()
    rng = np.random.default_rng(0)
    case = {"blurred": torch.from_numpy((rng.random((3, 24, 24)) * 255).astype(np.uint8)),
            "sharp": torch.zeros(3, 24, 24, dtype=torch.uint8), "est": k}
    bank = [{**case, "kind": "gauss"}, {**case, "kind": "motion"}]
    g = [c["g"] for c in prepare(bank, 0.01, round_balance=0.002)]
    y = bank[0]["blurred"][None].float() / 255
    torch.testing.assert_close(g[0], wiener_deconvolve(y, k, 0.002))
    torch.testing.assert_close(g[1], wiener_deconvolve(y, k, 0.01))
    torch.testing.assert_close(prepare(bank, 0.01)[0]["g"], g[1])
    save_model(tmp_path / "k.safetensors", random_weights(KernelStudent(config=KernelStudentConfig(**SMALL))))
    cont = build_student(str(tmp_path / "k.safetensors"), KernelDistillConfig(round_balance=0.003))
    assert cont.config.round_balance == 0.003 and not cont.config.guide_average
    assert build_student(str(tmp_path / "k.safetensors"), KernelDistillConfig(guide_average=1)).config.guide_average
    save_model(tmp_path / "s.safetensors", random_weights(Student(config=StudentConfig(**SMALL))))
    assert build_student(str(tmp_path / "s.safetensors"), KernelDistillConfig()).config.round_balance is None


def test_model_file_round_trip_attaches_the_shipped_estimator(tmp_path):
    ks = small_kstudent()
    path = save_model(tmp_path / "k.safetensors", ks, {"note": "test"})
    loaded, info = load_model(path)
    assert info["arch"] == "kstudent" and isinstance(loaded, KernelStudent)
    assert type(loaded.estimator).__name__ == "BlindTeacher"
    assert loaded.estimator.config.estimate_side == ks.config.estimate_side  # the reduced estimate crop
    assert set(loaded.state_dict()) == set(ks.state_dict())  # the estimator's weights are not in the file
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.run(x, x), ks.run(x, x))


def test_hostile_estimator_name_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_model(tmp_path / "k.safetensors", small_kstudent())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["sharpkd"])
    doc["config"]["estimator"] = "/etc/passwd"
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={"sharpkd": json.dumps(doc)})
    with pytest.raises(CheckpointError, match="cannot build"):
        load_model(tmp_path / "bad.safetensors")


def test_estimates_are_shared_by_content_and_estimator():
    ks = small_kstudent()
    x = torch.rand(2, 3, 40, 40)
    first = ks.estimate(x)
    assert ks.estimator.calls == 2
    assert ks.estimate(x.clone()) == first and ks.estimator.calls == 2  # same content: no new estimate
    ks.estimate(x + 0.01)
    assert ks.estimator.calls == 4
    other = small_kstudent()  # another estimator: its own estimates
    other.estimate(x)
    assert other.estimator.calls == 2
    # two kernel students on one estimator with other settings: the estimator is shared, not changed
    shared = FixedEstimator()
    a = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=256)).attach_estimator(shared)
    b = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=512)).attach_estimator(shared)
    assert (a.estimator.config.estimate_side, b.estimator.config.estimate_side) == (256, 512)
    assert shared.config.estimate_side == BlindTeacherConfig().estimate_side
    # a trust threshold of its own: set on its copy only, and its estimates are kept apart
    c = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=256, min_agreement=0.7))
    c.attach_estimator(shared)
    assert c.estimator.config.min_agreement == 0.7 and a.estimator.config.min_agreement == shared.config.min_agreement
    assert shared.config.min_agreement == BlindTeacherConfig().min_agreement
    a.estimate(x)
    c.estimate(x)
    assert (a.estimator.calls, c.estimator.calls) == (2, 2)  # same photos and crop, other threshold: estimated again
    with pytest.raises(ValueError, match="min_agreement"):
        KernelStudent(config=KernelStudentConfig(**SMALL, min_agreement=1.5))
    # the estimator's alternations per level: 5 (what the shipped students were measured with) unless the
    # student says otherwise or None (the estimator's own); another count is another estimate
    shared.config = replace(shared.config, estimate_iters=8)
    own = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=256, estimate_iters=None))
    own.attach_estimator(shared)
    a.attach_estimator(shared)
    assert (a.estimator.config.estimate_iters, own.estimator.config.estimate_iters) == (5, 8)
    own.estimate(x)
    assert own.estimator.calls == 2  # same photos, crop and threshold as ``a``, other count: not from the cache
    with pytest.raises(ValueError, match="estimate_iters"):
        KernelStudent(config=KernelStudentConfig(**SMALL, estimate_iters=0))
    # the choice between the two camera-shake estimates by residual: off (what the shipped students were measured
    # with) even where the estimator's file turns it on, unless the student says True or None (the estimator's)
    shared.config = replace(shared.config, pick_by_residual=True)
    picks = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=256, pick_by_residual=None))
    picks.attach_estimator(shared)
    a.attach_estimator(shared)
    assert (a.estimator.config.pick_by_residual, picks.estimator.config.pick_by_residual) == (False, True)
    shared.config = replace(shared.config, shake_cg_steps=4)  # the teacher's faster camera-shake runs: not for
    a.attach_estimator(shared)  # the kernel student's refinement, which keeps what it was measured with
    assert a.estimator.config.shake_cg_steps == 0 and shared.config.shake_cg_steps == 4
    assert KernelStudentConfig().pick_by_residual is False
    picks.estimate(x)
    assert picks.estimator.calls == 2  # another setting: not from the cache
    # the kernel refinement: the shipped students' (one round, threshold 0.05, parts of 0.1) whatever the file says,
    # unless the student says None (the estimator's)
    shared.config = replace(shared.config, refine_rounds=0, refine_threshold=0.02, refine_min_mass=0.0)
    follows = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=256, pick_by_residual=None,
                                                       refine_rounds=None, refine_threshold=None,
                                                       refine_min_mass=None))
    follows.attach_estimator(shared)
    a.attach_estimator(shared)
    refine = ("refine_rounds", "refine_threshold", "refine_min_mass")
    assert tuple(getattr(a.estimator.config, f) for f in refine) == (1, 0.05, 0.1)
    assert tuple(getattr(follows.estimator.config, f) for f in refine) == (0, 0.02, 0.0)
    follows.estimate(x)
    assert follows.estimator.calls == 2  # the same as ``picks`` but the refinement: not from the cache


class SideEstimator(FixedEstimator):
    """An estimator whose route depends on the crop it is set to (``config.estimate_side``)."""

    def __init__(self, routes):
        super().__init__()
        self.routes = routes

    def estimate(self, x, jpeg_step=None):
        self.calls += 1
        side = self.config.estimate_side
        return [BlurEstimate(self.kernel, 1 / 255, self.routes[side], fit=float(side)) for _ in x]


@pytest.mark.parametrize("first, used", [("network", 768), ("round", 768), ("none", 768), ("shake", 384)])
def test_fallback_crop_is_estimated_only_where_the_first_shows_no_camera_shake(first, used):
    shared = SideEstimator({384: first, 768: "round"})
    ks = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=384, fallback_side=768))
    ks.attach_estimator(shared)
    x = torch.rand(1, 3, 40, 40)
    est = ks.estimate(x)[0]
    assert est.fit == used and est.route == ("shake" if used == 384 else "round")
    assert ks.__dict__["_fallback"].calls == (used == 768) and ks.estimator.calls == 1
    ks.estimate(x.clone())  # both estimates are kept
    assert ks.__dict__["_fallback"].calls == (used == 768) and ks.estimator.calls == 1
    plain = KernelStudent(config=KernelStudentConfig(**SMALL, estimate_side=384)).attach_estimator(shared)
    assert plain.estimate(x)[0].route == first  # without a fallback: the first crop's estimate
    assert shared.config.estimate_side == BlindTeacherConfig().estimate_side  # the shared one is not changed
    with pytest.raises(ValueError, match="fallback_side"):
        KernelStudent(config=KernelStudentConfig(**SMALL, fallback_side=8))


def test_sharpener_estimates_once_and_tiles_match_whole_image():
    from sharpkd.infer import Sharpener

    ks = small_kstudent()
    x = torch.rand(1, 3, 150, 190)
    whole = Sharpener(ks, tile=0)
    out = whole.sharpen_tensor(x)
    assert ks.estimator.calls == 1 and out.shape == x.shape
    # the guide comes from the whole photo before tiling, so tiles match the untiled result
    tiled = Sharpener(ks, tile=96, overlap=64).sharpen_tensor(x)
    torch.testing.assert_close(tiled, out, atol=2e-4, rtol=0)
    assert ks.estimator.calls == 1  # one estimate per photo (kept for the same photo), not per tile
    assert whole.blind
    with torch.no_grad():
        torch.testing.assert_close(out, ks(x).clamp(0, 1), atol=1e-5, rtol=0)


def test_self_ensemble_estimates_and_guides_once_and_turns_photo_and_guide_together():
    from sharpkd.infer import Sharpener, dihedral

    ks = small_kstudent()
    x = torch.rand(1, 3, 40, 56)
    ens = Sharpener(ks, tile=0, ensemble=8).sharpen_tensor(x)
    assert ks.estimator.calls == 1 and ens.shape == x.shape
    with torch.no_grad():
        joined = torch.cat([x, ks.guide(x, ks.estimate(x))], dim=1)
        want = sum(dihedral(ks.run_joined(dihedral(joined, k)).clamp(0, 1), k, inverse=True) for k in range(8)) / 8
        torch.testing.assert_close(ens, want, atol=1e-5, rtol=0)
        # not the plain pass: the random network is not equivariant, so the average differs from it
        assert (ens - ks(x).clamp(0, 1)).abs().max() > 1e-3
    # tiled like the plain pass
    tiled = Sharpener(ks, tile=96, overlap=64, ensemble=2).sharpen_tensor(torch.rand(1, 3, 150, 190))
    assert tiled.shape == (1, 3, 150, 190)


def test_photos_take_the_models_own_ensemble_and_frames_one_copy(tmp_path):
    """``photo_ensemble`` is a photo's default: Sharpener(ensemble=None), the CLI's sharpen and ``sharpkd eval``'s
    plain name use it, ``@x1`` / an explicit size override it, and video and the frame benchmark run one copy."""
    from sharpkd import cli
    from sharpkd.evaluate import model_method
    from sharpkd.infer import Sharpener
    from sharpkd.models.student import Student

    ks = small_kstudent()
    ks.config = replace(ks.config, photo_ensemble=8)
    x = torch.rand(1, 3, 40, 56)
    auto = Sharpener(ks, tile=0)
    assert auto.ensemble == 8 and Sharpener(ks, tile=0, ensemble=1).ensemble == 1
    torch.testing.assert_close(auto.sharpen_tensor(x), Sharpener(ks, tile=0, ensemble=8).sharpen_tensor(x))
    assert Sharpener(small_kstudent(), tile=0).ensemble == 1  # the field's default
    assert Sharpener(random_weights(Student(config=StudentConfig(**SMALL))), tile=0).ensemble == 1
    with pytest.raises(ValueError, match="photo_ensemble"):
        KernelStudent(config=KernelStudentConfig(**SMALL, photo_ensemble=3))
    path = save_model(tmp_path / "ks.safetensors", ks)
    assert load_model(path)[0].config.photo_ensemble == 8
    assert model_method(str(path))[2]["ensemble"] == 8 and model_method(f"{path}@x1")[2]["ensemble"] == 1

    seen = []

    def record(name, **kw):
        seen.append(kw.get("ensemble"))
        raise ValueError("stop here")

    import sharpkd.infer

    real = sharpkd.infer.Sharpener.from_pretrained
    sharpkd.infer.Sharpener.from_pretrained = record
    try:
        img = tmp_path / "a.png"
        from PIL import Image

        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
        assert cli.main(["-q", "sharpen", str(img), "-o", str(tmp_path / "out"), "--model", str(path)]) != 0
        assert cli.main(["-q", "sharpen", str(img), "-o", str(tmp_path / "out"), "--model", str(path),
                         "--ensemble", "2"]) != 0
        assert cli.main(["-q", "video", str(img), "-o", str(tmp_path / "v.avi"), "--model", str(path)]) != 0
    finally:
        sharpkd.infer.Sharpener.from_pretrained = real
    assert seen == [None, 2, 1]


def test_frame_sharpener_renews_the_estimate_every_n_frames():
    from sharpkd.infer import Sharpener
    from sharpkd.video import FrameSharpener

    frames = [np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8) for i in range(7)]
    for every, expected in ((3, 3), (0, 1), (1, 7)):
        ks = small_kstudent()
        fs = FrameSharpener(Sharpener(ks, tile=0), estimate_every=every)
        outs = [fs(f) for f in frames]
        assert ks.estimator.calls == expected == fs.estimated
        assert all(o.shape == f.shape and o.dtype == np.uint8 for o, f in zip(outs, frames, strict=True))
    ks = small_kstudent()
    live = FrameSharpener(Sharpener(ks, tile=0), estimate_every=2, wait=False)
    for f in frames:
        live(f)
    live.close()
    assert 1 <= ks.estimator.calls <= 4  # the first in line, renewals in the background (never two at once)
    with pytest.raises(ValueError):
        FrameSharpener(Sharpener(ks, tile=0), estimate_every=-1)


def test_onnx_export_runs_the_network_behind_the_torch_estimate(tmp_path):
    from sharpkd.backends import resolve
    from sharpkd.export import export_onnx
    from sharpkd.infer import Sharpener

    ks = small_kstudent()
    path = save_model(tmp_path / "k.safetensors", ks)
    export_onnx(load_model(path)[0], tmp_path / "k.onnx", {"arch": "kstudent"})
    backend = resolve(path, "onnx", threads=1)
    assert backend.kind == "onnx" and backend.blind
    x = torch.rand(1, 3, 30, 42)
    est = [BlurEstimate(gaussian_kernel(1.0), 0.01, "round")]
    ref = Sharpener(load_model(path)[0], tile=0).sharpen_tensor(x, est)
    out = Sharpener(backend, tile=0).sharpen_tensor(x, est)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no INT8 ONNX export"):
        resolve(path, "onnx-int8")


def test_int8_calibration_gives_photo_and_guide():
    from sharpkd.export import guided_calibration

    blurred = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    cal = guided_calibration(blurred)
    assert cal.shape == (6, 6, 32, 32) and cal.dtype == np.float32
    np.testing.assert_array_equal(cal[:, :3], blurred)
    np.testing.assert_array_equal(cal[2, 3:], blurred[2])  # every third: the "no kernel" guide
    assert not np.allclose(cal[0, 3:], blurred[0], atol=1e-3)


def test_distill_command_trains_with_all_three_terms_and_without_the_teacher(tmp_path, load_script):
    from sharpkd.distill_kernel import main

    base = random_weights(Student(config=StudentConfig(**SMALL)))
    save_model(tmp_path / "s.safetensors", base)
    common = ["--data", str(tmp_path / "none"), "--init", str(tmp_path / "s.safetensors"), "--train-cases", "3",
              "--val-cases", "2", "--crop", "96", "--patch", "32", "--batch", "2", "--steps", "4", "--val-every",
              "2", "--perceptual-every", "2", "-q"]
    main(["--out", str(tmp_path / "kd"), *common])
    model, info = load_model(tmp_path / "kd")
    assert isinstance(model, KernelStudent) and info["distilled"] and info["steps"] == 4
    log = [json.loads(line) for line in (tmp_path / "kd" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 2, 4]
    assert set(log[1]["loss"]) == {"rec", "kd", "perceptual"} or set(log[2]["loss"]) == {"rec", "kd", "perceptual"}
    assert set(log[-1]["val"]) == {"motion", "gauss"} and "no_kernel" in log[-1]["val"]["gauss"]
    labels = torch.load(tmp_path / "kd" / "labels.pt", weights_only=True)
    assert len(labels) == 6 and labels[0].dtype == torch.uint8  # one teacher label per training case
    # a third bank of narrow Gaussians: labelled too, and validated in a row of its own; the run continues
    # the kernel student above, whose training its file and card keep
    main(["--out", str(tmp_path / "narrow"), "--narrow-cases", "2", "--narrow-sigma", "1.2", *common,
          "--init", str(tmp_path / "kd" / "model.safetensors"), "--round-balance", "0.004"])
    model, info = load_model(tmp_path / "narrow")
    assert model.config.round_balance == 0.004 and info["init"].endswith("model.safetensors")
    assert [e["steps"] for e in info["earlier"]] == [4] and info["earlier"][0]["init"].endswith("s.safetensors")
    card = load_script("tools/ship_model.py").card_kstudent("kstudent", model, info, None)
    assert "earlier training, continued by the command below" in card and "0.004 on the round route" in card
    log = [json.loads(line) for line in (tmp_path / "narrow" / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]["val"]) == {"motion", "gauss", "gauss_narrow"}
    assert len(torch.load(tmp_path / "narrow" / "labels.pt", weights_only=True)) == 8
    narrow = torch.load(tmp_path / "narrow" / "bank-narrow.pt", weights_only=True)
    assert [c["kind"] for c in narrow] == ["gauss", "gauss"]
    main(["--out", str(tmp_path / "nokd"), "--w-kd", "0", "--jpeg-share", "0.5", *common])
    _, info = load_model(tmp_path / "nokd")
    assert not info["distilled"] and not (tmp_path / "nokd" / "labels.pt").exists()
    log = [json.loads(line) for line in (tmp_path / "nokd" / "log.jsonl").read_text().splitlines()]
    assert all("kd" not in r.get("loss", {}) for r in log)
    # JPEG windows: the hold-out cases are validated as JPEGs too, in rows of their own
    assert set(log[-1]["val"]) == {"motion", "gauss", "motion_jpeg", "gauss_jpeg"}
    with pytest.raises(SystemExit, match="jpeg"):
        main(["--out", str(tmp_path / "bad"), "--jpeg-share", "0.5", "--jpeg-quality-min", "96", *common])


def test_teacher_only_cases_learn_from_the_teacher_alone():
    """A teacher-only case has no ground truth: its windows take the teacher's label as their target in the
    distillation term (with or without a kernel) and as the perceptual term's reference, and stay out of the
    reconstruction term, which the other windows keep."""
    import dataclasses

    from sharpkd.distill_kernel import KernelDistillConfig, loss_terms, prepare, windows

    rng = np.random.default_rng(0)
    img = lambda: torch.from_numpy(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8))  # noqa: E731
    k = torch.from_numpy(gaussian_kernel(1.0))
    bank = [{"kind": "gauss", "blurred": img(), "sharp": img(), "est": k},
            {"kind": "motion", "blurred": img(), "est": k, "teacher_only": True}]
    labels = [img(), img()]
    cases = prepare(bank, 1e-2, labels)
    assert "gt" not in cases[0] and cases[1]["gt"] == 0.0
    torch.testing.assert_close(cases[1]["x"], labels[1][None].float() / 255)
    model = KernelStudent(config=KernelStudentConfig(**SMALL))
    cfg = KernelDistillConfig(batch=6, patch=16, no_kernel_share=1.0, w_perceptual=0)  # no window has a kernel
    only = windows(cases[1:], cfg, np.random.default_rng(1))
    assert only["gt"].tolist() == [0.0] * 6 and only["kd"].tolist() == [0.0] * 6
    _, parts = loss_terms(model, only, cfg, 1, None)
    assert parts["rec"] == 0 and parts["kd"] > 0  # the label is the target even without a kernel
    both = windows(cases, dataclasses.replace(cfg, batch=16), np.random.default_rng(2))
    assert set(both["gt"].tolist()) == {0.0, 1.0}
    pred = model.run(both["y"], both["g"]).detach()
    gt = both["gt"].bool()
    _, parts = loss_terms(model, both, cfg, 1, None)
    assert parts["rec"] == pytest.approx(float(torch.nn.functional.l1_loss(pred[gt], both["x"][gt])), rel=1e-4)
    assert parts["kd"] == pytest.approx(float(torch.nn.functional.l1_loss(pred[~gt], both["t"][~gt])), rel=1e-4)


def test_jpeg_windows_take_photo_and_guide_from_the_decoded_jpeg_only_when_asked():
    """``--jpeg-share``: a training crop carries its JPEG variant (the blurred crop saved as a JPEG and decoded,
    the guide made from that), and a window takes photo and guide from it with that probability; truth and
    labels stay the lossless crop's. Without the option the windows are the ones a run without variants draws."""
    from sharpkd.degrade import jpeg
    from sharpkd.distill_kernel import KernelDistillConfig, as_jpeg, jpeg_qualities, prepare, windows, with_jpeg

    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=40, mode="bilinear")
    k = torch.from_numpy(gaussian_kernel(1.0))
    bank = [{"kind": kind, "blurred": (smooth[i] * 255).round().to(torch.uint8),
             "sharp": torch.from_numpy(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8)), "est": k}
            for i, kind in enumerate(("gauss", "motion"))]
    qualities = jpeg_qualities(50, KernelDistillConfig(jpeg_quality_min=40, jpeg_quality_max=45), 0)
    assert set(qualities) <= set(range(40, 46)) and len(set(qualities)) > 1
    jb = as_jpeg(bank, [40, 90])
    assert [c["jpeg_quality"] for c in jb] == [40, 90] and jb[0]["sharp"] is bank[0]["sharp"]
    y = bank[0]["blurred"][None].float() / 255
    torch.testing.assert_close(jb[0]["blurred"][None].float() / 255, jpeg(y, 40), atol=0.51 / 255, rtol=0)
    assert not torch.equal(jb[0]["blurred"], bank[0]["blurred"])
    plain = prepare(bank, 1e-2)
    cases = with_jpeg(plain, prepare(jb, 1e-2))
    torch.testing.assert_close(cases[0]["gj"], wiener_deconvolve(jb[0]["blurred"][None].float() / 255, k, 1e-2))
    cfg = KernelDistillConfig(batch=8, patch=16, no_kernel_share=0.0)
    drawn, same = windows(cases, cfg, np.random.default_rng(3)), windows(plain, cfg, np.random.default_rng(3))
    for key in ("y", "g", "x"):  # jpeg_share 0: nothing changes, not even the random stream
        torch.testing.assert_close(drawn[key], same[key])
    marked = with_jpeg(plain, [{"y": torch.ones_like(c["y"]), "g": torch.full_like(c["g"], 0.5)} for c in plain])
    every = windows(marked, replace(cfg, jpeg_share=1.0), np.random.default_rng(3))
    assert bool((every["y"] == 1).all() and (every["g"] == 0.5).all())
    assert not bool((every["x"] == 1).all())  # the truth is still the lossless crop's
    some = windows(marked, replace(cfg, jpeg_share=0.5, batch=32), np.random.default_rng(4))
    from_jpeg = (some["y"] == 1).flatten(1).all(1)
    assert 0 < int(from_jpeg.sum()) < 32 and bool((some["g"][from_jpeg] == 0.5).all())


def test_windows_without_a_kernel_learn_the_teachers_network_output():
    """``--w-kd-net``: a window without a kernel (photo as guide) takes the teacher network's output as its
    teacher label, in a distillation term of its own; windows with a kernel keep the deconvolution, and a
    teacher-only case keeps its deconvolution everywhere."""
    import dataclasses

    from sharpkd.distill_kernel import KernelDistillConfig, loss_terms, prepare, windows

    rng = np.random.default_rng(0)
    img = lambda: torch.from_numpy(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8))  # noqa: E731
    k = torch.from_numpy(gaussian_kernel(1.0))
    bank = [{"kind": "gauss", "blurred": img(), "sharp": img(), "est": k},
            {"kind": "motion", "blurred": img(), "est": k, "teacher_only": True}]
    labels, net = [img(), img()], [img(), img()]
    cases = prepare(bank, 1e-2, labels, net_labels=net)
    cfg = KernelDistillConfig(batch=16, patch=40, w_perceptual=0, w_kd_net=0.5)
    b = windows(cases, cfg, np.random.default_rng(3))
    kd, gt = b["kd"].bool(), b["gt"].bool()
    assert (kd & gt).any() and (~kd & gt).any() and (~gt).any()
    as_float = lambda t: t.float() / 255  # noqa: E731
    for i in range(16):  # whole 40-px crops: each window is its case's label, turned and flipped
        case = 0 if gt[i] else 1
        want = net[case] if gt[i] and not kd[i] else labels[case]
        options = [torch.rot90(as_float(want), r, dims=(-2, -1)) for r in range(4)]
        options += [o.flip(-1) for o in options]
        assert any(torch.equal(b["t"][i], o) for o in options)
    model = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL)))
    pred = model.run(b["y"], b["g"]).detach()
    total, parts = loss_terms(model, b, cfg, 1, None)
    l1 = torch.nn.functional.l1_loss
    assert parts["kd_net"] == pytest.approx(float(l1(pred[~kd & gt], b["t"][~kd & gt])), rel=1e-4)
    assert parts["kd"] == pytest.approx(float(l1(pred[kd | ~gt], b["t"][kd | ~gt])), rel=1e-4)
    assert float(total.detach()) == pytest.approx(parts["rec"] + parts["kd"] + 0.5 * parts["kd_net"], rel=1e-4)
    # off by default: no such term, and the same windows as before the option existed
    _, parts = loss_terms(model, b, dataclasses.replace(cfg, w_kd_net=0), 1, None)
    assert "kd_net" not in parts
    plain = windows(prepare(bank, 1e-2, labels), cfg, np.random.default_rng(3))
    assert torch.equal(plain["y"], b["y"]) and torch.equal(plain["t"][kd | ~gt], b["t"][kd | ~gt])


def test_distill_command_adds_teacher_only_cases(tmp_path):
    """``--teacher-only-cases``: a bank of its own, labelled by the teacher after the others, whose sharp
    crops are never read; refused without the distillation term, as ``--w-kd-net`` is."""
    from sharpkd.distill_kernel import main

    save_model(tmp_path / "s.safetensors", random_weights(Student(config=StudentConfig(**SMALL))))
    common = ["--data", str(tmp_path / "none"), "--init", str(tmp_path / "s.safetensors"), "--train-cases", "2",
              "--val-cases", "1", "--crop", "96", "--patch", "32", "--batch", "2", "--steps", "2", "--val-every",
              "2", "-q", "--teacher-only-cases", "2"]
    main(["--out", str(tmp_path / "kd"), *common])
    _, info = load_model(tmp_path / "kd")
    assert info["train_cases"] == 6 and info["distill_config"]["teacher_only_cases"] == 2
    assert len(torch.load(tmp_path / "kd" / "bank-teacher-only.pt", weights_only=True)) == 2
    assert len(torch.load(tmp_path / "kd" / "labels.pt", weights_only=True)) == 6
    with pytest.raises(SystemExit, match="needs --w-kd"):
        main(["--out", str(tmp_path / "nokd"), *common, "--w-kd", "0"])
    assert not (tmp_path / "nokd").exists()  # refused before any work
    with pytest.raises(SystemExit, match="needs --w-kd"):
        main(["--out", str(tmp_path / "nokd"), *common[:-2], "--w-kd", "0", "--w-kd-net", "1"])
    assert not (tmp_path / "nokd").exists()
    # --w-kd-net: the teacher network's output on every training case, cached beside the other labels
    main(["--out", str(tmp_path / "net"), *common[:-2], "--w-kd-net", "1", "--steps", "4", "--batch", "4"])
    net = torch.load(tmp_path / "net" / "labels-net.pt", weights_only=True)
    bank = torch.load(tmp_path / "net" / "bank.pt", weights_only=True)
    assert len(net) == 4 and net[0].dtype == torch.uint8 and net[0].shape == bank[0]["blurred"].shape
    log = [json.loads(line) for line in (tmp_path / "net" / "log.jsonl").read_text().splitlines()]
    assert "kd_net" in log[-1]["loss"] and load_model(tmp_path / "net")[1]["distill_config"]["w_kd_net"] == 1


def test_shipped_kernel_student_runs_everywhere(tmp_path, capsys):
    """The shipped file through the CLI: sharpen (with its kernel saved), info, and bench rows for its
    three backends (each frame deconvolved with a camera-shake kernel, then the network)."""
    from PIL import Image

    from sharpkd.cli import main

    rng = np.random.default_rng(0)
    photo = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    assert main(["-q", "sharpen", str(tmp_path / "p.png"), "-o", str(tmp_path / "out"), "--model", "kstudent",
                 "--save-kernel", str(tmp_path / "k")]) == 0
    out = Image.open(tmp_path / "out" / "p.png")
    assert out.size == (90, 70) and (tmp_path / "k" / "p.png.kernel.json").is_file()
    assert main(["info", "--model", "kstudent"]) == 0
    info = capsys.readouterr().out
    assert "Wiener step's FFTs, 2 passes" in info and "self-ensemble of 8 by default" in info
    assert main(["bench", "--methods", "kstudent-torch,kstudent-onnx,kstudent-onnx-int8", "--resolutions", "64x48",
                 "--runs", "3", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    for row in ("| kstudent-torch | torch | fp32 |", "| kstudent-onnx | onnx | fp32 |",
                "| kstudent-onnx-int8 | onnx-int8 | int8 |"):
        assert row in text


def test_settings_tool_changes_the_estimate_settings_only(tmp_path, load_script):
    """tools/kstudent_settings.py: a new trust threshold in the config, the weights and provenance kept."""
    tool = load_script("tools/kstudent_settings.py")
    src = save_model(tmp_path / "k.safetensors", small_kstudent(), {"steps": 7})
    out = tool.apply(str(src), tmp_path / "new", {"min_agreement": 0.8}, "test command")
    model, info = load_model(out)
    assert model.config.min_agreement == 0.8 and model.estimator.config.min_agreement == 0.8
    assert info["steps"] == 7 and info["settings_history"] == [{"command": "test command",
                                                                "changes": {"min_agreement": 0.8}}]
    before, _ = load_model(src)
    assert before.config.min_agreement is None  # the source file is not touched
    again = tool.apply(str(out), tmp_path / "avg", {"guide_average": True}, "second command")
    averaged, averaged_info = load_model(again)
    assert averaged.config.guide_average and not model.config.guide_average
    assert "the guide is the mean" in load_script("tools/ship_model.py").card_kstudent("kstudent", averaged,
                                                                                        averaged_info, None)
    assert "the guide is the mean" not in load_script("tools/ship_model.py").card_kstudent("kstudent", model, info,
                                                                                            None)
    for k, v in before.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    with pytest.raises(ValueError, match="estimate_side"):
        tool.apply(str(src), tmp_path / "bad", {"estimate_side": 16}, "x")
    with pytest.raises(SystemExit, match="nothing to change"):
        tool.apply(str(src), tmp_path / "none", {}, "x")
    plain = save_model(tmp_path / "s.safetensors", Student(config=StudentConfig(**SMALL)))
    with pytest.raises(SystemExit, match="not a kernel student"):
        tool.apply(str(plain), tmp_path / "p", {"min_agreement": 0.8}, "x")
    card = load_script("tools/ship_model.py").card_kstudent("kstudent", model, info, None)
    assert "agree at least 0.8" in card and "test command" in card and "crop instead" not in card
    # a fallback crop: set on a copy, named on the card, its command added to the history
    wide = tool.apply(str(out), tmp_path / "wide", {"fallback_side": 768}, "wide command")
    model, info = load_model(wide)
    assert model.config.fallback_side == 768 and model.__dict__["_fallback"].config.estimate_side == 768
    assert "on a 768-px crop instead" in load_script("tools/ship_model.py").card_kstudent("kstudent", model, info, None)
    assert [h["command"] for h in info["settings_history"]] == ["test command", "wide command"]
    # the photos' default ensemble, and a two-pass file's later passes, named on the card
    two = save_model(tmp_path / "two.safetensors", KernelStudent(config=KernelStudentConfig(**SMALL, passes=2)))
    ens = tool.apply(str(two), tmp_path / "ens", {"photo_ensemble": 8}, "ensemble command")
    model, info = load_model(ens)
    card = load_script("tools/ship_model.py").card_kstudent("kstudent", model, info, None)
    assert model.config.photo_ensemble == 8 and "average 8 flipped copies" in card and "2 passes" in card
    with pytest.raises(ValueError, match="photo_ensemble"):
        tool.apply(str(two), tmp_path / "bad", {"photo_ensemble": 5}, "x")


def test_wiener_refine_keeps_an_explaining_estimate_and_shrinks_the_residual():
    from sharpkd.deblur.solve import wiener_refine
    from sharpkd.degrade import blur

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((1, 3, 48, 56))).float() * 0.8 + 0.1
    k = torch.from_numpy(gaussian_kernel(1.5)).float()
    y = blur(x, k)
    torch.testing.assert_close(wiener_refine(x, y, k, 1e-3), x, atol=1e-5, rtol=0)  # nothing left to explain
    start = y.clone()  # the blurred photo as the first estimate: one step explains much of the residual
    refined = wiener_refine(start, y, k, 1e-3)
    res = lambda e: float((blur(e, k) - y)[..., 8:-8, 8:-8].abs().mean())  # noqa: E731
    assert res(refined) < 0.5 * res(start)
    half = wiener_refine(start, y, k, 1e-3, damping=0.5)
    assert res(refined) < res(half) < res(start)


def test_fft_blur_equals_the_benchmark_blur():
    """The correction's FFT blur is the benchmark's spatial blur (reflected borders, true convolution) to float
    rounding: one kernel, one asymmetric kernel per image, odd frame sizes, and a kernel wider than the frame."""
    from sharpkd.deblur.solve import fft_blur
    from sharpkd.degrade import blur

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((2, 3, 37, 53))).float()
    ks = torch.from_numpy(rng.random((2, 15, 15)) * (rng.random((2, 15, 15)) > 0.7)).float()
    ks = ks / ks.sum(dim=(-2, -1), keepdim=True)
    for k in (ks[0], ks):
        torch.testing.assert_close(fft_blur(x, k), blur(x, k), atol=2e-6, rtol=0)
    assert (fft_blur(x, ks)[0] - fft_blur(x, ks[0])[0]).abs().max() == 0  # each image its own kernel
    assert (fft_blur(x, ks)[1] - fft_blur(x[1:], ks[0])[0]).abs().max() > 1e-3
    small = x[..., :12, :14]
    torch.testing.assert_close(fft_blur(small, ks[1]), blur(small, ks[1]), atol=2e-6, rtol=0)


def test_headroom_benchmark_scores_students_and_teacher_with_both_kernels(tmp_path, load_script):
    """benchmarks/kstudent_headroom.py on two hand-made hold-out cases: each model with the estimated and the
    true kernel; the teacher's deconvolution with the true kernel beats the blurred crop."""
    from skimage import data as skdata

    from sharpkd.degrade import pad_kernel, protocol_degrade

    sharp = skdata.astronaut()[100:164, 180:244]
    true = gaussian_kernel(1.5)
    bank = []
    for i, est_sigma in enumerate((1.5, 2.5)):
        y = protocol_degrade(sharp, true, i)
        bank.append({"kind": "gauss", "sharp": torch.from_numpy(sharp).permute(2, 0, 1).contiguous(),
                     "blurred": torch.from_numpy(y).permute(2, 0, 1).contiguous(),
                     "true": torch.from_numpy(pad_kernel(true, 31)).float(),
                     "est": torch.from_numpy(pad_kernel(gaussian_kernel(est_sigma), 31)).float()})
    torch.save(bank, tmp_path / "val_bank-round.pt")
    save_model(tmp_path / "k.safetensors", small_kstudent())
    tool = load_script("benchmarks/kstudent_headroom.py")
    tool.main(["--run", str(tmp_path), "--models", str(tmp_path / "k.safetensors"), "--json", str(tmp_path / "h.json"),
               "-q"])
    rows = json.loads((tmp_path / "h.json").read_text())["rows"]
    assert [(r["bank"], r["kernel"]) for r in rows] == [("mixed", "est"), ("mixed", "true")] * 2
    assert [r["model"] for r in rows[2:]] == ["teacher", "teacher"]
    assert rows[3]["gain"]["gauss"] > 1.0  # the teacher's solver with the true sigma-1.5 kernel
    assert rows[0]["gain"] != rows[1]["gain"]  # the student's guide follows the kernel it is given
    with pytest.raises(SystemExit, match="no validation banks"):
        tool.main(["--run", str(tmp_path / "none"), "-q"])
    # a second guided pass of each student: a row of its own, not the one-pass figure
    tool.main(["--run", str(tmp_path), "--models", str(tmp_path / "k.safetensors"), "--teacher", "",
               "--second-pass", "0.003,0.5", "--json", str(tmp_path / "s.json"), "-q"])
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["est", "true", "est, second pass"]
    assert rows[2]["second_pass"] == {"balance": 0.003, "damping": 0.5} and rows[2]["gain"] != rows[0]["gain"]
    with pytest.raises(SystemExit, match="BALANCE,DAMPING"):
        tool.main(["--run", str(tmp_path), "--second-pass", "0.003", "-q"])
    # a two-pass student: its first pass too, and rows again with other run-time settings of its second pass
    two = small_kstudent()
    two.config = replace(two.config, passes=2)
    save_model(tmp_path / "k2.safetensors", two)
    tool.main(["--run", str(tmp_path), "--models", str(tmp_path / "k2.safetensors"), "--teacher", "",
               "--refine", "0.003,0.5,0.1,1", "--json", str(tmp_path / "r.json"), "-q"])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["est", "true", "est", "true"] and "first_pass" in rows[0]["gain"]
    assert rows[2]["refine"] == {"refine_balance": 0.003, "refine_damping": 0.5, "round_refine_balance": 0.1,
                                 "round_refine_damping": 1.0}
    assert rows[2]["gain"]["gauss"] != rows[0]["gain"]["gauss"]  # the round route's later pass took 0.1 / 1
    assert rows[2]["gain"]["first_pass"] == rows[0]["gain"]["first_pass"]  # the first pass does not change
    with pytest.raises(SystemExit, match="ROUND_DAMPING"):
        tool.main(["--run", str(tmp_path), "--refine", "0.003,0.5", "-q"])


def test_further_passes_are_guided_by_the_corrected_output_on_deconvolved_routes_only(tmp_path):
    """``passes=2``: a photo on a deconvolved route gets a second network pass whose guide is the first
    pass's output corrected towards the photo (``refine_guide``); a photo the router keeps from
    deconvolution keeps its single pass, in the same batch."""
    from sharpkd.models.kstudent import refine_guide

    torch.manual_seed(0)
    model = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL, passes=2)))
    x = torch.rand(2, 3, 24, 32)
    k = gaussian_kernel(1.5)
    ests = [BlurEstimate(k, 1 / 255, "shake"), BlurEstimate(np.ones((1, 1)), 1 / 255, "network")]
    first = model.run(x, model.guide(x, ests))
    g2 = refine_guide(first[:1], x[:1], torch.as_tensor(k, dtype=torch.float32), 3e-3, 1.0)
    want = torch.cat([model.run(x[:1], g2), first[1:]])
    out = model.restore(x, ests)
    torch.testing.assert_close(out, want)
    assert not torch.allclose(out[:1], first[:1], atol=1e-3)  # the second pass changed the guided photo
    one = KernelStudent(config=replace(model.config, passes=1))
    one.load_state_dict(model.state_dict())
    torch.testing.assert_close(one.restore(x, ests), first)
    loaded, _ = load_model(save_model(tmp_path / "k.safetensors", model))
    assert (loaded.config.passes, loaded.config.refine_balance, loaded.config.refine_damping) == (2, 3e-3, 1.0)
    with pytest.raises(ValueError, match="passes"):
        KernelStudent(config=KernelStudentConfig(**SMALL, passes=0))
    # the round route may take settings of its own; camera shake keeps the general ones
    own = KernelStudent(config=replace(model.config, round_refine_balance=0.1, round_refine_damping=0.8))
    own.load_state_dict(model.state_dict())
    assert own.refine_settings("round") == (0.1, 0.8) and own.refine_settings("shake") == (3e-3, 1.0)
    rnd = [BlurEstimate(k, 1 / 255, "round")]
    g, mask = own.refine_guide(x[:1], first[:1], rnd)
    torch.testing.assert_close(g, refine_guide(first[:1], x[:1], torch.as_tensor(k, dtype=torch.float32), 0.1, 0.8))
    assert mask.tolist() == [True]
    torch.testing.assert_close(own.restore(x[:1], rnd), own.run(x[:1], g))
    with pytest.raises(ValueError, match="refine"):
        KernelStudent(config=KernelStudentConfig(**SMALL, round_refine_damping=3.0))


def test_two_pass_training_turns_the_kernel_with_its_window_and_trains_through_both_passes():
    """Training with ``passes=2``: windows are ``margin`` px wider, each carries its case's kernel turned and
    flipped as the window was (so the photo is still the window's sharp image blurred by it), the loss reads
    the final pass inside the margin plus the first pass's own L1, and the gradient reaches the network
    through the second pass."""
    from sharpkd.degrade import blur
    from sharpkd.distill_kernel import KernelDistillConfig, loss_terms, passes_forward, prepare, windows

    rng = np.random.default_rng(0)
    k = np.zeros((9, 9), np.float32)
    k[4, 2:9] = 1.0  # a one-sided line: any wrong turn of the kernel moves the blur
    k[1:5, 8] = 1.0
    k = torch.from_numpy(k / k.sum())
    sharp = torch.from_numpy(rng.random((3, 64, 64), dtype=np.float32))
    blurred = blur(sharp[None], k)[0]
    u8 = lambda t: (t * 255).round().to(torch.uint8)  # noqa: E731
    kg = torch.from_numpy(gaussian_kernel(1.0)).float()
    kg = kg / kg.sum()
    bank = [{"kind": "motion", "blurred": u8(blurred), "sharp": u8(sharp), "est": k},
            {"kind": "gauss", "blurred": u8(blur(sharp[None], kg)[0]), "sharp": u8(sharp), "est": kg}]
    cases = prepare(bank, 1e-2, [u8(sharp), u8(sharp)])
    cfg = KernelDistillConfig(batch=8, patch=24, margin=8, passes=2, no_kernel_share=0.5, w_perceptual=0)
    b = windows(cases, cfg, np.random.default_rng(5))
    assert b["y"].shape[-1] == 40 and len(b["k"]) == 8
    # a Gaussian case's windows take the round route's refine settings
    assert b["round"] == [torch.equal(kk, kg) for kk in b["k"]] and any(b["round"]) and not all(b["round"])
    for i in range(8):  # inside the kernel's reach from the border, the window's photo = its sharp image * its kernel
        again = blur(b["x"][i:i + 1], b["k"][i])[..., 5:-5, 5:-5]
        assert float((again - b["y"][i:i + 1, :, 5:-5, 5:-5]).abs().max()) < 3 / 255
    model = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL, passes=2)))
    guides: list = []
    model.net.register_forward_pre_hook(lambda m, a, kw: guides.append(kw["guide"]), with_kwargs=True)
    pred, inside, first = passes_forward(model, b, cfg)
    assert pred.shape[-1] == 24 and inside["x"].shape[-1] == 24 and "first" in first
    kd = b["kd"].bool()
    assert kd.any() and (~kd).any()
    # two network runs: the first pass on every window, the second on the windows with a kernel, whose
    # guide is computed from the first pass's output (so the loss trains the first pass through it)
    assert len(guides) == 2 and guides[1].shape[0] == int(kd.sum()) and guides[1].requires_grad
    torch.testing.assert_close(pred[~kd], model.run(b["y"][~kd], b["g"][~kd])[..., 8:-8, 8:-8])
    total, parts = loss_terms(model, b, cfg, 1, None)
    assert float(total.detach()) == pytest.approx(parts["rec"] + parts["kd"] + 0.5 * parts["first"], rel=1e-4)
    first_only = torch.autograd.grad(pred[kd].sum(), guides[1])[0]
    assert float(first_only.abs().sum()) > 0
    # --w-first-kd: the first pass also learns the teacher's label on the windows with a kernel
    import dataclasses

    first_pass = model.run(b["y"], b["g"])
    total, parts = loss_terms(model, b, dataclasses.replace(cfg, w_first_kd=0.25), 1, None)
    first_kd = torch.nn.functional.l1_loss(first_pass[kd], b["t"][kd]).detach()
    assert parts["first_kd"] == pytest.approx(float(first_kd), rel=1e-4)
    assert float(total.detach()) == pytest.approx(parts["rec"] + parts["kd"] + 0.5 * parts["first"]
                                                  + 0.25 * parts["first_kd"], rel=1e-4)
    from sharpkd.distill_kernel import run

    for bad in (dict(passes=1), dict(w_kd=0.0)):  # refused before any bank is built
        with pytest.raises(SystemExit, match="w-first-kd"):
            run("none", "teacher", "student", Path("unused"), dataclasses.replace(cfg, w_first_kd=0.5, **bad))


def test_sharpener_runs_the_further_passes_over_tiles_and_the_self_ensemble():
    """The Sharpener gives a two-pass kernel student its second pass (tiled like the first, so tiles match
    the whole image), and with the self-ensemble it averages each pass over the transformed copies."""
    from sharpkd.infer import Sharpener

    torch.manual_seed(1)
    model = random_weights(KernelStudent(config=KernelStudentConfig(**SMALL, passes=2)))
    model.attach_estimator(FixedEstimator("shake")).eval()
    x = torch.rand(1, 3, 160, 200)
    est = model.estimate(x)
    want = model.restore(x, est).clamp(0, 1)
    whole = Sharpener(model, tile=0).sharpen_tensor(x)
    torch.testing.assert_close(whole, want, atol=2e-5, rtol=0)
    tiled = Sharpener(model, tile=128, overlap=64).sharpen_tensor(x)
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
    one = KernelStudent(config=replace(model.config, passes=1)).eval()
    one.load_state_dict(model.state_dict())
    one.attach_estimator(FixedEstimator("shake"))
    assert (Sharpener(one, tile=0).sharpen_tensor(x) - whole).abs().max() > 1e-3
    # passes=1 (video's default) runs the first pass alone: the one-pass file's output
    first_only = Sharpener(model, tile=0, passes=1)
    assert first_only.passes == 1 and Sharpener(model, tile=0).passes == 2
    torch.testing.assert_close(first_only.sharpen_tensor(x), Sharpener(one, tile=0).sharpen_tensor(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="passes"):
        Sharpener(model, tile=0, passes=5)
    from sharpkd.infer import dihedral

    def average(joined):
        return sum(dihedral(model.run_joined(dihedral(joined, k)).clamp(0, 1), k, inverse=True) for k in range(2)) / 2

    first = average(torch.cat([x, model.guide(x, est)], dim=1))
    second = average(torch.cat([x, model.refine_guide(x, first, est)[0]], dim=1)).clamp(0, 1)
    ens = Sharpener(model, tile=0, ensemble=2).sharpen_tensor(x)
    torch.testing.assert_close(ens, second, atol=2e-5, rtol=0)
    assert (ens - whole).abs().max() > 1e-4


def test_camera_shake_labels_and_guides_average_over_the_estimates_kernels(tmp_path):
    """Banks keep the L0 kernel and the second estimate of a camera-shake case beside the refined one. With
    ``--label-average`` its teacher label is the mean of the three deconvolutions when the teacher averages camera
    shake (``shake_average``, ``shake_average_check``), as the teacher restores a photo, and with ``guide_average`` its
    training guide is the mean of the three Wiener deconvolutions, as the kernel student's is at run time.
    Gaussian cases keep one kernel, label and guide."""
    from scipy.ndimage import convolve

    from sharpkd.deblur.finetune import case_kernels, make_case, solve
    from sharpkd.degrade import make_kernel
    from sharpkd.distill_kernel import prepare, teacher_labels
    from sharpkd.models import BlindTeacher

    rng = np.random.default_rng(0)
    sharp = (np.clip(convolve(rng.random((48, 48)), np.ones((3, 3)) / 9, mode="wrap"), 0, 1) * 255).astype(np.uint8)
    sharp = np.repeat(sharp[..., None], 3, -1)
    cfg = BlindTeacherConfig(kernel_size=9, check_kernel_size=7, iters=2, cg_steps=1, estimate_iters=1,
                             refine_rounds=1, shake_average=True, shake_average_check=True)
    teacher = BlindTeacher(config=cfg).eval()

    class Smooth(torch.nn.Module):  # a denoiser prior that keeps the solver's results apart
        def forward(self, x, sigma):
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    teacher.denoiser = Smooth()
    shake = make_case(teacher, sharp, "motion", make_kernel("motion", length=6, seed=1, size=9), 1)
    assert {"unrefined", "check"} <= set(shake) and all(shake[n].shape == (9, 9) for n in ("unrefined", "check"))
    kernels = case_kernels(shake)
    assert len(kernels) == 3 and all(abs(float(k.sum()) - 1) < 1e-5 for k in kernels)
    assert not torch.allclose(kernels[0], kernels[2])
    gauss = {**shake, "kind": "gauss"}
    for n in ("unrefined", "check"):
        gauss.pop(n)
    y = shake["blurred"][None].float() / 255
    labels = teacher_labels(teacher, [shake, gauss], tmp_path / "labels.pt", progress=False, average=True)
    with torch.no_grad():
        runs = [solve(teacher, y, k[None], "motion") for k in kernels]
        mean = sum(runs) / 3
        one = solve(teacher, y, kernels[0][None], "gauss")
    to8 = lambda t: (t[0].clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    assert torch.equal(labels[0], to8(mean)) and not torch.equal(labels[0], to8(runs[0]))
    assert torch.equal(labels[1], to8(one))
    # without ``average`` (the default), or from a teacher that does not average, the refined kernel's alone
    assert torch.equal(teacher_labels(teacher, [shake], tmp_path / "single.pt", progress=False)[0], to8(runs[0]))
    teacher.config = replace(cfg, shake_average=False)
    assert torch.equal(teacher_labels(teacher, [shake], tmp_path / "off.pt", progress=False, average=True)[0],
                       to8(runs[0]))

    averaged = prepare([shake, gauss], 0.01, guide_average=True)
    plain = prepare([shake, gauss], 0.01)
    wiener = [wiener_deconvolve(y, k, 0.01) for k in kernels]
    torch.testing.assert_close(averaged[0]["g"], sum(wiener) / 3)
    torch.testing.assert_close(plain[0]["g"], wiener[0])
    torch.testing.assert_close(averaged[1]["g"], plain[1]["g"])
    assert torch.equal(averaged[0]["k"], kernels[0])  # later passes still correct with the refined kernel
