from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Keep tests deterministic and light on this 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny test tensors: one thread is fastest on 2 shared cores


def sslkit_cmd(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sslkit ARGS` in a subprocess (the way a user does), capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sslkit", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture
def cli():
    return sslkit_cmd


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
