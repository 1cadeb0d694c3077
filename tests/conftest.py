from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Keep tests deterministic and light on this 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny test tensors: one thread is fastest on 2 shared cores


def sslkit_cmd(*args: object, env: dict | None = None, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sslkit ARGS` in a subprocess (the way a user does), capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def cli_in_process(*args: object) -> subprocess.CompletedProcess:
    """`sslkit ARGS` through CliRunner on the root app: same exit codes, no interpreter start per call."""
    from typer.testing import CliRunner

    from sslkit.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


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
