"""Finding and reading CT/MRI volumes: NIfTI and MGH/MGZ (nibabel), DICOM series (pydicom, GDCM for compressed
pixel data), NRRD/MHA (MONAI's ITK reader).

Every reader returns a float32 array in the file's voxel order plus its 4×4 affine
(voxel index -> RAS+ millimetres). Orientation, resampling and intensity presets
live in `preprocess.py`; this module only finds and decodes files and says clearly
what is wrong with a bad one.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


# Folders of label maps in the usual layouts (labels/, labelsTr/ of nnU-Net and the Decathlon, subject_labels/,
# masks/, seg/, gt/): skipped when a parent folder is scanned, so that `pretrain data/` never trains on label maps.
LABEL_FOLDER = re.compile(r"^(?:.*[_-])?(?:labels?|labels?t[rs]|masks?|segmentations?|segs?|ground_?truth|gt)$", re.I)


def scan_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """(files under `root`, label folders skipped): hidden files and folders (e.g. macOS `._x.nii.gz` copies) are
    left out, and so are label folders below `root` (a label folder given as `root` itself is read)."""
    files: list[Path] = []
    skipped: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if LABEL_FOLDER.match(name):
                skipped.append(here / name)
            elif not name.startswith("."):
                keep.append(name)
        dirnames[:] = keep
        files += [here / f for f in filenames if not f.startswith(".")]
    return sorted(files), sorted(skipped)


def is_volume_file(p: Path) -> bool:
    return p.is_file() and _suffix(p) in NIFTI + ITK


DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
# Files never probed for a DICOM header when they sit in a data tree (everything else is: scanners and PACS exports
# often name slices without an extension, or by UID, e.g. "1.3.12.2.1107.5.1.4.1001").
NOT_DICOM = NIFTI + ITK + (".gz", ".zip", ".json", ".txt", ".csv", ".tsv", ".md", ".yaml", ".yml", ".xml", ".html",
                           ".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".parquet", ".py", ".log",
                           ".raw", ".zraw", ".bval", ".bvec", ".pt", ".safetensors")


def is_dicom_file(p: Path) -> bool:
    """A .dcm/.ima/.dicom file, or any other file (bar known non-DICOM types) with the DICM magic at byte 128."""
    if not p.is_file() or p.name == "DICOMDIR" or p.name.startswith("."):
        return False
    suffix = _suffix(p)
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in NOT_DICOM:
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside `folder`, sorted by name."""
    return sorted(f for f in folder.iterdir() if is_dicom_file(f))


def _dcmread(f: Path, headers_only: bool = False) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(f, stop_before_pixels=headers_only)
    except Exception as exc:  # pydicom raises several types for broken files
        raise UserError(f"{f} is not a readable DICOM file ({type(exc).__name__}) — remove or re-export it") from None


def _dicom_series(folder: Path, files: list[Path] | None = None) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its image files in `folder` (headers only, no pixel data); `files`: the folder's DICOM
    files when the caller has already found them.

    Objects without pixel rows (DICOMDIR records, structured reports, presentation states) are not images: skipped.
    """
    series: dict[str, list[Path]] = {}
    for f in dicom_files(folder) if files is None else files:
        ds = _dcmread(f, headers_only=True)
        if "Rows" not in ds:
            continue
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append(f)
    return series


def find_volumes(paths: list[Path], sections: tuple[str, ...] = ("training",)) -> list[Volume]:
    """Volumes under folders (recursive; hidden files and label folders below them left out), given files, or a
    MONAI-style JSON datalist (its `sections`; `UNLABELLED_SECTIONS` reads every image and attaches no labels).

    A folder of DICOM files (any name: see `is_dicom_file`) is one volume per series in it; a folder holding
    several series yields one volume per series (ids `folder#k`) and they are listed.
    """
    found: list[Volume] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p} does not exist — check the path")
        if p.is_file() and p.suffix.lower() == ".json":
            found += read_datalist(p, sections, unlabelled=sections == UNLABELLED_SECTIONS)
        elif p.is_file():
            if _suffix(p) in NIFTI + ITK:
                found.append(Volume(p.name, p))
            elif is_dicom_file(p):                      # one slice stands for its series, read from its folder
                uid = next((uid for uid, files in _dicom_series(p.parent).items() if p in files), None)
                if uid is None:
                    raise UserError(f"{p} is a DICOM file without an image (a DICOMDIR record, report or state) — "
                                    "give an image slice or its folder")
                found.append(Volume(p.parent.name, p.parent, uid))
            else:
                raise UserError(f"{p} is not a volume file (.nii, .nii.gz, .mgz, .nrrd, .mha, .mhd, "
                                "a DICOM file or folder)")
        else:
            files, label_folders = scan_folder(p)
            found += [Volume(str(f.relative_to(p)), f) for f in files if is_volume_file(f)]
            by_folder: dict[Path, list[Path]] = {}
            for f in files:
                if is_dicom_file(f):
                    by_folder.setdefault(f.parent, []).append(f)
            for folder, slices in sorted(by_folder.items()):   # a series folder given itself: named after it
                rel = folder.relative_to(p)
                found += dicom_volumes(folder, str(rel) if rel != Path(".") else folder.resolve().name, slices)
            if label_folders:
                from sslkit.core.console import info

                names = ", ".join(str(f.relative_to(p)) for f in label_folders)
                info(f"left out label folders under {p}: {names} — give a folder as DATA itself to read its volumes")
    if not found:
        raise UserError(f"no volumes found in {', '.join(map(str, paths))} — expected .nii/.nii.gz/.mgz/.nrrd/.mha "
                        "files, DICOM series folders, or a JSON datalist")
    return distinct_ids(found)


def _series_name(first: Path) -> str:
    """"series 3 'T1 MPRAGE', " from a series' first header (what a PACS viewer shows), or "" when it has neither."""
    ds = _dcmread(first, headers_only=True)
    number, text = getattr(ds, "SeriesNumber", None), str(getattr(ds, "SeriesDescription", "") or "").strip()
    parts = ([f"series {number}"] if number not in (None, "") else []) + ([repr(text)] if text else [])
    return " ".join(parts) + ", " if parts else ""


def dicom_volumes(folder: Path, name: str, files: list[Path] | None = None) -> list[Volume]:
    """One Volume per series in a DICOM folder; several series are listed on stderr."""
    series = _dicom_series(folder, files)
    if len(series) > 1:
        from sslkit.core.console import warn

        listing = "; ".join(f"#{k} {_series_name(files[0])}{len(files)} files, UID …{uid[-12:]}"
                            for k, (uid, files) in enumerate(sorted(series.items())))
        warn(f"{folder} holds {len(series)} DICOM series, each read as its own volume: {listing}")
        return [Volume(f"{name}#{k}", folder, uid) for k, uid in enumerate(sorted(series))]
    return [Volume(name, folder, next(iter(series)))] if series else []


UNLABELLED_SECTIONS = ("training", "validation", "test")   # every image of a datalist, for pretraining and embedding


def read_datalist(path: Path, sections: tuple[str, ...] = ("training",), unlabelled: bool = False) -> list[Volume]:
    """MONAI/Decathlon datalist JSON: {"training": [{"image": ..., "label": ...}], "test": ["img.nii.gz", ...]}
    or a plain list; paths relative to the JSON. The images of every section in `sections` that the file has
    ("validation" when it has none of them); `unlabelled`: no labels attached (pretraining and embedding)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON datalist ({exc}) — fix the JSON") from None
    if isinstance(data, dict):
        present = [k for k in sections if isinstance(data.get(k), list)]
        entries = [(k, e) for k in present or ["validation"] for e in data.get(k) or []]
    else:
        entries = [("list", e) for e in (data if isinstance(data, list) else [])]
    out = []
    for i, (section, e) in enumerate(entries):
        image = e.get("image") if isinstance(e, dict) else e
        if not isinstance(image, str):
            raise UserError(f"{path}: entry {i} of '{section}' has no 'image' path — each entry needs "
                            "\"image\": \"file.nii.gz\"")
        img = (path.parent / image).resolve()
        if not img.exists():
            raise UserError(f"{path}: entry {i} of '{section}' names {img}, which does not exist — fix the datalist")
        label = e.get("label") if isinstance(e, dict) and not unlabelled else None
        lab = (path.parent / label).resolve() if isinstance(label, str) and label else None
        if lab == img:
            raise UserError(f"{path}: entry {i} of '{section}': {img} is given as its own label — name the label "
                            "map in \"label\"")
        out.append(Volume(re.sub(r"^(\./)+", "", image), img, None, lab))     # the Decathlon writes ./imagesTr/...
    if not out:
        raise UserError(f"{path} lists no images under {' / '.join(repr(k) for k in sections)} — a MONAI datalist "
                        f"needs {{\"{sections[0]}\": [{{\"image\": ...}}]}}")
    return out


def _check_array(arr: np.ndarray, where: str, channel: int | None = None) -> np.ndarray:
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


def read_nifti(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI or MGH; of a 4-D file with `channel` set, only that channel is decoded."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        one = channel is not None and len(img.shape) == 4 and 1 < img.shape[3] and 0 <= channel < img.shape[3]
        arr = np.asanyarray(img.dataobj[..., channel] if one else img.dataobj)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for truncated or corrupt files
        kind = "MGH" if _suffix(path) in (".mgz", ".mgh") else "NIfTI"
        raise UserError(f"{path} is not a readable {kind} file ({type(exc).__name__}: {str(exc)[:80]}) — "
                        "re-export it or remove it") from None
    return _check_array(arr, str(path), channel), np.asarray(img.affine, dtype=np.float64)


def _check_slice_spacing(folder: Path, series: str, positions: list[float]) -> None:
    """Slices along the normal must be distinct and evenly spaced: the affine assumes one slice step."""
    gaps = np.diff(np.asarray(positions))
    step = float(np.median(gaps))
    same = gaps < 1e-3 * max(step, 1e-6)
    if same.any():
        raise UserError(f"{folder} series {series}: {len(positions)} slices at only {len(positions) - int(same.sum())} "
                        "positions (several echoes, phases or time points in one series) — split them into one series "
                        "each, e.g. with dcm2niix")
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > 0.1 * step:
        raise UserError(f"{folder} series {series}: slice spacing is {step:.3g} mm but {gaps[worst]:.3g} mm between the "
                        f"slices at {positions[worst]:.1f} and {positions[worst + 1]:.1f} mm (a missing slice?) — "
                        "complete the series or convert it with dcm2niix, which resamples uneven slices")


def read_dicom(folder: Path, series: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series sorted along its slice normal; affine from ImagePositionPatient/Orientation (LPS -> RAS)."""
    all_series = _dicom_series(folder)
    if series is None:
        if len(all_series) != 1:
            listing = ", ".join(f"{uid} ({len(f)} files)" for uid, f in all_series.items())
            raise UserError(f"{folder} holds {len(all_series)} DICOM series ({listing}) — put each in its own folder")
        series = next(iter(all_series))
    slices = []
    for f in all_series.get(series, []):
        ds = _dcmread(f)
        try:
            pix = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        except Exception as exc:  # broken pixel data, or a compression that no installed decoder handles
            syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown")
            raise UserError(f"{f} has unreadable DICOM pixel data ({type(exc).__name__}; transfer syntax {syntax}) — "
                            "re-export the series uncompressed (e.g. gdcmconv --raw) or convert it with dcm2niix"
                            ) from None
        if pix.ndim != 2:
            raise UserError(f"{f} holds {int(getattr(ds, 'NumberOfFrames', 1))} frames (an enhanced multi-frame "
                            "object) — convert the series with dcm2niix and read the NIfTI")
        slices.append((ds, pix))
    if len(slices) < 2:
        raise UserError(f"{folder} series {series} has {len(slices)} slice(s) — a 3-D volume needs several slices")
    row, col = (np.asarray(slices[0][0].ImageOrientationPatient[:3], float), np.asarray(slices[0][0].ImageOrientationPatient[3:], float))
    normal = np.cross(row, col)
    depth = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds, _ in slices]
    order = np.argsort(depth, kind="stable")
    slices = [slices[i] for i in order]
    _check_slice_spacing(folder, series, [depth[i] for i in order])
    p0 = np.asarray(slices[0][0].ImagePositionPatient, float)
    p1 = np.asarray(slices[-1][0].ImagePositionPatient, float)
    dz = (p1 - p0) / (len(slices) - 1)
    sr, sc = (float(v) for v in slices[0][0].PixelSpacing)
    # pixel_array is (rows, cols); the column index moves along `row` (PixelSpacing[1]), the row index along `col`
    arr = np.stack([s[1].T for s in slices], axis=-1)  # (cols, rows, slices)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * sc, col * sr, dz, p0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return _check_array(arr, str(folder)), affine


def read_itk(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NRRD/MHA through MONAI's ITKReader (needs the `itk` package)."""
    try:
        import itk  # noqa: F401
    except ImportError:
        raise UserError(f"{path}: reading {_suffix(path)} needs the itk package — pip install itk-io (part of "
                        "sslkit[medical3d]), or convert to NIfTI") from None
    from monai.data import ITKReader

    try:
        reader = ITKReader(affine_lps_to_ras=True)
        arr, meta = reader.get_data(reader.read(str(path)))
    except Exception as exc:  # ITK raises RuntimeError subclasses for bad files
        raise UserError(f"{path} is not readable by ITK ({type(exc).__name__}) — re-export it") from None
    return _check_array(np.asarray(arr), str(path), channel), np.asarray(meta["affine"], dtype=np.float64)


def read_volume(vol: Volume | Path) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 voxels and the 4×4 voxel->RAS affine of one volume."""
    if isinstance(vol, Path):
        vol = Volume(vol.name, vol)
    if vol.path.is_dir() or is_dicom_file(vol.path):
        return read_dicom(vol.path if vol.path.is_dir() else vol.path.parent, vol.series)
    if _suffix(vol.path) in NIFTI:
        return read_nifti(vol.path, vol.channel)
    return read_itk(vol.path, vol.channel)


def select_channels(volumes: list[Volume], channel: int | str | None, command: str) -> list[Volume]:
    """`data.channel` applied to the volumes `command` listed: N reads channel N of every 4-D volume (3-D ones are
    read as they are); "split" lists every channel of a 4-D NIfTI/MGH file as its own volume, id `name#cK` (the
    Decathlon's BrainTumour: FLAIR, T1w, T1gd, T2w), for pretrain and embed; "all" reads every channel, stacked
    (X, Y, Z, C), as the encoder's input channels; None leaves 4-D files to be refused when read."""
    if channel == "split" and command == "finetune":
        raise UserError("finetune reads one channel of 4-D images, or all of them (data.channel=split is for "
                        "pretrain and embed) — pass --set data.channel=all for all, or --set data.channel=N for one "
                        "(e.g. 0 for FLAIR in the Decathlon's BrainTumour)")
    if channel is None:
        return volumes
    if channel != "split":
        return [replace(v, channel=ALL_CHANNELS if channel == "all" else int(channel)) for v in volumes]
    import nibabel as nib

    out = []
    for v in volumes:
        shape: tuple[int, ...] = ()
        if v.series is None and v.path.is_file() and _suffix(v.path) in NIFTI:
            try:
                shape = tuple(nib.load(str(v.path)).shape)   # header only
            except Exception:  # a broken file is reported (or skipped) when it is read
                pass
        n = shape[-1] if len(shape) in (4, 5) else 1
        out += [replace(v, id=f"{v.id}#c{c}", channel=c) for c in range(n)] if n > 1 else [v]
    return out


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


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI atomically (temp file + rename)."""
    import os

    import nibabel as nib

    from sslkit.core.files import temp_beside

    fd, tmp = temp_beside(path, suffix=".nii.gz")     # nibabel picks gzip from the name
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(arr, affine), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
