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


# Never touch ~/.cache in tests: the preprocessing cache goes to a fresh temporary folder.
# It is removed when the test session ends.
os.environ["SSLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sslkit-m3d-cache-")
atexit.register(shutil.rmtree, os.environ["SSLKIT_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def volumes(tmp_path_factory) -> Path:  # noqa: ANN001
    return write_volumes(tmp_path_factory.mktemp("m3d-data"))
