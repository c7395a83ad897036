import json

import torch

from sharpkd.checkpoint import load_model
from sharpkd.train import TrainConfig, lr_at, train


def _cfg(tmp_path, **kw):
    base = dict(stage="teacher", arch="student", out=str(tmp_path / "run"), steps=6, batch_size=2, patch_size=24,
                val_crops_per_photo=1, val_crop=32, val_every=3, ckpt_every=3, log_every=1, warmup=2)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 1e-4
    assert lr_at(9, cfg) == 1e-3
    assert lr_at(100, cfg) == 1e-4
    assert lr_at(10, cfg) > lr_at(50, cfg) > lr_at(99, cfg)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    # sanity: the loop's optimiser actually optimises (overfit 40 steps on one tiny batch)
    from sharpkd.checkpoint import build_preset
    from sharpkd.degrade import blur, gaussian_kernel

    _, model = build_preset("student")
    x = torch.rand(2, 3, 24, 24)
    y = blur(x, gaussian_kernel(1.5))
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    first = None
    for _ in range(40):
        loss = (model(y) - x).abs().mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_resume_continues_exactly(tmp_path):
    # 6 steps in one go == 3 steps, stop, resume to 6
    full = train(_cfg(tmp_path, out=str(tmp_path / "full")), progress=False)
    half = _cfg(tmp_path, out=str(tmp_path / "half"), steps=6, max_minutes=1e-9)  # stops after 1 step
    train(half, progress=False)
    state = torch.load(tmp_path / "half" / "state.pt", weights_only=True)
    assert state["step"] == 1
    resumed = train(_cfg(tmp_path, out=str(tmp_path / "half"), steps=6), resume=True, progress=False)
    a, _ = load_model(full)
    b, _ = load_model(resumed)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    log = [json.loads(line) for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_student_without_distillation_needs_no_teacher(tmp_path):
    path = train(_cfg(tmp_path, stage="student", distill=False), progress=False)
    _, info = load_model(path)
    assert info["distilled"] is False and info["steps"] == 6


def test_resume_history_is_recorded(tmp_path):
    train(_cfg(tmp_path, steps=6, max_minutes=1e-9), progress=False)
    path = train(_cfg(tmp_path, steps=6), resume=True, progress=False)
    _, info = load_model(path)
    assert [(h["start_step"], h["end_step"]) for h in info["history"]] == [(0, 1), (1, 6)]
    assert info["command"] == info["history"][0]["command"]


def test_a_new_run_never_overwrites_an_existing_one(tmp_path):
    import pytest

    train(_cfg(tmp_path, steps=3), progress=False)
    before = (tmp_path / "run" / "state.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, steps=3), progress=False)
    assert (tmp_path / "run" / "state.pt").read_bytes() == before


def test_init_starts_from_given_weights_and_logs_gains_by_kind(tmp_path):
    first = train(_cfg(tmp_path, out=str(tmp_path / "a")), progress=False)
    model_a, _ = load_model(first)
    # fine-tuning at learning rate 0: the weights must be exactly those it started from
    second = train(_cfg(tmp_path, out=str(tmp_path / "b"), init=str(first), steps=1, lr=0.0), progress=False)
    model_b, _ = load_model(second)
    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    vals = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl") if '"val"' in line]
    assert set(vals[-1]["val_gain_by_kind"]) == {"gauss1", "gauss2", "gauss3", "motion"}


def test_init_with_another_architecture_is_refused(tmp_path):
    import pytest

    first = train(_cfg(tmp_path, out=str(tmp_path / "a")), progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        train(_cfg(tmp_path, out=str(tmp_path / "b"), arch="nafunet-s", init=str(first)), progress=False)


def test_distillation_on_extra_teacher_labelled_inputs_resumes_exactly(tmp_path):
    """kd_extra adds patches whose only target is the teacher's output; the run stays resumable."""
    teacher = train(_cfg(tmp_path, out=str(tmp_path / "teacher"), steps=3), progress=False)
    kw = dict(stage="student", teacher=str(teacher), kd_extra=2)
    full = train(_cfg(tmp_path, out=str(tmp_path / "full"), **kw), progress=False)
    train(_cfg(tmp_path, out=str(tmp_path / "half"), max_minutes=1e-9, **kw), progress=False)
    resumed = train(_cfg(tmp_path, out=str(tmp_path / "half"), **kw), resume=True, progress=False)
    a, info = load_model(full)
    b, _ = load_model(resumed)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    assert info["train_config"]["kd_extra"] == 2
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all("kd_out" in r for r in log if r["event"] == "train")


def test_extra_inputs_enter_only_the_distillation_terms():
    from sharpkd.losses import LossWeights, combined_loss

    sharp = torch.rand(2, 3, 8, 8)
    pred = torch.rand(5, 3, 8, 8)  # 2 with ground truth + 3 extra
    teacher_out = pred.clone()
    teacher_out[2:] += 0.5  # the teacher disagrees on the extra inputs only
    w = LossWeights(rec=1.0, recon="l1", kd_out=1.0, kd_feat=0.0)
    _, parts = combined_loss(w, pred, sharp, teacher_out=teacher_out)
    assert abs(parts["rec"] - (pred[:2] - sharp).abs().mean().item()) < 1e-6
    assert abs(parts["kd_out"] - 0.5 * 3 / 5) < 1e-6


def test_fine_tuning_into_a_wiener_bank_network_starts_where_the_old_one_was(tmp_path):
    """--init from a network without a Wiener bank into one with it (here with reduced training
    photos, --max-side): at learning rate 0 the new network computes exactly what the old one did."""
    first = train(_cfg(tmp_path, out=str(tmp_path / "a")), progress=False)
    second = train(_cfg(tmp_path, out=str(tmp_path / "b"), arch="student-w", init=str(first), steps=1, lr=0.0,
                        max_side=64), progress=False)
    old, _ = load_model(first)
    new, info = load_model(second)
    assert info["config"]["wiener"] and info["train_config"]["max_side"] == 64
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(new(x), old(x), atol=1e-5)


def test_resume_after_a_kill_logs_each_step_once_and_clears_stale_temp_files(tmp_path):
    train(_cfg(tmp_path, steps=3), progress=False)
    run = tmp_path / "run"
    # what a kill between checkpoints leaves: log lines past the saved step (one cut short) and a half-written state
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"event": "train", "step": 4}) + "\n" + '{"event": "train", "st')
    (run / "state.pt.tmp").write_bytes(b"partial")
    train(_cfg(tmp_path, steps=6), resume=True, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert not list(run.glob("*.tmp"))


def test_resume_refuses_a_foreign_state_file_clearly(tmp_path):
    import pickle

    import pytest

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt").write_bytes(pickle.dumps({"step": 1}))
    with pytest.raises(ValueError, match="not a sharpkd training state"):
        train(_cfg(tmp_path), resume=True, progress=False)


def test_config_checks_run_without_a_process_group():
    import pytest

    from sharpkd.train import check_config

    check_config(TrainConfig(batch_size=8), world=4)
    for cfg, world, msg in ((TrainConfig(batch_size=6), 4, "divide evenly"),
                            (TrainConfig(amp="bf16"), 1, "CUDA options"),
                            (TrainConfig(stage="critic"), 1, "stage"),
                            (TrainConfig(stage="student"), 1, "--teacher"),
                            (TrainConfig(stage="teacher", kd_extra=2), 1, "kd_extra")):
        with pytest.raises(ValueError, match=msg):
            check_config(cfg, world)
