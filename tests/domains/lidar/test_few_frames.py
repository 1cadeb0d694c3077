"""Student frames are random (mirrored) views: fewer frames than one global batch train with more views of each,
said in one line, instead of "fewer than one global batch"."""
from __future__ import annotations

from pathlib import Path

from tests.domains.lidar.conftest import run_cli


def test_twelve_frames_fill_a_batch_of_sixteen_with_two_views_each(sim_seq: Path, tmp_path: Path) -> None:
    res = run_cli("train-student", sim_seq, sim_seq / "label_2", "-r", "tiny", "--set", "train.batch_size=16",
                  "--set", "train.steps=1", "--out", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stderr.split())
    assert "12 frames × 1 random view each is fewer than one batch of 16: drawing 2 random views per frame" in said
    assert (tmp_path / "r" / "encoder" / "encoder.safetensors").is_file()
