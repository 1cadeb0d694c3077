"""DICOM: recognising slice files (any name), listing the series in a folder, and reading a series as a volume sorted
along its slice normal, with its affine from the headers (pydicom; GDCM for compressed pixel data)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.volumes import ITK, NIFTI, Volume, check_array, volume_suffix


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
    suffix = volume_suffix(p)
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


def dcmread(f: Path, headers_only: bool = False) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(f, stop_before_pixels=headers_only)
    except Exception as exc:  # pydicom raises several types for broken files
        raise UserError(f"{f} is not a readable DICOM file ({type(exc).__name__}) — remove or re-export it") from None


def dicom_series(folder: Path, files: list[Path] | None = None) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its image files in `folder` (headers only, no pixel data); `files`: the folder's DICOM
    files when the caller has already found them.

    Objects without pixel rows (DICOMDIR records, structured reports, presentation states) are not images: skipped.
    """
    series: dict[str, list[Path]] = {}
    for f in dicom_files(folder) if files is None else files:
        ds = dcmread(f, headers_only=True)
        if "Rows" not in ds:
            continue
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append(f)
    return series


def _series_name(first: Path) -> str:
    """"series 3 'T1 MPRAGE', " from a series' first header (what a PACS viewer shows), or "" when it has neither."""
    ds = dcmread(first, headers_only=True)
    number, text = getattr(ds, "SeriesNumber", None), str(getattr(ds, "SeriesDescription", "") or "").strip()
    parts = ([f"series {number}"] if number not in (None, "") else []) + ([repr(text)] if text else [])
    return " ".join(parts) + ", " if parts else ""


def dicom_volumes(folder: Path, name: str, files: list[Path] | None = None) -> list[Volume]:
    """One Volume per series in a DICOM folder; several series are listed on stderr."""
    series = dicom_series(folder, files)
    if len(series) > 1:
        from sslkit.core.console import warn

        listing = "; ".join(f"#{k} {_series_name(files[0])}{len(files)} files, UID …{uid[-12:]}"
                            for k, (uid, files) in enumerate(sorted(series.items())))
        warn(f"{folder} holds {len(series)} DICOM series, each read as its own volume: {listing}")
        return [Volume(f"{name}#{k}", folder, uid) for k, uid in enumerate(sorted(series))]
    return [Volume(name, folder, next(iter(series)))] if series else []


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
    all_series = dicom_series(folder)
    if series is None:
        if len(all_series) != 1:
            listing = ", ".join(f"{uid} ({len(f)} files)" for uid, f in all_series.items())
            raise UserError(f"{folder} holds {len(all_series)} DICOM series ({listing}) — put each in its own folder")
        series = next(iter(all_series))
    slices = []
    for f in all_series.get(series, []):
        ds = dcmread(f)
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
    return check_array(arr, str(folder)), affine
