"""`sslkit pathology evaluate RUN TILES --labels FOLDER|CSV`: frozen tile embeddings on labelled tiles.

A logistic-regression probe and a k-NN vote (k=20, cosine) on the run's frozen encoder, in the same table as two
baselines read through the same probes: the same ViT with random weights, and handcrafted colour/texture features
(features.py). Scores: balanced accuracy (the mean per-class recall, so a majority-class guess scores 1/C) and
macro-F1. Splits: with groups (--groups COLUMN of the label CSV, or --group-pattern on the tile paths, e.g. a
patient id) leave-one-group-out, so no patient is in train and test at once — the score is the mean over held-out
groups; without groups a stratified 80/20 split per seed. Writes RUN/evaluation.json and
RUN/plots/{confusion_matrix,embedding_map}.png.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from sslkit.core.cli_options import JsonOpt, RunArg, SeedsOpt
from sslkit.domains.pathology.readout import Readout, StainNormOpt, TokenOpt, TtaOpt, check_readout

TilesArg = Annotated[list[Path], typer.Argument(help="Labelled tiles: folders of tile images (class folders work), a "
                                                     "manifest .parquet from `tile`, or slides.", show_default=False)]
LabelsOpt = Annotated[Path, typer.Option("--labels", "-l", help="A folder of class subfolders (ROOT/<class>/tile.png), "
                                         "or a CSV with columns path,label (or slide,label: every tile of the slide).")]
GroupsOpt = Annotated[Optional[str], typer.Option("--groups", help="Column of the label CSV holding a group (patient, "
                                                  "fold): leave-one-group-out splits.")]
GroupPatternOpt = Annotated[Optional[str], typer.Option("--group-pattern", help="Regular expression on each tile's "
                                                        "path whose first group is its group, e.g. 'patient(\\d+)'.")]
LabelColumnOpt = Annotated[str, typer.Option("--label-column", help="Column of the label CSV holding the class.")]
KOpt = Annotated[int, typer.Option("--k", help="Neighbours of the k-NN probe.", min=1)]
MppOpt = Annotated[Optional[float], typer.Option("--slide-mpp", help="µm/px of slides that do not store it.", min=0.0)]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Tiles per encoder batch.", min=1)]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, or auto.")]


# ---- labels -----------------------------------------------------------------------------------------------------


def _slides(rows: Any) -> list[str]:
    """The `slide` value of every tile row (a DataFrame or a list of dicts)."""
    return [str(s) for s in (rows["slide"].tolist() if hasattr(rows, "columns") else [r["slide"] for r in rows])]


def _index_by_path(slides: list[str]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, s in enumerate(slides):
        index.setdefault(str(Path(s).resolve()), []).append(i)
    return index


def labels_from_folder(root: Path, slides: list[str]) -> dict[int, str]:
    """Tile index -> class, the name of the first folder below `root` on the tile's path."""
    root = root.resolve()
    out = {}
    for i, s in enumerate(slides):
        rel = Path(s).resolve()
        if rel.is_relative_to(root) and len(rel.relative_to(root).parts) >= 2:
            out[i] = rel.relative_to(root).parts[0]
    return out


def read_label_csv(csv: Path, keys: tuple[str, ...], label_col: str, group_col: str | None, what: str,
                   default_groups: tuple[str, ...] = ()) -> tuple[Any, str, str | None]:
    """The label CSV of `evaluate` (tiles) and `mil` (slides): (table, its key column — the first of `keys` present,
    group column or None). `default_groups` are tried when no --groups is given. Bad files and columns → UserError."""
    import pandas as pd

    from sslkit.core.errors import UserError

    try:
        df = pd.read_csv(csv)
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise UserError(f"--labels {csv} is not a readable CSV ({type(exc).__name__}) — give columns {what},label") from None
    key = next((c for c in keys if c in df.columns), None)
    if key is None or label_col not in df.columns:
        raise UserError(f"--labels {csv} has columns {list(df.columns)} — it needs {what} (or {keys[1]}) and {label_col} "
                        "(--label-column names another)")
    if group_col is None:
        group_col = next((c for c in default_groups if c in df.columns), None)
    elif group_col not in df.columns:
        raise UserError(f"--groups {group_col}: {csv} has no such column (columns: {', '.join(map(str, df.columns))})")
    return df, key, group_col


def labels_from_csv(csv: Path, slides: list[str], roots: list[Path], group_col: str | None,
                    label_col: str = "label") -> tuple[dict[int, str], dict[int, str]]:
    """(tile index -> label, tile index -> group) from a CSV of path,label (or slide,label) rows.

    A path is looked up as given, then relative to the CSV's folder, then relative to each TILES folder; a path that
    names no tile is an error (labels for tiles that do not exist).
    """
    import pandas as pd

    from sslkit.core.errors import UserError

    df, key, group_col = read_label_csv(csv, ("path", "slide", "image", "tile"), label_col, group_col, "path")
    index = _index_by_path(slides)
    bases = [Path.cwd(), csv.parent.resolve(), *[r.resolve() if r.is_dir() else r.resolve().parent for r in roots]]
    labels: dict[int, str] = {}
    groups: dict[int, str] = {}
    missing = []
    for _, row in df.iterrows():
        if pd.isna(row[label_col]):
            continue
        p = Path(str(row[key]))
        hits = next((index[str(c)] for c in ([p.resolve()] if p.is_absolute() else [(b / p).resolve() for b in bases])
                     if str(c) in index), None)
        if hits is None:
            missing.append(str(row[key]))
            continue
        for i in hits:
            labels[i] = str(row[label_col])
            if group_col is not None:
                groups[i] = str(row[group_col])
    if missing:
        raise UserError(f"--labels {csv} names {len(missing)} tile(s) that are not among the inputs, first {missing[0]!r} "
                        "— paths are read as given, relative to the CSV, or relative to the TILES folder")
    return labels, groups


def groups_from_pattern(pattern: str, slides: list[str], idx: np.ndarray) -> np.ndarray:
    from sslkit.core.errors import UserError

    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--group-pattern {pattern!r} is not a regular expression ({exc})") from None
    out = []
    for i in idx:
        m = rx.search(slides[i])
        if m is None:
            raise UserError(f"--group-pattern {pattern!r} does not match tile {slides[i]} — every tile needs a group")
        out.append(m.group(1) if m.groups() else m.group(0))
    return np.asarray(out)


# ---- probes -----------------------------------------------------------------------------------------------------


def splits(y: np.ndarray, groups: np.ndarray | None, seeds: int, test_size: float = 0.2) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: leave-one-group-out with groups, else one stratified split per seed."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedShuffleSplit

    from sslkit.core.errors import UserError

    if groups is not None:
        if len(np.unique(groups)) < 2:
            raise UserError("the tiles fall into one group — leave-one-group-out needs at least 2 groups")
        return list(LeaveOneGroupOut().split(y, y, groups))
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise UserError("a class has a single labelled tile; a stratified split needs at least 2 per class")
    return [next(StratifiedShuffleSplit(1, test_size=test_size, random_state=s).split(y, y)) for s in range(seeds)]


def probe_scores(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], k: int = 20
                 ) -> dict[str, dict[str, Any]]:
    """Linear (standardised logistic regression, balanced class weights) and k-NN (cosine) on every fold.

    -> {"linear": {"balanced_acc": [per fold], "macro_f1": [...], "pred": out-of-fold predictions}, "knn": {...}}.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    from sslkit.core.evaluation import logistic_probe

    out: dict[str, dict[str, Any]] = {n: {"balanced_acc": [], "macro_f1": [], "pred": np.full(len(y), -1)}
                                      for n in ("linear", "knn")}
    for train, test in folds:
        if len(np.unique(y[train])) < 2:
            continue                                    # a held-out group that takes a whole class: nothing to learn
        scaler = StandardScaler().fit(x[train])
        xtr, xte = scaler.transform(x[train]), scaler.transform(x[test])
        models = {"linear": logistic_probe(xtr, y[train], class_weight="balanced", standardize=False)[0],
                  "knn": KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine").fit(xtr, y[train])}
        for name, model in models.items():
            pred = model.predict(xte)
            out[name]["pred"][test] = pred
            out[name]["balanced_acc"].append(float(balanced_accuracy_score(y[test], pred)))
            out[name]["macro_f1"].append(float(f1_score(y[test], pred, average="macro", zero_division=0)))
    return out


def evaluate_features(features: dict[str, np.ndarray], y: np.ndarray, folds: list, k: int = 20) -> dict[str, Any]:
    """{"<features> <probe>": {"balanced_acc": (mean, std), "macro_f1": (mean, std), "per_split": {...}}}."""
    from sslkit.core.evaluation import mean_std

    results: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for fname, x in features.items():
        for probe, scores in probe_scores(x, y, folds, k).items():
            name = f"{fname} {probe}"
            results[name] = {"balanced_acc": mean_std(scores["balanced_acc"]), "macro_f1": mean_std(scores["macro_f1"]),
                             "per_split": {"balanced_acc": scores["balanced_acc"], "macro_f1": scores["macro_f1"]}}
            preds[name] = scores["pred"]
    results["_pred"] = preds
    return results


def confusion_plot(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix of out-of-fold predictions (-1: never predicted, left out)."""
    from sklearn.metrics import confusion_matrix

    from sslkit.core.plots import pyplot, save_figure

    keep = pred >= 0
    cm = confusion_matrix(y[keep], pred[keep], labels=np.arange(len(classes))).astype(float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1.0 + 0.6 * len(classes)), dpi=120)
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


# ---- the command --------------------------------------------------------------------------------------------------


def encode_all(run: Path, rows: Any, batch_size: int, device: str, readout: Readout | None = None
               ) -> tuple[dict[str, np.ndarray], int]:
    """{"ssl": (N, D), "random weights": (N, D), "handcrafted": (N, 82)} for the tile rows, in one pass (two with
    stain normalisation). The readout applies to the encoder and its random twin alike; handcrafted features read
    the tiles as they are."""
    import torch

    from sslkit.core.distributed import select_device
    from sslkit.core.export import load_encoder
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.features import handcrafted_features
    from sslkit.domains.pathology.model import random_twin, tile_batches
    from sslkit.domains.pathology.readout import TileReader, check_encoder

    dev = select_device(device)
    readout = readout or Readout()
    encoder = load_encoder(run)
    check_encoder(encoder, readout)
    tile_px = int(encoder.sslkit_config.get("extra", {}).get("tile_px") or encoder.img_size)
    twin = random_twin(encoder)
    encoder.to(dev), twin.to(dev)
    reader = TileReader(readout)
    if readout.stain_norm != "none":
        slides = rows["slide"] if hasattr(rows, "iloc") else [r["slide"] for r in rows]
        reader.prepare(tile_batches(TileDataset(rows, tile_px), batch_size), slides)
    out: dict[str, list] = {"ssl": [], "random weights": [], "handcrafted": []}
    done = 0
    for tiles in tile_batches(TileDataset(rows, tile_px), batch_size):
        out["ssl"].append(reader(encoder, tiles, dev, start=done))
        out["random weights"].append(reader(twin, tiles, dev, start=done))
        done += len(tiles)
        out["handcrafted"].append(torch.from_numpy(handcrafted_features(tiles.permute(0, 2, 3, 1).numpy())))
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}, tile_px


def command(run: RunArg, tiles: TilesArg, labels: LabelsOpt, groups: GroupsOpt = None,
            group_pattern: GroupPatternOpt = None, label_column: LabelColumnOpt = "label", seeds: SeedsOpt = 5, k: KOpt = 20, slide_mpp: MppOpt = None,
            batch_size: BatchOpt = 64, device: DeviceOpt = "auto", token: TokenOpt = None, tta: TtaOpt = 1,
            stain_norm: StainNormOpt = "none", json_out: JsonOpt = False) -> None:
    """Linear probe and k-NN on frozen tile embeddings (balanced accuracy, macro-F1), beside the same encoder with
    random weights and handcrafted colour/texture features; patient-grouped splits with --groups/--group-pattern."""
    from sslkit.core.cli_options import check_paths
    from sslkit.core.console import info, print_table, warn
    from sslkit.core.errors import UserError
    from sslkit.core.evaluation import format_mean_std
    from sslkit.core.files import atomic_write_text
    from sslkit.core.plots import embedding_map
    from sslkit.core.runs import Run
    from sslkit.domains.pathology.method import PathologyRecipe, read_tiles

    readout = check_readout(token, tta, stain_norm)
    loaded = Run.load(run, "pathology")
    cfg = PathologyRecipe.model_validate(loaded.recipe_dict)
    check_paths(list(tiles), "tiles")
    if not labels.exists():
        raise UserError(f"--labels {labels} does not exist — give a folder of class subfolders or a CSV path,label")
    if groups and group_pattern:
        raise UserError("--groups and --group-pattern both given — choose one way to group the tiles")
    if groups and labels.is_dir():
        raise UserError("--groups names a CSV column, but --labels is a folder — use --group-pattern on the paths")
    rows = read_tiles(list(tiles), cfg.data, slide_mpp, all_mpps=False)
    slides = _slides(rows)
    if labels.is_dir():
        lab, grp = labels_from_folder(labels, slides), {}
    else:
        lab, grp = labels_from_csv(labels, slides, list(tiles), groups, label_column)
    if not lab:
        raise UserError(f"no tile got a label from {labels} — class folders must hold the tiles (ROOT/<class>/x.png), "
                        "a CSV must name them")
    idx = np.asarray(sorted(lab))
    if len(idx) < len(slides):
        warn(f"{len(slides) - len(idx)} of {len(slides)} tiles have no label and are left out")
    classes = sorted(set(lab.values()))
    if len(classes) < 2:
        raise UserError(f"the labels hold one class ({classes[0]!r}); evaluation needs at least 2")
    y = np.asarray([classes.index(lab[i]) for i in idx])
    g = None
    if groups:
        g = np.asarray([grp[i] for i in idx])
    elif group_pattern:
        g = groups_from_pattern(group_pattern, slides, idx)
    folds = splits(y, g, seeds)
    sub = rows.iloc[idx].reset_index(drop=True) if hasattr(rows, "iloc") else [rows[i] for i in idx]
    info(f"embedding {len(idx)} labelled tiles ({len(classes)} classes) with the run's encoder, a random-weight twin "
         "and handcrafted features")
    feats, _ = encode_all(run, sub, batch_size, device, readout)
    results = evaluate_features(feats, y, folds, k)
    preds = results.pop("_pred")
    split_kind = (f"leave-one-group-out over {len(np.unique(g))} groups" if g is not None
                  else f"stratified 80/20, {seeds} seed(s)")
    table = [[name, format_mean_std(r["balanced_acc"]), format_mean_std(r["macro_f1"])] for name, r in results.items()]
    print_table(f"pathology evaluation: {len(idx)} tiles, {len(classes)} classes, {split_kind} (mean ± std over "
                "splits)", ["features / probe", "balanced acc", "macro F1"], table)
    confusion_plot(y, preds["ssl linear"], classes, loaded.path("plots", "confusion_matrix.png"),
                   f"{cfg.method} linear probe ({split_kind})")
    embedding_map(feats["ssl"], y, loaded.path("plots", "embedding_map.png"), title=f"{cfg.method} tile embeddings "
                  "(PCA) by class", names=classes)
    payload = {"run": str(run), "tiles": [str(t) for t in tiles], "labels": str(labels), "n_tiles": int(len(idx)),
               "classes": classes, "class_counts": np.bincount(y, minlength=len(classes)).tolist(), "split": split_kind,
               "readout": readout.record(cfg.model.pool),
               "groups": sorted(map(str, np.unique(g))) if g is not None else None, "k": k,
               "results": {n: {m: (list(v) if isinstance(v, tuple) else v) for m, v in r.items()}
                           for n, r in results.items()}}
    atomic_write_text(loaded.path("evaluation.json"), json.dumps(payload, indent=2))
    typer.echo(json.dumps(payload) if json_out else str(loaded.path("evaluation.json")))
