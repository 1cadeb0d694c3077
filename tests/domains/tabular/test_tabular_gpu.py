"""On a CUDA device: pretrain, embed, and the same embeddings from the encoder on CPU and GPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sslkit
from sslkit.core.embeddings import read_embeddings

from .conftest import run_subprocess

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_pretrain_and_embed_on_cuda(adult_csv, tmp_path):
    run = tmp_path / "run"
    res = run_subprocess("pretrain", adult_csv, "--target", "income", "--id", "id", "-r", "tiny", "--out", run,
                         "--set", "train.precision=auto")
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "manifest.json").read_text())["device"] == torch.cuda.get_device_name(0)
    res = run_subprocess("embed", run, adult_csv, "--out", tmp_path / "e.parquet")
    assert res.returncode == 0, res.stderr
    ids, z_gpu = read_embeddings(tmp_path / "e.parquet")
    from sslkit.domains.tabular.inference import embed_rows, encode_table
    from sslkit.domains.tabular.preprocess import Preprocessor

    enc = sslkit.load_encoder(run)
    pre = Preprocessor.from_dict(enc.sslkit_config["extra"]["preprocess"])
    z_cpu = embed_rows(enc, encode_table(pre, adult_csv), device="cpu")
    np.testing.assert_allclose(z_gpu, z_cpu, rtol=1e-3, atol=1e-3)     # fp32 on both: same vectors
    assert ids[:3] == [1, 2, 3]
