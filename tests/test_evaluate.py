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


@pytest.mark.slow
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


def test_resume_scores_only_what_an_interrupted_run_left(shared_datasets, tmp_path, monkeypatch):
    import sharpkd.evaluate as ev

    _, model = build_preset("student")
    path = save_model(tmp_path / "m.safetensors", model, {"steps": 0})
    data, kernels = shared_datasets / "eval" / "kodak24", shared_datasets / "kernels" / "levin09.npz"
    args = (data, [str(path)], tmp_path / "o", kernels)
    kw = {"limit": 1, "progress": False, "classical": False}
    full = run_benchmark(*args, **kw)
    journal = tmp_path / "o" / "journal" / ev.journal_name(str(path))
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 4 and json.loads(lines[0])["method"] == str(path)
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:12])  # stopped while writing the third photo
    calls = []
    real = ev.score_case
    monkeypatch.setattr(ev, "score_case", lambda name, *a: calls.append(name) or real(name, *a))
    again = run_benchmark(*args, **kw, resume=True)
    assert calls == [str(path)] * 2  # the two photos it had not finished; the blurred row was kept whole
    assert again["rows"][1]["per_image_psnr"] == full["rows"][1]["per_image_psnr"]
    assert len(journal.read_text().splitlines()) == 1 + 4
    calls.clear()
    save_model(path, model, {"steps": 1})  # another file under the same name: its records do not count
    run_benchmark(*args, **kw, resume=True)
    assert calls == [str(path)] * 4
    calls.clear()
    run_benchmark(*args, **kw)  # without --resume everything is scored again
    assert len(calls) == 8
    assert ev.journal_name("../../etc/x y") == "etc_x_y.jsonl"


def test_feature_distance_orders_blur(photo):
    from sharpkd.evaluate import feature_distance

    assert feature_distance(photo, photo) == pytest.approx(0.0, abs=1e-6)
    light = protocol_degrade(photo, gaussian_kernel(1.0), 0)
    heavy = protocol_degrade(photo, gaussian_kernel(3.0), 0)
    assert 0 < feature_distance(photo, light) < feature_distance(photo, heavy)


@pytest.mark.slow
def test_benchmark_vgg_distance_column(shared_datasets, tmp_path):
    res = run_benchmark(shared_datasets / "eval" / "kodak24", [], tmp_path, shared_datasets / "kernels" / "levin09.npz",
                        limit=1, progress=False, vgg_distance=True)
    rows = {r["method"]: r for r in res["rows"]}
    blurred, oracle = rows["blurred input"], rows["Wiener, true kernel (oracle)"]
    # the oracle restores detail, so its features are closer to the ground truth's
    assert 0 < oracle["vgg_distance"] < blurred["vgg_distance"]
    assert set(blurred["per_degradation"]["motion"]) == {"psnr", "ssim", "vgg_distance"}
    assert "VGG dist" in res["markdown"].splitlines()[3]


def test_benchmark_records_the_route_each_photo_took(tmp_path, photo):
    """A blind model's row says which route each photo took (its blur estimate's) and how long it took; a
    plain network's row has neither."""
    import sharpkd.models  # noqa: F401  (architectures before the teacher module)
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig
    from sharpkd.evaluate import model_method, score_method

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    blind = save_model(tmp_path / "b.safetensors", BlindTeacher(config=BlindTeacherConfig(network=net)), {})
    _, student = build_preset("student")
    plain = save_model(tmp_path / "s.safetensors", student, {})
    images = [("p", photo)]
    cases = [(0, j, protocol_degrade(photo, gaussian_kernel(1.0), j), gaussian_kernel(1.0)) for j in range(4)]
    row = score_method(*model_method(str(blind)), images, cases)
    routes = row["per_image_route"]
    assert sorted(routes) == ["gauss1", "gauss2", "gauss3", "motion"]
    assert all(len(v) == 1 and v[0] in ("shake", "round", "network") for v in routes.values())
    # and how long each photo took (the route decides), adding up to the row's mean time
    times = row["per_image_seconds"]
    assert sorted(times) == sorted(routes) and all(len(v) == 1 and v[0] > 0 for v in times.values())
    assert abs(sum(v[0] for v in times.values()) / 4 - row["seconds_per_image"]) < 1e-2
    plain_row = score_method(*model_method(str(plain)), images, cases)
    assert "per_image_route" not in plain_row and "per_image_seconds" not in plain_row


def test_holdout_benchmark_runs_a_model_with_the_ensemble_it_is_given(tmp_path, shared_datasets, load_script,
                                                                      monkeypatch, perturbed):
    """benchmarks/holdout.py: ``NAME@xN`` runs the model through its Sharpener with N copies (recorded per row);
    a plain name with one copy scores the network itself, as before."""
    import sys

    import torch

    torch.manual_seed(0)
    path = save_model(tmp_path / "s.safetensors", perturbed("student"))
    out = tmp_path / "h.json"
    mod = load_script("benchmarks/holdout.py")
    monkeypatch.setattr(sys, "argv", ["holdout.py", str(path), f"{path}@x2", "--data", str(shared_datasets / "train"),
                                      "--threads", "1", "--json", str(out)])
    mod.main()
    one, two = json.loads(out.read_text())["rows"]
    assert (one["ensemble"], two["ensemble"]) == (1, 2) and one["model"] == str(path)
    assert set(one["gain_by_kind"]) == {"gauss1", "gauss2", "gauss3", "motion"}
    assert one["mean_gain"] != two["mean_gain"]  # a random network is not flip-equivariant


def test_teacher_ab_benchmark_scores_two_settings_case_by_case_and_resumes(tmp_path, shared_datasets, load_script,
                                                                          monkeypatch, capsys):
    """benchmarks/teacher_ab.py: setting B (``--set``) routes differently from A (``--set-a``) on every case when A
    lets every estimate through the camera-shake gates and B none; each case is journalled with both routes and
    gains, a rerun skips the journalled cases, and a setting that only changes the restoration restores twice."""
    import sys

    import torch

    from sharpkd.checkpoint import load_denoiser
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    torch.manual_seed(0)
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net, iters=2, cg_steps=1, estimate_iters=1,
                                                     round_anisotropy=0.0))
    teacher.denoiser.load_state_dict(load_denoiser().state_dict())  # the shipped prior: restorations that differ
    path = save_model(tmp_path / "t.safetensors", teacher, {"stage": "teacher"}, half=False)
    mod = load_script("benchmarks/teacher_ab.py")
    common = ["teacher_ab.py", "--teacher", str(path), "--data", str(shared_datasets / "train"), "--photos", "1",
              "--max-side", "96", "--degradations", "gauss2,motion", "--threads", "1"]
    gates_open = ["--set-a", "min_agreement=0", "--set-a", "min_anisotropy=0", "--set-a", "min_shake_spread=0",
                  "--set-a", "min_concentration=0"]
    out = tmp_path / "ab"
    argv = common + gates_open + ["--set", "min_agreement=2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    mod.main()
    rows = mod.read_journal(out / "journal.jsonl")
    assert [(r["i"], r["degradation"]) for r in rows] == [(0, "gauss2"), (0, "motion")]
    assert all(r["a"]["route"] == "shake" and r["b"]["route"] == "network" and r["changed"] for r in rows)
    assert all(np.isfinite(r[s]["gain"]) for r in rows for s in "ab")
    assert rows[0]["a"]["gain"] != rows[0]["b"]["gain"]
    assert "| all | 2 |" in capsys.readouterr().out
    mod.main()  # resumed: nothing left to measure
    assert len(mod.read_journal(out / "journal.jsonl")) == 2

    # the same routes and kernels, another noise floor for the final deconvolution in B: both settings are restored
    monkeypatch.setattr(sys, "argv", common + gates_open + ["--set", "shake_noise=0.05", "--out", str(tmp_path / "it")])
    mod.main()
    rows = mod.read_journal(tmp_path / "it" / "journal.jsonl")
    assert all(r["a"]["route"] == r["b"]["route"] == "shake" and not r["changed"] for r in rows)
    assert all(r["a"]["gain"] != r["b"]["gain"] for r in rows)
    monkeypatch.setattr(sys, "argv", common + ["--set", "bogus=1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="bogus"):
        mod.main()


def test_shake_solver_alignment_diagnostic_finds_a_displaced_result(load_script):
    """benchmarks/shake_solver.py's oracle diagnostic: a result that is the sharp photo moved by (1, -2) px scores
    low as it is, and after registration it scores far higher, with the shift found to a twentieth of a pixel."""
    import skimage.data
    import torch

    mod = load_script("benchmarks/shake_solver.py")
    sharp_np = skimage.data.astronaut()[100:260, 120:280].astype(np.float32) / 255
    moved_np = np.roll(sharp_np, (1, -2), axis=(0, 1))
    blurred_np = convolve(sharp_np, gaussian_kernel(2.0)[..., None], mode="reflect")

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]

    out = mod.aligned_gains(tensor(moved_np), tensor(blurred_np), tensor(sharp_np))
    assert out["shift"] == pytest.approx([-1.0, 2.0], abs=0.05)
    assert out["aligned_gain"] > out["gain"] + 10
    same = mod.aligned_gains(tensor(sharp_np), tensor(blurred_np), tensor(sharp_np))
    assert same["shift"] == pytest.approx([0.0, 0.0], abs=0.05) and same["gain"] == pytest.approx(same["aligned_gain"])


def test_round_blend_summary_groups_cases_and_marks_the_best_weight(load_script):
    """benchmarks/round_blend.py's table: round-route cases only, per degradation and fitted width, best in bold."""
    mod = load_script("benchmarks/round_blend.py")
    rows = [{"degradation": "gauss1", "route": "round", "fit": 0.8, "gain": {"0": 5.0, "0.5": 4.0}},
            {"degradation": "gauss1", "route": "round", "fit": 1.2, "gain": {"0": 1.0, "0.5": 4.0}},
            {"degradation": "gauss3", "route": "round", "fit": 2.7, "gain": {"0": 3.0, "0.5": 2.0}},
            {"degradation": "gauss3", "route": "network"}]
    text = mod.summary({"weights": [0, 0.5], "rows": rows})
    assert text.startswith("3 of 4 Gaussian cases take the round route")
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["gauss1"] == "| gauss1 | 2 | +3.000 | **+4.000** |"
    assert lines["gauss3"] == "| gauss3 | 1 | **+3.000** | +2.000 |"
    assert lines["fitted width 0-1.5 px"] == "| fitted width 0-1.5 px | 2 | +3.000 | **+4.000** |"
    assert "fitted width 1.5-2.5 px" not in lines  # no case there
    assert lines["all"] == "| all | 3 | +3.000 | **+3.333** |"
    assert mod.summary({"weights": [0], "rows": rows[3:]}) == "no case took the round route"


def test_jpeg_inputs_benchmark_tells_a_model_the_files_step_and_resumes(tmp_path, shared_datasets, load_script,
                                                                        monkeypatch, capsys):
    """benchmarks/jpeg_inputs.py: each degraded photo is scored lossless and as a JPEG; a ``:jpeg`` method is told
    the file's quantisation step (and its ``+FIELD=VALUE`` overrides reach the teacher's config), which lifts its
    noise level on the JPEG and changes nothing on the lossless file; a rerun measures nothing again."""
    import sys

    import torch

    from sharpkd.checkpoint import load_denoiser
    from sharpkd.deblur.teacher import BlindTeacher, BlindTeacherConfig

    net = {"width": 8, "enc_blocks": [1], "middle_blocks": 1, "dec_blocks": [1]}
    torch.manual_seed(0)
    teacher = BlindTeacher(config=BlindTeacherConfig(network=net, iters=2, cg_steps=1, estimate_iters=1))
    teacher.denoiser.load_state_dict(load_denoiser().state_dict())
    path = save_model(tmp_path / "t.safetensors", teacher, {"stage": "teacher"}, half=False)
    mod = load_script("benchmarks/jpeg_inputs.py")
    out = tmp_path / "j"
    monkeypatch.setattr(sys, "argv", ["jpeg_inputs.py", "--photos", "train:1", "--max-side", "96", "--degradations",
                                      "gauss2", "--qualities", "0,75", "--models", f"{path},{path}:jpeg+jpeg_noise=2",
                                      "--data", str(shared_datasets / "train"), "--threads", "1", "--out", str(out)])
    mod.main()
    rows = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    expected = [(0, False), (0, True), (75, False), (75, True)]
    assert [(r["quality"], r["method"].endswith("=2")) for r in rows] == expected
    lossless, told_lossless, plain, told = rows
    assert lossless["jpeg_step"] is None and told_lossless["noise"] == lossless["noise"]
    assert told_lossless["gain"] == pytest.approx(lossless["gain"])
    assert plain["jpeg_step"] == told["jpeg_step"] == 28.5  # Pillow's quality-75 luma table
    assert plain["noise"] < 57 and told["noise"] == pytest.approx(2 * 28.5)  # noise levels in 8-bit levels
    assert plain["input_psnr"] == told["input_psnr"] < lossless["input_psnr"]
    printed = capsys.readouterr().out
    assert "on the 2 cases every method has" in printed and "| lossless |" in printed
    mod.main()  # resumed: nothing left to measure
    assert len((out / "journal.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    mod.show(str(out / "journal.jsonl"), str(path))  # one method of the journal
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {path}")]
    assert len(shown) == 2 and not any("jpeg_noise" in line for line in shown)
    with pytest.raises(SystemExit, match="no cases"):
        mod.show(str(out / "journal.jsonl"), "nothing-here")


def test_jpeg_inputs_overrides_reach_a_kernel_students_own_config_or_its_estimators(tmp_path, load_script):
    """benchmarks/jpeg_inputs.py: ``+FIELD=VALUE`` on a kernel student sets its own config where FIELD is one of
    its fields and its estimator's (a copy of the shipped teacher's) otherwise; another load is untouched."""
    from sharpkd.models.kstudent import KernelStudent, KernelStudentConfig

    small = KernelStudentConfig(unshuffle=2, width=8, low_width=8, low_blocks=1, high_blocks=1)
    path = save_model(tmp_path / "k.safetensors", KernelStudent(config=small), {"stage": "kernel student"}, half=False)
    mod = load_script("benchmarks/jpeg_inputs.py")
    sh, told = mod.load_method(f"{path}@x1:jpeg+round_balance=0.03+jpeg_noise=0.5")
    assert told and sh.model.config.round_balance == 0.03 and sh.model.estimator.config.jpeg_noise == 0.5
    agree, _ = mod.load_method(f"{path}+min_agreement=0.95")  # a student field its estimate copies reaches it
    assert agree.model.config.min_agreement == agree.model.estimator.config.min_agreement == 0.95
    plain, told = mod.load_method(f"{path}@x1")
    assert not told and plain.model.config.round_balance is None
    assert plain.model.estimator.config.jpeg_noise != 0.5
