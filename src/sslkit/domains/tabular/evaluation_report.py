"""What `tabular evaluate` needs around `downstream.py`: labelled feature sets, the table rows, the plots."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from sslkit.core.console import warn
from sslkit.core.errors import UserError
from sslkit.domains.tabular.downstream import (FeatureSet, check_target, embedding_features, infer_task, ple_features,
                                               raw_features)
from sslkit.domains.tabular.inference import embed_rows, encode_table
from sslkit.domains.tabular.io import table_columns
from sslkit.domains.tabular.preprocess import Preprocessor


def _present(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind == "f":
        return np.isfinite(y)
    if y.dtype.kind == "O":
        return np.array([v is not None and v == v for v in y], dtype=bool)
    return np.ones(len(y), dtype=bool)


PLE_MAX_COLUMNS, PLE_MAX_VALUES = 8192, 100_000_000   # raw-ple's width and size caps (float32: 400 MB)


def ple_size(encoder: nn.Module, n_rows: int) -> tuple[int, bool]:
    """raw-ple's numeric width (columns × bins; 0 without binned tokens) and whether it fits the caps."""
    tokenizer = getattr(encoder, "tokenizer", None)
    width = getattr(tokenizer, "n_num", 0) * getattr(tokenizer, "num_bins", 0)
    return width, 0 < width <= PLE_MAX_COLUMNS and width * n_rows <= PLE_MAX_VALUES


def load_labelled(run: Any, encoder: nn.Module, data: Path, target: str, task: str | None, drop: Sequence[str],
                  classes: np.ndarray | None = None,
                  ple: bool | None = None) -> tuple[dict[str, FeatureSet], np.ndarray, str, Any, int]:
    """Feature sets {raw, embeddings, raw+embeddings, and raw-ple for an encoder with piecewise-linear numeric
    tokens}, labels, task, class names, rows without a label. `ple` forces raw-ple on or off (a --test table
    follows the training table); None decides from `ple_size`, with a warning when the set would be too big."""
    pre = Preprocessor.load(run.path("preprocess.json"))
    columns = table_columns(data)
    if target not in columns:
        raise UserError(f"--target {target}: no such column in {data} — columns are: {', '.join(columns)}")
    if target in pre.features:
        raise UserError(f"--target {target} was a feature during pretraining, so the embeddings contain it — "
                        f"pretrain again with --target {shlex.quote(target)}")
    table = encode_table(pre, data, keep=[target], drop=drop)
    y_raw = table.columns[target]
    ok = _present(y_raw)
    if not ok.any():
        raise UserError(f"target '{target}' in {data} has no values — choose another --target")
    task = task or infer_task(y_raw[ok])
    if classes is None:
        y = check_target(y_raw[ok], task, target)
        if task == "classification":
            classes = np.unique(y_raw[ok].astype(str) if y_raw.dtype.kind == "O" else y_raw[ok])
    else:
        vals = y_raw[ok].astype(str) if y_raw.dtype.kind == "O" else y_raw[ok]
        if task == "classification":
            unseen = sorted(set(np.unique(vals).tolist()) - set(classes.tolist()))
            if unseen:
                raise UserError(f"--test: target '{target}' has classes not in the training table: {unseen[:5]} — "
                                "use a test table with the same classes")
            y = np.searchsorted(classes, vals)
        else:
            y = vals.astype(np.float64)
    raw = raw_features(table.num[ok], table.miss[ok], table.cat[ok], pre.cardinalities, [c.has_missing for c in pre.numeric])
    sub = type(table)(table.num[ok], table.miss[ok], table.cat[ok], {})
    emb = embedding_features(embed_rows(encoder, sub))
    sets = {"raw": raw}
    width, fits = ple_size(encoder, int(ok.sum()))
    if ple is None:
        ple = fits
        if width and not fits:
            warn(f"raw-ple baseline skipped: {width:,} piecewise-linear columns × {int(ok.sum()):,} rows is over "
                 f"{PLE_MAX_COLUMNS:,} columns or {PLE_MAX_VALUES:,} values — the table compares raw vs embeddings only")
    if ple:   # the embeddings' own numeric encoding, as a raw baseline
        sets["raw-ple"] = ple_features(table.num[ok], table.miss[ok], table.cat[ok], pre.cardinalities,
                                       [c.has_missing for c in pre.numeric], encoder.tokenizer.edges.cpu().numpy())
    sets.update({"embeddings": emb, "raw+embeddings": FeatureSet.concat(raw, emb)})
    return sets, y, task, classes, int((~ok).sum())


def result_rows(results: dict[str, dict[str, Any]], task: str) -> tuple[list[str], list[list[str]]]:
    """The table's cells: mean ± std over seeds, or the bare value for one seed (its std of 0 measures nothing)."""
    metrics = ["accuracy", "auc"] if task == "classification" else ["rmse", "r2"]
    metrics = [m for m in metrics if any(m in e for e in results.values())]
    rows = []
    for name, entry in results.items():
        feats, model = name.split(" / ")
        one = len(entry["per_seed"]) == 1
        rows.append([feats, model, *("-" if m not in entry else f"{entry[m][0]:.4f}" if one else
                                     f"{entry[m][0]:.4f} ± {entry[m][1]:.4f}" for m in metrics)])
    return ["features", "model", *metrics], rows


def labelled_rows(results: dict[str, dict[str, Any]]) -> str:
    """How many labelled training rows each seed's models were fitted on ("120", or "118–121" if seeds differ)."""
    counts = sorted({s["train_rows"] for e in results.values() for s in e["settings"]})
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"


def comparison_note(results: dict[str, dict[str, Any]], task: str) -> str | None:
    """The line under the table that reads it: the MLP on embeddings against the raw MLP (what pretraining should
    beat) and against HistGradientBoosting on raw features (the strong baseline on tables); means over seeds.
    None when the models needed were not run."""
    metric, sign = ("accuracy", 1.0) if task == "classification" else ("rmse", -1.0)
    keys = ("embeddings / mlp", "raw / mlp", "raw / hgb")
    if not all(metric in results.get(k, {}) for k in keys):
        return None
    emb, mlp, hgb = (results[k][metric][0] for k in keys)
    scores = f"{metric} {emb:.4f} vs raw MLP {mlp:.4f} and raw HistGradientBoosting {hgb:.4f}"
    if sign * (emb - mlp) <= 0:
        return f"the MLP on embeddings does not beat the MLP on raw features ({scores})"
    if sign * (emb - hgb) <= 0:
        return ("the MLP on embeddings beats the MLP on raw features but not HistGradientBoosting on them, which is "
                f"common on tables ({scores})")
    return f"the MLP on embeddings beats both the MLP and HistGradientBoosting on raw features ({scores})"


def evaluation_plots(run: Any, z: np.ndarray, y: np.ndarray, results: dict[str, dict[str, Any]], task: str,
                     target: str, label_fraction: float = 1.0, classes: Sequence[Any] | None = None) -> None:
    """plots/embedding_map.png (PCA of embeddings coloured by the target: its classes, or its quartiles) and
    plots/evaluation.png (scores)."""
    from sslkit.core.plots import pyplot, embedding_map

    if task == "classification":
        colour, names = y, classes
    else:
        colour, names = np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75])), [f"{target} quartile {q}" for q in range(1, 5)]
    embedding_map(z[:20000], colour[:20000], run.path("plots", "embedding_map.png"),
                  title=f"{run.recipe_dict['method']} embeddings (PCA), colour = {target}", names=names)
    metric = "accuracy" if task == "classification" else "rmse"
    plt = pyplot()
    feats = list(dict.fromkeys(k.split(" / ")[0] for k in results))
    models = list(dict.fromkeys(k.split(" / ")[1] for k in results))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    width = 0.8 / len(feats)
    for i, f in enumerate(feats):
        means = [results[f"{f} / {m}"][metric][0] if f"{f} / {m}" in results else np.nan for m in models]
        stds = [results[f"{f} / {m}"][metric][1] if f"{f} / {m}" in results else 0.0 for m in models]
        ax.bar(np.arange(len(models)) + i * width, means, width, yerr=stds, label=f, capsize=2)
    allv = [results[k][metric][0] for k in results]
    lo, hi = min(allv), max(allv)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3) - 0.01, hi + 0.1 * (hi - lo + 1e-3) + 0.01)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    ax.set_ylabel(metric)
    labels = f", {label_fraction:g} of the labels" if label_fraction < 1 else ""
    ax.set_title(f"downstream {metric} on '{target}' (mean ± std over seeds{labels})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = run.path("plots", "evaluation.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
