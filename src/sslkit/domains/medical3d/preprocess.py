"""Preprocessing (RAS orientation, resampling, intensity presets, foreground crop) and its on-disk cache.

A preprocessed volume is stored once as `<key>.npy` (float16, values in [0, 1]) plus
`<key>.json` (shape, spacing, affine, foreground moments), where the key hashes the
file's path, size and mtime together with the preprocessing settings: changing a
setting or the file makes a new entry. Training reads the `.npy` with
`mmap_mode="r"`, so DDP ranks and loader workers share one copy in the page cache
and a random crop copies only its own voxels.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslkit.core.errors import UserError
from sslkit.core.files import temp_beside
from sslkit.domains.medical3d.dicom import dicom_files
from sslkit.domains.medical3d.io import read_volume
from sslkit.domains.medical3d.volumes import Volume

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """What preprocessing does; every field enters the cache key."""

    modality: str = "ct"                    # ct | mri | auto (per volume: ct when it holds air, see AIR_HU)
    spacing: tuple[float, float, float] | None = (1.5, 1.5, 2.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop_foreground: bool = True
    foreground_threshold: float = 0.05      # after scaling to [0, 1]
    margin: int = 4


def to_ras(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient to the closest canonical RAS+ frame; returns (array, new affine, the input's orientation)."""
    from nibabel import orientations as ornt

    current = ornt.io_orientation(affine)
    transform = ornt.ornt_transform(current, ornt.axcodes2ornt(("R", "A", "S")))
    out = ornt.apply_orientation(arr, transform)
    return np.ascontiguousarray(out), affine @ ornt.inv_ornt_aff(transform, arr.shape), current


def from_ras(arr: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Undo `to_ras`: back to the input's axis order and directions (for writing predictions)."""
    from nibabel import orientations as ornt

    back = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), np.asarray(orientation))
    return np.ascontiguousarray(ornt.apply_orientation(arr, back))


def spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(0))


def resample(arr: np.ndarray, shape: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    """Trilinear (or nearest, for labels) resampling of (X, Y, Z) — or (C, X, Y, Z), channel by channel — to the
    spatial `shape` with torch."""
    import torch
    import torch.nn.functional as F

    if tuple(arr.shape[-3:]) == tuple(shape):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t = t[None] if t.dim() == 4 else t[None, None]
    mode = "nearest-exact" if nearest else "trilinear"
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode=mode, **({} if nearest else {"align_corners": False}))
    return out[0].numpy() if arr.ndim == 4 else out[0, 0].numpy()


def target_shape(shape: tuple[int, ...], spacing: np.ndarray, target: tuple[float, float, float] | None) -> tuple[int, ...]:
    if target is None:
        return tuple(shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


AIR_HU = -500.0      # CT holds air near -1000 HU (lungs, outside the body); magnitude MRI has no such values
NOT_HU = -200.0      # a "CT" with no voxel below this holds neither air nor lung: not Hounsfield units


def resolve_modality(lowest: float, modality: str) -> str:
    """`auto`: "ct" for a volume whose lowest value is below AIR_HU, else "mri"; other settings stay as given."""
    if modality != "auto":
        return modality
    return "ct" if lowest < AIR_HU else "mri"


def scale_intensity(arr: np.ndarray, s: Settings, modality: str | None = None) -> np.ndarray:
    """CT: clip to the HU window and map to [0, 1]. MRI: map the (p_lo, p_hi) percentiles of non-zero voxels to [0, 1].

    `modality` overrides `s.modality` (the per-volume answer of `auto`). One float32 output array, scaled and
    clipped in place (no full-size temporaries beyond it).
    """
    if (modality or s.modality) == "ct":
        lo, hi = s.hu_window
    else:
        nz = arr[arr != 0]
        lo, hi = np.percentile(nz if nz.size else arr, s.percentiles)
        if hi <= lo:
            hi = lo + 1.0
    out = np.subtract(arr, np.float32(lo), dtype=np.float32)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _profiles(mask: np.ndarray) -> list[np.ndarray]:
    """Per-axis counts of a boolean (X, Y, Z) mask: [(X,), (Y,), (Z,)] — its projections onto each axis."""
    yz = mask.sum(axis=0, dtype=np.int64)                                  # (Y, Z)
    return [mask.sum(axis=(1, 2), dtype=np.int64), yz.sum(axis=1), yz.sum(axis=0)]


def foreground_box(arr: np.ndarray, threshold: float, margin: int) -> tuple[slice, ...]:
    """Bounding box of voxels above `threshold` plus a margin (the whole volume when empty).

    Read off the mask's axis projections rather than a list of voxel coordinates (no N×3 index array).
    """
    profiles = _profiles(arr > threshold)
    if profiles[0].sum() == 0:
        return tuple(slice(0, n) for n in arr.shape)
    box = []
    for prof, n in zip(profiles, arr.shape):
        nz = np.flatnonzero(prof)
        box.append(slice(int(max(nz[0] - margin, 0)), int(min(nz[-1] + 1 + margin, n))))
    return tuple(box)


def moments(arr: np.ndarray, threshold: float) -> tuple[list[float], list[float]]:
    """Centre of mass and per-axis standard deviation (voxels) of the foreground: a coarse affine frame.

    Per axis these depend only on the mask's projection onto that axis, so they come from three 1-D histograms.
    """
    profiles = _profiles(arr > threshold)
    total = int(profiles[0].sum())
    if total < 8:
        shape = np.asarray(arr.shape, float)
        return (shape / 2).tolist(), (shape / 4).tolist()
    com, std = [], []
    for prof in profiles:
        i = np.arange(len(prof), dtype=np.float64)
        w = prof / total
        m = float((i * w).sum())
        com.append(m)
        std.append(max(float(np.sqrt(max((w * (i - m) ** 2).sum(), 0.0))), 1.0))
    return com, std


def preprocess(arr: np.ndarray, affine: np.ndarray, s: Settings, label: np.ndarray | None = None) -> dict[str, Any]:
    """Volume in RAS at the target spacing, scaled to [0, 1], cropped to its foreground.

    Returns {"image": (X, Y, Z) float32, "label": same shape or None, "meta": geometry for undoing it}. A multi-
    channel (X, Y, Z, C) input gives a (C, X, Y, Z) image, each channel scaled on its own, cropped to the
    foreground of any channel.
    """
    lowest = float(arr.min())
    modality = resolve_modality(lowest, s.modality)
    img, ras_affine, orientation = to_ras(arr, affine)
    ras_shape = img.shape[:3]
    spacing = spacing_of(ras_affine)
    shape = target_shape(ras_shape, spacing, s.spacing)
    if img.ndim == 4:       # channels first, each scaled on its own (MRI contrasts differ in range)
        img = resample(np.moveaxis(img, 3, 0), shape)
        img = np.stack([scale_intensity(c, s, modality) for c in img])
    else:
        img = scale_intensity(resample(img, shape), s, modality)
    lab = None
    if label is not None:
        lab = resample(to_ras(label, affine)[0], shape, nearest=True)
    spatial = img.max(axis=0) if img.ndim == 4 else img
    box = (foreground_box(spatial, s.foreground_threshold, s.margin) if s.crop_foreground
           else tuple(slice(0, n) for n in shape))
    img = np.ascontiguousarray(img[(...,) + box])
    lab = np.ascontiguousarray(lab[box]).astype(np.int16) if lab is not None else None
    com, std = moments(spatial[box], s.foreground_threshold)
    meta = {"orig_shape": list(arr.shape[:3]), "ras_shape": list(ras_shape),
            "channels": int(arr.shape[3]) if arr.ndim == 4 else 1,
            "resampled_shape": list(shape), "box": [[b.start, b.stop] for b in box], "orientation": orientation.tolist(),
            "affine": np.asarray(affine).tolist(), "shape": list(img.shape[-3:]), "com": com, "std": std,
            "spacing": list(s.spacing) if s.spacing else spacing.tolist(), "modality": modality, "lowest": lowest}
    return {"image": img, "label": lab, "meta": meta}


def undo_preprocess(pred: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Put a label map (X', Y', Z') on the cropped grid back onto the input file's voxel grid."""
    full = np.zeros(meta["resampled_shape"], dtype=pred.dtype)
    full[tuple(slice(a, b) for a, b in meta["box"])] = pred
    ras = resample(full.astype(np.float32), tuple(meta["ras_shape"]), nearest=True).astype(pred.dtype)
    return from_ras(ras, np.asarray(meta["orientation"]))


class FileGridProbabilities:
    """(K, X', Y', Z') probabilities on the cropped, resampled grid, seen as K channels on the input file's voxel grid:
    item k is channel k resampled trilinearly there, computed when asked for, so decoding a volume at the file's
    resolution holds one channel at a time (nnU-Net's export, finer than resampling a label map by nearest neighbour).
    What the foreground crop cut off is certain background: 1 for the background class of softmax outputs, 0 for every
    other class and for every region (`sigmoid`)."""

    def __init__(self, probs: np.ndarray, meta: dict[str, Any], sigmoid: bool = False) -> None:
        self.probs, self.meta, self.sigmoid = probs, meta, sigmoid

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, channel: int) -> np.ndarray:
        if not 0 <= channel < len(self):
            raise IndexError(channel)
        full = np.full(self.meta["resampled_shape"], 0.0 if self.sigmoid or channel else 1.0, dtype=np.float32)
        full[tuple(slice(a, b) for a, b in self.meta["box"])] = self.probs[channel]
        return from_ras(resample(full, tuple(self.meta["ras_shape"])), np.asarray(self.meta["orientation"]))


class VolumeCache:
    """Preprocessed volumes on disk, keyed by (file identity, settings); safe to fill from several processes."""

    def __init__(self, root: Path | None, settings: Settings) -> None:
        default = Path(os.environ.get("SSLKIT_CACHE_DIR", Path.home() / ".cache" / "sslkit")) / "medical3d"
        self.root = Path(root) if root else default
        self.settings = settings

    def key(self, vol: Volume) -> str:
        parts: list[Any] = [CACHE_VERSION, str(vol.path.resolve()), vol.series, str(vol.label)]
        if vol.channel is not None:
            parts.append(("channel", vol.channel))
        for p in [vol.path, vol.label]:
            if p is not None:
                files = dicom_files(p) if p.is_dir() else [p]
                parts += [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        parts.append(sorted(self.settings.__dict__.items()))
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]

    def get(self, vol: Volume) -> tuple[Path, dict[str, Any]]:
        """(path of the cached image .npy, meta); preprocesses and stores it on a miss."""
        k = self.key(vol)
        npy, meta_path = self.root / f"{k}.npy", self.root / f"{k}.json"
        if npy.is_file() and meta_path.is_file():   # the id is how this run listed the volume, not the first run
            return npy, {**json.loads(meta_path.read_text()), **_identity(vol)}
        arr, affine = read_volume(vol)
        label = None
        if vol.label is not None:
            label, lab_affine = read_volume(vol.label)
            check_label_grid(vol, label.shape, lab_affine, arr.shape[:3], affine)
        out = preprocess(arr, affine, self.settings, label)
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_npy(npy, out["image"].astype(np.float16))
        if out["label"] is not None:
            _atomic_npy(self.root / f"{k}.label.npy", out["label"])
            out["meta"]["label"] = str(self.root / f"{k}.label.npy")
        out["meta"].update(_identity(vol))
        _atomic_text(meta_path, json.dumps(out["meta"]))
        return npy, out["meta"]


def check_label_grid(vol: Volume, shape: tuple[int, ...], lab_affine: np.ndarray, image_shape: tuple[int, ...],
                     affine: np.ndarray) -> None:
    """A label map must lie on its image's voxel grid: the same shape and affine. The refusal says which differs and,
    for the affine, how far apart (mm) the two grids put the same voxel, at worst (a corner of the grid)."""
    if shape != image_shape:
        raise UserError(f"label {vol.label} has shape {shape} but image {vol.path} has {image_shape} — resample "
                        "the label onto the image grid")
    if not np.allclose(lab_affine, affine, atol=1e-3):
        corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])])
        apart = float(np.linalg.norm(corners @ (lab_affine - affine)[:3].T, axis=1).max())
        raise UserError(f"label {vol.label} has the shape of image {vol.path} but another affine (voxels up to "
                        f"{apart:.3g} mm apart) — resample the label onto the image grid, or copy the image's "
                        "header if only the header is off")


def _identity(vol: Volume) -> dict[str, Any]:
    """How this run names a cached volume and where its files are (a cache entry may have been written by another)."""
    return {"id": vol.id, "source": str(vol.path), "label_source": str(vol.label) if vol.label is not None else None}


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = temp_beside(path, suffix=".npy")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = temp_beside(path, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def prepare(volumes: list[Volume], cache: VolumeCache, strict: bool) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """Preprocess (or find in the cache) every volume; a bad one is skipped and reported unless `strict`.

    Skips are warned about only when some volume is usable: when none is, the command stops with one error line
    (a lone volume's own reason, or the first reason and the count), not each reason again as a warning above it."""
    from sslkit.core.console import warn

    ok, skipped = [], []
    for vol in volumes:
        try:
            ok.append(cache.get(vol))
        except UserError as exc:
            if strict:
                raise
            skipped.append({"id": vol.id, "path": str(vol.path), "reason": str(exc)})
    if not ok:
        if len(skipped) <= 1:
            raise UserError(skipped[0]["reason"] if skipped else "no volumes to read — give volume files or folders")
        others = [s["id"] for s in skipped[1:]]
        listing = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise UserError(f"none of the {len(volumes)} volumes could be read — first, {skipped[0]['reason']} (and "
                        f"{len(others)} more: {listing})")
    for s in skipped:
        warn(f"skipping {s['id']}: {s['reason']}")
    check_modality([meta for _, meta in ok], cache.settings.modality)
    return ok, skipped


def check_modality(metas: list[dict], setting: str) -> None:
    """Say when the intensities contradict `data.modality` (the HU window on MRI saturates it silently), and what
    `auto` decided."""
    from sslkit.core.console import info, warn

    lowest = [m["lowest"] for m in metas if "lowest" in m]       # entries cached before the field: no opinion
    if setting == "ct" and (odd := sum(v > NOT_HU for v in lowest)):
        warn(f"{odd} of {len(lowest)} volumes have no voxel below {NOT_HU:g}, so they are not CT in Hounsfield units "
             "(MRI?), yet modality is ct: the HU window clips them — pass --modality mri or --modality auto")
    elif setting == "mri" and (odd := sum(v < AIR_HU for v in lowest)):
        warn(f"{odd} of {len(lowest)} volumes hold values below {AIR_HU:g}, as CT in Hounsfield units does, yet modality "
             "is mri — pass --modality ct or --modality auto")
    elif setting == "auto" and lowest:
        n_ct = sum(m.get("modality") == "ct" for m in metas)
        info(f"modality auto: {n_ct} CT (air below {AIR_HU:g} HU, HU window), {len(metas) - n_ct} MRI (percentiles)")


def settings_from(data: Any) -> Any:
    """Preprocessing settings of a recipe's data section."""
    from sslkit.domains.medical3d.preprocess import Settings

    return Settings(modality=data.modality, spacing=tuple(data.spacing) if data.spacing else None,
                    hu_window=tuple(data.hu_window), percentiles=tuple(data.percentiles),
                    crop_foreground=data.crop_foreground, foreground_threshold=data.foreground_threshold)


def cache_for(data: Any) -> Any:
    """The preprocessing cache that a recipe's data section reads and fills (`data.cache_dir`, else the default)."""
    from sslkit.domains.medical3d.preprocess import VolumeCache

    return VolumeCache(Path(data.cache_dir) if data.cache_dir else None, settings_from(data))


def input_channels(entries: list[tuple[Path, dict]]) -> int:
    """The images' channel count (1 for 3-D volumes); every image must have the same."""
    counts: dict[int, list[str]] = {}
    for _, meta in entries:
        counts.setdefault(int(meta.get("channels", 1)), []).append(meta["id"])
    if len(counts) > 1:
        listing = "; ".join(f"{n} channel(s): {', '.join(ids[:3])}{' …' if len(ids) > 3 else ''}"
                            for n, ids in sorted(counts.items()))
        raise UserError(f"the images differ in their number of channels ({listing}) — give images with the same "
                        "channels, or pick one with --set data.channel=N")
    return next(iter(counts))


def check_channels(entries: list[tuple[Path, dict]], encoder: torch.nn.Module, what: str) -> int:
    """The images' channel count, which must be the one `encoder` reads; `what` opens the refusal ("RUN segments")."""
    from sslkit.domains.medical3d.model import input_conv

    if (channels := input_channels(entries)) != (wanted := input_conv(encoder).in_channels):
        raise UserError(f"{what} {wanted}-channel images and these have {channels} — give images with {wanted} "
                        "channels (data.channel as in that run)")
    return channels
