"""GlaS tile quality: DINO and SimCLR, with and without stain augmentation, against random weights and handcrafted
colour/texture features, by a linear probe on frozen tile embeddings, with one patient fold held out of everything.

    python benchmarks/pathology_quality.py [--glas DIR] [--work DIR] [--steps N] [--arms dino-hed,...]

Folds: GlaS's `fold` column (4 folds of whole patients). Fold 3 (patients 1, 4, 5; 24 benign / 18 malignant images)
is HELD OUT of every choice: no pretraining on its images, no setting chosen on its score. Choices (arm, recipe
settings) are made on the DEVELOPMENT folds 0-2 by leave-one-fold-out; the held-out figure (probe fitted on folds
0-2, scored on fold 3) is reported apart.
1. `sslkit pathology tile` the 165 GlaS images at native resolution (224-px tiles, --slide-mpp 0.62, min tissue 0.1).
2. Pretrain each arm with `sslkit pathology pretrain MANIFEST-DEV -r dino-tiny` (SimCLR arms: --set method=simclr)
   on the tiles of the development folds' images only, without labels. Each pretraining takes the heavy-job lock
   (/tmp/sslkit-heavy.lock) and is timed; its data-wait share is read from metrics.jsonl.
3. Embed every tile with the run's encoder (112 px, the recipe's input), a random-weight twin, and handcrafted
   features (on the 112-px tiles the encoder sees and on the native 224-px tiles of the issue's baseline).
4. Logistic-regression probe (standardised, balanced class weights) and k-NN (k=20); tile label = the image's grade.
Every arm's result is written to WORK/results/<arm>.json as soon as it finishes; a rerun skips finished arms and
resumes an interrupted pretraining from its checkpoint. Tile embeddings are kept (WORK/embeddings/<arm>.npy) for
benchmarks/pathology_mil.py.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GLAS = ROOT.parent / "shared" / "data" / "pathology" / "glas"
SSLKIT = [sys.executable, "-m", "sslkit"]
LOCK = "/tmp/sslkit-heavy.lock"
SIMCLR = ["method=simclr", "aug.simclr_scale=[0.2,1.0]", "loss.temperature=0.2", "aug.blur_p=0.5"]
HOLDOUT = 3            # the patient fold kept out of pretraining and of every choice
ARMS = {  # name -> --set overrides of the dino-tiny recipe; the main comparison first, then the stain ablation
    "dino-hed": [],
    "simclr-hed": SIMCLR,
    "dino-nostain": ["aug.stain=none"],
    "simclr-nostain": [*SIMCLR, "aug.stain=none"],
}
STEPS = {"dino-hed": 240, "dino-nostain": 240, "simclr-hed": 300, "simclr-nostain": 300}   # ~6-7 CPU-min each here


USE_LOCK = True


@contextlib.contextmanager
def heavy_lock():  # noqa: ANN201
    """The shared heavy-job lock (flock(2), the same lock as `flock /tmp/sslkit-heavy.lock`)."""
    if not USE_LOCK:
        yield
        return
    with open(LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tile_glas(glas: Path, work: Path) -> Path:
    manifest = work / "tiles" / "manifest.parquet"
    if manifest.is_file():
        return manifest
    images = sorted(str(p) for p in (glas / "images").glob("*.jpg"))
    with heavy_lock():
        subprocess.run([*SSLKIT, "pathology", "tile", *images, "--out", str(work / "tiles"), "--native", "--tile-px",
                        "224", "--slide-mpp", "0.62", "--min-tissue", "0.1", "--overwrite"], check=True)
    return manifest


def tile_labels(manifest: Path, glas: Path) -> tuple[object, np.ndarray, np.ndarray, list[str]]:
    """(manifest rows, grade per tile (0 benign, 1 malignant), patient fold per tile, image name per tile)."""
    import pandas as pd

    rows = pd.read_parquet(manifest)
    labels = pd.read_csv(glas / "labels.csv")
    by_name = {Path(p).name: r for p, r in zip(labels["image"], labels.itertuples())}
    names = [Path(s).name for s in rows["slide"]]
    y = np.asarray([int(by_name[n].grade == "malignant") for n in names])
    fold = np.asarray([int(by_name[n].fold) for n in names])
    return rows, y, fold, names


def pretrain(arm: str, manifest: Path, work: Path, steps: int | None) -> dict:
    run = work / "runs" / arm
    steps = steps or STEPS.get(arm)
    sets = [a for s in ARMS[arm] for a in ("--set", s)] + (["--set", f"train.steps={steps}"] if steps else [])
    if (run / "encoder" / "config.json").is_file():
        return json.loads((work / "runs" / f"{arm}.time.json").read_text())
    resume = (run / "checkpoints" / "last.pt").is_file()
    cmd = [*SSLKIT, "pathology", "pretrain", str(manifest), "-r", "dino-tiny", *sets, "--out", str(run)]
    cmd += ["--resume"] if resume else ["--overwrite"]
    with heavy_lock():
        log(f"pretraining {arm}: {' '.join(cmd[2:])}")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [m for m in metrics if "loss" in m]
    info = {"seconds": seconds, "resumed": resume, "steps": steps_logged[-1]["step"],
            "final_loss": steps_logged[-1]["loss"], "first_loss": steps_logged[0]["loss"],
            "data_wait": float(np.mean([m.get("data_wait", 0) for m in steps_logged[1:]] or [0])),
            "samples_per_s": float(np.mean([m.get("samples_per_s", 0) for m in steps_logged[1:]] or [0])),
            "teacher_entropy": [m["teacher_entropy"] for m in steps_logged if "teacher_entropy" in m]}
    (work / "runs" / f"{arm}.time.json").write_text(json.dumps(info))
    return info


def embed(encoder, rows, px: int) -> np.ndarray:  # noqa: ANN001
    import torch

    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.model import embed_batch, tile_batches

    with torch.inference_mode():
        return torch.cat([embed_batch(encoder, t) for t in tile_batches(TileDataset(rows, px), 64)]).double().numpy()


def handcrafted(rows, px: int) -> np.ndarray:  # noqa: ANN001
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.features import handcrafted_features

    ds = TileDataset(rows, px)
    return handcrafted_features([ds.read(i) for i in range(len(ds))])


def dev_and_holdout(fold: np.ndarray) -> tuple[list, list]:
    """(leave-one-fold-out splits over the development folds, [(all development tiles, held-out tiles)])."""
    dev = np.flatnonzero(fold != HOLDOUT)
    cv = [(dev[fold[dev] != f], dev[fold[dev] == f]) for f in sorted(set(fold[dev].tolist()))]
    return cv, [(dev, np.flatnonzero(fold == HOLDOUT))]


def probe(name: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> dict:
    """{"<name> linear|knn": {"dev": {balanced_acc (mean, std over dev folds), per_fold}, "holdout": {...}}}."""
    from sslkit.domains.pathology.evaluate import evaluate_features

    cv, held = dev_and_holdout(fold)
    out: dict = {}
    for part, folds in (("dev", cv), ("holdout", held)):
        res = evaluate_features({name: x}, y, folds)
        res.pop("_pred")
        for k, v in res.items():
            out.setdefault(k, {})[part] = {"balanced_acc": v["balanced_acc"], "macro_f1": v["macro_f1"],
                                           "per_fold": v["per_split"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glas", type=Path, default=GLAS)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (smoke runs)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--no-lock", action="store_true", help="do not take the heavy-job lock (small smoke runs)")
    ap.add_argument("--mil-arms", default="", help="arms to run pathology_mil.py for as soon as they finish (default "
                    "none: run it for the arm the development folds chose)")
    ap.add_argument("--mil-seeds", type=int, default=3)
    args = ap.parse_args()
    global USE_LOCK
    USE_LOCK = not args.no_lock
    if not (args.glas / "labels.csv").is_file():
        sys.exit(f"GlaS not found at {args.glas} — pass --glas DIR")
    work = args.work
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "embeddings").mkdir(exist_ok=True)
    manifest = tile_glas(args.glas, work)
    rows, y, fold, names = tile_labels(manifest, args.glas)
    dev_manifest = work / "tiles" / "manifest-dev.parquet"
    if not dev_manifest.is_file():
        rows[fold != HOLDOUT].to_parquet(dev_manifest)
    np.save(work / "embeddings" / "labels.npy", np.stack([y, fold]))
    (work / "embeddings" / "images.json").write_text(json.dumps(names))
    log(f"{len(rows)} tiles from {len(set(names))} images; malignant share {y.mean():.2f}")
    import sslkit
    from sslkit.domains.pathology.model import random_twin

    for arm in args.arms.split(","):
        out = work / "results" / f"{arm}.json"
        base = work / "results" / "baselines.json"
        if out.is_file() and base.is_file():
            log(f"{arm}: done before ({out})")
            continue
        timing = pretrain(arm, dev_manifest, work, args.steps)
        encoder = sslkit.load_encoder(work / "runs" / arm)
        px = int(encoder.sslkit_config["extra"]["tile_px"])
        if not out.is_file():
            with heavy_lock():
                x = embed(encoder, rows, px)
                np.save(work / "embeddings" / f"{arm}.npy", x.astype(np.float32))
                result = {"arm": arm, "overrides": ARMS[arm], "pretrain": timing, "tiles": len(rows), "input_px": px,
                          "pretrained_on": f"tiles of folds != {HOLDOUT} ({int((fold != HOLDOUT).sum())}), no labels",
                          **probe("ssl", x, y, fold)}
            out.write_text(json.dumps(result, indent=2))
            log(f"{arm}: linear dev {result['ssl linear']['dev']['balanced_acc']}, pretrain {timing['seconds']:.0f}s")
        if not base.is_file():
            with heavy_lock():
                xr = embed(random_twin(encoder), rows, px)
                np.save(work / "embeddings" / "random.npy", xr.astype(np.float32))
                xh = handcrafted(rows, px)
                np.save(work / "embeddings" / "handcrafted.npy", xh.astype(np.float32))
                res = {"random weights (same ViT)": probe("random", xr, y, fold),
                       f"handcrafted at {px} px": probe("handcrafted", xh, y, fold),
                       "handcrafted at 224 px (native)": probe("handcrafted", handcrafted(rows, 224), y, fold)}
            base.write_text(json.dumps(res, indent=2))
        if arm in [a for a in args.mil_arms.split(",") if a]:       # the image-level MIL figures of the main arm come right away
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pathology_mil.py"), "--work", str(work),
                            "--arms", arm, "--seeds", str(args.mil_seeds), *(["--no-lock"] if args.no_lock else [])],
                           check=False)
    report(work)


def report(work: Path) -> None:
    rows = []
    for f in sorted((work / "results").glob("*.json")):
        if f.stem.startswith("mil-"):
            continue
        r = json.loads(f.read_text())
        if f.stem == "baselines":
            for name, res in r.items():
                for probe_name, v in res.items():
                    rows.append((f"{name} [{probe_name.split()[-1]}]", v, ""))
        else:
            for probe_name in ("ssl linear", "ssl knn"):
                p = r["pretrain"]
                rows.append((f"{r['arm']} [{probe_name.split()[-1]}]", r[probe_name],
                             f"{p['seconds']:.0f}s/{p['steps']} steps, wait {p['data_wait']:.0%}"))
    print(f"{'GlaS tiles (balanced accuracy)':44s} {'dev folds 0-2 (LOFO)':>20s}  {'per fold':15s} "
          f"{'held-out fold 3':>15s}  pretrain")
    for name, v, t in rows:
        (m, s), per, h = v["dev"]["balanced_acc"], v["dev"]["per_fold"]["balanced_acc"], v["holdout"]["balanced_acc"][0]
        print(f"{name:44s} {m:.3f} ± {s:.3f}        {' '.join(f'{x:.2f}' for x in per):15s} {h:15.3f}  {t}")


if __name__ == "__main__":
    main()
