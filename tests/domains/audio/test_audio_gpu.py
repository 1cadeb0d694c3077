"""CUDA: each audio method pretrains a few steps in bf16 on the GPU, and a run stopped at its first checkpoint and
resumed ends on the same weights as an uninterrupted one (skipped without a GPU)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import sigterm_at_first_checkpoint

pytestmark = pytest.mark.gpu

ARGS = ["--recipe", "tiny", "--set", "train.device=cuda", "--set", "train.precision=bf16", "--set", "train.steps=24",
        "--set", "train.checkpoint_every=8", "--set", "train.log_every=4", "--set", "train.batch_size=4"]


@pytest.mark.parametrize("method", ["ssamba", "ssast", "tera"])
def test_pretrain_on_cuda_in_bf16_and_resume(method: str, clips: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sslkit", "audio", "pretrain", str(clips), *ARGS, "--set", f"method={method}"]
    import subprocess

    full = subprocess.run([*cmd, "--out", str(tmp_path / "full")], capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert manifest["device"] == torch.cuda.get_device_name(0)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 24 and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    code, err, step = sigterm_at_first_checkpoint([*cmd, "--out", str(tmp_path / "cut")], tmp_path / "cut", env)
    assert 0 < step < 24, err[-2000:]
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=2e-3, rtol=1e-3, msg=k)
    from sslkit.core.export import load_encoder

    enc = load_encoder(tmp_path / "full").cuda()
    out = enc(torch.randn(2, 16000, device="cuda") * 0.1)       # waveforms at the recipe's 16 kHz
    assert out.shape == (2, 32) and torch.isfinite(out).all()
