"""On a CUDA device (skipped without one; must pass on one): Alice and SwinUNETR-SSL pretraining with bf16 autocast,
`embed` and `predict` giving the same vectors and label maps on the GPU as on the CPU, fine-tuning."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.domains.medical3d.test_cli import invoke

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("recipe", ["tiny", "tiny-swin"])
def test_pretrain_finetune_and_predict_on_cuda(volumes: Path, tmp_path: Path, recipe: str) -> None:
    run = tmp_path / "pre"
    res = invoke("pretrain", volumes / "img", "-r", recipe, "--set", "train.precision=auto", "--set", "train.steps=6",
                 "--out", run)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "manifest.json").read_text())["device"] == torch.cuda.get_device_name(0)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses and all(np.isfinite(losses))
    from sslkit.core.embeddings import read_embeddings

    vectors = {}
    for device in ("cuda", "cpu"):
        res = invoke("embed", run, volumes / "img", "--device", device, "--out", tmp_path / f"{device}.parquet")
        assert res.exit_code == 0, res.output
        vectors[device] = read_embeddings(tmp_path / f"{device}.parquet")[1]
    np.testing.assert_allclose(vectors["cuda"], vectors["cpu"], rtol=1e-3, atol=1e-3)      # fp32 on both
    res = invoke("finetune", run, volumes / "img", volumes / "lab", "--train", "3", "--set", "finetune.steps=6",
                 "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    held_out = json.loads((tmp_path / "ft" / "evaluation.json").read_text())["dice_per_volume"]
    assert list(held_out) == ["v3.nii.gz"]
    maps = {}
    for device in ("cuda", "cpu"):
        res = invoke("predict", tmp_path / "ft", volumes / "img" / "v3.nii.gz", "--device", device,
                     "--out", tmp_path / f"pred-{device}")
        assert res.exit_code == 0, res.output
        maps[device] = np.asarray(nib.load(tmp_path / f"pred-{device}" / "v3.nii.gz").dataobj)
    written = np.asarray(nib.load(tmp_path / "ft" / "predictions" / "v3.nii.gz").dataobj)
    assert np.array_equal(maps["cuda"], written)                   # finetune evaluated on the GPU too
    assert (maps["cuda"] == maps["cpu"]).mean() > 0.99             # fp32 on both; argmax ties may differ
