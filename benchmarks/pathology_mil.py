"""GlaS image-level MIL: gated-attention ABMIL on frozen SSL tile embeddings (one bag per image) against mean
pooling and against ABMIL on a random-weight encoder, leave-one-patient-fold-out, AUC and accuracy over 5 seeds.

    python benchmarks/pathology_mil.py [--work DIR] [--arms dino-hed,...] [--seeds 5]

Reads the tile embeddings that benchmarks/pathology_quality.py keeps (WORK/embeddings/<arm>.npy, random.npy) and
runs that benchmark first for an arm that has none. Each (arm, model) result is written to
WORK/results/mil-<arm>.json as soon as it finishes; a rerun skips finished ones. Target (issue 24): ABMIL AUC >= 0.90
and above mean pooling and the random-weight encoder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pathology_quality  # noqa: E402
from pathology_quality import heavy_lock  # noqa: E402


def bags_of(x: np.ndarray, images: list[str], y_tile: np.ndarray, fold_tile: np.ndarray):  # noqa: ANN201
    """One bag per image: (bags [(n_i, D)], grade per image, patient fold per image, image names)."""
    order = list(dict.fromkeys(images))
    idx = {n: [] for n in order}
    for i, n in enumerate(images):
        idx[n].append(i)
    bags = [x[idx[n]] for n in order]
    return bags, np.asarray([y_tile[idx[n][0]] for n in order]), np.asarray([fold_tile[idx[n][0]] for n in order]), order


def main() -> None:
    from sslkit.core.evaluation import mean_std
    from sslkit.domains.pathology.mil import cross_validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology")
    ap.add_argument("--arms", default="dino-hed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--no-lock", action="store_true", help="do not take the heavy-job lock (small smoke runs)")
    args = ap.parse_args()
    pathology_quality.USE_LOCK = not args.no_lock
    emb = args.work / "embeddings"
    arms = args.arms.split(",")
    missing = [a for a in arms if not (emb / f"{a}.npy").is_file()]
    if missing or not (emb / "random.npy").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pathology_quality.py"), "--work", str(args.work),
                        "--arms", ",".join(missing or arms[:1]), "--mil-seeds", str(args.seeds),
                        *(["--no-lock"] if args.no_lock else [])], check=True)
    for arm in arms:
        out = args.work / "results" / f"mil-{arm}.json"
        if out.is_file():
            continue
        y_tile, fold_tile = np.load(emb / "labels.npy")
        images = json.loads((emb / "images.json").read_text())
        result = {"arm": arm, "seeds": args.seeds, "epochs": args.epochs, "split": "leave-one-patient-fold-out (4 folds)"}
        for name, file in (("ssl", f"{arm}.npy"), ("random weights", "random.npy")):
            bags, y, fold, order = bags_of(np.load(emb / file).astype(np.float64), images, y_tile, fold_tile)
            t0 = time.perf_counter()
            with heavy_lock():
                cv = cross_validate(bags, y, fold, args.seeds, 2, args.epochs)
            for model, sc in cv.items():
                if name != "ssl" and model != "abmil":
                    continue
                result[f"{model} ({name})"] = {m: mean_std(v) for m, v in sc.items()} | {"per_seed": sc}
            result[f"seconds ({name})"] = time.perf_counter() - t0
        result["bags"] = len(order)
        result["tiles"] = int(len(images))
        out.write_text(json.dumps(result, indent=2))
    for f in sorted((args.work / "results").glob("mil-*.json")):
        r = json.loads(f.read_text())
        print(f"GlaS image-level MIL, {r['bags']} images, {r['tiles']} tiles, {r['split']}, {r['seeds']} seeds "
              f"(encoder: {r['arm']})")
        for k, v in r.items():
            if isinstance(v, dict) and "auc" in v:
                print(f"  {k:28s} AUC {v['auc'][0]:.3f} ± {v['auc'][1]:.3f}   accuracy {v['accuracy'][0]:.3f} ± "
                      f"{v['accuracy'][1]:.3f}")


if __name__ == "__main__":
    main()
