"""GlaS image-level MIL: gated-attention ABMIL on frozen SSL tile embeddings (one bag per image) against mean
pooling, and both on a random-weight encoder and on handcrafted colour/texture features; AUC and accuracy over seeds.

    python benchmarks/pathology_mil.py [--work DIR] [--arms simclr-hed,...] [--seeds 5]

Folds as in benchmarks/pathology_quality.py: fold 3 (patients 1, 4, 5) is held out of every choice. "dev" is
leave-one-fold-out over folds 0-2 (out-of-fold predictions of the 123 development images, one AUC per seed);
"holdout" trains on all development images and scores the 42 held-out ones. Reads the tile embeddings that
pathology_quality.py keeps (WORK/embeddings/<arm>.npy, random.npy, handcrafted.npy). Each arm's result is written to
WORK/results/mil-<arm>.json as soon as it finishes; a rerun skips finished ones. Target (issue 24): ABMIL AUC >= 0.90
and above mean pooling and the random-weight encoder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pathology_quality  # noqa: E402
from pathology_quality import HOLDOUT, heavy_lock  # noqa: E402


def bags_of(x: np.ndarray, images: list[str], y_tile: np.ndarray, fold_tile: np.ndarray):  # noqa: ANN201
    """One bag per image: (bags [(n_i, D)], grade per image, patient fold per image, image names)."""
    order = list(dict.fromkeys(images))
    idx = {n: [] for n in order}
    for i, n in enumerate(images):
        idx[n].append(i)
    bags = [x[idx[n]] for n in order]
    return bags, np.asarray([y_tile[idx[n][0]] for n in order]), np.asarray([fold_tile[idx[n][0]] for n in order]), order


def holdout(bags: list[np.ndarray], y: np.ndarray, fold: np.ndarray, seeds: int, epochs: int) -> dict:
    """ABMIL and mean pooling fitted on the development images, scored on the held-out fold (per seed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sslkit.domains.pathology.mil import _standardise, predict_abmil, scores, train_abmil

    dev, test = np.flatnonzero(fold != HOLDOUT), np.flatnonzero(fold == HOLDOUT)
    out: dict = {"abmil": {"auc": [], "accuracy": []}, "mean pooling": {"auc": [], "accuracy": []}}
    means = np.stack([b.mean(0) for b in bags])
    scaler = StandardScaler().fit(means[dev])
    for seed in range(seeds):
        std = _standardise(bags, dev)
        model = train_abmil([std[i] for i in dev], y[dev], 2, 10_000 + seed, epochs)
        for m, v in scores(y[test], predict_abmil(model, [std[i] for i in test])[0]).items():
            out["abmil"][m].append(v)
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(scaler.transform(means[dev]), y[dev])
        for m, v in scores(y[test], clf.predict_proba(scaler.transform(means[test]))).items():
            out["mean pooling"][m].append(v)
    return out


def main() -> None:
    from sslkit.core.evaluation import mean_std
    from sslkit.domains.pathology.mil import cross_validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--arms", default="simclr-hed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--no-lock", action="store_true", help="do not take the heavy-job lock (small smoke runs)")
    args = ap.parse_args()
    pathology_quality.USE_LOCK = not args.no_lock
    emb = args.work / "embeddings"
    y_tile, fold_tile = np.load(emb / "labels.npy")
    images = json.loads((emb / "images.json").read_text())
    for arm in args.arms.split(","):
        out = args.work / "results" / f"mil-{arm}.json"
        if out.is_file():
            continue
        result: dict = {"arm": arm, "seeds": args.seeds, "epochs": args.epochs,
                        "split": f"dev: leave-one-fold-out over folds != {HOLDOUT}; holdout: fold {HOLDOUT}"}
        for name, file in (("ssl", f"{arm}.npy"), ("random weights", "random.npy"), ("handcrafted", "handcrafted.npy")):
            bags, y, fold, order = bags_of(np.load(emb / file).astype(np.float64), images, y_tile, fold_tile)
            dev = np.flatnonzero(fold != HOLDOUT)
            t0 = time.perf_counter()
            with heavy_lock():
                cv = cross_validate([bags[i] for i in dev], y[dev], fold[dev], args.seeds, 2, args.epochs)
                held = holdout(bags, y, fold, args.seeds, args.epochs)
            for model in cv:
                result[f"{model} ({name})"] = {
                    "dev": {m: mean_std(v) for m, v in cv[model].items()} | {"per_seed": cv[model]},
                    "holdout": {m: mean_std(v) for m, v in held[model].items()} | {"per_seed": held[model]}}
            result[f"seconds ({name})"] = time.perf_counter() - t0
            result["bags"] = {"dev": int(len(dev)), "holdout": int(len(y) - len(dev))}
        result["tiles"] = int(len(images))
        out.write_text(json.dumps(result, indent=2))
    for f in sorted((args.work / "results").glob("mil-*.json")):
        r = json.loads(f.read_text())
        print(f"GlaS image-level MIL (encoder: {r['arm']}), {r['bags']} images, {r['tiles']} tiles, {r['seeds']} seeds;"
              f" {r['split']}")
        for k, v in r.items():
            if isinstance(v, dict) and isinstance(v.get("dev"), dict):
                d, h = v["dev"], v["holdout"]
                print(f"  {k:28s} dev AUC {d['auc'][0]:.3f} ± {d['auc'][1]:.3f}  acc {d['accuracy'][0]:.3f}   "
                      f"held-out AUC {h['auc'][0]:.3f} ± {h['auc'][1]:.3f}  acc {h['accuracy'][0]:.3f}")


if __name__ == "__main__":
    main()
