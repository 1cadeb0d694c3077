"""On a CUDA device (skipped without one; must pass on one): SCGC* full-batch and mini-batch and GRACE (sparse
products, edge dropping) pretrain on the GPU, and a GPU-trained run reads back on the CPU into embeddings that
find the planted blocks, as a CPU-trained run's do."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.domains.graph.test_cli import TINY, invoke

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = "cuda"


@pytest.mark.parametrize("options", [[*TINY, "--set", "train.precision=auto"],
                                     [*TINY, "--set", "data.full_batch=false", "--set", "train.batch_size=64"],
                                     ["--recipe", "grace", "--set", "train.steps=40"]],
                         ids=["scgc-star", "scgc-star-minibatch", "grace"])
def test_pretrain_on_cuda_and_evaluate_on_cpu(samples: Path, tmp_path: Path, options: list[str]) -> None:
    run = tmp_path / "run"
    res = invoke("pretrain", samples / "sbm", *options, "-k", "3", "--set", f"train.device={GPU}", "--out", run)
    assert res.exit_code == 0, res.output
    manifest = json.loads((run / "manifest.json").read_text())
    if GPU == "cuda":
        assert manifest["device"] == torch.cuda.get_device_name(0)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) >= 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    res = invoke("evaluate", run, samples / "sbm", "--seeds", "1")          # the encoder, loaded on the CPU
    assert res.exit_code == 0, res.output
    results = json.loads((run / "evaluation.json").read_text())["results"]
    emb = next(v for k, v in results.items() if k.endswith("embeddings"))
    assert emb["nmi"][0] > max(0.6, results["raw features"]["nmi"][0]), results   # the GPU's weights read back
