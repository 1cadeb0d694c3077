"""Full-batch graph training through fit(full_batch=True): two processes each train on the whole graph and land on
the weights of one process, and the recipe keeps its own train.batch_size (no rewrite to the process count)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sslkit.core.checkpoint import load_checkpoint

# the tiny recipe's view noise (σ 0.01) is drawn from the step's seed, the same on every process, so two ranks'
# identical gradients average to one rank's
ARGS = ["--recipe", "tiny", "-k", "2", "--set", "train.steps=12"]


def _pretrain(samples: Path, out: Path, nproc: int) -> None:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "sslkit", "graph", "pretrain", str(samples / "karate"), *ARGS, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.slow
def test_full_batch_two_processes_equal_one(samples: Path, tmp_path: Path) -> None:
    _pretrain(samples, tmp_path / "one", 1)
    _pretrain(samples, tmp_path / "two", 2)
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12 and a["epoch"] == b["epoch"] == 11    # one step = one epoch (from 0)
    for k in a["model"]:                  # past cluster_warmup (10): the clustering head trained in both
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert bool(b["model"]["ready"])
    recipe = yaml.safe_load((tmp_path / "two" / "recipe.yaml").read_text())
    assert recipe["train"]["batch_size"] == 1          # the recipe's own value, not the number of processes


@pytest.mark.parametrize("name", ["scgc-star", "scgc"])
def test_shipped_recipes_carry_a_mini_batch_size_that_full_batch_does_not_read(name: str) -> None:
    """Once full batch stopped reading train.batch_size, the recipes' placeholder 1 would have been the mini-batch
    size of every graph above full_batch_max_nodes: one seed node per step."""
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.graph.method import GraphRecipe

    assert load_recipe(GraphRecipe, "graph", name).train.batch_size == 1024
