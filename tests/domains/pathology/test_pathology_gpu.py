"""On a CUDA device (skipped without one; must pass on one): DINO and SimCLR pretrain a few steps in bf16 on the
GPU, --resume lands on the uninterrupted weights there, and the GPU-trained encoder reads back on the CPU."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from sslkit.core.checkpoint import load_checkpoint
from tests.domains.pathology.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = ["--set", "train.device=cuda", "--set", "train.precision=bf16"]


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_bf16_pretraining_on_cuda_and_resume(tile_folder: Path, tmp_path: Path, method: str, monkeypatch) -> None:  # noqa: ANN001
    import sslkit
    import sslkit.core.loop as loop

    args = [tile_folder, "-r", "tiny", *GPU, "--set", f"method={method}", "--set", "train.steps=8"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    res = run_cli("pretrain", *args, "--out", full)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["device"] == torch.cuda.get_device_name(0)
    losses = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))
    monkeypatch.setattr(loop, "fit", functools.partial(loop.fit, until=4))
    assert run_cli("pretrain", *args, "--out", cut).returncode == 0
    monkeypatch.undo()
    res = run_cli("pretrain", tile_folder, "--out", cut, "--resume", *GPU)
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:   # the same kernels in the same order: equal up to non-deterministic CUDA reductions
        torch.testing.assert_close(a["model"][k].float(), b["model"][k].float(), rtol=1e-3, atol=1e-3, msg=k)
    enc = sslkit.load_encoder(full)                                      # trained on the GPU, read on the CPU
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.isfinite(enc(enc.preprocess(x))).all()
