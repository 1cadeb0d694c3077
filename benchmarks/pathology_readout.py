"""GlaS: how frozen ViT features are read out, without retraining — chosen on the development folds only.

    python benchmarks/pathology_readout.py all [--work DIR] [--arm dino-hed]   # every step below, fixed-rule choices
    python benchmarks/pathology_readout.py embed  [--arms dino-hed] [--px 112,224] [--tta 1,8] [--stain-norm reinhard]
    python benchmarks/pathology_readout.py choose [--arm dino-hed] [--variants px112-tta1;...]   # dev folds 0-2 only
    python benchmarks/pathology_readout.py mil    [--arm dino-hed] [--specs 'cls | px112 | tta8-reinhard | l2']
    python benchmarks/pathology_readout.py final  [--arm dino-hed] --spec ... --head JSON --mean-c C  # + fold 3, once

Levers, all on the kept encoders of benchmarks/pathology_quality.py (WORK/runs/<arm>) and, identically, on their
random-weight twin:
- readout: the CLS token, the mean patch token, both (the shipped `cls+mean`), and these of the last 2 / 4 / all
  blocks concatenated (DINO's linear evaluation concatenates the last 4 blocks' CLS tokens); every block's tokens go
  through the final LayerNorm, as timm's `forward_intermediates(norm=True)` and DINO's `get_intermediate_layers` do;
- embed size: the 224-px native tiles (0.62 µm/px) read at 112 px (1.24 µm/px over 139 µm; dino-tiny pretrains on
  112 px at 1.0 µm/px, 112 µm — scored at that read in results/pathology_glas/readout-mpp1, pathology_long.py
  embed --read-mpp 1.0) or at 224 px (full resolution, 4x the tokens; position embeddings interpolated by timm's
  dynamic_img_size);
- test-time symmetry: the mean embedding over the 8 rotations/flips of the tile (tissue has no orientation);
- stain normalisation at embed time (Reinhard): each image's tiles moved to the development images' mean L*a*b*
  statistics;
- scaling before the probe: per-feature standardisation (shipped) or L2 per tile then standardisation;
- the MIL head: ABMIL learning rate / epochs / dropout, mean pooling's C.
`embed` writes WORK/readout/<arm>-px<P>-tta<T>[-reinhard].npy, float32 (N, blocks, 2, width) — CLS and mean patch
token per block — for the arm and for `random`. `choose` and `mil` score by leave-one-fold-out over folds 0-2 only
(the probe of `sslkit pathology evaluate`, the heads of `sslkit pathology mil`) into choice.json / mil_choice.json.
`final` scores the chosen readout, the shipped one and the baselines on dev and on held-out fold 3 (final.json).
Each result is written as soon as it exists; a rerun skips what exists.
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
from pathology_quality import HOLDOUT, dev_and_holdout, log  # noqa: E402

# the readout levers live in the package (`sslkit pathology embed --token/--tta/--stain-norm` uses them)
from sslkit.domains.pathology.readout import block_tokens, image_stats, lab_stats, reinhard  # noqa: E402

READOUTS = {  # name -> (blocks counted from the last, tokens: 0 = CLS, 1 = mean patch)
    "cls": ([-1], [0]), "mean": ([-1], [1]), "cls+mean": ([-1], [0, 1]),
    "cls+mean last2": ([-2, -1], [0, 1]), "cls last4 + mean": (None, None), "cls+mean last4": ([-4, -3, -2, -1], [0, 1]),
    "cls+mean all": ([0, 1, 2, 3, 4, 5], [0, 1]),
}


def read_out(z: np.ndarray, name: str) -> np.ndarray:
    """(N, blocks, 2, width) -> (N, D) for a READOUTS name."""
    if name == "cls last4 + mean":                       # DINO's linear eval: CLS of the last 4 blocks + mean patch
        return np.concatenate([z[:, -4:, 0].reshape(len(z), -1), z[:, -1, 1]], 1)
    blocks, tokens = READOUTS[name]
    return z[:, blocks][:, :, tokens].reshape(len(z), -1)


def scale(x: np.ndarray, how: str) -> np.ndarray:
    """Per-tile scaling before the probe's own per-feature standardisation (fitted on training tiles there)."""
    if how == "l2":
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
    return x


def reinhard_targets(rows, px: int, fold_of_tile: np.ndarray, mpps: list[float] | None = None  # noqa: ANN001
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(per tile: its image's L*a*b* mean and std (N, 2, 3), reference mean and std (2, 3) = the average over the
    development images). Reinhard et al. 2001 colour transfer, per image; fold 3 adds nothing to the reference.
    mpps: read the tiles at that resolution (TileDataset's), as they are then embedded; None: as tiled."""
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.model import tile_batches

    st = np.concatenate([lab_stats(t.numpy()) for t in tile_batches(TileDataset(rows, px, mpps=mpps), 64)])
    per_tile = image_stats(st, rows["slide"].to_numpy())
    ref = per_tile[fold_of_tile != HOLDOUT].mean(0)
    return per_tile, ref


def cmd_embed(args: argparse.Namespace) -> None:
    import torch

    import sslkit
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.model import random_twin, tile_batches

    rows = __import__("pandas").read_parquet(args.work / "tiles" / "manifest.parquet")
    if args.limit:
        rows = rows.head(args.limit)
    tag = "-reinhard" if args.stain_norm == "reinhard" else ""
    out_dir = args.work / "readout"
    out_dir.mkdir(exist_ok=True)
    times = json.loads((out_dir / "embed_times.json").read_text()) if (out_dir / "embed_times.json").is_file() else {}
    for arm in args.arms.split(","):
        encoder = sslkit.load_encoder(args.work / "runs" / arm).eval()
        for name, enc in ((arm, encoder), ("random", random_twin(encoder))):
            for px in map(int, args.px.split(",")):
                for tta in map(int, args.tta.split(",")):
                    f = out_dir / f"{name}-px{px}-tta{tta}{tag}.npy"
                    if f.is_file():
                        continue
                    t0 = time.perf_counter()
                    batches = tile_batches(TileDataset(rows, px), 32)
                    if tag:
                        fold = np.load(args.work / "embeddings" / "labels.npy")[1][: len(rows)]
                        stats, ref = reinhard_targets(rows, px, fold)
                        batches = (torch.from_numpy(reinhard(t.numpy(), stats[i * 32: i * 32 + len(t)], ref))
                                   for i, t in enumerate(batches))
                    with torch.inference_mode():
                        z = torch.cat([block_tokens(enc, t, tta) for t in batches])
                    np.save(f, z.float().numpy())
                    times[f.stem] = time.perf_counter() - t0
                    (out_dir / "embed_times.json").write_text(json.dumps(times, indent=1))
                    log(f"{f.name}: {tuple(z.shape)} in {times[f.stem]:.1f}s")


def linear_probe(x: np.ndarray, y: np.ndarray, splits: list) -> tuple[float, float, list[float]]:
    """(mean, std, per split) balanced accuracy of the evaluate command's linear probe (standardised, balanced LR)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    per = []
    for train, test in splits:
        s = StandardScaler().fit(x[train])
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(s.transform(x[train]), y[train])
        per.append(float(balanced_accuracy_score(y[test], clf.predict(s.transform(x[test])))))
    return float(np.mean(per)), float(np.std(per)), per


def load(work: Path, name: str, px: int, tta: int, tag: str = "") -> np.ndarray | None:
    f = work / "readout" / f"{name}-px{px}-tta{tta}{tag}.npy"
    return np.load(f).astype(np.float64) if f.is_file() else None


def cmd_choose(args: argparse.Namespace) -> None:
    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    cv, _ = dev_and_holdout(fold)              # dev folds only: fold 3's tiles are in no split here
    assert all(HOLDOUT not in set(fold[np.concatenate(s)].tolist()) for s in cv)
    out = args.work / "readout" / "choice.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    t0 = time.perf_counter()
    variants = [(int(v.split("-")[0][2:]), int(v.split("-")[1][3:]), "-".join([""] + v.split("-")[2:]))
                for v in args.variants.split(";")]           # "px112-tta1;px224-tta8-reinhard"
    readouts = list(READOUTS) if args.readouts == "all" else args.readouts.split(";")
    for name in args.names.split(","):
        for px, tta, tag in variants:
            z = load(args.work, name, px, tta, tag)
            if z is None:
                continue
            for r in readouts:
                for how in args.scales.split(","):
                    key = f"{name} | {r} | px{px} | tta{tta}{tag} | {how}"
                    if key not in res:
                        res[key] = linear_probe(scale(read_out(z, r), how), y, cv)
                        out.write_text(json.dumps(res, indent=1))
    ranked = sorted(((v[0], k) for k, v in res.items() if k.startswith(args.arm + " |")), reverse=True)
    for m, k in ranked[:12]:
        log(f"{m:.3f} ± {res[k][1]:.3f}  {' '.join(f'{p:.2f}' for p in res[k][2])}  {k}")
    log(f"choose: {time.perf_counter() - t0:.0f}s")


def features(work: Path, name: str, spec: dict) -> np.ndarray:
    """Tile features (N, D) of one readout spec {"readout", "px", "tta", "tag", "scale"}; name: arm, random, handcrafted."""
    if name.startswith("handcrafted"):                # handcrafted, or handcrafted-mpp1 (another read)
        return np.load(work / "embeddings" / f"{name}.npy").astype(np.float64)
    z = load(work, name, spec["px"], spec["tta"], spec.get("tag", ""))
    return scale(read_out(z, spec["readout"]), spec["scale"])


def parse_spec(key: str) -> dict:
    """'arm | readout | px224 | tta8-reinhard | l2' -> spec."""
    _, r, px, tta, how = [p.strip() for p in key.split("|")]
    tta, _, tag = tta.partition("-")
    return {"readout": r, "px": int(px[2:]), "tta": int(tta[3:]), "tag": f"-{tag}" if tag else "", "scale": how}


MIL_GRID = [{"lr": lr, "epochs": ep, "dropout": dr} for lr in (1e-4, 5e-4, 2e-3) for ep in (30, 100)
            for dr in (0.25, 0.5)]
MEAN_GRID = [0.01, 0.1, 1.0]
SHIPPED_MIL = {"lr": 5e-4, "epochs": 60, "dropout": 0.25}


def mil_predict(bags: list, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, head: dict | float
                ) -> np.ndarray:
    """Class probabilities of the test bags: ABMIL with `head` settings, or (a float C) mean pooling + logistic
    regression, as `sslkit pathology mil` fits them (training-fold standardisation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sslkit.domains.pathology.mil import _standardise, predict_abmil, train_abmil

    if isinstance(head, dict):
        std = _standardise(bags, train)
        more = {k: v for k, v in head.items() if k not in ("epochs", "lr", "dropout")}   # pathology_heads.py's
        model = train_abmil([std[i] for i in train], y[train], 2, seed, head["epochs"], lr=head["lr"],
                            dropout=head["dropout"], **more)
        return predict_abmil(model, [std[i] for i in test])[0]
    means = np.stack([b.mean(0) for b in bags])
    sc = StandardScaler().fit(means[train])
    clf = LogisticRegression(C=head, max_iter=2000, class_weight="balanced", random_state=seed)
    return clf.fit(sc.transform(means[train]), y[train]).predict_proba(sc.transform(means[test]))


def mil_scores(bags: list, y: np.ndarray, fold: np.ndarray, head: dict | float, seeds: int, part: str) -> dict:
    """AUC/accuracy mean ± std over seeds; part "dev" = pooled out-of-fold over folds 0-2, "holdout" = fitted on
    folds 0-2, scored on fold 3."""
    from sslkit.core.evaluation import mean_std
    from sslkit.domains.pathology.mil import scores

    dev = np.flatnonzero(fold != HOLDOUT)
    splits = ([(dev[fold[dev] != f], dev[fold[dev] == f]) for f in sorted(set(fold[dev].tolist()))] if part == "dev"
              else [(dev, np.flatnonzero(fold == HOLDOUT))])
    per: dict[str, list[float]] = {"auc": [], "accuracy": []}
    for seed in range(seeds):
        idx = np.concatenate([t for _, t in splits])
        p = np.full((len(y), 2), np.nan)
        for k, (train, test) in enumerate(splits):
            p[test] = mil_predict(bags, y, train, test, seed * 1000 + k, head)
        for m, v in scores(y[idx], p[idx]).items():
            per[m].append(v)
    return {m: mean_std(v) for m, v in per.items()}


def image_bags(work: Path, x: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    from pathology_mil import bags_of

    y_tile, fold_tile = np.load(work / "embeddings" / "labels.npy")
    bags, y, fold, _ = bags_of(x, json.loads((work / "embeddings" / "images.json").read_text()), y_tile, fold_tile)
    return bags, y, fold


def cmd_mil(args: argparse.Namespace) -> None:
    """Dev-only choice of the MIL head (ABMIL grid, mean-pooling C) on the given tile readouts of the arm."""
    out = args.work / "readout" / "mil_choice.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    t0 = time.perf_counter()
    for key in args.specs.split(";"):
        spec = parse_spec(f"{args.arm} | {key}")
        bags, y, fold = image_bags(args.work, features(args.work, args.arm, spec))
        for head in [*MEAN_GRID, SHIPPED_MIL, *MIL_GRID]:
            k = f"{key} || {json.dumps(head)}"
            if k not in res:
                res[k] = mil_scores(bags, y, fold, head, args.seeds, "dev")
                out.write_text(json.dumps(res, indent=1))
    for k, v in sorted(res.items(), key=lambda kv: -kv[1]["auc"][0])[:15]:
        log(f"dev AUC {v['auc'][0]:.3f} ± {v['auc'][1]:.3f} acc {v['accuracy'][0]:.3f}  {k}")
    log(f"mil choice: {time.perf_counter() - t0:.0f}s")


def cmd_final(args: argparse.Namespace) -> None:
    """Dev and held-out figures of the shipped and the chosen readout/head, for the arm, random weights (the same
    readout, and random's own best readout on dev) and handcrafted features. Run once, after the choices."""
    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    cv, held = dev_and_holdout(fold)
    choice = json.loads((args.work / "readout" / "choice.json").read_text())
    best_random = max((v[0], k) for k, v in choice.items() if k.startswith("random |"))[1]
    chosen = parse_spec(f"{args.arm} | {args.spec}")
    shipped = parse_spec(f"{args.arm} | cls+mean | px112 | tta1 | standardise")
    head = json.loads(args.head)
    rows = [(args.arm, "shipped", shipped), (args.arm, "chosen", chosen), ("random", "shipped", shipped),
            ("random", "chosen", chosen), ("random", "random's best on dev", parse_spec(best_random)),
            ("handcrafted", "112 px", shipped)]
    out = args.work / "readout" / "final.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    for name, label, spec in rows:
        key = f"{name} [{label}]"
        if key in res:
            continue
        t0 = time.perf_counter()
        x = features(args.work, name, spec)
        r: dict = {"spec": spec, "tile linear": {"dev": linear_probe(x, y, cv), "holdout": linear_probe(x, y, held)}}
        bags, yb, fb = image_bags(args.work, x)
        heads = {"abmil shipped": SHIPPED_MIL, "abmil chosen": head, "mean pooling C=1": 1.0,
                 f"mean pooling C={args.mean_c}": args.mean_c}
        heads = {k: v for i, (k, v) in enumerate(heads.items()) if v not in list(heads.values())[:i]}  # no repeats
        for hname, h in heads.items():
            r[hname] = {part: mil_scores(bags, yb, fb, h, args.final_seeds, part) for part in ("dev", "holdout")}
        r["seconds"] = time.perf_counter() - t0
        res[key] = r
        out.write_text(json.dumps(res, indent=1))
        log(f"{key}: {time.perf_counter() - t0:.0f}s")
    for key, r in res.items():
        t = r["tile linear"]
        line = f"{key:34s} tile {t['dev'][0]:.3f}±{t['dev'][1]:.3f} / {t['holdout'][0]:.3f}"
        for h in [k for k in r if k.startswith(("abmil", "mean"))]:
            line += f" | {h} {r[h]['dev']['auc'][0]:.3f} / {r[h]['holdout']['auc'][0]:.3f}"
        print(line)


def best(res: dict, prefix: str, metric=lambda v: v[0]) -> str:  # noqa: ANN001
    """The key starting with `prefix` of the highest dev score (ties: the first listed)."""
    keys = [k for k in res if k.startswith(prefix)]
    return max(keys, key=lambda k: (metric(res[k]), -keys.index(k)))


def cmd_all(args: argparse.Namespace) -> None:
    """Every step, with the choices made by a fixed rule on the development folds only, then `final` once:
    1. readout: the best dev probe over READOUTS (px112, no TTA, standardised; both encoders are scored);
    2. with it: the best of the embed variants (px112/224, TTA 1/8, Reinhard or not), then standardise vs l2;
    3. MIL: on that tile readout the best dev AUC of ABMIL over MIL_GRID + shipped, and of mean pooling over C."""
    args.stain_norm = "reinhard"
    args.px, args.tta = "112,224", "1"
    cmd_embed(args)
    args.px, args.tta = "112", "8"
    cmd_embed(args)
    ch = args.work / "readout" / "choice.json"
    args.variants, args.readouts, args.scales = "px112-tta1", "all", "standardise"
    cmd_choose(args)
    r1 = parse_spec(best(json.loads(ch.read_text()), f"{args.arm} | "))["readout"]
    args.names, args.readouts = args.arm, r1
    args.variants = "px112-tta1;px112-tta8;px224-tta1;px112-tta1-reinhard;px112-tta8-reinhard;px224-tta1-reinhard"
    cmd_choose(args)
    res = json.loads(ch.read_text())
    v = parse_spec(best(res, f"{args.arm} | {r1} | "))
    variant = f"px{v['px']} | tta{v['tta']}{v['tag']}"
    args.variants, args.scales = variant.replace(" | ", "-"), "standardise,l2"
    cmd_choose(args)
    res = json.loads(ch.read_text())
    chosen = best(res, f"{args.arm} | {r1} | {variant} | ").split(" | ", 1)[1]
    log(f"chosen tile readout (dev): {chosen}")
    args.specs = chosen
    cmd_mil(args)
    mil = {k: v for k, v in json.loads((args.work / "readout" / "mil_choice.json").read_text()).items()
           if k.startswith(chosen + " ||")}
    auc = lambda v: v["auc"][0]  # noqa: E731
    head = best({k: v for k, v in mil.items() if "{" in k}, chosen, auc).split(" || ")[1]
    c = best({k: v for k, v in mil.items() if "{" not in k}, chosen, auc).split(" || ")[1]
    log(f"chosen MIL head (dev): ABMIL {head}, mean pooling C={c}")
    (args.work / "readout" / "chosen.json").write_text(json.dumps({"tile": chosen, "abmil": json.loads(head),
                                                                   "mean_c": float(c)}, indent=1))
    args.spec, args.head, args.mean_c = chosen, head, float(c)
    cmd_final(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["embed", "choose", "mil", "final", "all"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--arms", default="dino-hed")
    ap.add_argument("--arm", default="dino-hed")
    ap.add_argument("--px", default="112,224")
    ap.add_argument("--tta", default="1,8")
    ap.add_argument("--stain-norm", choices=["none", "reinhard"], default="none")
    ap.add_argument("--specs", default="cls+mean | px112 | tta1 | standardise",
                    help="tile readouts for `mil`, ';'-separated 'readout | pxP | ttaT[-reinhard] | scaling'")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--names", default="dino-hed,random", help="`choose`: encoders to score")
    ap.add_argument("--variants", default="px112-tta1", help="`choose`: ';'-separated pxP-ttaT[-reinhard]")
    ap.add_argument("--readouts", default="all", help="`choose`: ';'-separated READOUTS names, or all")
    ap.add_argument("--scales", default="standardise", help="`choose`: standardise,l2")
    ap.add_argument("--spec", default="cls+mean | px112 | tta1 | standardise", help="`final`: the chosen tile readout")
    ap.add_argument("--head", default=json.dumps({"lr": 5e-4, "epochs": 60, "dropout": 0.25}),
                    help="`final`: the chosen ABMIL settings (JSON)")
    ap.add_argument("--mean-c", type=float, default=1.0, help="`final`: the chosen C of mean pooling")
    ap.add_argument("--final-seeds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="embed only the first N tiles (timing smoke runs)")
    args = ap.parse_args()
    {"embed": cmd_embed, "choose": cmd_choose, "mil": cmd_mil, "final": cmd_final, "all": cmd_all}[args.step](args)


if __name__ == "__main__":
    main()
