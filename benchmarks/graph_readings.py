"""Score other readings of the encoder outputs that `graph_suite.py` kept (no retraining): k-means on the outputs read
with another `embedding.pca_variance`, or with at least K principal directions, against the soft assignment.

  .venv/bin/python benchmarks/graph_readings.py --tag default --graphs lfr-feat,football [--seeds 5]

Reads .cache/graph_suite/outputs/<tag>/<graph>/scgc-star-<seed>.npz (written by the suite for every trained seed) and
the graph's labels; prints mean NMI/ARI per reading and the number of directions each kept. Labels only score.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_suite import OUTPUTS, prepare  # noqa: E402


def directions(z: np.ndarray, variance: float) -> int:
    """How many principal directions of the centred z hold `variance` of its variance (as node_embedding counts)."""
    z = z - z.mean(0)
    var = np.linalg.eigvalsh((z.T @ z).astype(np.float64))[::-1].clip(0)
    return int(np.searchsorted(np.cumsum(var) / var.sum(), variance - 1e-9)) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default="default")
    ap.add_argument("--graphs", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--readings", default="0.9,0.9k,0.95,0.99,plain")
    args = ap.parse_args()
    from sslkit.core.evaluation import cluster_metrics, kmeans_eval
    from sslkit.domains.graph.clustering import node_embedding
    from sslkit.domains.graph.io import align_labels, load_graph

    for name in args.graphs.split(","):
        folder = prepare(name, OUTPUTS.parent)
        with contextlib.redirect_stderr(io.StringIO()):
            graph, labels = load_graph(folder)
            idx, y = align_labels(graph, labels)
        k = int(y.max()) + 1
        scores: dict[str, list] = {}
        for seed in range(args.seeds):
            path = OUTPUTS / args.tag / name / f"scgc-star-{seed}.npz"
            if not path.is_file():
                continue
            got = np.load(path)
            z = got["z"]
            for reading in args.readings.split(","):
                if reading == "plain":
                    emb, kept = node_embedding(z, None), z.shape[1]
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
        for reading, rs in scores.items():
            a = np.array(rs)
            print(f"{args.tag:14s} {name:9s} K={k:2d} {reading:6s} n={len(rs)} NMI {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f} "
                  f"ARI {a[:, 1].mean():.3f} ± {a[:, 1].std():.3f}  dirs {a[:, 2].mean():.0f}", flush=True)


if __name__ == "__main__":
    main()
