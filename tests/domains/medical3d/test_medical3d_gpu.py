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


def test_region_training_on_cuda_predicts_the_same_map_on_the_cpu(volumes: Path, tmp_path: Path) -> None:
    """finetune.region_training on the GPU (the region membership buffer moves with the model, the sigmoid
    probabilities come back to the CPU); predict paints the same map on either device."""
    from sslkit.domains.medical3d.samples import write_lesions

    run = tmp_path / "pre"
    res = invoke("pretrain", volumes / "img", "-r", "tiny", "--set", "train.steps=2", "--out", run)
    assert res.exit_code == 0, res.output
    write_lesions(tmp_path / "d", 3, size=48)
    res = invoke("finetune", run, tmp_path / "d" / "images", tmp_path / "d" / "labels", "--train", "2",
                 "--set", "finetune.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}",
                 "--set", "finetune.region_training=true", "--set", "finetune.steps=20", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ft" / "manifest.json").read_text())["device"] == torch.cuda.get_device_name(0)
    maps = {}
    for device in ("cuda", "cpu"):
        res = invoke("predict", tmp_path / "ft", tmp_path / "d" / "images" / "lesion_02.nii.gz", "--device", device,
                     "--out", tmp_path / f"pred-{device}")
        assert res.exit_code == 0, res.output
        maps[device] = np.asarray(nib.load(tmp_path / f"pred-{device}" / "lesion_02.nii.gz").dataobj)
    written = np.asarray(nib.load(tmp_path / "ft" / "predictions" / "lesion_02.nii.gz").dataobj)
    assert np.array_equal(maps["cuda"], written) and set(np.unique(written)) <= {0, 1, 2, 4}
    assert (maps["cuda"] == maps["cpu"]).mean() > 0.99
