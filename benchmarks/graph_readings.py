"""Score other readings of the encoder outputs that `graph_suite.py` kept (no retraining): k-means on the outputs read
with another `embedding.pca_variance`, with at least K principal directions, or as the recipe reads them (`auto`),
against the soft assignment; or (`--rescore`) score a tag's suite rows again as the recipe now reads them.

  .venv/bin/python benchmarks/graph_readings.py --tag default --graphs lfr-feat,football [--seeds 5]
  .venv/bin/python benchmarks/graph_readings.py --tag default --graphs cora,lfr-feat --rescore

Reads .cache/graph_suite/outputs/<tag>/<graph>/scgc-star-<seed>.npz (written by the suite for every trained seed) and
the graph's labels; prints mean NMI/ARI per reading, the number of directions each kept, and two statistics of the
outputs: the length of their mean unit row (1: every row points one way) and how many principal directions hold 0.9 of
their variance against K−1. Labels only score.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_suite import OUTPUTS, _quiet, prepare, result_path  # noqa: E402


def directions(z: np.ndarray, variance: float) -> int:
    """How many principal directions of the centred z hold `variance` of its variance (as read_outputs counts)."""
    z = z - z.mean(0)
    var = np.linalg.eigvalsh((z.T @ z).astype(np.float64))[::-1].clip(0)
    return int(np.searchsorted(np.cumsum(var) / var.sum(), variance - 1e-9)) + 1


def _labels(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sslkit.domains.graph.io import align_labels, load_graph

    with _quiet():
        graph, labels = load_graph(prepare(name, OUTPUTS.parent))
        return align_labels(graph, labels)


def _recipe(sets: list[str], k: int):  # noqa: ANN202
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.graph.method import GraphRecipe

    recipe = load_recipe(GraphRecipe, "graph", "scgc-star", sets)
    recipe.clusters = k
    return recipe


def rescore(tag: str, graphs: list[str], sets: list[str]) -> None:
    """Score the kept outputs of the tag's scgc-star rows again as the recipe (with the row's and these `sets`) now
    reads them: k-means NMI/ARI/ACC/F1 and the reading change; training, soft assignment and wall time stay."""
    from sslkit.core.evaluation import kmeans_eval
    from sslkit.domains.graph.clustering import recipe_embedding

    for name in graphs:
        result = result_path(tag, name, "scgc-star")
        if not result.is_file():
            continue
        done = json.loads(result.read_text())
        idx, y = _labels(name)
        k = int(y.max()) + 1
        recipe = _recipe([*done["set"], *sets], k)
        for seed, row in done["seeds"].items():
            kept = OUTPUTS / tag / name / f"scgc-star-{seed}.npz"
            if not kept.is_file():
                print(f"{name} seed {seed}: no kept outputs ({kept}); row left as it was")
                continue
            emb, reading = recipe_embedding(np.load(kept)["z"], recipe)
            new = {m: v for m, (v, _) in kmeans_eval(emb[idx], y, k, seeds=(int(seed),)).items()}
            print(f"{name:9s} seed {seed}: NMI {row['nmi']:.4f} -> {new['nmi']:.4f}, ARI {row['ari']:.4f} -> "
                  f"{new['ari']:.4f} ({reading})", flush=True)
            row.update(new, reading=reading)
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default="default")
    ap.add_argument("--graphs", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--readings", default="auto,0.9,0.9k,0.95,0.99,plain")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for `auto` and --rescore")
    ap.add_argument("--rescore", action="store_true", help="rewrite the tag's scgc-star rows as the recipe reads the "
                    "kept outputs (then `graph_suite.py --table-only --tag TAG` prints the table)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)   # as the suite scores (k-means at one thread)
    if args.rescore:
        rescore(args.tag, args.graphs.split(","), args.sets)
        return
    from sslkit.core.evaluation import cluster_metrics, kmeans_eval
    from sslkit.domains.graph.clustering import node_embedding, recipe_embedding

    for name in args.graphs.split(","):
        idx, y = _labels(name)
        k = int(y.max()) + 1
        scores: dict[str, list] = {}
        stats = []
        for seed in range(args.seeds):
            path = OUTPUTS / args.tag / name / f"scgc-star-{seed}.npz"
            if not path.is_file():
                continue
            got = np.load(path)
            z = got["z"]
            unit = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
            stats.append((np.linalg.norm(unit.mean(0)), directions(z, 0.9)))
            for reading in args.readings.split(","):
                if reading == "plain":
                    emb, kept = node_embedding(z, None), z.shape[1]
                elif reading == "auto":   # as the recipe (with --set) reads them
                    emb, how = recipe_embedding(z, _recipe(args.sets, k))
                    kept = z.shape[1] if how.startswith("unit length") else emb.shape[1]
                elif reading.endswith("k"):   # at least K directions
                    v = float(reading[:-1])
                    kept = max(directions(z, v), k)
                    zc = z - z.mean(0)
                    _, dirs = np.linalg.eigh((zc.T @ zc).astype(np.float64))
                    emb = zc @ dirs[:, ::-1][:, :kept].astype(np.float32)
                    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
                else:
                    v = float(reading)
                    emb, kept = node_embedding(z, v), max(2, directions(z, v))
                m = {a: v for a, (v, _) in kmeans_eval(emb[idx], y, k, seeds=(seed,)).items()}
                scores.setdefault(reading, []).append((m["nmi"], m["ari"], kept))
            if "q" in got:
                m = cluster_metrics(y, got["q"][idx].argmax(1))
                scores.setdefault("soft", []).append((m["nmi"], m["ari"], 0))
        if stats:
            s = np.array(stats)
            print(f"{args.tag:14s} {name:9s} K={k:2d} mean unit row length {s[:, 0].mean():.3f}, directions holding 0.9 "
                  f"{s[:, 1].min():.0f}-{s[:, 1].max():.0f} (K−1 = {k - 1})")
        for reading, rs in scores.items():
            a = np.array(rs)
            print(f"{args.tag:14s} {name:9s} K={k:2d} {reading:6s} n={len(rs)} NMI {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} "
                  f"ARI {a[:, 1].mean():.3f} ± {a[:, 1].std():.3f}  dirs {a[:, 2].mean():.0f}", flush=True)


if __name__ == "__main__":
    main()
