"""fit() on CPU with DataLoader workers leaves each worker a core (core.distributed.share_cores)."""
from __future__ import annotations

import os

import pytest
import torch

from sslkit.core.distributed import share_cores


@pytest.mark.parametrize(("cores", "workers", "threads_before", "expected"), [(2, 1, 2, 1), (8, 2, 8, 6), (2, 0, 2, 2),
                                                                              (1, 1, 1, 1)])
def test_data_workers_get_their_own_cores_on_cpu(monkeypatch, cores: int, workers: int, threads_before: int,
                                                 expected: int) -> None:  # noqa: ANN001
    """A worker beside one compute thread per core oversubscribed 2 cores (6-10 instead of 40 tiles/s)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads_before)
        share_cores(workers, torch.device("cpu"), 1)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_share_cores_leaves_gpu_runs_alone() -> None:
    before = torch.get_num_threads()
    share_cores(4, torch.device("cuda"), 1)
    assert torch.get_num_threads() == before
