"""Crops, anatomically matched cross-volume pairs, masks, rotations and inpainting cutout.

Arrays are (X, Y, Z) — (C, X, Y, Z) with several channels — in RAS after preprocessing; batched tensors are
(B, C, X, Y, Z).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def crop(vol: np.ndarray, center: np.ndarray, roi: int) -> np.ndarray:
    """(roi, roi, roi) float32 crop centred at `center` — (C, roi, roi, roi) of a (C, X, Y, Z) volume; parts outside
    the volume are zero-padded.

    Works on a memory-mapped array: only the crop's voxels are read and copied.
    A volume smaller than the ROI after resampling is padded (documented behaviour).
    """
    out = np.zeros(vol.shape[:-3] + (roi, roi, roi), dtype=np.float32)
    lo = np.round(np.asarray(center, float) - roi / 2).astype(int)
    src: list[slice] = [slice(None)] * (vol.ndim - 3)
    dst: list[slice] = list(src)
    for a, n in zip(lo, vol.shape[-3:]):
        s0, s1 = max(a, 0), min(a + roi, n)
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - a, s1 - a))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def channels_first(arr: np.ndarray) -> Tensor:
    """An (X, Y, Z) array as a (1, X, Y, Z) tensor; a (C, X, Y, Z) one of a several-channel volume as it is."""
    return torch.from_numpy(arr if arr.ndim == 4 else arr[None])


def random_center(shape: tuple[int, ...], roi: int, rng: np.random.Generator) -> np.ndarray:
    """A crop centre drawn uniformly so the crop stays inside the volume where it fits."""
    half = roi / 2
    return np.array([rng.uniform(half, n - half) if n > roi else n / 2 for n in shape])


def matched_centers(meta_a: dict, meta_b: dict, rng: np.random.Generator, jitter: float, roi: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Anatomically corresponding crop centres in two different volumes.

    Each volume's foreground is summarised by its centre of mass c and per-axis spread s
    (a moment-based affine frame in RAS, computed once at preprocessing). A point
    drawn in A's frame, z ~ N(0, 1) clipped to ±1.5, lands at c_A + z·s_A; its match is
    c_B + z·s_B plus a small jitter (a fraction of the ROI), so both crops show the
    same normalised anatomical position.
    """
    z = np.clip(rng.normal(0.0, 1.0, 3), -1.5, 1.5)
    ca, sa = np.asarray(meta_a["com"]), np.asarray(meta_a["std"])
    cb, sb = np.asarray(meta_b["com"]), np.asarray(meta_b["std"])
    return ca + z * sa, cb + z * sb + rng.uniform(-jitter, jitter, 3) * roi


def flip_and_shift(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                   scale: float = 0.1, shift: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation augmentation of a (R, R, R) crop and its label: a flip along each axis with
    probability 0.5 (the same for both), then intensity × U(1 - scale, 1 + scale) + U(-shift, shift)."""
    axes = tuple(a for a in range(3) if rng.random() < 0.5)
    if axes:   # image (R, R, R) or (C, R, R, R): its spatial axes are the last three
        image, label = np.flip(image, tuple(a + image.ndim - 3 for a in axes)), np.flip(label, axes)
    factor, offset = rng.uniform(1 - scale, 1 + scale), rng.uniform(-shift, shift)
    return np.ascontiguousarray(image * np.float32(factor) + np.float32(offset)), np.ascontiguousarray(label)


def mask_cells(roi: int, patch: int, columns: bool) -> int:
    """How many cells a `column_mask` draws from: the (X, Y) grid with columns, else the 3-D grid."""
    g = max(1, roi // patch)
    return g * g if columns else g ** 3


def seeded_noise(seeds: Tensor, draws: int, cells: int, device: torch.device) -> Tensor:
    """(draws·B, cells) uniform noise, rows [draw 0 of every item, draw 1 of every item, …], each item's from its own
    seed: the masks of an item then do not depend on which process or batch it lands in (so P processes mask as one
    process does)."""
    rows = [torch.rand(draws, cells, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    return torch.stack(rows, 1).reshape(draws * len(rows), cells).to(device)


def column_mask(batch: int, roi: int, patch: int, ratio: float, columns: bool, device: torch.device,
                noise: Tensor | None = None) -> Tensor:
    """SimMIM mask (B, 1, X, Y, Z) of 0/1 floats: `ratio` of the `patch`-voxel cells are 1 (masked).

    columns=True draws the mask on the (X, Y) grid and repeats it along Z (Alice's code), else on the 3-D grid.
    `noise` (B, cells), e.g. from `seeded_noise`, replaces the draw from the global random stream.
    """
    g = max(1, roi // patch)
    cells = mask_cells(roi, patch, columns)
    n_mask = int(round(ratio * cells))
    order = (torch.rand(batch, cells, device=device) if noise is None else noise).argsort(dim=1)
    flat = torch.zeros(batch, cells, device=device)
    flat.scatter_(1, order[:, :n_mask], 1.0)
    if columns:
        m = flat.view(batch, 1, g, g, 1).expand(batch, 1, g, g, g)
    else:
        m = flat.view(batch, 1, g, g, g)
    m = m.repeat_interleave(patch, 2).repeat_interleave(patch, 3).repeat_interleave(patch, 4)
    pad = [0, roi - m.shape[4], 0, roi - m.shape[3], 0, roi - m.shape[2]]  # cells that do not fit stay visible
    return torch.nn.functional.pad(m, pad)


def cell_normalise(x: Tensor, patch: int, eps: float = 1e-6) -> Tensor:
    """Standardise every `patch`³ cell of x (B, C, X, Y, Z) on its own mean and std (MAE's norm_pix_loss target).

    Voxels in a margin that does not fill a whole cell keep their values (the mask leaves them visible anyway)."""
    b, c, *size = x.shape
    g = [s // patch for s in size]
    core = x[:, :, : g[0] * patch, : g[1] * patch, : g[2] * patch]
    v = core.reshape(b, c, g[0], patch, g[1], patch, g[2], patch)
    mean = v.mean(dim=(3, 5, 7), keepdim=True)
    std = v.var(dim=(3, 5, 7), keepdim=True, unbiased=False).add(eps).sqrt()
    out = x.clone()
    out[:, :, : g[0] * patch, : g[1] * patch, : g[2] * patch] = ((v - mean) / std).reshape_as(core)
    return out


def rotate(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate each crop (B, C, X, Y, Z) by k·90° in the X-Y plane, k uniform in 0..3; returns (rotated, k)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    out = torch.stack([torch.rot90(x[i], int(k[i]), dims=(1, 2)) for i in range(x.shape[0])])
    return out, k


def inpainting_cutout(x: Tensor, max_frac: float = 0.3, max_side: float = 0.25) -> Tensor:
    """SwinUNETR-SSL cutout on (B, C, X, Y, Z): boxes of min-max-normalised noise cover U(0, max_frac) of the
    voxels (each side ≤ max_side of the crop), then boxes copied from another sample of the batch are pasted;
    a box covers every channel."""
    out = x.clone()
    b, _, *size = x.shape
    for i in range(b):
        target = float(torch.rand(())) * max_frac
        covered = torch.zeros(size, dtype=torch.bool, device=x.device)
        tries = 0
        while covered.float().mean() < target and tries < 50:
            sl = (slice(None), *_random_box(size, max_side))
            noise = torch.randn(out[i][sl].shape, device=x.device)
            noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-6)
            out[i][sl] = noise
            covered[sl[1:]] = True
            tries += 1
        if b > 1:
            other = (i + 1 + int(torch.randint(0, b - 1, ()))) % b
            sl = (slice(None), *_random_box(size, max_side))
            out[i][sl] = x[other][sl]
    return out


def _random_box(size: list[int], max_side: float) -> tuple[slice, ...]:
    box = []
    for n in size:
        side = int(torch.randint(max(1, n // 16), max(2, int(n * max_side)) + 1, ()))
        start = int(torch.randint(0, max(1, n - side + 1), ()))
        box.append(slice(start, start + side))
    return tuple(box)
