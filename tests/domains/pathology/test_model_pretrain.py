"""pretrain through the CLI: a complete run folder, --resume landing on the uninterrupted weights, 2 processes
under torchrun equal to 1, and bad inputs refused in one line before any run folder exists."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslkit.core.checkpoint import load_checkpoint
from tests.domains.pathology.conftest import run_cli
from tests.domains.pathology.test_evaluate_mil import tiny_run  # noqa: F401 - the shared session fixture

FP32 = ["--set", "train.precision=fp32"]


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    sa, sb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert sa["step"] == sb["step"]
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=atol, msg=k)


def test_pretrain_writes_a_complete_run(tiny_run: Path) -> None:  # noqa: F811
    for f in ("recipe.yaml", "manifest.json", "metrics.jsonl", "checkpoints/last.pt", "encoder/encoder.safetensors",
              "encoder/config.json", "plots/loss.png"):
        assert (tiny_run / f).is_file(), f
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["tiles"]["count"] == 24 and manifest["method"] == "dino"
    records = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["model"]
    assert int(state["step"]) == 6                                            # the schedules' step counter is saved
    assert not torch.equal(state["loss.center"], torch.zeros_like(state["loss.center"]))   # and the DINO centre


def test_resume_lands_on_the_uninterrupted_weights(tile_folder: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import sslkit.core.loop as loop

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli("pretrain", tile_folder, "-r", "tiny", *FP32, "--out", full).returncode == 0
    monkeypatch.setattr(loop, "fit", functools.partial(loop.fit, until=4))      # stopped at step 4 of 6 (mid-epoch 2)
    assert run_cli("pretrain", tile_folder, "-r", "tiny", *FP32, "--out", cut).returncode == 0
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["step"] == 4
    monkeypatch.undo()
    res = run_cli("pretrain", tile_folder, "--out", cut, "--resume")
    assert res.returncode == 0, res.stderr
    _same_weights(full, cut)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--set", "loss.ibot_weight=1.0"]], ids=["dino", "dino+ibot"])
def test_two_processes_under_torchrun_equal_one(tile_folder: Path, tmp_path: Path, extra: list[str]) -> None:
    # with iBOT on, each rank's masked tokens are weighted by 1/B of its own shard and the patch centre averages
    # the masked tokens of all ranks, so 2 processes still equal 1 (KoLeo's nearest neighbours are per rank, as
    # DINOv2's, so a KoLeo run is not expected to)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("pretrain", tile_folder, "-r", "tiny", *FP32, *extra, "--out", one).returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sslkit",
           "pathology", "pretrain", str(tile_folder), "-r", "tiny", *FP32, *extra, "--out", str(two)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((two / "manifest.json").read_text())["world_size"] == 2
    # the same 8 tiles per step split 4 + 4, gradients and the DINO centre averaged across ranks: the same weights
    # up to float summation order
    _same_weights(one, two, atol=2e-5)


@pytest.mark.parametrize("args,pattern", [
    (["{missing}", "-r", "tiny"], "does not exist"),
    (["{empty}", "-r", "tiny"], "is empty"),
    (["{tiles}", "-r", "tiny", "--set", "aug.local_px=4"], "smaller than the ViT patch"),
    (["{tiles}", "-r", "tiny", "--set", "aug.solarize=0.2"], "unknown recipe key"),
    (["{tiles}", "-r", "tiny", "--set", "train.batch_size=64"], "fewer than one global batch"),
])
def test_bad_inputs_are_one_line_exit_2_and_leave_no_run(tile_folder: Path, tmp_path: Path, args: list[str],
                                                        pattern: str) -> None:
    (tmp_path / "empty").mkdir()
    subs = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "tiles": tile_folder}
    out = tmp_path / "run"
    res = run_cli("pretrain", *[a.format(**subs) for a in args], "--out", out)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], res.stderr
    assert not out.exists()
