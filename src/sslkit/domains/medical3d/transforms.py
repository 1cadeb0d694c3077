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


def spatial_matrix(rng: np.random.Generator, aug) -> tuple[np.ndarray, bool]:  # noqa: ANN001
    """(M (3, 3), affine drawn): output offset o from the crop centre samples the volume at centre + M @ o.

    M = flips · 90° turn in X-Y · (with probability `aug.affine`) a small rotation about each axis ÷ a zoom factor.
    Without the affine part M is a signed permutation and the crop needs no interpolation."""
    m = np.diag([-1.0 if rng.random() < aug.flip else 1.0 for _ in range(3)])
    if rng.random() < aug.rot90:
        k = int(rng.integers(1, 4))
        turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        m = m @ np.linalg.matrix_power(turn, k)
    if rng.random() >= aug.affine:
        return m, False
    r = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg, 3))):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        r = r @ rot
    return m @ r / rng.uniform(*aug.scale), True


def _ignore_outside(label: np.ndarray, lo_x: int, region: tuple[int, int] | None) -> np.ndarray:
    """Label crop whose first voxel is volume x index `lo_x`: voxels outside the x `region` set to -1 (ignored)."""
    if region is not None:
        xs = np.arange(lo_x, lo_x + label.shape[0])
        label[(xs < region[0]) | (xs >= region[1])] = -1
    return label


def augmented_crop(vol: np.ndarray, lab: np.ndarray, center: np.ndarray, roi: int, rng: np.random.Generator,
                   aug, region: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(image (R, R, R) or (C, R, R, R) float32, label (R, R, R) float32) of a crop centred at `center` with `aug`
    (an `AugmentConfig`) applied: the spatial part (`spatial_matrix`) moves image and label together — trilinear for
    the image, nearest for the label — then gamma, intensity scale/shift and noise on the image. Label voxels outside
    the x `region` are -1. `aug` None: the plain crop."""
    from scipy.ndimage import affine_transform

    lo = np.round(np.asarray(center, float) - roi / 2).astype(int)
    if aug is None:
        return crop(vol, center, roi), _ignore_outside(crop(lab, center, roi), int(lo[0]), region)
    m, affine = spatial_matrix(rng, aug)
    if not affine:       # a signed permutation: the plain crop, turned and flipped exactly
        image, label = crop(vol, center, roi), _ignore_outside(crop(lab, center, roi), int(lo[0]), region)
        off = image.ndim - 3
        perm = np.abs(m).argmax(axis=0)            # output axis a reads input axis perm[a]: M's column a
        flips = tuple(a for a in range(3) if m[perm[a], a] < 0)
        image = np.flip(image.transpose(*range(off), *(p + off for p in perm)), tuple(a + off for a in flips))
        label = np.flip(label.transpose(*perm), flips)
    else:                # interpolate from a crop big enough to hold every sampled point
        half = (roi - 1) / 2
        corners = np.array(np.meshgrid(*[[-half, half]] * 3)).reshape(3, -1)
        side = int(2 * np.ceil(np.abs(m @ corners).max()) + 4)
        centre_vox = lo + half                                  # the plain crop's centre, in volume voxels
        big_lo = np.round(centre_vox - side / 2).astype(int)
        big_img = crop(vol, big_lo + side / 2, side)
        big_lab = _ignore_outside(crop(lab, big_lo + side / 2, side), int(big_lo[0]), region)
        offset = (centre_vox - big_lo) - m @ np.full(3, half)
        kw = {"output_shape": (roi,) * 3, "mode": "constant", "cval": 0.0}
        channels = big_img if big_img.ndim == 4 else big_img[None]
        image = np.stack([affine_transform(c, m, offset, order=1, **kw) for c in channels])
        image = image if big_img.ndim == 4 else image[0]
        label = affine_transform(big_lab, m, offset, order=0, **kw)
    return intensity_augment(np.ascontiguousarray(image, dtype=np.float32), rng, aug), np.ascontiguousarray(label)


def intensity_augment(image: np.ndarray, rng: np.random.Generator, aug) -> np.ndarray:  # noqa: ANN001
    """Gamma (probability `aug.gamma_p`, on the [0, 1] range), then × U(1 ± intensity_scale) + U(± intensity_shift),
    then Gaussian noise (probability `aug.noise_p`, σ ~ U(0, noise_std)); in place on a float32 crop."""
    if rng.random() < aug.gamma_p:
        np.power(np.clip(image, 0.0, 1.0, out=image), np.float32(rng.uniform(*aug.gamma)), out=image)
    image *= np.float32(rng.uniform(1 - aug.intensity_scale, 1 + aug.intensity_scale))
    image += np.float32(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
    if rng.random() < aug.noise_p:
        image += rng.normal(0.0, rng.uniform(0.0, aug.noise_std), image.shape).astype(np.float32)
    return image


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
