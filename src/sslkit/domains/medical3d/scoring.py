"""Scoring segmentations: Dice and HD95 per class and region, their tables and evaluation.json payload, and the
overlay picture of image, reference and prediction."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


def score_report(per_volume: dict[str, list[float]], hd95: dict[str, list[float]], names: list[str],
                 title: str, shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the Dice and HD95 tables (a row per volume, named by `shown_as` where given, a column per class or region
    `names`, with means) and return their part of evaluation.json."""
    from sslkit.core.console import print_table

    with warnings.catch_warnings():      # a class missing from every volume: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.array(list(per_volume.values()), dtype=float), axis=0)
        hd_mean = np.nanmean(np.array(list(hd95.values()), dtype=float), axis=0)
        for name, table, avg, fmt in (("Dice", per_volume, mean, "{:.3f}"), ("HD95 (mm)", hd95, hd_mean, "{:.1f}")):
            rows = [[(shown_as or {}).get(vid, vid), *[fmt.format(x) for x in v], fmt.format(np.nanmean(v))]
                    for vid, v in table.items()]
            rows.append(["mean", *[fmt.format(x) for x in avg], fmt.format(np.nanmean(avg))])
            print_table(f"{title} {name}", ["volume", *names, "mean"], rows)
        return {"dice_per_volume": per_volume, "dice_per_class": mean.tolist(), "mean_dice": float(np.nanmean(mean)),
                "hd95_mm_per_volume": hd95, "hd95_mm_per_class": hd_mean.tolist()}


def score_volume(pred: np.ndarray, label: np.ndarray, classes: int, regions: dict[str, list[int]],
                 spacing: list[float], region: np.ndarray | None = None) -> tuple[list[float], ...]:
    """(Dice per class, HD95 per class, Dice per region, HD95 per region) of one class map against its label map;
    a region is the union of its classes (`region_classes`)."""
    from sslkit.domains.medical3d.segmentation import dice_per_class, hd95_per_class

    dice, hd = dice_per_class(pred, label, classes, region), hd95_per_class(pred, label, classes, spacing, region)
    r_dice, r_hd = [], []
    for members in regions.values():
        p, t = np.isin(pred, members).astype(np.int64), np.isin(label, members).astype(np.int64)
        r_dice += dice_per_class(p, t, 2, region)
        r_hd += hd95_per_class(p, t, 2, spacing, region)
    return dice, hd, r_dice, r_hd


def scores_payload(scores: dict[str, tuple[list[float], ...]], names: list[str], values: list[int],
                   regions: dict[str, list[int]], title: str, shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the class (and region) tables of per-volume `score_volume` results (rows named as in `score_report`);
    the evaluation.json payload."""
    payload = score_report({k: v[0] for k, v in scores.items()}, {k: v[1] for k, v in scores.items()}, names, title,
                           shown_as)
    payload.update(classes=len(values), class_names=names, label_values=values)
    if regions:
        payload["regions"] = {"members": regions, **score_report(
            {k: v[2] for k, v in scores.items()}, {k: v[3] for k, v in scores.items()}, list(regions),
            f"{title} (regions)", shown_as)}
    return payload


def busiest_slices(label: np.ndarray) -> tuple[int, int]:
    """(axial z, coronal y) through the most labelled voxels of an (X, Y, Z) label volume; the middle if none.

    Middle slices miss small or off-centre structures (the synthetic spheres), leaving the picture blank."""
    fg = label > 0
    if not fg.any():
        return label.shape[2] // 2, label.shape[1] // 2
    return int(fg.sum(axis=(0, 1)).argmax()), int(fg.sum(axis=(0, 2)).argmax())


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, x0: int, x1: int, path: Path,
            split: str = "held-out") -> Path:
    """Axial and coronal slices through the scored part, x0:x1 (where it has the most labels): image (its first
    channel), reference, prediction; `split` ("held-out", "test") names that part in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = image[0] if image.ndim == 4 else image
    xs = slice(x0, x1)
    z, y = busiest_slices(label[xs])
    views = [("axial", lambda a: a[xs, :, z].T), ("coronal", lambda a: a[xs, y, :].T)]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6), dpi=110)
    for r, (name, cut) in enumerate(views):
        for c, (title, arr, cmap) in enumerate([("image", image, "gray"), ("reference", label, "viridis"),
                                                 ("prediction", pred, "viridis")]):
            ax = axes[r, c]
            ax.imshow(cut(image), cmap="gray", origin="lower")
            if c:
                ax.imshow(np.ma.masked_equal(cut(arr), 0), cmap=cmap, alpha=0.6, origin="lower", vmin=0,
                          vmax=max(int(label.max()), 1))
            ax.set_title(f"{title} ({name}, {split})")
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
