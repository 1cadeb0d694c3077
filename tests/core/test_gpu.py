"""CUDA checks (skipped without a GPU; must pass on one)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import sslkit_cmd

pytestmark = pytest.mark.gpu


def test_toy_pretrain_runs_on_cuda_with_bf16_and_resumes(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    args = ["--set", "train.steps=40", "--set", "train.checkpoint_every=20", "--set", "train.log_every=5"]
    assert sslkit_cmd("toy", "pretrain", "--out", str(full), *args).returncode == 0
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["device"] == torch.cuda.get_device_name(0)
    losses = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(map(lambda v: v == v, losses)) and losses[-1] < losses[0]
    # stop at step 20 through the API, then resume from the CLI
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import load_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.toy.io import TwoViews, make_vectors
    from sslkit.domains.toy.method import ToyRecipe, ToyVICReg

    cfg = load_recipe(ToyRecipe, "toy", "tiny", [a for a in args if a != "--set"])
    run = Run.open(split, domain="toy", recipe=cfg)
    seed_everything(cfg.train.seed)
    x, _ = make_vectors(cfg.data.n, cfg.data.dim, cfg.data.classes, cfg.data.seed)
    method = ToyVICReg(x.shape[1], cfg.model, cfg.loss)
    res = fit(method, TwoViews(x, cfg.data.noise, cfg.data.drop), cfg.train, run, until=20)
    assert res.device.type == "cuda"
    out = sslkit_cmd("toy", "pretrain", "--out", str(split), "--resume", *args)
    assert out.returncode == 0, out.stderr
    from safetensors.torch import load_file

    a = load_file(str(full / "encoder" / "encoder.safetensors"))
    b = load_file(str(split / "encoder" / "encoder.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-3), k


def test_doctor_sees_the_gpu():
    info = json.loads(sslkit_cmd("doctor", "--json").stdout)
    assert info["cuda_available"] and info["gpus"] and info["bf16_cuda"]
