"""Downstream quality on UCI Adult: MLP / HistGradientBoosting on raw features vs T-JEPA (and SCARF) embeddings.

The encoder is pretrained on a stratified 80% of Adult (labels removed), then every
downstream model is fit on that 80% and scored on the held-out 20%, over --seeds seeds.
Everything goes through the sslkit CLI, exactly as a user would run it.

    .venv/bin/python benchmarks/tabular_quality.py --out /tmp/tabq [--steps 3000] [--scarf-steps 4000] [--jobs 8]
        [--control] [--label-fractions 0.01,0.05]

--control also pretrains the untrained-encoder control (the same recipe, one step at lr 0: the
bins are fitted, the weights stay at their initialisation), so the table separates what the
pretraining adds from what the architecture and tokens give. --label-fractions re-evaluates
T-JEPA (first pool) and the control with that share of the training labels (`--label-fraction`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def sslkit(*args: str) -> None:
    cmd = [sys.executable, "-m", "sslkit", "tabular", *map(str, args)]
    print("$ sslkit tabular " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {res.stderr[-3000:]}")
    print("\n".join(res.stderr.splitlines()[-3:]), file=sys.stderr)


def split_adult(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    from sslkit.domains.tabular.samples import read_adult, write_csv_atomic

    table = read_adult()
    y = np.array(table.column("income").to_pylist())
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return (write_csv_atomic(table.take(np.sort(tr)), folder / "adult_train.csv"),
            write_csv_atomic(table.take(np.sort(te)), folder / "adult_test.csv"))


def few_labels(args: argparse.Namespace, train: Path, test: Path, names: list[str]) -> None:
    """Accuracy with a share of the training labels, per run (first pool) and share, in one table."""
    from sslkit.core.console import print_table

    pool = args.pools.split(",")[0]
    columns, cells = [], {}
    for frac in args.label_fractions.split(","):
        for name in names:
            run = args.out / name
            sslkit("evaluate", run, train, "--target", "income", "--test", test, "--seeds", args.seeds, "--jobs",
                   args.jobs, "--pool", pool, "--label-fraction", frac)
            report = json.loads((run / "evaluation.json").read_text())
            (args.out / f"evaluation_{name}_{pool}_labels{frac}.json").write_text(json.dumps(report, indent=1))
            col = f"{name}, {float(frac):g} of labels"
            columns.append(col)
            for key, entry in report["results"].items():
                cells.setdefault(key, {})[col] = f"{entry['accuracy'][0]:.4f} ± {entry['accuracy'][1]:.4f}"
    rows = [[key, *(row.get(c, "-") for c in columns)] for key, row in cells.items()]
    print_table(f"Adult, few labels: accuracy on the held-out 20% ({args.seeds} seeds, pool {pool})",
                ["features / model", *columns], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", default="t-jepa")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps of the T-JEPA recipe")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the T-JEPA recipe")
    ap.add_argument("--scarf-steps", type=int, default=0, help="also pretrain SCARF for this many steps (0: skip)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--pools", default="mean_reg", help="T-JEPA poolings to evaluate, comma-separated (first = checked)")
    ap.add_argument("--control", action="store_true", help="also evaluate the untrained encoder (same recipe, lr 0)")
    ap.add_argument("--label-fractions", default="", help="comma-separated shares of the training labels, e.g. 0.01,0.05")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = split_adult(args.out)
    runs = {"t-jepa": (args.recipe, args.steps, args.set)}
    if args.control:
        runs["control"] = (args.recipe, 1, [*args.set, "train.lr=0", "train.warmup_steps=0"])
    if args.scarf_steps:
        runs["scarf"] = ("scarf", args.scarf_steps, [])
    reports, seconds = {}, {}
    for name, (recipe, steps, sets) in runs.items():
        run = args.out / name
        extra = [x for s in sets for x in ("--set", s)] + (["--set", f"train.steps={steps}"] if steps else [])
        t0 = time.perf_counter()
        sslkit("pretrain", train, "--target", "income", "--id", "id", "-r", recipe, "--out", run, "--overwrite", *extra)
        seconds[name] = time.perf_counter() - t0
        for pool in (args.pools.split(",") if name != "scarf" else [None]):
            label = f"{name} ({pool})" if pool else name
            sslkit("evaluate", run, train, "--target", "income", "--test", test, "--seeds", args.seeds, "--jobs", args.jobs,
                   *(["--pool", pool] if pool else []))
            reports[label] = json.loads((run / "evaluation.json").read_text())
            (args.out / f"evaluation_{label.replace(' ', '_').replace('(', '').replace(')', '')}.json").write_text(
                json.dumps(reports[label], indent=1))
    from sslkit.core.console import print_table

    rows = []
    first = next(iter(reports))
    base = reports[first]["results"]
    for key in ("raw / linear", "raw / mlp", "raw / hgb"):
        rows.append([key, "-", *(f"{base[key][m][0]:.4f} ± {base[key][m][1]:.4f}" for m in ("accuracy", "auc"))])
    for name, rep in reports.items():
        for key, entry in rep["results"].items():
            if not key.startswith("raw /"):
                rows.append([key, name, *(f"{entry[m][0]:.4f} ± {entry[m][1]:.4f}" for m in ("accuracy", "auc"))])
    print_table(f"Adult, held-out 20% ({len(base['raw / mlp']['per_seed'])} seeds); MLP {reports[first]['mlp']}",
                ["features / model", "pretraining", "accuracy", "AUC"], rows)
    acc = {k: v["accuracy"][0] for k, v in base.items()}
    # (text, left, right, slack): PASS when acc[left] > acc[right] - slack; the margin is printed beside it
    checks = [
        (f"[{first}] MLP on T-JEPA embeddings beats MLP on raw", "embeddings / mlp", "raw / mlp", 0.0),
        ("MLP on raw+T-JEPA beats MLP on raw", "raw+embeddings / mlp", "raw / mlp", 0.0),
        ("MLP on embeddings within 1 point of HGB raw", "embeddings / mlp", "raw / hgb", 0.01),
        ("HGB on raw+embeddings not worse than HGB raw", "raw+embeddings / hgb", "raw / hgb", 1e-9),
    ]
    if "raw-ple / mlp" in acc:   # the stricter raw baseline: the encoder's own piecewise-linear numeric codes
        checks.append(("MLP on T-JEPA embeddings beats MLP on raw-ple", "embeddings / mlp", "raw-ple / mlp", 0.0))
    for text, left, right, slack in checks:
        margin = acc[left] - acc[right]
        spread = max(base[left]["accuracy"][1], base[right]["accuracy"][1])
        print(f"{'PASS' if margin > -slack else 'FAIL'}  {text}: {100 * margin:+.2f} points "
              f"(seed std up to {100 * spread:.2f})", file=sys.stderr)
    if args.label_fractions:
        few_labels(args, train, test, [name for name in runs if name != "scarf"])
    print("pretraining wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()), file=sys.stderr)
    print(json.dumps({"accuracy": {k: {f: v["accuracy"][0] for f, v in r["results"].items()} for k, r in reports.items()},
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
