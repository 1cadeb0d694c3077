"""Bird's-eye-view pictures: points coloured by height, true boxes white, the compared labels red."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslkit.domains.lidar.boxes import Box, bev_corners


def render_bev(points: np.ndarray, path: Path, gt: list[Box] = (), pred: list[Box] = (), title: str = "",
               extent: tuple[float, float, float, float] | None = None) -> Path:
    """`pred` are whatever is compared with the truth (pseudo-labels or detections): the legend says "labels",
    as the CLI's title and --labels option do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslkit.core.files import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=110)
    if extent is None:
        extent = (-60.0, 60.0, -10.0, 28.0)
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
