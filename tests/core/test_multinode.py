"""Several "nodes" on this machine: torchrun's c10d rendezvous across two launchers, and SLURM-style variables.

Each gives the same loss curve and weights as one process with the same global batch (VICReg gathers embeddings
across ranks), as the two-process test in test_loop.py does for a single node.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOY = ["-m", "sslkit", "toy", "pretrain", "--set", "train.precision=fp32", "--set", "train.device=cpu",
       "--set", "train.steps=12", "--set", "train.log_every=1", "--set", "train.batch_size=128"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "LOCAL_WORLD_SIZE"):
    ENV.pop(_name, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    res = subprocess.run([sys.executable, *TOY, "--out", str(out)], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr
    return out


def _same_as_one_process(run: Path, one: Path) -> None:
    curve = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert curve(run) == pytest.approx(curve(one), rel=1e-4)
    a = load_file(str(one / "encoder" / "encoder.safetensors"))
    b = load_file(str(run / "encoder" / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert json.loads((run / "manifest.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_torchrun_nodes_with_c10d_rendezvous_match_one_process(one_process: Path, tmp_path: Path) -> None:
    """Two launchers (`--nnodes 2 --node_rank 0|1`) meet at a c10d rendezvous on 127.0.0.1, as two hosts would."""
    out, port = tmp_path / "run", _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
         "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "sslkit-test",
         "--max_restarts", "0", *TOY, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for rank in (0, 1)]
    for code, err in _wait(procs):
        assert code == 0, err[-3000:]
    _same_as_one_process(out, one_process)


@pytest.mark.slow
def test_slurm_variables_start_two_ranks_that_match_one_process(one_process: Path, tmp_path: Path) -> None:
    """What `srun --ntasks 2` gives each task: SLURM_PROCID/NTASKS/LOCALID and MASTER_ADDR; sslkit maps them to ranks."""
    out, port = tmp_path / "run", _free_port()
    procs = []
    for rank in (0, 1):
        env = {**ENV, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
               "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, *TOY, "--out", str(out)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    results = _wait(procs)
    for code, err in results:
        assert code == 0, err[-3000:]
    _same_as_one_process(out, one_process)
    assert "error" not in results[1][1].lower()
