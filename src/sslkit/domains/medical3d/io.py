"""Reading and writing CT/MRI volume files: NIfTI and MGH/MGZ (nibabel), DICOM series (`dicom.py`), NRRD/MHA
(MONAI's ITK reader).

Every reader returns a float32 array in the file's voxel order plus its 4×4 affine
(voxel index -> RAS+ millimetres). Finding volumes lives in `discover.py`, what a volume
is and its output names in `volumes.py`, orientation, resampling and intensity presets in
`preprocess.py`; this module only decodes files and says clearly what is wrong with a bad one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.dicom import is_dicom_file, read_dicom
from sslkit.domains.medical3d.volumes import NIFTI, Volume, check_array, volume_suffix


def read_nifti(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI or MGH; of a 4-D file with `channel` set, only that channel is decoded."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        one = channel is not None and len(img.shape) == 4 and 1 < img.shape[3] and 0 <= channel < img.shape[3]
        arr = np.asanyarray(img.dataobj[..., channel] if one else img.dataobj)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for truncated or corrupt files
        kind = "MGH" if volume_suffix(path) in (".mgz", ".mgh") else "NIfTI"
        raise UserError(f"{path} is not a readable {kind} file ({type(exc).__name__}: {str(exc)[:80]}) — "
                        "re-export it or remove it") from None
    return check_array(arr, str(path), channel), np.asarray(img.affine, dtype=np.float64)


def read_itk(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NRRD/MHA through MONAI's ITKReader (needs the `itk` package)."""
    try:
        import itk  # noqa: F401
    except ImportError:
        raise UserError(f"{path}: reading {volume_suffix(path)} needs the itk package — pip install itk-io (part of "
                        "sslkit[medical3d]), or convert to NIfTI") from None
    from monai.data import ITKReader

    try:
        reader = ITKReader(affine_lps_to_ras=True)
        arr, meta = reader.get_data(reader.read(str(path)))
    except Exception as exc:  # ITK raises RuntimeError subclasses for bad files
        raise UserError(f"{path} is not readable by ITK ({type(exc).__name__}) — re-export it") from None
    return check_array(np.asarray(arr), str(path), channel), np.asarray(meta["affine"], dtype=np.float64)


def read_volume(vol: Volume | Path) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 voxels and the 4×4 voxel->RAS affine of one volume."""
    if isinstance(vol, Path):
        vol = Volume(vol.name, vol)
    if vol.path.is_dir() or is_dicom_file(vol.path):
        return read_dicom(vol.path if vol.path.is_dir() else vol.path.parent, vol.series)
    if volume_suffix(vol.path) in NIFTI:
        return read_nifti(vol.path, vol.channel)
    return read_itk(vol.path, vol.channel)


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
