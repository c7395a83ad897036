"""Distributed training: torchrun with 2 CPU processes (gloo) against one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from sharpkd.checkpoint import load_model

pytestmark = pytest.mark.slow

COMMON = ["teacher", "--arch", "student", "--steps", "4", "--batch-size", "4", "--patch-size", "32",
          "--val-every", "2", "--log-every", "1", "--threads", "1", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "sharpkd", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "sharpkd", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(path):
    model, info = load_model(path)
    return model.state_dict(), info


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "single"
    run([*COMMON, "--out", str(out)])
    return out


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, single):
    out = tmp_path / "ddp2"
    run([*COMMON, "--out", str(out)], nproc=2)
    a, info = weights(single / "model.safetensors")
    b, _ = weights(out / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ddp = [r for r in log if r["event"] == "ddp"]
    assert ddp and ddp[0]["world_size"] == 2 and ddp[0]["max_weight_diff_across_ranks"] == 0.0  # both ranks agree
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert log[0]["world_size"] == 2 and log[0]["global_batch"] == 4
    assert all(r["samples_per_s"] > 0 for r in log if r["event"] == "train")
    _, info2 = weights(out / "model.safetensors")
    assert info2["history"][0]["world_size"] == 2


def test_resume_across_world_sizes(tmp_path, single):
    """Start with 2 ranks, stop after one step, finish in one process: same weights as one process."""
    out = tmp_path / "two-then-one"
    run([*COMMON, "--out", str(out), "--max-minutes", "1e-9"], nproc=2)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 1
    run([*COMMON, "--out", str(out), "--resume"])
    a, _ = weights(single / "model.safetensors")
    b, info = weights(out / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert [h["world_size"] for h in info["history"]] == [2, 1]


def test_batch_must_divide_over_ranks_and_amp_needs_cuda(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "sharpkd", "train", *COMMON, "--batch-size", "3",
           "--out", str(tmp_path / "x")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "divide evenly" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sharpkd", "train", *COMMON, "--amp", "bf16", "--out",
                           str(tmp_path / "y")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "CUDA options" in proc.stderr
