"""A few volumes are a valid (small) data set for random-crop training: pretrain and finetune draw as many crops per
volume as one global batch needs, and say so in one line, instead of refusing "fewer than one global batch"."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sslkit.cli import app
from tests.domains.medical3d.conftest import write_volumes

runner = CliRunner()


def invoke(*args):  # noqa: ANN002, ANN201
    return runner.invoke(app, ["medical3d", *map(str, args)])


def test_three_volumes_fill_a_batch_of_eight_with_more_crops_each(tmp_path: Path) -> None:
    data = write_volumes(tmp_path / "d", n=3)
    # tiny: 2 crop pairs per volume, so 3 volumes hold 6 items, fewer than the batch of 8
    res = invoke("pretrain", data / "img", "-r", "tiny", "--set", "train.batch_size=8", "--set", "train.steps=2",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "3 volumes × 2 crop pairs each is fewer than one batch of 8: drawing 3 crop pairs per volume" in said
    assert "--set data.samples_per_volume=N to choose" in said and "fewer than one global batch" not in said
    assert (tmp_path / "run" / "encoder" / "encoder.safetensors").is_file()
    # one labelled volume (trained on its left half) with 2 crops, fine-tuned in batches of 4
    res = invoke("finetune", tmp_path / "run", data / "img" / "v0.nii.gz", data / "lab" / "v0.nii.gz",
                 "--set", "finetune.batch_size=4", "--set", "finetune.steps=1", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "1 labelled volume × 2 crops each is fewer than one batch of 4: drawing 4 crops per labelled volume" in said
    # its held-out evaluation, and predict, count their volumes on stderr (a sliding window each)
    assert "evaluate: 1 part" in said and "evaluate 1/1 v0.nii.gz" in said
    res = invoke("predict", tmp_path / "ft", data / "img" / "v1.nii.gz", data / "img" / "v2.nii.gz",
                 "--out", tmp_path / "pred")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "predict: 2 parts" in said and "predict 2/2 v2.nii.gz" in said
