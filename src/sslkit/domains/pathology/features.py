"""Handcrafted colour and texture features: the baseline a learned tile encoder has to beat.

Per tile (uint8 RGB): haematoxylin/eosin/DAB concentration histograms and moments (colour deconvolution,
scikit-image's rgb2hed), uniform local binary patterns (LBP, Ojala et al. 2002) and grey-level co-occurrence
statistics (GLCM, Haralick 1973) of the grey image. 3·(16 + 4) + 10 + 2·6 = 82 numbers per tile.
"""
from __future__ import annotations

import numpy as np

HIST_BINS = 16
HED_RANGES = ((0.0, 0.25), (0.0, 0.25), (0.0, 0.1))   # stain concentrations of H&E tiles lie well inside these
LBP_P, LBP_R = 8, 1.0
GLCM_DISTANCES = (1, 3)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def tile_features(tile: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float (82,) colour and texture descriptor."""
    from scipy.stats import skew
    from skimage.color import rgb2gray, rgb2hed
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    hed = rgb2hed(tile)
    colour = []
    for c, (lo, hi) in enumerate(HED_RANGES):
        v = hed[..., c].ravel()
        hist, _ = np.histogram(np.clip(v, lo, hi), bins=HIST_BINS, range=(lo, hi))
        colour += list(hist / max(v.size, 1))
        colour += [v.mean(), v.std(), float(skew(v)) if v.std() > 0 else 0.0, np.percentile(v, 90)]
    grey = (rgb2gray(tile) * 255).astype(np.uint8)
    lbp = local_binary_pattern(grey, LBP_P, LBP_R, method="uniform")
    lbp_hist, _ = np.histogram(lbp, bins=LBP_P + 2, range=(0, LBP_P + 2))
    glcm = graycomatrix(grey // 8, GLCM_DISTANCES, GLCM_ANGLES, levels=32, symmetric=True, normed=True)
    texture = [graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]          # (distances,) per property
    return np.concatenate([np.asarray(colour), lbp_hist / lbp.size, np.concatenate(texture)]).astype(np.float64)


def handcrafted_features(tiles: np.ndarray | list) -> np.ndarray:
    """Tiles uint8 (N, H, W, 3) (or a list of (H, W, 3)) -> (N, 82)."""
    feats = [tile_features(np.asarray(t)) for t in tiles]
    out = np.stack(feats) if feats else np.zeros((0, 82))
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
