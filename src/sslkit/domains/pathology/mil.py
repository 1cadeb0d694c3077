"""`sslkit pathology mil RUN BAGS --labels CSV`: slide-level labels from frozen tile embeddings.

Gated-attention MIL (ABMIL; Ilse, Tomczak & Welling 2018, arXiv:1802.04712): tiles h_i -> attention
a_i = softmax_i(wᵀ(tanh(V h_i) ⊙ sigmoid(U h_i))), bag vector Σ a_i h_i, linear classifier. Against mean pooling
(the bag's mean embedding through a logistic regression), and — when BAGS are tiles rather than a tiles.parquet —
against the same ABMIL on a random-weight twin of the encoder. AUC and accuracy of out-of-fold predictions, per seed.
A bag is a slide (its tiles), or a folder of tile images. Heat maps of attention over slide thumbnails go to
RUN/mil/attention/.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from sslkit.core.cli_options import JsonOpt, RunArg, SeedsOpt
from sslkit.domains.pathology.readout import Readout, StainNormOpt, TokenOpt, TtaOpt, check_readout

BagsArg = Annotated[list[Path], typer.Argument(help="A tiles.parquet from `embed`, or what `embed` reads (slides, a "
                                                    "manifest, folders of tile images: one folder = one bag).",
                                               show_default=False)]
LabelsOpt = Annotated[Path, typer.Option("--labels", "-l", help="CSV with columns slide,label (slide: path as given, "
                                         "or file name); optional fold/group column for grouped folds.")]
GroupsOpt = Annotated[Optional[str], typer.Option("--groups", help="Label-CSV column of groups/folds (default: a "
                                                  "column named fold or group when present).")]
MppOpt = Annotated[Optional[float], typer.Option("--slide-mpp", help="µm/px of slides that do not store it.", min=0.0)]
LabelColumnOpt = Annotated[str, typer.Option("--label-column", help="Column of the label CSV holding the class.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="ABMIL training epochs per fold.", min=1)]


# The head's defaults: Ilse et al.'s Adam settings with a 32-unit hidden layer, dropout 0.5 and 100 epochs — the best
# of 10 heads on GlaS's development folds (was 128 units, dropout 0.25, 60 epochs: dev AUC 0.864 -> 0.906, held-out
# fold 3 0.730 -> 0.783; benchmarks/pathology_heads.py, docs/pathology.md "The MIL head").
EPOCHS, HIDDEN, DROPOUT = 100, 32, 0.5


def train_abmil(bags: list[np.ndarray], y: np.ndarray, n_classes: int, seed: int, epochs: int = EPOCHS,
                lr: float = 5e-4, weight_decay: float = 1e-4, batch_bags: int = 8, dropout: float = DROPOUT,
                hidden: int = HIDDEN, instance_dropout: float = 0.0, uniform_start: bool = False) -> Any:
    """A GatedAttentionMIL trained with Adam on class-balanced cross-entropy (Ilse et al.'s optimiser settings),
    mini-batches of padded bags; eval mode. `instance_dropout`: each training step keeps every tile of a bag with
    probability 1 - p (at least one), a bag-level augmentation. `uniform_start`: the attention's output layer starts
    at zero, so the head starts as mean pooling of its hidden features and moves away only as the labels ask."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny matrices: one thread is ~10x faster than several fighting over 2 busy cores
    try:
        return _train(bags, y, n_classes, seed, epochs, lr, weight_decay, batch_bags, dropout, hidden,
                      instance_dropout, uniform_start)
    finally:
        torch.set_num_threads(threads)


def _train(bags: list[np.ndarray], y: np.ndarray, n_classes: int, seed: int, epochs: int, lr: float,
           weight_decay: float, batch_bags: int, dropout: float, hidden: int, instance_dropout: float,
           uniform_start: bool) -> Any:
    import torch
    from torch import nn

    from sslkit.domains.pathology.model import GatedAttentionMIL, pad_bags

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GatedAttentionMIL(bags[0].shape[1], n_classes, hidden=hidden, dropout=dropout)
    if uniform_start:
        nn.init.zeros_(model.attn_w.weight)
        nn.init.zeros_(model.attn_w.bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    weight = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / n_classes)
    yt = torch.as_tensor(y)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(bags), generator=g).tolist()
        for start in range(0, len(order), batch_bags):
            idx = order[start:start + batch_bags]
            batch = [bags[i] for i in idx]
            if instance_dropout > 0:
                batch = [_drop_instances(b, instance_dropout, rng) for b in batch]
            x, mask = pad_bags(batch)
            logits, _ = model(x, mask)
            loss = nn.functional.cross_entropy(logits, yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _drop_instances(bag: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """The tiles of `bag` kept with probability 1 - p each; at least one (drawn at random) stays."""
    keep = rng.random(len(bag)) >= p
    if not keep.any():
        keep[rng.integers(len(bag))] = True
    return bag[keep]


def predict_abmil(model: Any, bags: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(class probabilities (B, C), attention per bag) of a trained GatedAttentionMIL."""
    import torch

    from sslkit.domains.pathology.model import pad_bags

    x, mask = pad_bags(bags)
    with torch.no_grad():
        logits, a = model(x, mask)
    return torch.softmax(logits, 1).numpy(), [a[i, : len(b)].numpy() for i, b in enumerate(bags)]


def _standardise(bags: list[np.ndarray], train: np.ndarray) -> list[np.ndarray]:
    """Tile features scaled by the training bags' tile mean and std (no test statistics leak in)."""
    tiles = np.concatenate([bags[i] for i in train])
    mu, sd = tiles.mean(0), tiles.std(0) + 1e-6
    return [((b - mu) / sd).astype(np.float32) for b in bags]


def bag_folds(y: np.ndarray, groups: np.ndarray | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-group-out with groups; else stratified k-fold (k = min(5, smallest class)) shuffled by seed."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    from sslkit.core.errors import UserError

    if groups is not None:
        return list(LeaveOneGroupOut().split(y, y, groups))
    k = min(5, int(np.bincount(y).min()))
    if k < 2:
        raise UserError("a class has a single labelled bag; cross-validation needs at least 2 bags per class")
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y))


def scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """AUC (binary: of the positive class; multiclass: macro one-vs-rest) and accuracy."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    ok = ~np.isnan(proba).any(1)
    y, proba = y[ok], proba[ok]
    if len(np.unique(y)) < 2:
        auc = math.nan
    elif proba.shape[1] == 2:
        auc = float(roc_auc_score(y, proba[:, 1]))
    else:
        auc = float(roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(proba.shape[1])))
    return {"auc": auc, "accuracy": float(accuracy_score(y, proba.argmax(1)))}


def cross_validate(bags: list[np.ndarray], y: np.ndarray, groups: np.ndarray | None, seeds: int, n_classes: int,
                   epochs: int = EPOCHS) -> dict[str, dict[str, list[float]]]:
    """{"abmil": {"auc": [per seed], "accuracy": [...]}, "mean pooling": {...}}: out-of-fold predictions per seed."""
    from sslkit.core.evaluation import logistic_probe

    out: dict[str, dict[str, list[float]]] = {"abmil": {"auc": [], "accuracy": []},
                                              "mean pooling": {"auc": [], "accuracy": []}}
    for seed in range(seeds):
        p_att = np.full((len(y), n_classes), np.nan)
        p_mean = np.full((len(y), n_classes), np.nan)
        for fold, (train, test) in enumerate(bag_folds(y, groups, seed)):
            if len(np.unique(y[train])) < n_classes:
                continue                    # a held-out group holding a whole class: no classifier for it
            std = _standardise(bags, train)
            model = train_abmil([std[i] for i in train], y[train], n_classes, seed * 1000 + fold, epochs)
            p_att[test] = predict_abmil(model, [std[i] for i in test])[0]
            means = np.stack([b.mean(0) for b in bags])
            clf, _ = logistic_probe(means[train], y[train], seed=seed, class_weight="balanced")
            p_mean[test] = clf.predict_proba(means[test])
        for name, p in (("abmil", p_att), ("mean pooling", p_mean)):
            for metric, v in scores(y, p).items():
                out[name][metric].append(v)
    return out


# ---- bags and labels --------------------------------------------------------------------------------------------


def bag_key(row: Any) -> str:
    """A tile's bag: its slide, or for a tile image from a folder (no mpp, whole image) the folder holding it."""
    mpp = row.get("mpp") if hasattr(row, "get") else None
    is_tile_image = mpp is None or (isinstance(mpp, float) and math.isnan(mpp))
    return str(Path(str(row["slide"])).parent) if is_tile_image else str(row["slide"])


def match_labels(csv: Path, keys: list[str], group_col: str | None, label_col: str = "label"
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """(bag key -> label, bag key -> group) from the label CSV; a slide it names that is not among the bags -> exit 2."""
    from sslkit.core.errors import UserError
    from sslkit.domains.pathology.evaluate import read_label_csv

    df, col, group_col = read_label_csv(csv, ("slide", "bag", "path", "image"), label_col, group_col, "slide",
                                        default_groups=("fold", "group"))
    by_path = {str(Path(k).resolve()): k for k in keys}
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(Path(k).name, []).append(k)
    labels, groups, unknown = {}, {}, []
    for _, row in df.iterrows():
        name = str(row[col])
        key = name if name in keys else None
        for base in (Path.cwd(), csv.parent):
            key = key or by_path.get(str((base / name).resolve()))
        if key is None and len(by_name.get(Path(name).name, [])) == 1:
            key = by_name[Path(name).name][0]
        if key is None:
            unknown.append(name)
            continue
        labels[key] = str(row[label_col])
        if group_col is not None:
            groups[key] = str(row[group_col])
    if unknown:
        raise UserError(f"--labels {csv} names {len(unknown)} slide(s) that are not among the bags, first {unknown[0]!r}"
                        f" — the bags are {len(keys)} slides such as {keys[0]!r}")
    return labels, groups


def load_bags(run: Path, inputs: list[Path], mpp: float | None, random_baseline: bool,
              readout: Readout | None = None) -> tuple[Any, dict[str, np.ndarray], dict[str, Any] | None]:
    """(tile rows, {"ssl": (N, D)[, "random weights": (N, D)]}, the readout used) from a tiles.parquet (its readout
    as `embed` recorded it, None if it predates that) or from tiles to embed (with `readout`)."""
    import pandas as pd

    from sslkit.core.errors import UserError

    if len(inputs) == 1 and inputs[0].suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(inputs[0]).names
        except Exception as exc:  # pyarrow raises many types for non-Parquet files
            raise UserError(f"{inputs[0]} is not a readable Parquet file ({type(exc).__name__})") from None
        if "embedding" in names:
            if readout is not None and not readout.is_default:
                raise UserError(f"{inputs[0]} holds embeddings already — --token/--tta/--stain-norm apply when "
                                "embedding: give them to `sslkit pathology embed`, or give mil the tiles")
            df = pd.read_parquet(inputs[0])
            if "slide" not in df.columns:
                raise UserError(f"{inputs[0]} has no slide column — give the tiles.parquet `embed` writes")
            meta = (pq.read_schema(inputs[0]).metadata or {}).get(b"sslkit.metadata")
            used = json.loads(meta).get("readout") if meta else None
            return (df.drop(columns=["embedding"]), {"ssl": np.stack(df["embedding"].to_numpy()).astype(np.float64)},
                    used)
    from sslkit.core.runs import Run
    from sslkit.domains.pathology.evaluate import encode_all
    from sslkit.domains.pathology.method import PathologyRecipe, read_tiles

    cfg = PathologyRecipe.model_validate(Run.load(run, "pathology").recipe_dict)
    rows = read_tiles(list(inputs), cfg.data, mpp, all_mpps=False)
    if len(rows) == 0:
        raise UserError(f"no tiles in {', '.join(map(str, inputs))} — lower data.min_tissue or check the inputs")
    readout = readout or Readout()
    feats, _ = encode_all(run, rows, 64, "auto", readout)
    keep = ("ssl", "random weights") if random_baseline else ("ssl",)
    return ((rows if hasattr(rows, "iloc") else pd.DataFrame(rows)), {k: feats[k] for k in keep},
            readout.record(cfg.model.pool))


def attention_map(slide: str, rows: Any, attention: np.ndarray, path: Path) -> Path | None:
    """Thumbnail of `slide` with each tile tinted by its attention (normalised to the bag's maximum)."""
    from sslkit.core.plots import pyplot, save_figure
    from sslkit.domains.pathology.slides import open_slide

    try:
        s = open_slide(Path(slide), mpp=1.0)
    except Exception:  # noqa: BLE001 - a heat map is optional; an unreadable slide was already reported while tiling
        return None
    with s:
        thumb = s.thumbnail(768)
        scale = thumb.shape[1] / s.dimensions[0]
        downs = list(s.level_downsamples)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6 * thumb.shape[0] / thumb.shape[1] + 0.4), dpi=120)
    ax.imshow(thumb)
    cmap = plt.get_cmap("inferno")
    a = attention / max(float(attention.max()), 1e-12)
    for (_, r), v in zip(rows.iterrows(), a):
        side = float(r["read_px"]) * downs[int(r["level"])] * scale
        ax.add_patch(plt.Rectangle((float(r["x"]) * scale, float(r["y"]) * scale), side, side, color=cmap(v), alpha=0.45,
                                   lw=0))
    ax.set_title(f"ABMIL attention: {Path(slide).name}", fontsize=8)
    ax.axis("off")
    return save_figure(fig, path)


def command(run: RunArg, bags: BagsArg, labels: LabelsOpt, groups: GroupsOpt = None,
            label_column: LabelColumnOpt = "label", seeds: SeedsOpt = 5,
            epochs: EpochsOpt = EPOCHS, slide_mpp: MppOpt = None, token: TokenOpt = None, tta: TtaOpt = 1,
            stain_norm: StainNormOpt = "none", json_out: JsonOpt = False) -> None:
    """Gated-attention MIL (ABMIL) vs mean pooling on frozen tile embeddings for slide-level labels: AUC and
    accuracy over seeds (grouped folds with a fold/group column), attention heat maps over the thumbnails."""
    from sslkit.core.cli_options import check_paths
    from sslkit.core.console import info, print_table, warn
    from sslkit.core.errors import UserError
    from sslkit.core.evaluation import format_mean_std, mean_std
    from sslkit.core.files import atomic_write_text
    from sslkit.core.runs import Run

    readout = check_readout(token, tta, stain_norm)
    loaded = Run.load(run, "pathology")
    check_paths(list(bags), "bags")
    if not labels.is_file():
        raise UserError(f"--labels {labels} is not a file — give a CSV with columns slide,label")
    rows, feats, used = load_bags(run, list(bags), slide_mpp, random_baseline=True, readout=readout)
    keys = [bag_key(r) for _, r in rows.iterrows()]
    uniq = list(dict.fromkeys(keys))
    lab, grp = match_labels(labels, uniq, groups, label_column)
    bag_ids = [k for k in uniq if k in lab]
    if len(bag_ids) < len(uniq):
        warn(f"{len(uniq) - len(bag_ids)} of {len(uniq)} bags have no label and are left out")
    classes = sorted({lab[k] for k in bag_ids})
    if len(classes) < 2:
        raise UserError(f"the labels hold {len(classes)} class(es) among the bags; MIL needs at least 2")
    y = np.asarray([classes.index(lab[k]) for k in bag_ids])
    g = np.asarray([grp[k] for k in bag_ids]) if grp else None
    if g is not None and len(np.unique(g)) < 2:
        raise UserError("every bag is in the same fold/group — grouped folds need at least 2")
    members = {k: [] for k in bag_ids}
    for i, k in enumerate(keys):
        if k in members:
            members[k].append(i)
    info(f"MIL: {len(bag_ids)} bags ({', '.join(f'{c}: {int((y == j).sum())}' for j, c in enumerate(classes))}), "
         f"{sum(map(len, members.values()))} tiles, "
         + (f"leave-one-group-out over {len(np.unique(g))} groups" if g is not None else "stratified k-fold"))
    results: dict[str, dict[str, Any]] = {}
    for fname, x in feats.items():
        cv = cross_validate([x[members[k]] for k in bag_ids], y, g, seeds, len(classes), epochs)
        for model, sc in cv.items():
            if fname != "ssl" and model != "abmil":
                continue
            results[f"{model} ({fname})"] = {m: mean_std(v) for m, v in sc.items()} | {"per_seed": sc}
    print_table(f"pathology MIL: {len(bag_ids)} bags, {seeds} seed(s), out-of-fold predictions",
                ["model (features)", "AUC", "accuracy"],
                [[n, format_mean_std(r["auc"]), format_mean_std(r["accuracy"])] for n, r in results.items()])
    maps = _heat_maps(loaded, rows, keys, feats["ssl"], members, bag_ids, y, len(classes))
    payload = {"run": str(run), "bags": [str(b) for b in bags], "labels": str(labels), "classes": classes,
               "n_bags": len(bag_ids), "seeds": seeds, "epochs": epochs,
               "head": {"hidden": HIDDEN, "dropout": DROPOUT, "lr": 5e-4, "weight_decay": 1e-4},
               "split": "leave-one-group-out" if g is not None else "stratified k-fold", "readout": used,
               "results": {n: {m: (list(v) if isinstance(v, tuple) else v) for m, v in r.items()} for n, r in results.items()},
               "attention_maps": [str(p) for p in maps]}
    atomic_write_text(loaded.path("mil.json"), json.dumps(payload, indent=2))
    typer.echo(json.dumps(payload) if json_out else str(loaded.path("mil.json")))


def _heat_maps(run: Any, rows: Any, keys: list[str], x: np.ndarray, members: dict[str, list[int]], bag_ids: list[str],
               y: np.ndarray, n_classes: int, limit: int = 50) -> list[Path]:
    """ABMIL fitted on every labelled bag; its attention drawn over the thumbnails of the first `limit` slides."""
    if not {"x", "y", "level", "read_px"} <= set(rows.columns):
        return []
    slides = [k for k in bag_ids if Path(k).is_file()][:limit]
    if not slides:
        return []
    bags = [x[members[k]] for k in bag_ids]
    std = _standardise(bags, np.arange(len(bags)))
    model = train_abmil(std, y, n_classes, seed=0)
    _, att = predict_abmil(model, [std[bag_ids.index(k)] for k in slides])
    out = []
    for k, a in zip(slides, att):
        path = attention_map(k, rows.iloc[members[k]], a, run.path("mil", "attention", f"{Path(k).stem}.png"))
        if path is not None:
            out.append(path)
    return out
