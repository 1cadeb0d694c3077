"""Helpers shared by tests of several domains."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import torch


def sigterm_at_first_checkpoint(cmd: list[str], run: Path, env: dict[str, str],
                                timeout: float = 300) -> tuple[int, str, int]:
    """Start a training command writing the run folder `run`, send it SIGTERM as soon as its first checkpoint exists;
    (exit code, stderr, the step its last checkpoint holds)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ck = run / "checkpoints" / "last.pt"
    while not ck.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, int(torch.load(ck, weights_only=True)["step"]) if ck.exists() else -1
