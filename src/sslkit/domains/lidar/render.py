"""Bird's-eye-view pictures: points coloured by height, true boxes white, the compared labels red; the view fits
the frame (every point and box) unless an extent is given."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import Box, bev_corners

Extent = tuple[float, float, float, float]      # x min, x max, y min, y max (m)


def parse_range(text: str) -> Extent:
    """--range XMIN,XMAX,YMIN,YMAX (metres) as floats; anything else is one line naming the expected form."""
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 4 or not all(math.isfinite(x) for x in v) or v[0] >= v[1] or v[2] >= v[3]:
        raise UserError(f"--range {text!r} is not XMIN,XMAX,YMIN,YMAX in metres with XMIN < XMAX and YMIN < YMAX — "
                        "e.g. --range=-40,40,-20,20")
    return v  # type: ignore[return-value]


def fit_extent(points: np.ndarray, boxes: list[Box] = (), margin: float = 2.0) -> Extent:
    """The smallest view holding every point and box corner, `margin` m wider on each side and rounded out to whole
    metres: a real scan (KITTI: up to ~80 m all round) is never cut off, a short-range one is not shrunk to a dot."""
    xy = [points[:, :2]] + [bev_corners(b.array())[:, :2] for b in boxes if b.cls != "DontCare"]
    xy = np.concatenate([a for a in xy if len(a)]) if any(len(a) for a in xy) else np.zeros((1, 2))
    lo, hi = np.floor(xy.min(0) - margin), np.ceil(xy.max(0) + margin)
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def bev_title(name: str, gt: list[Box] | None, pred: list[Box] | None) -> str:
    """"NAME: points by height" plus only the boxes drawn: "truth white (N)" when true labels were given, "labels red
    (N)" when labels to compare were given; N counts the boxes drawn (DontCare regions are not)."""
    def count(boxes: list[Box]) -> str:
        n = sum(b.cls != "DontCare" for b in boxes)
        return f"{n} box{'' if n == 1 else 'es'}"

    parts = ["points by height"] + ([f"truth white ({count(gt)})"] if gt is not None else []) + \
        ([f"labels red ({count(pred)})"] if pred is not None else [])
    return f"{name}: {', '.join(parts)}"


def render_bev(points: np.ndarray, path: Path, gt: list[Box] = (), pred: list[Box] = (), title: str = "",
               extent: Extent | None = None) -> Path:
    """`pred` are whatever is compared with the truth (pseudo-labels or detections): the legend says "labels",
    as the CLI's title and --labels option do. `extent` None: the view fits the data (`fit_extent`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslkit.core.files import atomic_write_bytes

    if extent is None:
        extent = fit_extent(points, [*gt, *pred])
    dx, dy = extent[1] - extent[0], extent[3] - extent[2]
    height = min(12.0, max(3.0, 12.0 * dy / dx)) + 1.0            # the figure about the view's shape
    fig, ax = plt.subplots(figsize=(12.0, height), dpi=110)
    m = (points[:, 0] > extent[0]) & (points[:, 0] < extent[1]) & (points[:, 1] > extent[2]) & (points[:, 1] < extent[3])
    p = points[m]
    lo, hi = np.percentile(p[:, 2], [2, 98]) if len(p) else (0.0, 1.0)
    ax.scatter(p[:, 0], p[:, 1], s=0.5, c=p[:, 2], cmap="turbo", vmin=lo, vmax=hi, linewidths=0, alpha=0.8)
    for boxes, colour, label in ((gt, "white", "truth"), (pred, "red", "labels")):
        first = True
        for b in boxes:
            if b.cls == "DontCare":
                continue
            c = bev_corners(b.array())
            c = np.vstack([c, c[:1]])
            ax.plot(c[:, 0], c[:, 1], color=colour, lw=1.2, label=label if first else None)
            first = False
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_facecolor("black")
    if gt or pred:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "bird's-eye view")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
