"""`medical3d sample-data`: real bundled volumes (nilearn's MNI152 T1 with GM/WM tissue labels) plus a synthetic set.

Layout written under DIR:
  mri/images/mni152_t1.nii.gz, mri/labels/mni152_t1.nii.gz   real T1 + tissue labels (0 other, 1 GM, 2 WM)
  mri/dataset.json                                            class names (nnU-Net style "labels" mapping)
  mri/unlabelled/subject_XX.nii.gz                            the T1 under random affine warps + bias fields
                                                              (stand-ins for a population, for cross-volume pairs)
  mri/subject_labels/subject_XX.nii.gz                        the tissue labels under the same warps (nearest
                                                              neighbour): for scoring on held-out subjects only
  synthetic/images/vol_XX.nii.gz, synthetic/labels/...        MONAI create_test_image_3d spheres (labels 0..K-1)
  lesions/images/lesion_XX.nii.gz, lesions/labels/..., lesions/dataset.json
                                                              synthetic brain-tumour-like lesions with BraTS's
                                                              nested labels (1 necrosis, 2 edema, 4 enhancing rim)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sslkit.core.files import atomic_write_text
from sslkit.domains.medical3d.io import write_nifti


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0 = other, 1 = grey matter, 2 = white matter: the most probable of (1 − gm − wm, gm, wm)."""
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8)


def warped_subject(t1: np.ndarray, rng: np.random.Generator, label: np.ndarray | None = None, scale: float = 0.08,
                   angle_deg: float = 8.0) -> tuple[np.ndarray, np.ndarray | None]:
    """The template under a random affine (scale ±8 %, rotation ±8°, shift ±6 voxels) and a smooth bias field;
    `label` (if given) goes through the same affine by nearest neighbour. -> (image, warped label or None)."""
    from scipy.ndimage import affine_transform

    a = np.deg2rad(rng.uniform(-angle_deg, angle_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
    ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
    rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
    m = rx @ ry @ rz @ np.diag(1 + rng.uniform(-scale, scale, 3))
    c = np.asarray(t1.shape) / 2
    offset = c - m @ c + rng.uniform(-6, 6, 3)
    out = affine_transform(t1, m, offset=offset, order=1)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in t1.shape], indexing="ij"))
    bias = 1 + 0.15 * np.tensordot(rng.uniform(-1, 1, 3), grid, axes=1)
    warped = None if label is None else affine_transform(label, m, offset=offset, order=0)
    return (out * bias).astype(np.float32), warped


BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "enhancing tumour": 4}


def lesion_volume(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of a synthetic FLAIR-like brain lesion, BraTS's nesting: a necrotic core (1) inside an
    enhancing rim (4) inside edema (2), in an ellipsoid of tissue; the boundaries wobble with low-frequency noise
    and the image carries a bias field and Gaussian noise. Regions: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}."""
    from scipy.ndimage import gaussian_filter, zoom

    axes = [np.linspace(-1, 1, size)] * 3
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    brain = (grid ** 2 / rng.uniform(0.75, 0.95, 3)[:, None, None, None] ** 2).sum(0) < 1
    centre = rng.uniform(-0.35, 0.35, 3)
    wobble = zoom(rng.normal(0, 1, (6, 6, 6)), size / 6, order=3)[:size, :size, :size]
    dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) * (1 + 0.12 * wobble)
    r_edema, r_rim = rng.uniform(0.35, 0.5), rng.uniform(0.18, 0.28)
    r_core = r_rim * rng.uniform(0.45, 0.7)
    label = np.select([dist < r_core, dist < r_rim, dist < r_edema], [1, 4, 2], 0).astype(np.uint8) * brain
    texture = gaussian_filter(rng.normal(0, 1, (size,) * 3), 1.5)
    tissue = np.where(brain, 0.35 + 0.05 * texture / texture.std(), 0.0)
    image = np.select([label == 1, label == 4, label == 2], [0.25, 0.95, 0.65], tissue)
    bias = 1 + 0.05 * np.tensordot(rng.uniform(-1, 1, 3), grid, axes=1)
    image = (image * bias + rng.normal(0, 0.04, image.shape)) * brain
    return image.astype(np.float32), label


def write_lesions(out: Path, n: int, size: int = 64, seed: int = 0) -> int:
    """n `lesion_volume`s as out/images/lesion_XX.nii.gz + out/labels/... and out/dataset.json; returns n."""
    rng = np.random.default_rng(seed + 1)
    for i in range(n):
        image, label = lesion_volume(rng, size)
        write_nifti(out / "images" / f"lesion_{i:02d}.nii.gz", image, np.diag([2.0, 2.0, 2.0, 1.0]))
        write_nifti(out / "labels" / f"lesion_{i:02d}.nii.gz", label, np.diag([2.0, 2.0, 2.0, 1.0]))
    if n:
        atomic_write_text(out / "dataset.json", json.dumps({"labels": BRATS_LABELS}, indent=2))
    return n


def write_sample_data(out: Path, resolution: int = 2, subjects: int = 6, synthetic: int = 8, size: int = 64,
                      seed: int = 0, lesions: int = 0) -> dict[str, int]:
    """Write the layout above; returns counts of written volumes."""
    from monai.data import create_test_image_3d
    from nilearn import datasets

    rng = np.random.default_rng(seed)
    t1_img = datasets.load_mni152_template(resolution=resolution)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), np.float32)
    t1 = np.asarray(t1_img.get_fdata(), np.float32)
    affine = t1_img.affine
    labels = tissue_labels(gm, wm)
    write_nifti(out / "mri" / "images" / "mni152_t1.nii.gz", t1, affine)
    write_nifti(out / "mri" / "labels" / "mni152_t1.nii.gz", labels, affine)
    atomic_write_text(out / "mri" / "dataset.json",
                      json.dumps({"labels": {"background": 0, "grey matter": 1, "white matter": 2}}, indent=2))
    for i in range(subjects):
        image, label = warped_subject(t1, rng, labels)
        write_nifti(out / "mri" / "unlabelled" / f"subject_{i:02d}.nii.gz", image, affine)
        write_nifti(out / "mri" / "subject_labels" / f"subject_{i:02d}.nii.gz", label, affine)
    for i in range(synthetic):
        img, seg = create_test_image_3d(size, size, size, num_objs=6, rad_max=size // 6, rad_min=size // 16,
                                        noise_max=0.3, num_seg_classes=3, channel_dim=None,
                                        random_state=np.random.RandomState(seed * 1000 + i))
        write_nifti(out / "synthetic" / "images" / f"vol_{i:02d}.nii.gz", img.astype(np.float32), np.eye(4))
        write_nifti(out / "synthetic" / "labels" / f"vol_{i:02d}.nii.gz", seg.astype(np.uint8), np.eye(4))
    return {"mri_labelled": 1, "mri_unlabelled": subjects, "synthetic": synthetic,
            "lesions": write_lesions(out / "lesions", lesions, size, seed)}


def describe_counts(counts: dict[str, int]) -> str:
    """`write_sample_data`'s counts as the words `sample-data` prints ("1 labelled MRI, 6 unlabelled subjects, ...")."""
    def n(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    return ", ".join([n(counts["mri_labelled"], "labelled MRI", "labelled MRIs"),
                      n(counts["mri_unlabelled"], "unlabelled subject", "unlabelled subjects"),
                      n(counts["synthetic"], "synthetic volume", "synthetic volumes"),
                      n(counts["lesions"], "lesion", "lesions")])
