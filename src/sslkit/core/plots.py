"""Pictures every run gets: the loss curve (and an embedding map for domains that want one)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating folders) and close a matplotlib figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    pyplot().close(fig)
    return path


def loss_curve(records: list[dict[str, Any]], path: Path, title: str = "", terms: tuple[str, ...] = ()) -> Path | None:
    """Loss (and learning rate on a twin axis) against optimizer step; None when nothing was logged.

    `terms`: names of logged loss terms (a method's `loss_terms`); those present get a second panel, each
    as logged (before its weight), on a log scale when they are positive and over a decade apart, so a
    total that rises can be traced to the term that rises.
    """
    points = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    if not points:
        return None
    plt = pyplot()
    steps, losses = map(np.asarray, zip(*points))
    curves = {t: [(r["step"], r[t]) for r in records if t in r and "step" in r] for t in terms}
    curves = {t: c for t, c in curves.items() if c}
    if curves:
        fig, (ax, ax_terms) = plt.subplots(2, 1, figsize=(6, 5.5), dpi=120, sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, color="tab:blue", lw=1.5, label="loss", marker="o" if len(steps) < 3 else None, ms=4)
    ax.set_ylabel("loss", color="tab:blue")
    lrs = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", lw=1, ls="--")
        ax2.set_ylim(bottom=0)         # from 0: a constant rate is a flat line, not one magnified into a range
        ax2.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    if curves:
        for t, c in curves.items():     # a term logged once (a head that starts late) is a marker, not an empty line
            ax_terms.plot(*zip(*c), lw=1.3, label=t, marker="o" if len(c) < 3 else None, ms=4)
        values = [v for c in curves.values() for _, v in c]
        if min(values) > 0 and max(values) / min(values) > 20:   # over a decade apart
            ax_terms.set_yscale("log")
        ax_terms.set_ylabel("loss terms (unweighted)")
        ax_terms.legend(fontsize=8, loc="best")
        ax_terms.grid(alpha=0.3)
        ax_terms.set_xlabel("optimizer step")
    else:
        ax.set_xlabel("optimizer step")
    return save_figure(fig, path)


def embedding_map(vectors: np.ndarray, labels: np.ndarray | None, path: Path, title: str = "",
                  names: Sequence[str] | None = None) -> Path:
    """2-D PCA scatter of embeddings (N, D), coloured by label when given.

    Up to 10 integer classes get one tab10 colour each and a legend (`names[k]` for class k, else k);
    more classes, or continuous values, are drawn on the colour map without one.
    """
    plt = pyplot()
    x = vectors - vectors.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x[: min(len(x), 20000)], full_matrices=False)
    xy = x @ vt[:2].T
    if xy.shape[1] < 2:  # one-dimensional embeddings: a strip along the x axis
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], color="tab:blue", s=4, alpha=0.7)
    elif np.issubdtype(np.asarray(labels).dtype, np.integer) and len(np.unique(labels)) <= 10:
        keys, idx = np.unique(labels, return_inverse=True)
        colours = np.asarray(plt.get_cmap("tab10").colors)
        order = np.random.default_rng(0).permutation(len(xy))   # mixed drawing order: no class hides another
        ax.scatter(xy[order, 0], xy[order, 1], color=colours[idx[order]], s=4, alpha=0.7)
        for i, k in enumerate(keys):                             # legend entries only
            ax.scatter([], [], color=colours[i], s=12,
                       label=str(names[k]) if names is not None and 0 <= k < len(names) else str(k))
        ax.legend(fontsize=7, loc="best")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], c=labels, s=4, cmap="tab10", alpha=0.7)
    ax.set_title(title or "embeddings (PCA)")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
