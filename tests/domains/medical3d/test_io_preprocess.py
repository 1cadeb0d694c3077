"""Readers, bad input, orientation/resampling/intensity presets and the preprocessing cache."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.medical3d import dicom, discover, io, preprocess
from sslkit.domains.medical3d.preprocess import Settings, VolumeCache
from sslkit.domains.medical3d.transforms import crop
from sslkit.domains.medical3d.volumes import Volume, distinct_ids, output_stems, volume_stem
from tests.domains.medical3d.conftest import oblique_affine, write_itk


def _nii(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return path


def test_find_volumes_folder_datalist_and_empty(volumes: Path, tmp_path: Path) -> None:
    found = discover.find_volumes([volumes / "img"])
    assert [v.id for v in found] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz"]
    dl = tmp_path / "list.json"
    dl.write_text(json.dumps({"training": [{"image": str(volumes / "img" / "v1.nii.gz"),
                                            "label": str(volumes / "lab" / "v1.nii.gz")}]}))
    (v,) = discover.find_volumes([dl])
    assert v.path.name == "v1.nii.gz" and v.label.name == "v1.nii.gz"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no volumes found"):
        discover.find_volumes([tmp_path / "empty"])


def test_folder_scan_leaves_out_label_folders_and_hidden_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A Decathlon/nnU-Net-style tree: `pretrain Task/` must not read label maps or macOS `._` copies as images."""
    vol = np.zeros((8, 8, 8), np.float32)
    for rel in ["imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "imagesTs/b.nii.gz", "unlabelled/c.nii.gz",
                "sub/brain_masks/m.nii.gz", "subject_labels/s.nii.gz", ".cache/x.nii.gz"]:
        (tmp_path / "Task" / rel).parent.mkdir(parents=True, exist_ok=True)
        _nii(tmp_path / "Task" / rel, vol)
    (tmp_path / "Task" / "imagesTr" / "._a.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
    found = discover.find_volumes([tmp_path / "Task"])
    assert [v.id for v in found] == ["imagesTr/a.nii.gz", "imagesTs/b.nii.gz", "unlabelled/c.nii.gz"]
    note = " ".join(capsys.readouterr().err.split())
    assert "left out label folders under" in note and "labelsTr, sub/brain_masks, subject_labels" in note
    assert [v.id for v in discover.find_volumes([tmp_path / "Task" / "labelsTr"])] == ["a.nii.gz"]   # given: read


def test_decathlon_datalist_all_images_for_pretraining_training_pairs_for_finetuning(volumes: Path, tmp_path: Path) -> None:
    img = volumes / "img"
    dl = tmp_path / "dataset.json"                                      # the Decathlon's layout: test images as strings
    dl.write_text(json.dumps({"training": [{"image": str(img / "v0.nii.gz"), "label": str(volumes / "lab" / "v0.nii.gz")}],
                              "test": [str(img / "v1.nii.gz"), str(img / "v2.nii.gz")]}))
    train = discover.find_volumes([dl])
    assert [v.path.name for v in train] == ["v0.nii.gz"] and train[0].label.name == "v0.nii.gz"
    every = discover.find_volumes([dl], discover.UNLABELLED_SECTIONS)
    assert [v.path.name for v in every] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    assert all(v.label is None for v in every)


def test_volume_ids_keep_dotted_names_and_sub_folders_and_clashes_get_the_shortest_distinct_path(
        tmp_path: Path) -> None:
    """Output names (`volume_stem`): only the volume suffix goes, sub-folders stay, nothing absolute or above the
    output folder. Clashing ids become the shortest trailing path that tells them apart, not absolute paths."""
    assert volume_stem("case.001.nii.gz") == "case.001" and volume_stem("s1/T1.NII.GZ") == "s1/T1"
    assert volume_stem("./imagesTr/a.mha") == "imagesTr/a" and volume_stem("/x/../y/b.nrrd") == "x/y/b"
    vol = np.zeros((4, 4, 4), np.float32)
    for rel in ["s1/t1.nii.gz", "s2/t1.nii.gz", "case.001.nii.gz", "case.002.nii.gz", "deep/a/x/t2.nii.gz",
                "deep/b/x/t2.nii.gz"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        _nii(tmp_path / rel, vol)
    found = discover.find_volumes([tmp_path / "s1", tmp_path / "s2", tmp_path / "case.001.nii.gz",
                             tmp_path / "case.002.nii.gz", tmp_path / "deep" / "a" / "x", tmp_path / "deep" / "b" / "x"])
    ids = [v.id for v in found]
    assert ids == ["s1/t1.nii.gz", "s2/t1.nii.gz", "case.001.nii.gz", "case.002.nii.gz", "a/x/t2.nii.gz",
                   "b/x/t2.nii.gz"]
    assert output_stems(ids) == ["s1/t1", "s2/t1", "case.001", "case.002", "a/x/t2", "b/x/t2"]
    dicom = [Volume("ser1", Path("/pacs/pat1/ser1"), "1.2"), Volume("ser1", Path("/pacs/pat2/ser1"), "1.3"),
             Volume("ct#0", Path("/pacs/ct"), "1.4"), Volume("ct#1", Path("/pacs/ct"), "1.5")]
    assert [v.id for v in distinct_ids(dicom)] == ["pat1/ser1", "pat2/ser1", "ct#0", "ct#1"]
    dl = tmp_path / "list.json"                                       # absolute datalist entries: named by file
    dl.write_text(json.dumps({"training": [{"image": str(tmp_path / "case.001.nii.gz")}, {"image": "s1/t1.nii.gz"}]}))
    assert [v.id for v in discover.find_volumes([dl])] == ["case.001.nii.gz", "s1/t1.nii.gz"]
    _nii(tmp_path / "s1" / "T1.nii", vol)                  # t1.nii.gz beside T1.nii: no path tells them apart
    clash = discover.find_volumes([tmp_path / "s1", tmp_path / "s2"])
    assert [v.id for v in clash] == ["T1.nii", "t1.nii.gz", "s2/t1.nii.gz"]
    with pytest.raises(UserError, match=r"T1.nii and t1.nii.gz would both be written as t1.nii.gz \(names compared "
                                        r"ignoring case\) — rename one"):
        output_stems([v.id for v in clash])
    with pytest.raises(UserError, match="a.nii.gz and a_probabilities.nii.gz would both be written as a_prob"):
        output_stems(["a.nii.gz", "a_probabilities.nii.gz"], (".nii.gz", "_probabilities.nii.gz"))


@pytest.mark.parametrize("shape,match", [((8, 8, 8, 3), "4-D"), ((16, 16), "not a 3-D volume")])
def test_4d_and_2d_inputs_are_errors(tmp_path: Path, shape: tuple, match: str) -> None:
    p = _nii(tmp_path / "x.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(UserError, match=match):
        io.read_volume(p)


def test_channel_setting_reads_one_channel_or_splits_4d_files(tmp_path: Path) -> None:
    """data.channel: N decodes channel N of a 4-D file (3-D files as they are); split lists each channel as a volume."""
    rng = np.random.default_rng(0)
    four = rng.normal(size=(8, 9, 10, 3)).astype(np.float32)
    vector = four[:, :, :, None, :]                                  # NIfTI vector layout (X, Y, Z, 1, C)
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    _nii(tmp_path / "multi.nii.gz", four, affine)
    _nii(tmp_path / "vector.nii.gz", vector, affine)
    _nii(tmp_path / "plain.nii.gz", four[..., 0].copy(), affine)
    found = discover.find_volumes([tmp_path])
    with pytest.raises(UserError, match=r"multi\.nii\.gz is 4-D .* data\.channel=N .* data\.channel=split"):
        io.read_volume(found[0])
    split = discover.select_channels(found, "split", "pretrain")
    assert [v.id for v in split] == ["multi.nii.gz#c0", "multi.nii.gz#c1", "multi.nii.gz#c2", "plain.nii.gz",
                                     "vector.nii.gz#c0", "vector.nii.gz#c1", "vector.nii.gz#c2"]
    for v in split:
        arr, aff = io.read_volume(v)
        assert arr.shape == (8, 9, 10) and np.allclose(aff, affine)
        assert np.array_equal(arr, four[..., v.channel if v.channel is not None else 0])
    one = discover.select_channels(found, 2, "embed")
    assert [v.id for v in one] == ["multi.nii.gz", "plain.nii.gz", "vector.nii.gz"]
    assert np.array_equal(io.read_volume(one[0])[0], four[..., 2])
    assert np.array_equal(io.read_volume(one[2])[0], four[..., 2])
    assert np.array_equal(io.read_volume(one[1])[0], four[..., 0])   # a 3-D volume is read as it is
    with pytest.raises(UserError, match="has 3 channels, so data.channel=5 does not exist — use 0..2"):
        io.read_volume(discover.select_channels(found, 5, "finetune")[0])
    assert volume_stem("sub/multi.nii.gz#c2") == "sub/multi_c2" and volume_stem("series#1") == "series#1"
    cache = VolumeCache(tmp_path / "cache", Settings(modality="mri", spacing=None))
    keys = {cache.key(v) for v in split[:3]} | {cache.key(found[0])}
    assert len(keys) == 4                                             # every channel has its own cache entry
    _, first = cache.get(Volume("sub/plain.nii.gz", tmp_path / "plain.nii.gz"))
    _, again = cache.get(Volume("plain.nii.gz", tmp_path / "plain.nii.gz"))   # a hit, listed another way
    assert first["id"] == "sub/plain.nii.gz" and again["id"] == "plain.nii.gz"


def test_all_channels_preprocess_crop_and_inflate_the_encoder(tmp_path: Path) -> None:
    """data.channel=all: (C, X, Y, Z) in the cache, each channel scaled on its own; crops keep the channels; the
    encoder's first convolution widened so that C equal channels give the 1-channel response."""
    import torch

    from sslkit.domains.medical3d.datasets import LabelledCrops
    from sslkit.domains.medical3d.model import ConvEncoder3d
    from sslkit.domains.medical3d.segmentation import inflate_input

    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, size=(20, 18, 16)).astype(np.float32)
    four = np.stack([base * 100, base * 3 + 50, base ** 2], -1)          # three contrasts, very different ranges
    _nii(tmp_path / "m.nii.gz", four, np.diag([-2.0, 2.0, 2.0, 1.0]))    # LAS: reoriented with its channels
    _nii(tmp_path / "m_lab.nii.gz", (base > 1.5).astype(np.uint8), np.diag([-2.0, 2.0, 2.0, 1.0]))
    listed = [Volume("m", tmp_path / "m.nii.gz", label=tmp_path / "m_lab.nii.gz")]
    (vol,) = discover.select_channels(listed, "all", "finetune")
    cache = VolumeCache(tmp_path / "cache", Settings(modality="mri", spacing=None, crop_foreground=False))
    npy, meta = cache.get(vol)
    image = np.load(npy).astype(np.float32)
    assert image.shape == (3, 20, 18, 16) and meta["shape"] == [20, 18, 16] and meta["channels"] == 3
    for c in range(3):                                  # each channel on its own [0, 1] scale, flipped to RAS
        ref = preprocess.scale_intensity(np.flip(four[..., c], 0).copy(), Settings(modality="mri"))
        np.testing.assert_allclose(image[c], ref, atol=1e-3)
    label = np.load(meta["label"])
    assert label.shape == (20, 18, 16) and np.array_equal(label, np.flip(base > 1.5, 0))
    item = LabelledCrops([(npy, meta)], 8, 2)[0]
    assert item["image"].shape == (3, 8, 8, 8) and item["label"].shape == (8, 8, 8)
    assert crop(image, np.array([10, 9, 8]), 8).shape == (3, 8, 8, 8)
    torch.manual_seed(0)
    enc = ConvEncoder3d([8, 16]).eval()
    x = torch.rand(1, 1, 8, 8, 8)
    before = enc(x)
    assert inflate_input(enc, 3) == 3
    torch.testing.assert_close(enc(x.repeat(1, 3, 1, 1, 1)), before, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="pretrained on 3 input channels and the images have 2"):
        inflate_input(enc, 2)


def test_nan_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    arr = np.ones((8, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    with pytest.raises(UserError, match=r"nan\.nii\.gz has 1 NaN/Inf"):
        io.read_volume(_nii(tmp_path / "nan.nii.gz", arr))
    arr[1, 2, 3] = 1.0
    arr[0, 0, 0], arr[7, 7, 7] = np.inf, -np.inf                     # +inf and -inf together (their sum is NaN)
    with pytest.raises(UserError, match=r"inf\.nii\.gz has 2 NaN/Inf"):
        io.read_volume(_nii(tmp_path / "inf.nii.gz", arr))
    big = np.full((8, 8, 8), 3e38, np.float32)                       # finite, but a float32 sum would overflow
    assert io.read_volume(_nii(tmp_path / "big.nii.gz", big))[0].max() == np.float32(3e38)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header at all" * 10))
    with pytest.raises(UserError, match="broken.nii.gz is not a readable NIfTI"):
        io.read_volume(bad)


def _dicom_series(folder: Path, vol: np.ndarray, uid: str, spacing: float = 2.0, number: int | None = None,
                  description: str | None = None) -> None:
    """Write vol (cols, rows, slices) as an axial DICOM series with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset(str(folder / f"{uid}_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, meta.MediaStorageSOPInstanceUID
        if number is not None:
            ds.SeriesNumber, ds.SeriesDescription = number, description
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing)]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(str(folder / f"{uid}_{k}.dcm"), enforce_file_format=True)


def test_dicom_series_roundtrip_and_several_series(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vol = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    vol[::-1] = vol  # not symmetric along any axis
    _dicom_series(tmp_path / "ct", vol[:, :, ::-1].copy(), "1.2.3.4")
    (v,) = discover.find_volumes([tmp_path / "ct"])
    assert v.id == "ct"                                      # the series folder given itself is named after it
    arr, affine = io.read_volume(v)
    np.testing.assert_array_equal(arr, vol[:, :, ::-1] - 1024)     # HU = raw + intercept, slices in z order
    np.testing.assert_allclose(np.diag(affine)[:3], [-1.0, -1.0, 2.0])  # LPS -> RAS flips x and y; 2 mm slices
    _dicom_series(tmp_path / "ct", vol, "1.2.3.5", number=3, description="T1 MPRAGE")   # a second series in the folder
    found = discover.find_volumes([tmp_path / "ct"])
    assert len(found) == 2 and {f.series for f in found} == {"1.2.3.4", "1.2.3.5"}
    listing = " ".join(capsys.readouterr().err.split())      # listed as a PACS viewer names them
    assert "#0 4 files, UID …1.2.3.4; #1 series 3 'T1 MPRAGE', 4 files, UID …1.2.3.5" in listing, listing
    assert [f.id for f in discover.find_volumes([tmp_path])] == ["ct#0", "ct#1"]       # found below a given folder
    with pytest.raises(UserError, match="holds 2 DICOM series"):
        dicom.read_dicom(tmp_path / "ct", None)


def _transcode(src: Path, dst: Path, syntax: str) -> None:
    """Rewrite one DICOM file with GDCM in another transfer syntax (e.g. JPEGLosslessProcess14_1)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def test_dicom_export_tree_without_extensions_compressed_and_non_images(tmp_path: Path) -> None:
    """A PACS-style export: slices named by number or UID without .dcm, JPEG-lossless and JPEG-LS compressed, a
    DICOMDIR, a report object and a text file beside them: one volume, the same voxels as the plain series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) * 37) % 3000
    _dicom_series(tmp_path / "plain", vol, "1.2.3.4")
    expected, expected_aff = io.read_volume(discover.find_volumes([tmp_path / "plain"])[0])
    series = tmp_path / "export" / "patient" / "study" / "series1"
    series.mkdir(parents=True)
    for k, f in enumerate(sorted((tmp_path / "plain").glob("*.dcm"))):
        name, syntax = ((f"IM{k:04d}", "JPEGLosslessProcess14_1") if k % 2 else
                        (f"1.3.12.2.1107.5.1.{k}", "JPEGLSLossless"))
        _transcode(f, series / name, syntax)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    report = FileDataset(str(series / "SR0001"), {}, file_meta=meta, preamble=b"\0" * 128)
    report.SeriesInstanceUID = "9.9.9"                                  # a basic text report: no pixel rows
    report.save_as(str(series / "SR0001"), enforce_file_format=True)
    (series.parent / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (series / "notes.txt").write_text("acquired on a Tuesday")
    (vol_,) = discover.find_volumes([tmp_path / "export"])
    assert vol_.id == "patient/study/series1" and vol_.series == "1.2.3.4"
    arr, aff = io.read_volume(vol_)
    np.testing.assert_array_equal(arr, expected)
    np.testing.assert_allclose(aff, expected_aff)
    (one,) = discover.find_volumes([series / "IM0001"])                      # one slice given: its series
    np.testing.assert_array_equal(io.read_volume(one)[0], expected)


def test_jpeg2000_series_decodes(tmp_path: Path) -> None:
    """A JPEG 2000 series shipped with the tests (see data/j2k_series/README.md) reads like the same series raw."""
    vol = (np.arange(40 * 36 * 6, dtype=np.int16).reshape(40, 36, 6) * 7) % 3000
    _dicom_series(tmp_path / "raw", vol, "1.2.9")
    expected = io.read_volume(discover.find_volumes([tmp_path / "raw"])[0])
    (j2k,) = discover.find_volumes([Path(__file__).parent / "data" / "j2k_series"])
    got = io.read_volume(j2k)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1])


def test_dicom_missing_duplicate_multiframe_and_undecodable(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, generate_uid

    vol = np.arange(6 * 5 * 5, dtype=np.int16).reshape(6, 5, 5)
    _dicom_series(tmp_path / "gap", vol, "1.2.3")
    (tmp_path / "gap" / "1.2.3_2.dcm").unlink()                        # slices at 0, 2, 6, 8 mm
    with pytest.raises(UserError, match=r"2 mm but 4 mm between the slices at 2.0 and 6.0 mm \(a missing slice\?\)"):
        io.read_volume(discover.find_volumes([tmp_path / "gap"])[0])
    _dicom_series(tmp_path / "echoes", vol, "1.2.4")
    for f in sorted((tmp_path / "echoes").glob("*.dcm")):              # a second echo at the same positions
        ds = dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(str(f.with_name("echo2_" + f.name)))
    with pytest.raises(UserError, match="10 slices at only 5 positions"):
        io.read_volume(discover.find_volumes([tmp_path / "echoes"])[0])
    _dicom_series(tmp_path / "mf", vol, "1.2.5")
    files = sorted((tmp_path / "mf").glob("*.dcm"))
    ds = dcmread(files[0])
    ds.NumberOfFrames, ds.PixelData = 5, np.ascontiguousarray(vol.transpose(2, 1, 0)).tobytes()
    ds.save_as(str(files[0]))
    with pytest.raises(UserError, match="holds 5 frames"):
        io.read_volume(discover.find_volumes([tmp_path / "mf"])[0])
    _dicom_series(tmp_path / "j2k", vol, "1.2.6")
    first = sorted((tmp_path / "j2k").glob("*.dcm"))[0]
    ds = dcmread(first)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    ds.save_as(str(first))
    with pytest.raises(UserError, match=r"unreadable DICOM pixel data .*transfer syntax JPEG 2000"):
        io.read_volume(discover.find_volumes([tmp_path / "j2k"])[0])


def test_ras_roundtrip_resampling_and_intensity() -> None:
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    lps = np.diag([-1.0, -2.0, 3.0, 1.0])                             # x and y flipped, 2 mm / 3 mm voxels
    ras, aff, orient = preprocess.to_ras(arr, lps)
    np.testing.assert_array_equal(ras, arr[::-1, ::-1, :])
    assert np.all(np.diag(aff)[:3] > 0)
    np.testing.assert_array_equal(preprocess.from_ras(ras, orient), arr)
    assert preprocess.target_shape((10, 10, 10), np.array([1.0, 2.0, 3.0]), (2.0, 2.0, 1.5)) == (5, 10, 20)
    ct = Settings(modality="ct", hu_window=(-1000, 1000))
    np.testing.assert_allclose(preprocess.scale_intensity(np.array([-2000, 0, 500, 3000], np.float32), ct), [0, .5, .75, 1])


def test_modality_auto_per_volume_and_mismatch_warnings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """auto scales a volume holding air (< -500) as CT and one without as MRI, exactly as the explicit settings do;
    an explicit modality that the intensities contradict gets a warning (the HU window would clip MRI silently)."""
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 1500, (12, 12, 12)).astype(np.float32)     # air to bone, in HU
    mri = rng.uniform(0, 900, (12, 12, 12)).astype(np.float32)         # magnitude MRI: nothing negative
    for arr, truth in ((ct, "ct"), (mri, "mri")):
        auto = preprocess.preprocess(arr, np.eye(4), Settings(modality="auto", spacing=None, crop_foreground=False))
        explicit = preprocess.preprocess(arr, np.eye(4), Settings(modality=truth, spacing=None, crop_foreground=False))
        assert auto["meta"]["modality"] == truth
        np.testing.assert_array_equal(auto["image"], explicit["image"])
    vols = [Volume(n, _nii(tmp_path / f"{n}.nii.gz", a)) for n, a in (("ct", ct), ("mri", mri))]
    preprocess.prepare(vols, VolumeCache(tmp_path / "c", Settings(modality="auto")), strict=True)
    assert "modality auto: 1 CT" in " ".join(capsys.readouterr().err.split())
    preprocess.prepare(vols, VolumeCache(tmp_path / "c", Settings(modality="ct")), strict=True)
    assert "1 of 2 volumes have no voxel below -200" in " ".join(capsys.readouterr().err.split())
    preprocess.prepare(vols, VolumeCache(tmp_path / "c", Settings(modality="mri")), strict=True)
    assert "1 of 2 volumes hold values below -500" in " ".join(capsys.readouterr().err.split())


def test_cache_hit_invalidation_and_undo(volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = Volume("v0", volumes / "img" / "v0.nii.gz", label=volumes / "lab" / "v0.nii.gz")
    s = Settings(modality="mri", spacing=(2.0, 2.0, 2.0), crop_foreground=True)
    npy, meta = VolumeCache(tmp_path, s).get(vol)
    assert tuple(np.load(npy).shape) == tuple(meta["shape"]) and max(meta["shape"]) <= 16
    monkeypatch.setattr(preprocess, "read_volume", lambda v: (_ for _ in ()).throw(AssertionError("re-read")))
    assert VolumeCache(tmp_path, s).get(vol)[0] == npy                   # hit: no decoding
    with pytest.raises(AssertionError, match="re-read"):                 # another setting: a new entry
        VolumeCache(tmp_path, Settings(modality="mri", spacing=(1.0, 1.0, 1.0))).get(vol)
    label = np.load(meta["label"])
    back = preprocess.undo_preprocess(label, meta)
    assert back.shape == (32, 32, 32)
    orig = np.asarray(nib.load(vol.label).dataobj)
    assert (back == orig).mean() > 0.9                                   # 2 mm and back: most voxels agree


def test_probabilities_go_back_to_the_file_grid_finer_than_a_nearest_label_map(tmp_path: Path) -> None:
    """A 1 mm ball (oblique file axes) preprocessed at 3 mm: the ideal class probabilities on the 3 mm grid (the 1 mm
    one-hot averaged over each voxel), resampled trilinearly back to 1 mm and then decoded, find the ball's surface
    better than the 3 mm label map put back by nearest neighbour; as region outputs they paint the same map; without
    resampling both ways give the same map."""
    from sslkit.domains.medical3d.segmentation import decode, dice_per_class

    aff = oblique_affine()
    aff[:3, :3] /= np.linalg.norm(aff[:3, :3], axis=0)                     # 1 mm voxels, axes permuted and rotated
    grid = np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"))
    ball = (np.sqrt(((grid - 23.5) ** 2).sum(0)) < 13.2).astype(np.uint8)
    nib.save(nib.Nifti1Image(ball.astype(np.float32) + 0.5, aff), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(ball, aff), tmp_path / "lab.nii.gz")
    vol = Volume("v", tmp_path / "img.nii.gz", label=tmp_path / "lab.nii.gz")
    for spacing in ((3.0, 3.0, 3.0), None):
        _, meta = VolumeCache(tmp_path / "cache", Settings(modality="mri", spacing=spacing)).get(vol)
        ras = preprocess.to_ras(ball.astype(np.float32), aff)[0]
        fg = preprocess.resample(ras, tuple(meta["resampled_shape"]))[tuple(slice(a, b) for a, b in meta["box"])]
        probs = np.stack([1 - fg, fg]).astype(np.float32)
        nearest = preprocess.undo_preprocess(decode(probs), meta)
        linear = decode(preprocess.FileGridProbabilities(probs, meta))
        dice = [dice_per_class(m, ball.astype(np.int16), 2)[0] for m in (nearest, linear)]
        if spacing is None:
            np.testing.assert_array_equal(linear, nearest)
        else:
            assert dice[1] > dice[0] + 0.015 and dice[1] > 0.94, dice          # measured 0.950 vs 0.925
            regions = preprocess.FileGridProbabilities(probs[1:], meta, sigmoid=True)
            np.testing.assert_array_equal(decode(regions, [(0, 1)]), linear)


def test_label_geometry_mismatch_and_bad_file_skipped(volumes: Path, tmp_path: Path) -> None:
    lab = _nii(tmp_path / "lab.nii.gz", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(UserError, match=r"has shape \(30, 32, 32\) but image .* has \(32, 32, 32\)"):
        VolumeCache(tmp_path / "c", Settings()).get(Volume("v", volumes / "img" / "v0.nii.gz", label=lab))
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 3.0, 4.0]                                  # the same grid, moved 5 mm
    lab = _nii(tmp_path / "moved.nii.gz", np.zeros((32, 32, 32), np.uint8), shifted)
    with pytest.raises(UserError, match=r"has the shape of image .* but another affine \(voxels up to 5 mm apart\)"):
        VolumeCache(tmp_path / "c", Settings()).get(Volume("v", volumes / "img" / "v0.nii.gz", label=lab))
    scaled = _nii(tmp_path / "scaled.nii.gz", np.zeros((32, 32, 32), np.uint8), np.diag([1.0, 1.0, 1.1, 1.0]))
    with pytest.raises(UserError, match=r"voxels up to 3.1 mm apart"):       # 0.1 mm per slice, 31 slices
        VolumeCache(tmp_path / "c", Settings()).get(Volume("v", volumes / "img" / "v0.nii.gz", label=scaled))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    good = Volume("v0", volumes / "img" / "v0.nii.gz")
    ok, skipped = preprocess.prepare([good, Volume("bad", bad)], VolumeCache(tmp_path / "c", Settings()), strict=False)
    assert len(ok) == 1 and skipped[0]["id"] == "bad" and "bad.nii.gz" in skipped[0]["reason"]
    with pytest.raises(UserError, match="bad.nii.gz"):
        preprocess.prepare([good, Volume("bad", bad)], VolumeCache(tmp_path / "c", Settings()), strict=True)


def test_crop_pads_when_roi_exceeds_volume() -> None:
    vol = np.ones((10, 12, 8), np.float32)
    out = crop(vol, np.array([5.0, 6.0, 4.0]), 16)
    assert out.shape == (16, 16, 16) and out.sum() == 10 * 12 * 8      # everything inside, zero padding around


def test_foreground_box_and_moments_match_voxel_coordinates() -> None:
    """The projection-based box and moments equal the direct computation over the foreground voxels' coordinates."""
    rng = np.random.default_rng(1)
    arr = np.zeros((30, 40, 25), np.float32)
    arr[3:21, 5:33, 2:20] = rng.random((18, 28, 18)).astype(np.float32)
    idx = np.argwhere(arr > 0.05)
    lo, hi = np.maximum(idx.min(0) - 4, 0), np.minimum(idx.max(0) + 5, arr.shape)
    assert preprocess.foreground_box(arr, 0.05, 4) == tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    com, std = preprocess.moments(arr, 0.05)
    np.testing.assert_allclose(com, idx.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, idx.std(0), rtol=1e-9)
    assert preprocess.foreground_box(np.zeros((4, 5, 6), np.float32), 0.05, 4) == (slice(0, 4), slice(0, 5), slice(0, 6))
    assert preprocess.moments(np.zeros((4, 8, 8), np.float32), 0.05) == ([2.0, 4.0, 4.0], [1.0, 2.0, 2.0])


def test_sample_data_warped_subjects_come_with_their_labels(tmp_path: Path) -> None:
    """sample-data: each warped subject's tissue labels went through the subject's own warp (held-out-subject scoring)."""
    from sslkit.domains.medical3d.samples import write_sample_data

    counts = write_sample_data(tmp_path, resolution=2, subjects=2, synthetic=0)
    assert counts["mri_unlabelled"] == 2
    t1_label = np.asarray(nib.load(tmp_path / "mri" / "labels" / "mni152_t1.nii.gz").dataobj)
    for i in range(2):
        image = nib.load(tmp_path / "mri" / "unlabelled" / f"subject_{i:02d}.nii.gz")
        label = nib.load(tmp_path / "mri" / "subject_labels" / f"subject_{i:02d}.nii.gz")
        img, lab = image.get_fdata(), np.asarray(label.dataobj)
        assert lab.shape == img.shape and np.allclose(label.affine, image.affine)
        assert set(np.unique(lab)) == {0, 1, 2}                        # nearest neighbour: still tissue classes
        assert (img[lab > 0] > 0).mean() > 0.99                        # tissue labels lie on the warped brain
        assert (lab != t1_label).mean() > 0.01                         # ... which moved away from the template



@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr"])
def test_nrrd_and_mha_read_like_the_same_nifti(tmp_path: Path, suffix: str) -> None:
    """NRRD/MHA (ITK, LPS on disk) give the same voxels and voxel->RAS affine as a NIfTI of the same volume."""
    arr = np.random.default_rng(0).random((7, 9, 5)).astype(np.float32)
    aff = oblique_affine()
    ref_arr, ref_aff = io.read_volume(_nii(tmp_path / "v.nii.gz", arr, aff))
    (vol,) = discover.find_volumes([write_itk(tmp_path / f"v{suffix}", arr, aff)])
    got_arr, got_aff = io.read_volume(vol)
    np.testing.assert_array_equal(got_arr, ref_arr)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-5)
    ras, ras_aff, _ = preprocess.to_ras(got_arr, got_aff)             # and the same canonical frame downstream
    np.testing.assert_array_equal(ras, preprocess.to_ras(ref_arr, ref_aff)[0])


def test_freesurfer_mgz_reads_like_the_same_nifti(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).random((7, 9, 5)).astype(np.float32)
    ref = io.read_volume(_nii(tmp_path / "v.nii.gz", arr, oblique_affine()))
    nib.save(nib.MGHImage(arr, oblique_affine()), tmp_path / "brain.mgz")
    (vol,) = discover.find_volumes([tmp_path / "brain.mgz"])
    got = io.read_volume(vol)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
    (tmp_path / "bad.mgz").write_bytes(b"not an mgh volume")
    with pytest.raises(UserError, match="bad.mgz is not a readable MGH file"):
        io.read_volume(tmp_path / "bad.mgz")


def test_corrupt_nrrd_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "scan.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\nencoding: raw\n\n" + b"\0" * 10)
    with pytest.raises(UserError, match=r"scan\.nrrd is not readable by ITK"):
        io.read_volume(bad)


def test_oblique_sagittal_dicom_series_gets_the_full_hand_computed_affine(tmp_path: Path) -> None:
    """A sagittal series tilted 20° about the LPS z axis, with unequal pixel spacing (0.7 mm between rows, 1.3 mm
    between columns), 2.5 mm slices, an origin off zero and the files written in shuffled order: the whole 4×4
    voxel -> RAS affine against one worked out from the DICOM definitions, and each voxel's value where it was put."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    row_dir = rot @ [0.0, 1.0, 0.0]          # along a row (column index grows): anterior -> posterior, tilted
    col_dir = rot @ [0.0, 0.0, -1.0]         # down a column (row index grows): head -> feet
    normal = np.cross(row_dir, col_dir)      # = rot @ [-1, 0, 0]
    row_spacing, col_spacing, step = 0.7, 1.3, 2.5
    origin = np.array([-30.5, 12.25, 40.0])
    vol = np.arange(5 * 6 * 4, dtype=np.int16).reshape(5, 6, 4)   # (cols, rows, slices), every value distinct
    folder = tmp_path / "sag"
    folder.mkdir()
    uid = "1.2.3.9"
    for k in (2, 0, 3, 1):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.ImageOrientationPatient = [*map(float, row_dir), *map(float, col_dir)]
        ds.ImagePositionPatient = [*map(float, origin + k * step * normal)]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).tobytes()
        ds.save_as(str(folder / f"s{k}.dcm"), enforce_file_format=True)
    arr, affine = dicom.read_dicom(folder, None)
    # DICOM: pixel (row r, column c) of slice k lies at IPP_k + c·col_spacing·row_dir + r·row_spacing·col_dir (LPS)
    c, s = np.cos(t), np.sin(t)
    lps = np.array([[-s * 1.3, 0.0, -c * 2.5, -30.5],
                    [c * 1.3, 0.0, -s * 2.5, 12.25],
                    [0.0, -0.7, 0.0, 40.0],
                    [0.0, 0.0, 0.0, 1.0]])
    want = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps           # LPS -> RAS: x and y change sign
    np.testing.assert_allclose(affine, want, atol=1e-6)
    # representation-free: the RAS point of each value, by the returned (array, affine), is where it was written
    for value in (0, 7, 33, 119):
        i, j, k = np.argwhere(vol == value)[0]
        got = affine @ [*np.argwhere(arr == value)[0], 1.0]
        put = origin + k * step * normal + i * col_spacing * row_dir + j * row_spacing * col_dir
        np.testing.assert_allclose(got[:3], [-put[0], -put[1], put[2]], atol=1e-4)
