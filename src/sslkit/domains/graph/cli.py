"""`sslkit graph ...`: SCGC/SCGC* node embeddings and clustering, with GRACE as baseline."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import (DevicesOpt, JsonOpt, OutOpt, OverwriteOpt, RecipeOpt, ResumeOpt, RunArg, SeedsOpt,
                                     SetOpt, add_export_command, maybe_relaunch)

app = typer.Typer(help="Graphs: SCGC/SCGC* node embeddings and clustering, GRACE baseline.", no_args_is_help=True)
GraphArg = Annotated[Path, typer.Argument(help="Edge list (CSV/TSV/space, optional weight), PyG .pt, or a folder "
                                               "with edges.csv, features.*, labels.csv.")]
FeaturesOpt = Annotated[Optional[Path], typer.Option("--features", "-f", help="Node features: CSV/Parquet (id + "
                                                     "columns), .npy, or sparse .npz (row i = node i).")]
ClustersOpt = Annotated[Optional[int], typer.Option("--clusters", "-k", help="Number of clusters K of the clustering head.")]
FileOut = Annotated[Path, typer.Option("--out", "-o", help="File to write.")]
PcaOpt = Annotated[Optional[float], typer.Option("--pca-variance", help="Read the embeddings with this share of "
                                                 "variance (0-1; 0: plain unit-length outputs) instead of the run's "
                                                 "embedding.pca_variance; no retraining.")]


def _graph(path: Path, features: Path | None, quiet: bool = False):  # noqa: ANN202
    from sslkit.core.console import info
    from sslkit.domains.graph.io import load_graph

    graph, labels = load_graph(path, features)
    if not quiet:
        info(f"graph: {graph.num_nodes} nodes, {graph.edge_index.shape[1] // 2} undirected edges, "
             f"{'no' if graph.x is None else graph.x.shape[1]} features" + "".join(f"; {n}" for n in graph.notes))
    return graph, labels


def _recipe(run: Path, pca_variance: float | None = None):  # noqa: ANN202
    """The run's recipe; `pca_variance` (from --pca-variance) replaces its embedding reading, 0 meaning none."""
    from sslkit.core.errors import UserError
    from sslkit.core.runs import Run
    from sslkit.domains.graph.method import GraphRecipe

    cfg = GraphRecipe.model_validate(Run.load(run, "graph").recipe_dict)
    if pca_variance is not None:
        if not 0 <= pca_variance <= 1:
            raise UserError(f"--pca-variance {pca_variance}: give a share of variance in (0, 1], or 0 for plain "
                            "unit-length outputs")
        cfg.embedding.pca_variance = pca_variance or None
    return cfg


@app.command()
def pretrain(graph: GraphArg, features: FeaturesOpt = None, recipe: RecipeOpt = "scgc-star",
             clusters: ClustersOpt = None, set_: SetOpt = None, out: OutOpt = None, overwrite: OverwriteOpt = False,
             resume: ResumeOpt = False, devices: DevicesOpt = 1) -> None:
    """Train SCGC* (default), SCGC or GRACE on one graph; writes a run folder with the exported encoder."""
    maybe_relaunch(devices)
    from sslkit.core import distributed
    from sslkit.core.console import info
    from sslkit.core.errors import UserError
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.graph.batches import FullGraph, NodeBlocks, full_batch, mask_order_for, prepare_inputs, use_full_batch
    from sslkit.domains.graph.clustering import check_clusters
    from sslkit.domains.graph.method import GraphRecipe, build_method

    cfg = resolve_recipe(GraphRecipe, "graph", recipe, set_ or [], out, resume)
    g, _ = _graph(graph, features, quiet=not distributed.is_main())
    check_clusters(clusters if clusters is not None else cfg.clusters, g.num_nodes)  # before the recipe's own K >= 2
    if clusters is not None:
        cfg.clusters = clusters
    if cfg.method == "grace" and not cfg.model.hidden:
        raise UserError("model.hidden is empty but the GRACE baseline's GCN needs a hidden width — "
                        "set e.g. --set model.hidden=[256]")
    if cfg.method != "grace" and cfg.clusters is None:
        raise UserError(f"{cfg.method} learns K clusters — pass --clusters K (2 <= K <= {g.num_nodes})")
    inputs = prepare_inputs(g, cfg, quiet=not distributed.is_main())
    full = use_full_batch(cfg, g.num_nodes)     # full batch: fit() gives every process the whole graph each step
    if not full and cfg.method == "grace":
        raise UserError(f"the GRACE baseline trains full-batch only; this graph has {g.num_nodes} nodes — "
                        "use --recipe scgc-star, or --set data.full_batch=true if it fits in memory")
    r, mask_info = (None, {}) if cfg.method == "grace" else mask_order_for(cfg, inputs)
    if cfg.loss.r == "auto" and distributed.is_main():
        sizes = ", ".join(f"{s:.0f}" for s in mask_info["mean_neighbourhood"])
        info(f"mask order r = {r}: mean neighbourhood {sizes} nodes within 1..{cfg.loss.r_max} hops, "
             f"{mask_info['nodes_per_cluster']:.0f} nodes per cluster (loss.r: auto)")
    if full:
        data = FullGraph(full_batch(inputs, g, cfg, r))
    else:       # one block per step, drawn alike on every process; each encodes its slice (P processes = 1)
        data = NodeBlocks(inputs, cfg.train.batch_size, r, cfg.method == "scgc-star", cfg.data.fanout,
                          cfg.loss.objective)
    run = Run.open(out, domain="graph", recipe=cfg, data_paths=[p for p in (graph, features) if p],
                   overwrite=overwrite, resume=resume)
    run.update_manifest(graph={"nodes": g.num_nodes, "edges": int(g.edge_index.shape[1] // 2), "notes": g.notes,
                               "full_batch": full, **inputs.summary(), **mask_info})
    seed_everything(cfg.train.seed)
    method = build_method(cfg, inputs.x.shape[1], inputs.hops)
    result = fit(method, data, cfg.train, run, resume=resume, full_batch=True)
    if distributed.is_main():
        export_encoder(method.encoder, method.encoder_spec(), run.path("encoder"),
                       extra={"num_nodes": g.num_nodes, **inputs.summary()})
        _cluster_plot(run.dir, g, cfg, inputs)
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


def _cluster_plot(run_dir: Path, graph, cfg, inputs) -> None:  # noqa: ANN001
    """plots/clusters.png: PCA of the embeddings coloured by learned cluster (k-means for GRACE)."""
    from sslkit.core.plots import embedding_map
    from sslkit.domains.graph.clustering import encode, recipe_embedding, soft_assign

    z = encode(run_dir, graph, cfg, inputs)
    emb = recipe_embedding(z, cfg)[0]
    if cfg.method == "grace" or cfg.clusters is None:
        from sklearn.cluster import KMeans

        k = cfg.clusters or 8
        colour, how = KMeans(k, n_init=4, random_state=0).fit_predict(emb), "k-means"
    else:
        q = soft_assign(run_dir, z, missing_ok=True)  # None: the head never started
        colour, how = (None, "no clusters yet") if q is None else (q.argmax(1), "learned soft assignment")
    embedding_map(emb, colour, run_dir / "plots" / "clusters.png", title=f"{cfg.method} embeddings ({how})")


def _encode_graph(run: Path, graph: Path, features: Path | None,  # noqa: ANN202
                  pca_variance: float | None = None):
    """(graph, raw encoder outputs, the run's recipe) for `embed` and `cluster`."""
    from sslkit.domains.graph.clustering import encode, run_inputs

    cfg = _recipe(run, pca_variance)
    g, _ = _graph(graph, features, quiet=True)
    return g, encode(run, g, cfg, run_inputs(run, g, cfg)), cfg


@app.command()
def embed(run: RunArg, graph: GraphArg, out: FileOut = Path("embeddings.parquet"), features: FeaturesOpt = None,
          pca_variance: PcaOpt = None, overwrite: OverwriteOpt = False) -> None:
    """Node embeddings as Parquet with the graph's own node ids: the encoder's outputs centred, reduced to the
    principal directions holding `embedding.pca_variance` of their variance, and L2-normalised (as evaluate reads them);
    only L2-normalised when fewer than K−1 directions hold it (`embedding.too_few_directions: plain`, K = clusters)."""
    from sslkit.core.console import info
    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.domains.graph.clustering import recipe_embedding

    check_embeddings_out(out, overwrite)
    g, z, cfg = _encode_graph(run, graph, features, pca_variance)
    emb, how = recipe_embedding(z, cfg)
    info(f"embeddings: {how}")
    write_embeddings(out, g.ids.tolist(), emb, overwrite=overwrite)
    typer.echo(str(out))


@app.command()
def cluster(run: RunArg, graph: GraphArg, out: FileOut = Path("clusters.csv"), features: FeaturesOpt = None,
            overwrite: OverwriteOpt = False) -> None:
    """Node id -> learned cluster, with the soft-assignment confidence (max_j q_ij), as CSV."""
    import pandas as pd

    from sslkit.core.files import atomic_write_text, check_file_out
    from sslkit.domains.graph.clustering import soft_assign

    check_file_out(out, overwrite, "clusters.csv")
    g, z, _ = _encode_graph(run, graph, features)
    q = soft_assign(run, z)
    df = pd.DataFrame({"node": g.ids, "cluster": q.argmax(1), "confidence": q.max(1).round(6)})
    atomic_write_text(out, df.to_csv(index=False))
    typer.echo(str(out))


@app.command()
def evaluate(run: RunArg, graph: GraphArg, labels: Annotated[Optional[Path], typer.Option(
                 "--labels", "-l", help="`node,label` CSV (default: labels.csv in the graph folder).")] = None,
             features: FeaturesOpt = None, seeds: SeedsOpt = 5, pca_variance: PcaOpt = None,
             json_out: JsonOpt = False) -> None:
    """ACC/NMI/ARI/F1 of k-means (embeddings vs raw and propagated features) and of the learned soft
    assignment, plus a logistic-regression node-classification probe; mean ± std over seeds."""
    from sslkit.core.files import atomic_write_text
    from sslkit.core.console import print_table, warn
    from sslkit.core.errors import UserError
    from sslkit.core.evaluation import metrics_table_rows
    from sslkit.domains.graph.clustering import encode, evaluate_all, recipe_embedding, run_inputs, soft_assign
    from sslkit.domains.graph.io import align_labels

    cfg = _recipe(run, pca_variance)
    g, found = _graph(graph, features, quiet=True)
    labels = labels or found
    if labels is None:
        raise UserError("no labels — pass --labels node_labels.csv (columns node,label)")
    idx, y = align_labels(g, labels, min_per_class=2)
    if len(idx) < g.num_nodes:
        warn(f"{g.num_nodes - len(idx)} node(s) have no label; evaluating the {len(idx)} labelled ones")
    inputs = run_inputs(run, g, cfg)
    z = encode(run, g, cfg, inputs)
    q = soft_assign(run, z, missing_ok=True) if cfg.method != "grace" else None
    notes = []
    if cfg.method != "grace" and q is None:
        notes.append(f"the clustering head never started (loss.cluster_warmup {cfg.loss.cluster_warmup} >= train.steps "
                     f"{cfg.train.steps}), so the {cfg.method} soft-assignment row is left out; the embedding rows "
                     "are computed — pretrain longer or lower loss.cluster_warmup for it")
        warn(notes[-1])
    rows = evaluate_all(g, cfg, z, q, idx, y, tuple(range(seeds)), run_hops=inputs.hops)
    columns, table = metrics_table_rows(rows)
    print_table(f"graph evaluation: {len(idx)} labelled nodes, {int(y.max()) + 1} classes, {seeds} seeds "
                "(k-means / soft assignment: acc nmi ari f1; probe_acc: logistic regression)", columns, table)
    payload = {"run": str(run), "labels": str(labels), "seeds": seeds, "pca_variance": cfg.embedding.pca_variance,
               "reading": recipe_embedding(z, cfg)[1],
               "notes": notes, "results": {name: {m: list(v) for m, v in res.items()} for name, res in rows.items()}}
    atomic_write_text(Path(run) / "evaluation.json", json.dumps(payload, indent=2))
    typer.echo(json.dumps(payload) if json_out else str(Path(run) / "evaluation.json"))


add_export_command(app, "graph")


@app.command("sample-data")
def sample_data(out: Annotated[Path, typer.Argument(help="Folder to write the sample graphs into.")],
                overwrite: OverwriteOpt = False) -> None:
    """Write Zachary's karate club (networkx; no features, club labels) and a small generated
    stochastic-block-model graph with noisy features, each as edges.csv (+ features.csv) + labels.csv."""
    from sslkit.core.files import check_writable
    from sslkit.domains.graph.samples import write_samples

    check_writable(out, "sample-data")
    for path in write_samples(out, overwrite=overwrite):
        typer.echo(str(path))
