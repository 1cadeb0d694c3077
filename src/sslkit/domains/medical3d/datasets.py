"""Training datasets over cached, memory-mapped volumes (one item = one crop or one cross-volume pair)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.domains.medical3d.transforms import channels_first, crop, flip_and_shift, matched_centers, random_center


class _Cached(Dataset):
    """Base: `entries` are (npy path, meta) from `VolumeCache`; arrays are opened lazily with mmap per process."""

    def __init__(self, entries: list[tuple[Path, dict]], roi: int, samples_per_volume: int) -> None:
        self.paths = [str(p) for p, _ in entries]
        self.metas = [m for _, m in entries]
        self.roi, self.spv = roi, samples_per_volume
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths) * self.spv

    def volume(self, v: int) -> np.ndarray:
        if v not in self._arrays:
            self._arrays[v] = np.load(self.paths[v], mmap_mode="r")
        return self._arrays[v]

    def __getstate__(self) -> dict[str, Any]:  # workers re-open their own memory maps
        return {**self.__dict__, "_arrays": {}}


class RandomCrops(_Cached):
    """Item -> {"image": (C, R, R, R)} random crop of volume `i // samples_per_volume` (SwinUNETR-SSL)."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = i // self.spv
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        vol = self.volume(v)
        return {"image": channels_first(crop(vol, random_center(vol.shape[-3:], self.roi, rng), self.roi))}


class CrossVolumePairs(_Cached):
    """Item -> {"query", "anchor"}: (C, R, R, R) crops at matching anatomical positions of two *different* volumes.

    The partner volume is drawn at random among the others (the same volume only when there is one).
    """

    def __init__(self, entries: list[tuple[Path, dict]], roi: int, samples_per_volume: int, jitter: float) -> None:
        super().__init__(entries, roi, samples_per_volume)
        self.jitter = jitter

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = i // self.spv
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        n = len(self.paths)
        b = a if n == 1 else (a + 1 + int(rng.integers(0, n - 1))) % n
        ca, cb = matched_centers(self.metas[a], self.metas[b], rng, self.jitter, self.roi)
        q = crop(self.volume(a), ca, self.roi)
        k = crop(self.volume(b), cb, self.roi)
        # the seed of this pair's masks (Alice draws them from it): an item masks alike on 1 or P processes
        seed = torch.tensor(int(rng.integers(0, 2**62)), dtype=torch.int64)
        return {"query": channels_first(q), "anchor": channels_first(k), "mask_seed": seed}


class LabelledCrops(_Cached):
    """Item -> {"image": (C, R, R, R), "label": (R, R, R) int64} for fine-tuning.

    Half of the crops are centred on a labelled (non-zero) voxel, half anywhere; `region` limits
    crops to a slab of X (used to hold out the other half of a single labelled volume); `lut` maps label
    values to class indices when they are not 0..K-1 already. `augment`:
    the augmentation of MONAI's 3-D segmentation tutorials (BraTS): a flip along each axis with
    probability 0.5, then intensities × U(0.9, 1.1) + U(-0.1, 0.1).
    """

    def __init__(self, entries: list[tuple[Path, dict]], roi: int, samples_per_volume: int,
                 regions: list[tuple[int, int]] | None = None, augment: bool = False,
                 lut: np.ndarray | None = None) -> None:
        super().__init__(entries, roi, samples_per_volume)
        self.regions, self.augment, self.lut = regions, augment, lut
        self._labels: dict[int, np.ndarray] = {}

    def label(self, v: int) -> np.ndarray:
        if v not in self._labels:
            self._labels[v] = np.load(self.metas[v]["label"], mmap_mode="r")
        return self._labels[v]

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_labels": {}}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = i // self.spv
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        vol, lab = self.volume(v), self.label(v)
        x0, x1 = self.regions[v] if self.regions else (0, lab.shape[0])
        half = self.roi / 2
        if rng.random() < 0.5:
            fg = np.argwhere(lab[x0:x1] > 0)
            center = fg[rng.integers(len(fg))] + [x0, 0, 0] if len(fg) else random_center(lab.shape, self.roi, rng)
        else:
            center = random_center(lab.shape, self.roi, rng)
        # keep the whole crop inside the training region
        lo, hi = x0 + half, x1 - half
        center = np.asarray(center, float)
        center[0] = np.clip(center[0], lo, hi) if hi > lo else (x0 + x1) / 2
        image = crop(vol, center, self.roi)
        label = crop(lab, center, self.roi)
        if self.lut is not None:      # label values (e.g. BraTS 0, 1, 2, 4) -> classes 0..K-1
            label = self.lut[label.astype(np.int64)].astype(np.float32)
        if self.regions:  # voxels outside the training region carry no label (ignored by the loss)
            c0 = int(np.round(center[0] - half))
            xs = np.arange(c0, c0 + self.roi)
            label[(xs < x0) | (xs >= x1)] = -1
        if self.augment:
            image, label = flip_and_shift(image, label, rng)
        return {"image": channels_first(image), "label": torch.from_numpy(label.astype(np.int64))}
