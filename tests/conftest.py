"""Shared fixtures: seeded, CPU-only, tiny odd-sized inputs."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def load_script():
    """Import a repository script that is not part of the package, e.g. ``load_script("tools/average_models.py")``."""
    import importlib.util

    def load(relpath: str):
        path = ROOT / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def photo() -> np.ndarray:
    """A 53 x 37 crop of a real photograph (scikit-image's astronaut), uint8 RGB."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[100:137, 200:253])


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/datasets is not beside the project")
    return SHARED


@pytest.fixture
def perturbed():
    """Factory: a preset network with small random offsets on every weight, so that zero-initialised
    layers (which make fresh networks the identity) carry signal."""
    from sharpkd.checkpoint import build_preset

    def make(name: str, scale: float = 0.02) -> torch.nn.Module:
        _, model = build_preset(name)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        return model.eval()

    return make


@contextlib.contextmanager
def running_server(*args: str, env: dict | None = None):
    """`sharpkd serve ARGS` on a free loopback port; yields its base URL once /healthz answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sharpkd", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                raise RuntimeError(f"sharpkd serve exited: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("sharpkd serve did not come up in 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
