"""A 200k-node, ~2M-edge stochastic block model pretrains SCGC* in node mini-batches within a memory cap.

Generates the graph (edges.csv + features.npy), runs `sslkit graph pretrain` for one epoch in a
subprocess, and prints time per epoch and the child's peak RSS next to the size a dense N×N mask
would need. Run: .venv/bin/python benchmarks/graph_scale.py [--nodes 200000 --degree 20 --batch 1024]
"""
from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--degree", type=float, default=20.0, help="mean degree (edges ≈ nodes × degree / 2)")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024, help="seed nodes per step")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    import pandas as pd

    from sslkit.core.console import print_table
    from sslkit.domains.graph.samples import sbm

    work = Path(tempfile.mkdtemp(prefix="graph-scale-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # runs and caches are GBs: never left behind
    t0 = time.perf_counter()
    edges, x, _ = sbm(args.nodes, args.blocks, args.degree, p_in=0.7, feat_dim=64, noise=2.0, seed=0)
    pd.DataFrame(edges, columns=["src", "dst"]).to_csv(work / "edges.csv", index=False)
    np.save(work / "features.npy", x)
    gen = time.perf_counter() - t0
    steps = args.epochs * (args.nodes // args.batch)
    cmd = [sys.executable, "-m", "sslkit", "graph", "pretrain", str(work / "edges.csv"), "--features", str(work / "features.npy"),
           "--recipe", "scgc-star", "--clusters", str(args.blocks), "--out", str(work / "run"),
           "--set", f"train.batch_size={args.batch}", "--set", f"train.steps={steps}", "--set", "loss.cluster_warmup=20",
           "--set", "train.log_every=20", "--set", f"train.checkpoint_every={steps}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    train_line = [ln for ln in res.stderr.splitlines() if ln.startswith("done:")]
    train_s = float(train_line[-1].split(" in ")[1].split("s")[0]) if train_line else float("nan")
    dense_gib = args.nodes**2 * 4 / 2**30
    print_table(f"SCGC* mini-batch pretraining on a {args.nodes:,}-node SBM ({len(edges):,} edges listed, "
                f"mean degree {args.degree:g}); {os.cpu_count()} CPU cores, shared machine",
                ["what", "value"],
                [["graph generation + write", f"{gen:.1f} s"], ["steps (seed nodes per step)", f"{steps} ({args.batch})"],
                 ["training time per epoch", f"{train_s / args.epochs:.1f} s"],
                 ["pretrain command wall time (read, prepare, train, export, plot)", f"{wall:.1f} s"],
                 ["peak RSS of the pretrain process", f"{peak_gib:.2f} GiB"],
                 ["a dense N×N float32 mask would need", f"{dense_gib:,.0f} GiB"]])


if __name__ == "__main__":
    main()
