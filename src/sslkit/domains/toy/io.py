"""Synthetic labelled vectors (a warped Gaussian mixture) and `.npy` readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.core.errors import UserError


def make_vectors(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 points of `classes` clusters in an 8-d latent space, warped by a fixed random MLP."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(classes, 8))
    labels = rng.integers(0, classes, size=n)
    latent = centers[labels] + rng.normal(0, 0.7, size=(n, 8))
    w1 = rng.normal(0, 1 / np.sqrt(8), size=(8, 64))
    w2 = rng.normal(0, 1 / np.sqrt(64), size=(64, dim))
    x = np.tanh(latent @ w1) @ w2 + rng.normal(0, 0.05, size=(n, dim))
    return x.astype(np.float32), labels.astype(np.int64)


def read_vectors(path: Path) -> np.ndarray:
    """A (N, D) float array from `.npy`; NaN/Inf and wrong shapes are errors."""
    if path.suffix != ".npy":
        raise UserError(f"{path}: toy data must be a .npy array of shape (N, D)")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable .npy file ({exc}) — save it with numpy.save") from None
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"{path} has shape {x.shape}; expected (N, D) with N >= 2")
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise UserError(f"{path} has NaN/Inf values (first in row {bad}) — clean or impute them first")
    return x.astype(np.float32)


class TwoViews(Dataset):
    """Two noisy, feature-dropped views of each vector (augmentations drawn per item)."""

    def __init__(self, x: np.ndarray, noise: float, drop: float) -> None:
        self.x, self.noise, self.drop = torch.from_numpy(x), noise, drop

    def __len__(self) -> int:
        return len(self.x)

    def view(self, v: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand_like(v) >= self.drop).to(v.dtype)
        return (v + self.noise * torch.randn_like(v)) * keep

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.x[i]
        return self.view(v), self.view(v)
