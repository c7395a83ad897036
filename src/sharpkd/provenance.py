"""Where a figure or a model came from: a one-line description of the machine it was made on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def hardware() -> str:
    """CPU model, logical CPUs, torch version and its thread count, e.g. for model cards and tables."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
