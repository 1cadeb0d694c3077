"""End to end through the CLI on generated data (sample-data): pretrain, resume, embed,
cluster, evaluate, export/load_encoder, and the bad-input cases (one line, exit code 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sslkit.cli import app

runner = CliRunner()
TINY = ["--recipe", "tiny"]


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, ["graph", *map(str, args)])


@pytest.fixture(scope="module")
def sbm_run(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sbm"
    res = invoke("pretrain", samples / "sbm", *TINY, "--clusters", "3", "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_sample_data_writes_karate_and_sbm(samples: Path) -> None:
    assert (samples / "karate" / "edges.csv").read_text().count("\n") == 79  # header + 78 edges
    assert (samples / "sbm" / "labels.csv").read_text().startswith("node,label\nn000,")
    res = invoke("sample-data", samples)
    assert res.exit_code == 2 and "--overwrite" in res.output
    from sslkit.domains.graph.io import load_graph

    assert not any("duplicate" in n for n in load_graph(samples / "sbm")[0].notes)  # each edge listed once


def test_pretrain_writes_a_complete_run(sbm_run: Path) -> None:
    for f in ("recipe.yaml", "manifest.json", "metrics.jsonl", "checkpoints/last.pt", "encoder/encoder.safetensors",
              "plots/loss.png", "plots/clusters.png"):
        assert (sbm_run / f).is_file(), f
    manifest = json.loads((sbm_run / "manifest.json").read_text())
    assert manifest["graph"]["nodes"] == 300 and manifest["graph"]["hops"] == 2 and manifest["graph"]["full_batch"]
    losses = [r["loss"] for r in map(json.loads, (sbm_run / "metrics.jsonl").read_text().splitlines())]
    assert losses[-1] < losses[0]


def test_embed_cluster_evaluate_use_original_ids_and_learn(sbm_run: Path, samples: Path, tmp_path: Path) -> None:
    from sslkit.core.embeddings import read_embeddings

    res = invoke("embed", sbm_run, samples / "sbm", "--out", tmp_path / "e.parquet")
    assert res.exit_code == 0, res.output
    ids, vecs = read_embeddings(tmp_path / "e.parquet")
    assert list(ids)[:2] == ["n000", "n001"] and vecs.shape[0] == 300 and 1 <= vecs.shape[1] <= 16
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the rows are the encoder's outputs centred and reduced as the recipe says (embedding.pca_variance 0.9)
    from sslkit.domains.graph.clustering import encode, node_embedding, run_inputs
    from sslkit.domains.graph.io import load_graph
    from sslkit.domains.graph.method import GraphRecipe
    from sslkit.core.runs import Run

    cfg = GraphRecipe.model_validate(Run.load(sbm_run, "graph").recipe_dict)
    g, _ = load_graph(samples / "sbm")
    np.testing.assert_allclose(vecs, node_embedding(encode(sbm_run, g, cfg, run_inputs(sbm_run, g, cfg)), 0.9), atol=1e-5)

    res = invoke("cluster", sbm_run, samples / "sbm", "--out", tmp_path / "c.csv")
    assert res.exit_code == 0, res.output
    import pandas as pd

    c = pd.read_csv(tmp_path / "c.csv")
    assert list(c.columns) == ["node", "cluster", "confidence"] and c["node"].iloc[0] == "n000"
    assert c["cluster"].between(0, 2).all() and c["confidence"].between(1 / 3, 1).all()

    res = invoke("evaluate", sbm_run, samples / "sbm", "--seeds", "2")
    assert res.exit_code == 0, res.output
    results = json.loads((sbm_run / "evaluation.json").read_text())["results"]
    emb, raw = results["scgc-star embeddings"], results["raw features"]
    assert set(emb) == {"acc", "nmi", "ari", "f1", "probe_acc"} and "scgc-star soft assignment" in results
    # the planted blocks are only partly visible in the noisy features; the graph-aware embeddings find them
    assert emb["nmi"][0] > raw["nmi"][0] + 0.1 and emb["nmi"][0] > 0.6, results
    assert results["scgc-star soft assignment"]["nmi"][0] > 0.6, results


def test_pca_variance_option_rereads_without_retraining(sbm_run: Path, samples: Path, tmp_path: Path) -> None:
    from sslkit.core.embeddings import read_embeddings
    from sslkit.core.runs import Run
    from sslkit.domains.graph.clustering import encode, node_embedding, run_inputs
    from sslkit.domains.graph.io import load_graph
    from sslkit.domains.graph.method import GraphRecipe

    cfg = GraphRecipe.model_validate(Run.load(sbm_run, "graph").recipe_dict)
    g, _ = load_graph(samples / "sbm")
    z = encode(sbm_run, g, cfg, run_inputs(sbm_run, g, cfg))
    for value, reading in (("0", None), ("1.0", 1.0)):
        out = tmp_path / f"e{value}.parquet"
        assert invoke("embed", sbm_run, samples / "sbm", "--out", out, "--pca-variance", value).exit_code == 0
        np.testing.assert_allclose(read_embeddings(out)[1], node_embedding(z, reading), atol=1e-5)
    # 0: the plain unit-length outputs, all 16 dimensions; the run's own reading (0.9) keeps fewer
    assert read_embeddings(tmp_path / "e0.parquet")[1].shape[1] == 16
    res = invoke("evaluate", sbm_run, samples / "sbm", "--seeds", "1", "--pca-variance", "0")
    assert res.exit_code == 0, res.output
    got = json.loads((sbm_run / "evaluation.json").read_text())
    assert got["pca_variance"] is None and got["reading"] == "unit length"   # how the embedding row read the outputs
    assert GraphRecipe.model_validate(Run.load(sbm_run, "graph").recipe_dict).embedding.pca_variance == 0.9  # run unchanged
    res = invoke("embed", sbm_run, samples / "sbm", "--out", tmp_path / "bad.parquet", "--pca-variance", "1.5")
    assert res.exit_code == 2 and "--pca-variance" in res.output and not (tmp_path / "bad.parquet").exists()


def test_export_and_load_encoder_reproduce_embeddings(sbm_run: Path, tmp_path: Path) -> None:
    import sslkit

    res = invoke("export", sbm_run, "--out", tmp_path / "enc")
    assert res.exit_code == 0, res.output
    enc = sslkit.load_encoder(tmp_path / "enc")
    x = torch.randn(5, 8)
    ei = torch.tensor([[0, 1], [1, 0]])
    ref = sslkit.load_encoder(sbm_run)
    torch.testing.assert_close(enc(x, ei), ref(x, ei))
    assert enc(x, ei).shape == (5, 16)


def test_resume_after_interruption(samples: Path, tmp_path: Path) -> None:
    """A run stopped at step 10 (train.steps=10) and resumed to 30 equals an uninterrupted 30-step run."""
    from sslkit.core.checkpoint import load_checkpoint

    g = samples / "karate"
    assert invoke("pretrain", g, *TINY, "-k", "2", "--out", tmp_path / "full").exit_code == 0
    out = tmp_path / "resumed"
    assert invoke("pretrain", g, *TINY, "-k", "2", "--out", out, "--set", "train.steps=10").exit_code == 0
    # no --recipe/--clusters here: --resume continues with the run's own saved recipe, extended by --set
    res = invoke("pretrain", g, "--out", out, "--resume", "--set", "train.steps=30")
    assert res.exit_code == 0, res.output
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    assert b["step"] == 30
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k])


def test_minibatch_mode_and_grace_baseline_train(samples: Path, tmp_path: Path) -> None:
    res = invoke("pretrain", samples / "sbm", *TINY, "-k", "3", "--out", tmp_path / "mb", "--set", "data.full_batch=false",
                 "--set", "train.batch_size=64", "--set", "train.steps=8")
    assert res.exit_code == 0, res.output
    assert not json.loads((tmp_path / "mb" / "manifest.json").read_text())["graph"]["full_batch"]
    res = invoke("pretrain", samples / "sbm", "--recipe", "grace", "--out", tmp_path / "grace", "--set", "train.steps=3",
                 "--set", "model.hidden=[16]", "--set", "model.out_dim=8")
    assert res.exit_code == 0, res.output
    res = invoke("evaluate", tmp_path / "grace", samples / "sbm", "--seeds", "1")
    assert res.exit_code == 0 and "grace embeddings" in json.loads((tmp_path / "grace" / "evaluation.json").read_text())["results"]
    res = invoke("cluster", tmp_path / "grace", samples / "sbm", "--out", tmp_path / "c.csv")
    assert res.exit_code == 2 and "no clustering head" in res.output


@pytest.mark.parametrize("args,pattern", [
    (["pretrain", "{s}/karate", "--recipe", "tiny", "-k", "1"], "--clusters 1 is not possible"),
    (["pretrain", "{s}/karate", "--recipe", "tiny", "-k", "35"], "2 <= K <= 34"),
    (["pretrain", "{s}/karate", "--recipe", "tiny"], "pass --clusters"),
    (["pretrain", "{s}/nope.csv", "--recipe", "tiny", "-k", "2"], "does not exist"),
    (["pretrain", "{s}/karate", "--recipe", "tiny", "-k", "2", "--set", "loss.nope=1"], "loss.nope"),
    (["evaluate", "{run}", "{s}/karate"], "features have"),
    (["evaluate", "{run}", "{s}/sbm", "--labels", "{s}/karate/labels.csv"], "not in the graph"),
])
def test_bad_input_is_one_line_exit_2(samples: Path, sbm_run: Path, args: list[str], pattern: str) -> None:
    res = runner.invoke(app, ["graph", *(a.format(s=samples, run=sbm_run) for a in args)])
    assert res.exit_code == 2, res.output
    assert pattern in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("override,pattern", [
    ("model.out_dim=0", "'model.out_dim' has a bad value 0"),
    ("loss.cluster_warmup=-5", "'loss.cluster_warmup' has a bad value -5"),
    ("data.structural_dim=0 data.identity_max_nodes=10", "structural_dim=0 but the graph has no node features"),
])
def test_out_of_range_recipe_values_are_refused_before_training(samples: Path, tmp_path: Path, override: str,
                                                                pattern: str) -> None:
    out = tmp_path / "run"
    sets = [a for o in override.split() for a in ("--set", o)]
    res = invoke("pretrain", samples / "karate", *TINY, "-k", "3", *sets, "--out", out)
    assert res.exit_code == 2 and pattern in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()  # refused up front: no run folder, no training


def test_a_mini_batch_larger_than_the_graph_is_refused_before_a_run_folder_exists(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = invoke("pretrain", samples / "karate", *TINY, "-k", "2", "--set", "data.full_batch=false",
                 "--set", "train.batch_size=64", "--out", out)
    assert res.exit_code == 2 and "train.batch_size=64 seed nodes per step but the graph has 34 nodes" in res.output, \
        res.output
    assert not out.exists()


def test_outputs_of_the_wrong_kind_are_refused_up_front(sbm_run: Path, samples: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    afile = tmp_path / "f"
    afile.write_text("keep me")
    cases = [(["cluster", sbm_run, samples / "sbm", "--out", folder, "--overwrite"], "is a folder"),
             (["cluster", sbm_run, samples / "sbm", "--out", afile / "c.csv"], "is a file, not a folder"),
             (["embed", sbm_run, samples / "sbm", "--out", afile / "e.parquet"], "is a file, not a folder"),
             (["sample-data", afile, "--overwrite"], "is a file — give a folder")]
    if Path("/proc/self").is_dir():  # a place nothing can be written, even by root
        cases += [(["cluster", sbm_run, samples / "sbm", "--out", "/proc/x.csv"], "cannot write in /proc"),
                  (["embed", sbm_run, samples / "sbm", "--out", "/proc/x.parquet"], "cannot write in /proc")]
    for args, pattern in cases:
        res = invoke(*args)
        assert res.exit_code == 2 and pattern in res.output and "Traceback" not in res.output, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"] and not any(folder.iterdir())
    assert afile.read_text() == "keep me"


def test_evaluate_without_a_started_head_gives_the_embedding_rows_and_one_note(samples: Path, tmp_path: Path) -> None:
    run = tmp_path / "early"
    res = invoke("pretrain", samples / "karate", *TINY, "-k", "2", "--out", run, "--set", "train.steps=5")
    assert res.exit_code == 0, res.output  # tiny starts the head at step 10
    res = invoke("evaluate", run, samples / "karate", "--seeds", "1")
    assert res.exit_code == 0, res.output
    payload = json.loads((run / "evaluation.json").read_text())
    # karate has no features: no "raw features" row (its inputs are one-hot rows); the baseline filters at the
    # graph's mixing distance log 34 / log(1 + 4.6) ≈ 2
    assert set(payload["results"]) == {"propagated Â^2X (no training)", "scgc-star embeddings"}
    assert len(payload["notes"]) == 1 and "never started" in payload["notes"][0] and "never started" in res.output
    assert invoke("cluster", run, samples / "karate", "--out", tmp_path / "c.csv").exit_code == 2  # no q to give


def test_a_single_node_class_is_named_by_its_own_label(sbm_run: Path, samples: Path, tmp_path: Path) -> None:
    lines = (samples / "sbm" / "labels.csv").read_text().splitlines()
    (tmp_path / "l.csv").write_text("\n".join(lines[:-1] + [lines[-1].split(",")[0] + ",rare"]) + "\n")
    res = invoke("evaluate", sbm_run, samples / "sbm", "--labels", tmp_path / "l.csv", "--seeds", "1")
    assert res.exit_code == 2 and "class 'rare' has only 1 labelled node" in res.output, res.output


def test_outputs_follow_unsorted_string_ids(sbm_run: Path, samples: Path, tmp_path: Path) -> None:
    """The same graph with its nodes renamed to unsorted strings and every file's rows shuffled: each node's cluster,
    embedding and label follow its id, not its row (the sample ids are already sorted, so a mix-up there is unseen)."""
    import pandas as pd

    from sslkit.core.embeddings import read_embeddings

    rng = np.random.default_rng(3)
    old = pd.read_csv(samples / "sbm" / "features.csv")["id"].tolist()
    new = dict(zip(old, [f"{'qkzbm'[i % 5]}-{j}" for i, j in enumerate(rng.permutation(len(old)))]))
    assert sorted(new, key=new.get) != old                      # sorting the new names gives another order
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for name, cols in (("edges.csv", ["src", "dst"]), ("features.csv", ["id"]), ("labels.csv", ["node"])):
        table = pd.read_csv(samples / "sbm" / name)
        for c in cols:
            table[c] = table[c].map(new)
        table.sample(frac=1.0, random_state=int(rng.integers(1000))).to_csv(renamed / name, index=False)
    for data, out in ((samples / "sbm", "a"), (renamed, "b")):
        assert invoke("cluster", sbm_run, data, "--out", tmp_path / f"{out}.csv").exit_code == 0
        assert invoke("embed", sbm_run, data, "--out", tmp_path / f"{out}.parquet", "--pca-variance", "0").exit_code == 0
    a = pd.read_csv(tmp_path / "a.csv").set_index("node")
    b = pd.read_csv(tmp_path / "b.csv").set_index("node")
    assert set(b.index) == set(new.values())
    b = b.loc[[new[n] for n in a.index]]
    assert (a["cluster"].to_numpy() == b["cluster"].to_numpy()).mean() > 0.98     # float order of sums may flip a tie
    np.testing.assert_allclose(a["confidence"].to_numpy(), b["confidence"].to_numpy(), atol=1e-3)
    ids_a, za = read_embeddings(tmp_path / "a.parquet")
    ids_b, zb = read_embeddings(tmp_path / "b.parquet")
    row_b = {n: i for i, n in enumerate(ids_b)}
    np.testing.assert_allclose(za, zb[[row_b[new[n]] for n in ids_a]], atol=1e-4)
    # the labels are joined by id too: the same scores as on the original files
    res = invoke("evaluate", sbm_run, renamed, "--seeds", "1")
    assert res.exit_code == 0, res.output
    got = json.loads((sbm_run / "evaluation.json").read_text())["results"]["scgc-star soft assignment"]["nmi"][0]
    assert got > 0.6



def test_mask_order_auto_follows_the_clusters_trains_that_mask_and_is_recorded(samples: Path, tmp_path: Path) -> None:
    """loss.r: auto — karate has 21.2 nodes within 2 hops on average: r = 2 for 2 clusters (2·17 ≥ 21.2), r = 1 for 4
    (2·8.5 < 21.2). The run trains with that mask (its loss curve is the explicit r's) and the manifest records it."""
    def run(name: str, *sets: str) -> tuple[dict, list[float], str]:
        out = tmp_path / name
        k = "4" if name.endswith("k4") else "2"
        res = invoke("pretrain", samples / "karate", *TINY, "--clusters", k, "--set", "train.steps=5", "--out", out,
                     *sum((["--set", s] for s in sets), []))
        assert res.exit_code == 0, res.output
        curve = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        return json.loads((out / "manifest.json").read_text())["graph"], curve, res.output

    for name, want in (("auto-k2", 2), ("auto-k4", 1)):
        graph, curve, output = run(name, "loss.r=auto")
        assert graph["mask_r"] == want and graph["mean_neighbourhood"] == [5.6, 21.2], graph
        assert f"mask order r = {want}" in output
        same, other = run(f"r{want}-{name[-2:]}", f"loss.r={want}")[1], run(f"r{3 - want}-{name[-2:]}", f"loss.r={3 - want}")[1]
        assert curve == same and curve != other


def test_evaluate_adds_the_baseline_at_the_encoders_own_depth(samples: Path, tmp_path: Path) -> None:
    """Where the encoder's filter depth differs from the baseline's (the graph's mixing distance), the features at
    the encoder's depth are a row too — the training-free part of what the encoder sees, so training is not credited
    with what the filter alone does."""
    from sslkit.core.evaluation import kmeans_eval
    from sslkit.domains.graph.batches import prepare_inputs
    from sslkit.domains.graph.io import align_labels, load_graph
    from sslkit.domains.graph.method import GraphRecipe
    from sslkit.domains.graph.transforms import auto_hops
    from sslkit.core.runs import Run

    g, labels = load_graph(samples / "sbm")
    t = auto_hops(g.num_nodes, g.edge_index.shape[1])
    own = 1 if t != 1 else 2
    run = tmp_path / "own"
    res = invoke("pretrain", samples / "sbm", *TINY, "-k", "3", "--out", run, "--set", f"data.hops={own}")
    assert res.exit_code == 0, res.output
    assert invoke("evaluate", run, samples / "sbm", "--seeds", "1").exit_code == 0
    results = json.loads((run / "evaluation.json").read_text())["results"]
    name = f"propagated Â^{own}X, the encoder's depth (no training)"
    assert list(results)[:4] == ["raw features", f"propagated Â^{t}X (no training)", name, "scgc-star embeddings"]
    cfg = GraphRecipe.model_validate(Run.load(run, "graph").recipe_dict)
    idx, y = align_labels(g, labels, min_per_class=2)
    x = prepare_inputs(g, cfg, quiet=True).x   # the run's recipe filters at data.hops = own
    assert results[name]["nmi"][0] == pytest.approx(kmeans_eval(x[idx], y, 3, seeds=(0,))["nmi"][0])
    # the run's own depth equal to the graph's: one baseline row, as before
    same = tmp_path / "same"
    assert invoke("pretrain", samples / "sbm", *TINY, "-k", "3", "--out", same, "--set", f"data.hops={t}").exit_code == 0
    assert invoke("evaluate", same, samples / "sbm", "--seeds", "1").exit_code == 0
    assert not any("encoder's depth" in k for k in json.loads((same / "evaluation.json").read_text())["results"])
