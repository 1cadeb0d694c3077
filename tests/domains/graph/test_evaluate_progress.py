"""`graph evaluate` counts its k-means and probe runs on stderr as training counts steps (minutes on a
3,327-node graph would otherwise pass in silence), and its numbers are those of the grouped seed runs."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from sslkit.cli import app

runner = CliRunner()


def test_evaluate_shows_progress_and_scores_as_before(samples: Path, tmp_path: Path) -> None:
    from sslkit.core.evaluation import kmeans_eval, linear_probe

    run = tmp_path / "run"
    res = runner.invoke(app, ["graph", "pretrain", str(samples / "sbm"), "--recipe", "tiny", "-k", "3", "--out",
                              str(run), "--set", "train.steps=12"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["graph", "evaluate", str(run), str(samples / "sbm"), "--seeds", "2"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    # 2 feature baselines + 4 rows × 2 seeds × (k-means, probe) = 18 parts, the last always shown (4 rows: raw, the
    # baseline at the graph's mixing distance, the features at the encoder's t = 2, which differs, and the embeddings)
    assert "evaluate: 18 parts" in out and "evaluate 18/18 probe on scgc-star embeddings, seed 1" in out
    assert out.index("evaluate: 18 parts") < out.index("graph evaluation")        # before the table
    # one seed at a time gives the grouped runs' numbers: the raw-feature row, recomputed with grouped seeds
    from sslkit.core.recipes import validate_recipe
    from sslkit.domains.graph.batches import prepare_inputs
    from sslkit.domains.graph.io import align_labels, load_graph
    from sslkit.domains.graph.method import GraphRecipe

    g, labels = load_graph(samples / "sbm", None)
    idx, y = align_labels(g, labels, min_per_class=2)
    cfg = validate_recipe(GraphRecipe, yaml.safe_load((run / "recipe.yaml").read_text()), "recipe.yaml")
    cfg.data.hops = 0                                 # as evaluate's raw-feature baseline reads the features
    x = prepare_inputs(g, cfg, quiet=True).x[idx]
    ev = json.loads((run / "evaluation.json").read_text())["results"]["raw features"]
    assert ev["acc"] == list(kmeans_eval(x, y, int(y.max()) + 1, seeds=(0, 1))["acc"])
    assert ev["probe_acc"] == list(linear_probe(x, y, seeds=(0, 1))["accuracy"])
