from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`sslkit lidar ARGS` in this process (CliRunner on the root app)."""
    from typer.testing import CliRunner

    from sslkit.cli import app

    res = CliRunner().invoke(app, ["lidar", *map(str, args)])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


def run_subprocess(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslkit", "lidar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="session")
def sim_seq(tmp_path_factory) -> Path:  # noqa: ANN001
    """12 simulated 32-beam frames with true labels (about 2 s)."""
    out = tmp_path_factory.mktemp("lidar") / "seq"
    res = run_cli("simulate", out, "--frames", "12", "--seed", "5")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def pseudo(sim_seq: Path) -> Path:
    out = sim_seq.parent / "pl"
    res = run_cli("pseudo-label", sim_seq, "-r", "tiny", "--out", out, "--gt", sim_seq / "label_2")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def student_run(sim_seq: Path, pseudo: Path) -> Path:
    out = sim_seq.parent / "run"
    res = run_cli("train-student", sim_seq, pseudo, "-r", "tiny", "--out", out)
    assert res.returncode == 0, res.stderr
    return out
