"""Scoring segmentations: Dice and HD95 per class and region, their tables and evaluation.json payload, and the
overlay picture of image, reference and prediction."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


METRICS = (("dice", "Dice", "{:.3f}"), ("jaccard", "Jaccard", "{:.3f}"), ("hd95", "HD95 (mm)", "{:.1f}"),
           ("asd", "ASD (mm)", "{:.2f}"))


def _finite_stats(values: list[float]) -> dict[str, Any]:
    """{"mean", "std" (population), "volumes"} over the finite values; NaN mean and std when there is none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    nan = float("nan")
    return {"mean": float(v.mean()) if v.size else nan, "std": float(v.std()) if v.size else nan, "volumes": int(v.size)}


def _mean_std(values: list[float], fmt: str) -> str:
    """"mean ± std" over the finite values, "nan" when there is none."""
    st = _finite_stats(values)
    return f"{fmt.format(st['mean'])} ± {fmt.format(st['std'])}" if st["volumes"] else "nan"


def score_report(scores: dict[str, dict[str, list[float]]], names: list[str], title: str,
                 shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the tables of per-volume `scores` ({volume: {"dice", "hd95", "asd": [per class]}}) and return their part
    of evaluation.json. Table 1: a row per volume (named by `shown_as` where given) with Dice, Jaccard, HD95 and ASD
    (the mean over the foreground classes `names`), then mean ± std over the volumes. With several classes, table 2:
    a row per class, each metric's mean ± std over the volumes. Jaccard is Dice / (2 − Dice), exact for hard masks."""
    from sslkit.core.console import print_table

    per = {m: {vid: list(map(float, s[m])) for vid, s in scores.items()} for m in ("dice", "hd95", "asd")}
    per["jaccard"] = {vid: [d / (2 - d) if np.isfinite(d) else float("nan") for d in v] for vid, v in per["dice"].items()}
    with warnings.catch_warnings():      # a class missing from every volume: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        by_volume = {m: {vid: float(np.nanmean(v)) for vid, v in per[m].items()} for m, _, _ in METRICS}
        per_class = {m: np.nanmean(np.array(list(per[m].values()), dtype=float), axis=0) for m, _, _ in METRICS}
        rows = [[(shown_as or {}).get(vid, vid), *[fmt.format(by_volume[m][vid]) for m, _, fmt in METRICS]]
                for vid in scores]
        rows.append([f"mean ± std ({len(scores)})", *[_mean_std(list(by_volume[m].values()), fmt)
                                                      for m, _, fmt in METRICS]])
        label = names[0] if len(names) == 1 else "mean of classes"
        print_table(f"{title} Dice, Jaccard, HD95 (mm), ASD (mm) — {label}", ["volume", *[h for _, h, _ in METRICS]],
                    rows)
        if len(names) > 1:
            print_table(f"{title} per class (mean ± std over volumes)", ["class", *[h for _, h, _ in METRICS]],
                        [[n, *[_mean_std([v[k] for v in per[m].values()], fmt) for m, _, fmt in METRICS]]
                         for k, n in enumerate(names)])
        summary = {m if m in ("dice", "jaccard") else f"{m}_mm": _finite_stats(list(by_volume[m].values()))
                   for m, _, _ in METRICS}
        return {"dice_per_volume": per["dice"], "dice_per_class": per_class["dice"].tolist(),
                "mean_dice": float(np.nanmean(per_class["dice"])), "hd95_mm_per_volume": per["hd95"],
                "hd95_mm_per_class": per_class["hd95"].tolist(), "jaccard_per_volume": per["jaccard"],
                "jaccard_per_class": per_class["jaccard"].tolist(), "asd_mm_per_volume": per["asd"],
                "asd_mm_per_class": per_class["asd"].tolist(), "summary": summary}


def score_volume(pred: np.ndarray, label: np.ndarray, classes: int, regions: dict[str, list[int]],
                 spacing: list[float], region: np.ndarray | None = None) -> dict[str, Any]:
    """{"dice", "hd95", "asd": [per class 1..K-1], "regions": {"dice", "hd95", "asd": [per region]}} of one class map
    against its label map on a grid of `spacing` mm; a region is the union of its classes (`region_classes`)."""
    from sslkit.domains.medical3d.segmentation import dice_per_class, surface_distances

    hd, asd = surface_distances(pred, label, classes, spacing, region)
    out: dict[str, Any] = {"dice": dice_per_class(pred, label, classes, region), "hd95": hd, "asd": asd}
    by_region: dict[str, list[float]] = {"dice": [], "hd95": [], "asd": []}
    for members in regions.values():
        p, t = np.isin(pred, members).astype(np.int64), np.isin(label, members).astype(np.int64)
        r_hd, r_asd = surface_distances(p, t, 2, spacing, region)
        by_region["dice"] += dice_per_class(p, t, 2, region)
        by_region["hd95"] += r_hd
        by_region["asd"] += r_asd
    out["regions"] = by_region
    return out


def scores_payload(scores: dict[str, dict[str, Any]], names: list[str], values: list[int],
                   regions: dict[str, list[int]], title: str, shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the class (and region) tables of per-volume `score_volume` results (rows named as in `score_report`);
    the evaluation.json payload."""
    payload = score_report(scores, names, title, shown_as)
    payload.update(classes=len(values), class_names=names, label_values=values)
    if regions:
        payload["regions"] = {"members": regions, **score_report(
            {k: v["regions"] for k, v in scores.items()}, list(regions), f"{title} (regions)", shown_as)}
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
