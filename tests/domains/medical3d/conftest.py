"""Tiny generated volumes (32³, MONAI's labelled synthetic maker) shared by the medical3d tests."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest


def write_volumes(out: Path, n: int = 4, size: int = 32, affine: np.ndarray | None = None) -> Path:
    """n labelled volumes as img/vNN.nii.gz + lab/vNN.nii.gz (labels 0..2)."""
    import nibabel as nib
    from monai.data import create_test_image_3d

    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "lab").mkdir(exist_ok=True)
    aff = np.eye(4) if affine is None else affine
    for i in range(n):
        im, seg = create_test_image_3d(size, size, size, num_objs=4, rad_max=8, rad_min=3, noise_max=0.2,
                                       num_seg_classes=2, channel_dim=None, random_state=np.random.RandomState(i))
        nib.save(nib.Nifti1Image(im.astype(np.float32), aff), out / "img" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), aff), out / "lab" / f"v{i}.nii.gz")
    return out



def write_itk(path: Path, arr: np.ndarray, ras_affine: np.ndarray) -> Path:
    """Write arr (x, y, z voxel order) with the geometry of a voxel -> RAS affine as NRRD/MHA through ITK (LPS)."""
    import itk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = itk.image_from_array(np.ascontiguousarray(arr.transpose(2, 1, 0)))    # ITK's numpy view is (z, y, x)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    itk.imwrite(image, str(path))
    return path


def oblique_affine() -> np.ndarray:
    """Axes permuted and flipped, rotated 30° about z, anisotropic voxels, an origin off zero."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0.0]])
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = rot @ np.diag([1.5, 0.8, 2.5]), [-20.0, 14.0, 3.0]
    return aff


# Never touch ~/.cache in tests: the preprocessing cache goes to a fresh temporary folder.
# It is removed when the test session ends.
os.environ["SSLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sslkit-m3d-cache-")
atexit.register(shutil.rmtree, os.environ["SSLKIT_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def volumes(tmp_path_factory) -> Path:  # noqa: ANN001
    return write_volumes(tmp_path_factory.mktemp("m3d-data"))

