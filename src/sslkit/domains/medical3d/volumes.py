"""What a volume is: the `Volume` record of a file or DICOM series, the checks every decoded array passes, and the
ids and output names (`volume_stem`) of volumes, kept distinct so that no two write the same file."""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError


NIFTI = (".nii", ".nii.gz", ".mgz", ".mgh")   # nibabel reads FreeSurfer's MGH/MGZ with the same call


ITK = (".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Volume:
    """One volume to read: a file, or a DICOM series (folder + SeriesInstanceUID); `channel`: which channel of a
    4-D file (see `select_channels`)."""

    id: str
    path: Path
    series: str | None = None
    label: Path | None = None
    channel: int | None = None          # N: that channel of a 4-D file; ALL_CHANNELS: all of them, stacked


ALL_CHANNELS = -1


def volume_suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def check_array(arr: np.ndarray, where: str, channel: int | None = None) -> np.ndarray:
    """3-D float32; a singleton 4th axis is dropped and `channel` picks one channel of a 4-D array; 2-D, other 4-D
    and non-finite data are errors."""
    if arr.ndim == 5 and arr.shape[3] == 1:       # NIfTI vector data: (X, Y, Z, 1, C)
        arr = arr[:, :, :, 0]
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4 and channel == ALL_CHANNELS:     # (X, Y, Z, C): checked for NaN/Inf below, channels kept
        pass
    elif arr.ndim == 4 and channel is not None:
        if channel >= arr.shape[3]:
            raise UserError(f"{where} has {arr.shape[3]} channels, so data.channel={channel} does not exist — use "
                            f"0..{arr.shape[3] - 1}")
        arr = arr[..., channel]
    if arr.ndim == 4 and channel != ALL_CHANNELS:
        raise UserError(f"{where} is 4-D {arr.shape} ({arr.shape[3]} channels or time points) — pass --set "
                        "data.channel=N to read channel N, --set data.channel=split (pretrain, embed) to read each "
                        "channel as its own volume, or --set data.channel=all to read all of them as the input's channels")
    if arr.ndim not in (3, 4) or min(arr.shape[:3]) < 2:
        raise UserError(f"{where} has shape {arr.shape}, not a 3-D volume — medical3d needs 3-D volumes: give the "
                        "whole series (a DICOM series folder) or stack the slices into one NIfTI (nibabel: "
                        "Nifti1Image(np.stack(slices, -1), affine)); 2-D images are not supported")
    arr = np.asarray(arr, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf: NaN is the answer we want, not a warning
        total = arr.sum(dtype=np.float64)
    if not np.isfinite(total):  # one pass, no mask: a NaN/Inf anywhere makes the sum non-finite
        bad = ~np.isfinite(arr)
        raise UserError(f"{where} has {int(bad.sum())} NaN/Inf voxels — fix or mask them before training "
                        "(e.g. nibabel + numpy.nan_to_num)")
    return arr


VOLUME_SUFFIXES = tuple(sorted(NIFTI + ITK, key=len, reverse=True))    # longest first: .nii.gz before .nii


def strip_volume_suffix(name: str) -> str:
    """`name` without its volume suffix (.nii.gz, .nii, .mgz, .nrrd, .mha, ...; any case); other dots stay
    (`case.001.nii.gz` -> `case.001`)."""
    low = name.lower()
    return next((name[:-len(s)] for s in VOLUME_SUFFIXES if low.endswith(s) and len(name) > len(s)), name)


def _id_parts(volume_id: str) -> list[str]:
    """The parts of an id as a relative path: no root, drive, `.` or `..`."""
    return [p for p in re.split(r"[\\/]+", volume_id) if p not in ("", ".", "..") and not p.endswith(":")]


def volume_stem(volume_id: str) -> str:
    """Where a volume's outputs go (predictions, embedding grids), relative to the output folder and without a
    suffix: the id's sub-path with the volume suffix stripped (`s1/t1.nii.gz` -> `s1/t1`, `case.001.nii.gz` ->
    `case.001`), `name_cK` for channel K of a split 4-D file; never absolute and never above the folder."""
    base, sep, channel = volume_id.rpartition("#c")
    if sep and channel.isdigit():
        return f"{volume_stem(base)}_c{channel}"
    parts = _id_parts(volume_id) or ["volume"]
    return "/".join([*parts[:-1], strip_volume_suffix(parts[-1]) or "volume"])


def output_stems(ids: list[str], suffixes: tuple[str, ...] = (".nii.gz",)) -> list[str]:
    """`volume_stem` of each id; called before anything is written, it refuses two volumes that would write the same
    file (`stem + suffix`, compared ignoring case as macOS and Windows file systems do)."""
    stems = [volume_stem(i) for i in ids]
    seen: dict[str, str] = {}
    for vid, stem in zip(ids, stems):
        for suffix in suffixes:
            if (other := seen.setdefault(f"{stem}{suffix}".lower(), vid)) != vid:
                raise UserError(f"{other} and {vid} would both be written as {stem}{suffix} (names compared ignoring "
                                "case) — rename one of them or move it to its own sub-folder")
    return stems


def _trailing_id(v: Volume, n: int) -> str:
    """The last `n` parts of the volume's path (plus a DICOM folder's `#k` series index) as an id."""
    parts = Path(os.path.abspath(v.path)).parts[1:]
    tail = m.group(0) if v.series is not None and (m := re.search(r"#\d+$", v.id)) else ""
    return "/".join(parts[-n:]) + tail


def distinct_ids(found: list[Volume]) -> list[Volume]:
    """Volume ids that name distinct outputs: ids that would write the same file (same `volume_stem`, ignoring case)
    or that are no relative path (an absolute or `..` datalist entry) become the shortest trailing path of their file
    that tells them apart (`s1/t1.nii.gz`, `s2/t1.nii.gz`). A clash no trailing path resolves (the same file twice,
    `a.nii` beside `a.nii.gz`) stays; commands that write per-volume files refuse it (`output_stems`)."""
    def key(vid: str) -> str:
        return volume_stem(vid).lower()

    counts: dict[str, int] = {}
    for v in found:
        counts[key(v.id)] = counts.get(key(v.id), 0) + 1
    rename = [i for i, v in enumerate(found) if counts[key(v.id)] > 1 or not _is_relative(v.id)]
    if not rename:
        return found
    fixed = {key(v.id) for i, v in enumerate(found) if i not in rename}
    out, pending = list(found), set(rename)
    for n in range(1, max(len(Path(os.path.abspath(found[i].path)).parts) for i in rename)):
        keys = {i: key(_trailing_id(found[i], n)) for i in rename}
        tally = Counter(keys.values())
        for i in sorted(pending):
            if keys[i] not in fixed and tally[keys[i]] == 1:
                out[i] = replace(found[i], id=_trailing_id(found[i], n))
                pending.discard(i)
        if not pending:
            break
    taken = fixed | {key(out[i].id) for i in rename if i not in pending}
    for i in pending:               # nothing tells it apart: the shortest trailing path no other volume has
        n = next((n for n in range(1, len(Path(os.path.abspath(found[i].path)).parts))
                  if key(_trailing_id(found[i], n)) not in taken), 1)
        out[i] = replace(found[i], id=_trailing_id(found[i], n))
    return out


def _is_relative(volume_id: str) -> bool:
    return not (os.path.isabs(volume_id) or re.match(r"^[A-Za-z]:|^[\\/]", volume_id)
                or ".." in re.split(r"[\\/]", volume_id))
