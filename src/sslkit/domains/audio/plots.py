"""Audio pictures besides the core's loss curve: one spectrogram with its mask and reconstruction, and a 2-D map of
clip embeddings coloured by label."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def masked_spectrogram(view: dict[str, Any], path: Path, title: str = "", frame_shift_ms: float = 10.0) -> Path:
    """Three stacked panels from `method.visualise(batch)`: the input fbank (T, M), the same with what the method
    masked or altered shown grey, and the method's reconstruction filled in where it was masked."""
    from sslkit.core.plots import pyplot

    plt = pyplot()
    fbank = np.asarray(view["fbank"], dtype=np.float32)
    mask = np.asarray(view["mask"], dtype=bool)
    recon = np.asarray(view["recon"], dtype=np.float32)
    valid = np.asarray(view.get("valid", np.ones(fbank.shape[0], bool)), dtype=bool)
    t = int(valid.sum()) if valid.any() else fbank.shape[0]      # draw the real frames only, not the padding
    fbank, mask, recon = fbank[:t], mask[:t], recon[:t]
    lo, hi = np.percentile(fbank, [1, 99]) if fbank.size else (0.0, 1.0)
    masked = np.ma.masked_where(mask, fbank)
    filled = np.where(mask, recon, fbank)
    extent = (0, t * frame_shift_ms / 1000.0, 0, fbank.shape[1])
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), dpi=110, sharex=True)
    cmap = plt.get_cmap("magma").with_extremes(bad="#9a9a9a")
    panels = [(fbank, "input log-mel fbank (normalised)"),
              (masked, f"masked / altered for the objective (grey, {100 * mask.mean():.0f}% of the cells)"),
              (filled, "reconstruction in the masked cells, input elsewhere")]
    for ax, (img, name) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi, extent=extent,
                       interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=list(axes), shrink=0.6)
    fig.suptitle(title or "masked spectrogram", fontsize=10)
    fig.set_layout_engine("none")
    return save_figure_plain(fig, path)


def save_figure_plain(fig: Any, path: Path) -> Path:
    """save_figure without tight_layout (a shared colourbar breaks it)."""
    from sslkit.core.plots import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    pyplot().close(fig)
    return path


def label_map(vectors: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """2-D PCA map of clip embeddings (core.plots.embedding_map) coloured by label (a legend up to 10 labels)."""
    from sslkit.core.plots import embedding_map

    names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    return embedding_map(np.asarray(vectors, dtype=np.float64), codes.astype(np.int64), path, title=title,
                         names=list(names))
