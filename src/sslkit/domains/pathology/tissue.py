"""Tissue detection on a slide thumbnail, and the tissue fraction of each tile.

The mask is computed at a thumbnail's resolution (a few µm per pixel), where it is cheap and where stains look
like stains rather than like single nuclei:
1. tissue = saturation above Otsu's threshold, kept within [SAT_FLOOR, SAT_CAP] (a blank slide must not split its
   noise in two, and an all-tissue image must not split pale from dark tissue);
2. pen marks removed by colour (blue and green ink by hue, black ink by value) together with very dark pixels;
3. objects and holes smaller than `min_area_um2` removed/filled (scikit-image), so dust is not tissue and a
   lumen inside a gland stays tissue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAT_FLOOR = 0.07         # saturation below which nothing is tissue, whatever Otsu says (white glass and its noise)
SAT_CAP = 0.10           # saturation above which everything is stained: on an all-tissue image (GlaS) Otsu would
                         # otherwise split pale mucin from dark stroma
BLUE_HUE = (190, 235)    # degrees: blue/cyan ink; haematoxylin's purple sits above ~250°
GREEN_HUE = (70, 180)    # degrees: green ink; H&E has no green
PEN_SAT = 0.3            # ink is saturated; faint bluish tissue is not ink
BLACK_VALUE = 0.25       # max(R, G, B)/255 below this: black ink, folds burnt dark, slide edges


@dataclass
class TissueMask:
    """A boolean mask (h, w) over a thumbnail; `scale` level-0 pixels per mask pixel (x and y)."""

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float               # the saturation threshold used
    pen_fraction: float            # share of thumbnail pixels removed as pen marks or black

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in 0..1 of an RGB uint8 (h, w, 3) image."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    return np.where(delta > 0, hue, 0.0), sat, mx


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like blue, green or black marker ink (or are nearly black): (h, w) bool."""
    hue, sat, val = _hsv(rgb)
    blue = (hue >= BLUE_HUE[0]) & (hue <= BLUE_HUE[1]) & (sat > PEN_SAT)
    green = (hue >= GREEN_HUE[0]) & (hue <= GREEN_HUE[1]) & (sat > PEN_SAT)
    return blue | green | (val < BLACK_VALUE)


def tissue_mask(thumb: np.ndarray, level0_size: tuple[int, int], mpp: float | None,
                min_area_um2: float = 1000.0) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail (h, w, 3) of a slide whose level 0 is `level0_size` (W, H) pixels.

    `mpp` (level-0 µm/px) turns `min_area_um2` into mask pixels; without it, 0.1% of the thumbnail is used.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    h, w = thumb.shape[:2]
    scale = (level0_size[0] / w, level0_size[1] / h)
    _, sat, _ = _hsv(thumb)
    pen = pen_mask(thumb)
    candidates = sat[~pen]
    threshold = SAT_FLOOR
    if candidates.size and float(candidates.max() - candidates.min()) > 1e-3:
        threshold = float(np.clip(threshold_otsu(candidates), SAT_FLOOR, SAT_CAP))
    mask = (sat > threshold) & ~pen
    if mpp is not None and np.isfinite(mpp):
        min_px = min_area_um2 / ((mpp * scale[0]) * (mpp * scale[1]))
    else:
        min_px = 1e-3 * h * w
    min_px = max(int(round(min_px)), 1)
    if min_px > 1:
        try:                     # scikit-image >= 0.26 names the size max_size (removed: size <= max_size)
            mask = remove_small_holes(remove_small_objects(mask, max_size=min_px), max_size=min_px)
        except TypeError:        # older scikit-image: min_size / area_threshold (removed: size < that)
            mask = remove_small_holes(remove_small_objects(mask, min_size=min_px + 1), area_threshold=min_px + 1)
    return TissueMask(mask=mask, scale=scale, threshold=threshold, pen_fraction=float(pen.mean()))


def tile_fractions(tm: TissueMask, xs: np.ndarray, ys: np.ndarray, size: float) -> np.ndarray:
    """Tissue fraction (0..1) of each square tile with level-0 top-left (xs, ys) and side `size` level-0 pixels.

    A summed-area table over the mask; each tile covers the mask pixels its box overlaps (at least one).
    """
    m = tm.mask.astype(np.float64)
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    sx, sy = tm.scale
    x0 = np.clip(np.floor(np.asarray(xs) / sx), 0, w - 1).astype(np.int64)
    y0 = np.clip(np.floor(np.asarray(ys) / sy), 0, h - 1).astype(np.int64)
    x1 = np.clip(np.ceil((np.asarray(xs) + size) / sx), 1, w).astype(np.int64)
    y1 = np.clip(np.ceil((np.asarray(ys) + size) / sy), 1, h).astype(np.int64)
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return (total / ((x1 - x0) * (y1 - y0))).astype(np.float32)
