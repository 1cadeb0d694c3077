"""Training datasets over cached, memory-mapped volumes (one item = one crop or one cross-volume pair)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.domains.medical3d.transforms import (augmented_crop, channels_first, crop, intensity_augment,
                                                 matched_centers, random_center)


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

    Foreground-balanced sampling as MONAI's RandCropByPosNegLabeld: a share `pos_fraction` of the crops is centred on
    a labelled (non-zero) voxel, the rest on a background voxel, each centre then moved so the crop lies inside the
    volume where it fits. `regions` limits crops to a slab of X (used to hold out the other half of a single labelled
    volume; label voxels outside it are -1, ignored by the loss); `lut` maps label values to class indices when they
    are not 0..K-1 already. `aug` (an `AugmentConfig`, or None for none): `transforms.augmented_crop`.
    `unlabelled` (cached volumes without labels): each item also carries "unlabelled", a (C, R, R, R) crop of one of
    them drawn at random (flipped and intensity-jittered by `aug`), for mean-teacher fine-tuning.
    """

    def __init__(self, entries: list[tuple[Path, dict]], roi: int, samples_per_volume: int,
                 regions: list[tuple[int, int]] | None = None, aug: Any = None,
                 lut: np.ndarray | None = None, pos_fraction: float = 0.5,
                 unlabelled: list[tuple[Path, dict]] | None = None) -> None:
        super().__init__(entries, roi, samples_per_volume)
        self.regions, self.aug, self.lut, self.pos_fraction = regions, aug, lut, pos_fraction
        self._labels: dict[int, np.ndarray] = {}
        self._foreground: dict[int, np.ndarray] = {}
        self.unlabelled = RandomCrops(unlabelled, roi, 1) if unlabelled else None

    def label(self, v: int) -> np.ndarray:
        if v not in self._labels:
            self._labels[v] = np.load(self.metas[v]["label"], mmap_mode="r")
        return self._labels[v]

    def foreground(self, v: int) -> np.ndarray:
        """Flat indices (int32/int64) of the labelled voxels of volume v inside its x region, found once."""
        if v not in self._foreground:
            lab = self.label(v)
            x0, x1 = self.regions[v] if self.regions else (0, lab.shape[0])
            inside = np.zeros(lab.shape, dtype=bool)
            inside[x0:x1] = np.asarray(lab[x0:x1]) > 0
            flat = np.flatnonzero(inside)
            self._foreground[v] = flat.astype(np.int32) if inside.size < 2**31 else flat
        return self._foreground[v]

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_labels": {}, "_foreground": {}}

    def centre(self, v: int, rng: np.random.Generator) -> np.ndarray:
        """A crop centre: on a labelled voxel with probability `pos_fraction` (when the volume has one), else on a
        background voxel (10 draws, then wherever the last landed), moved inward so the crop fits in the volume and
        its x region."""
        lab = self.label(v)
        x0, x1 = self.regions[v] if self.regions else (0, lab.shape[0])
        fg = self.foreground(v)
        if len(fg) and rng.random() < self.pos_fraction:
            centre = np.array(np.unravel_index(int(fg[rng.integers(len(fg))]), lab.shape), float)
        else:
            for _ in range(10):
                centre = np.array([rng.integers(x0, x1), *(rng.integers(0, n) for n in lab.shape[1:])], float)
                if lab[tuple(centre.astype(int))] <= 0:
                    break
        half = self.roi / 2
        for a, (lo, hi) in enumerate([(x0, x1), (0, lab.shape[1]), (0, lab.shape[2])]):
            centre[a] = np.clip(centre[a], lo + half, hi - half) if hi - lo > self.roi else (lo + hi) / 2
        return centre

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = i // self.spv
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        region = self.regions[v] if self.regions else None
        image, label = augmented_crop(self.volume(v), self.label(v), self.centre(v, rng), self.roi, rng, self.aug,
                                      region)
        if self.lut is not None:      # label values (e.g. BraTS 0, 1, 2, 4) -> classes 0..K-1; -1 stays ignored
            label = np.where(label < 0, -1, self.lut[np.clip(label, 0, None).astype(np.int64)])
        item = {"image": channels_first(image), "label": torch.from_numpy(label.astype(np.int64))}
        if self.unlabelled is not None:
            u = self.unlabelled.volume(int(rng.integers(len(self.unlabelled.paths))))
            crop_u = crop(u, random_center(u.shape[-3:], self.roi, rng), self.roi)
            if self.aug is not None:
                crop_u = intensity_augment(np.ascontiguousarray(crop_u), rng, self.aug)
            item["unlabelled"] = channels_first(np.ascontiguousarray(crop_u, dtype=np.float32))
        return item
