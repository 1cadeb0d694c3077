"""End to end through the CLI on tiny generated volumes: pretrain (both methods), embed, export/load_encoder,
finetune with NIfTI predictions, bad input, resume after SIGTERM, torchrun with 2 processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sslkit
from sslkit.cli import app
from tests.helpers import sigterm_at_first_checkpoint

runner = CliRunner()


def invoke(*args):  # noqa: ANN002, ANN201
    return runner.invoke(app, ["medical3d", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_run(volumes: Path, tmp_path_factory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("m3d-runs") / "alice"
    res = invoke("pretrain", volumes / "img", "-r", "tiny", "--out", out)
    assert res.exit_code == 0, res.output
    return out


def test_pretrain_writes_run_and_loadable_encoder(tiny_run: Path, tmp_path: Path) -> None:
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 6 and all(np.isfinite(m["loss"]) for m in metrics)
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["medical3d"]["volumes"] == 4 and manifest["medical3d"]["skipped_count"] == 0
    from matplotlib.image import imread

    height = imread(tiny_run / "plots" / "loss.png").shape[0]
    assert height > 600                                  # two panels: the total and Alice's global/patch/recon terms
    res = invoke("export", tiny_run, "--out", tmp_path / "enc")
    assert res.exit_code == 0, res.output
    enc = sslkit.load_encoder(tmp_path / "enc")
    ref = sslkit.load_encoder(tiny_run)
    x = torch.rand(1, 1, 32, 32, 32)
    torch.testing.assert_close(enc(x), ref(x))
    assert enc(x).shape == (1, 128)


def test_embed_parquet_with_ids_and_grids(tiny_run: Path, volumes: Path, tmp_path: Path) -> None:
    from sslkit.core.embeddings import read_embeddings

    out = tmp_path / "emb.parquet"
    res = invoke("embed", tiny_run, volumes / "img", "--out", out, "--grid-dir", tmp_path / "grids")
    assert res.exit_code == 0, res.output
    ids, vecs = read_embeddings(out)
    assert list(ids) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz"] and vecs.shape == (4, 128)
    assert not np.allclose(vecs[0], vecs[1])
    assert np.load(tmp_path / "grids" / "v0.npy").shape == (128, 2, 2, 2)
    again = invoke("embed", tiny_run, volumes / "img", "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_embed_reads_nrrd_and_mha_like_nifti(tiny_run: Path, volumes: Path, tmp_path: Path) -> None:
    """One volume with an oblique geometry as NIfTI, NRRD and MHA in one folder: three identical embeddings."""
    from sslkit.core.embeddings import read_embeddings
    from tests.domains.medical3d.conftest import oblique_affine, write_itk

    arr = np.asarray(nib.load(volumes / "img" / "v0.nii.gz").dataobj, dtype=np.float32)
    (tmp_path / "mixed").mkdir()
    nib.save(nib.Nifti1Image(arr, oblique_affine()), tmp_path / "mixed" / "a.nii.gz")
    write_itk(tmp_path / "mixed" / "b.nrrd", arr, oblique_affine())
    write_itk(tmp_path / "mixed" / "c.mha", arr, oblique_affine())
    res = invoke("embed", tiny_run, tmp_path / "mixed", "--out", tmp_path / "emb.parquet")
    assert res.exit_code == 0, res.output
    ids, vecs = read_embeddings(tmp_path / "emb.parquet")
    assert list(ids) == ["a.nii.gz", "b.nrrd", "c.mha"]
    np.testing.assert_allclose(vecs[1], vecs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vecs[2], vecs[0], rtol=1e-5, atol=1e-6)
    plain = tmp_path / "plain.parquet"                          # the same voxels with an identity affine
    assert invoke("embed", tiny_run, volumes / "img" / "v0.nii.gz", "--out", plain).exit_code == 0
    assert not np.allclose(read_embeddings(plain)[1][0], vecs[0], atol=1e-4)   # the geometry was applied


def test_finetune_writes_dice_and_predictions_on_input_grid(tiny_run: Path, tmp_path: Path) -> None:
    from tests.domains.medical3d.conftest import write_volumes

    flipped = np.diag([-1.5, 1.5, 2.0, 1.0])                       # LAS with anisotropic voxels: orientation matters
    data = write_volumes(tmp_path / "d", n=3, affine=flipped)
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "sphere": 1}}))  # nnU-Net style; class 2 unnamed
    res = invoke("finetune", tiny_run, data / "img", data / "lab", "--train", "2", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ft" / "evaluation.json").read_text())
    assert list(ev["dice_per_volume"]) == ["v2.nii.gz"] and len(ev["dice_per_class"]) == 2
    assert list(ev["hd95_mm_per_volume"]) == ["v2.nii.gz"] and len(ev["hd95_mm_per_class"]) == 2
    assert "held-out Dice, Jaccard, HD95 (mm), ASD (mm)" in res.output and "(right half)" not in res.output
    assert "split: training on 2 labelled volumes (v0.nii.gz, v1.nii.gz), scoring 1 labelled volume held out " \
        "(v2.nii.gz)" in res.output and ev["split"]["by"] == "volume"
    assert ev["class_names"] == ["sphere", "class 2"] and "sphere" in res.output
    pred = nib.load(tmp_path / "ft" / "predictions" / "v2.nii.gz")
    src = nib.load(data / "img" / "v2.nii.gz")
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert (tmp_path / "ft" / "plots" / "segmentation.png").is_file()
    scratch = invoke("finetune", tiny_run, data / "img", data / "lab", "--from-scratch", "--out", tmp_path / "ft",
                     "--set", "finetune.steps=1")
    assert scratch.exit_code == 2 and "already exists" in scratch.output  # never overwrites without --overwrite
    # predict: the fine-tuned network on new scans gives the held-out prediction finetune wrote, voxel for voxel
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", data / "img" / "v0.nii.gz",
                 "--out", tmp_path / "pred")
    assert res.exit_code == 0, res.output
    again = nib.load(tmp_path / "pred" / "v2.nii.gz")
    assert np.array_equal(np.asarray(again.dataobj), np.asarray(pred.dataobj)) and np.allclose(again.affine, src.affine)
    summary = json.loads((tmp_path / "pred" / "volumes.json").read_text())
    assert list(summary["volumes"]) == ["v2.nii.gz", "v0.nii.gz"]
    row = summary["volumes"]["v2.nii.gz"]
    spheres = int((np.asarray(pred.dataobj) == 1).sum())
    assert row["voxels"]["sphere"] == spheres and row["ml"]["sphere"] == pytest.approx(spheres * 1.5 * 1.5 * 2 / 1000)
    assert "predicted volume (mL)" in res.output and not (tmp_path / "pred" / "evaluation.json").exists()
    # with --labels the same held-out volume scores what finetune scored
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", "--labels", data / "lab" / "v2.nii.gz",
                 "--out", tmp_path / "scored")
    assert res.exit_code == 0, res.output
    test = json.loads((tmp_path / "scored" / "evaluation.json").read_text())
    assert test["dice_per_volume"] == ev["dice_per_volume"] and test["hd95_mm_per_volume"] == ev["hd95_mm_per_volume"]
    assert "test Dice" in res.output and test["class_names"] == ["sphere", "class 2"]
    assert (tmp_path / "scored" / "segmentation.png").is_file() and not (tmp_path / "pred" / "segmentation.png").exists()
    odd = nib.load(data / "lab" / "v2.nii.gz")
    bad = np.asarray(odd.dataobj).copy()
    bad[0, 0, 0] = 7
    (data / "bad").mkdir()
    nib.save(nib.Nifti1Image(bad, odd.affine), data / "bad" / "v2.nii.gz")
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", "--labels", data / "bad", "--out", tmp_path / "b")
    assert res.exit_code == 2 and "values [7]" in res.output and not (tmp_path / "b").exists()
    refused = invoke("predict", tmp_path / "ft", data / "img", "--out", tmp_path / "pred")
    assert refused.exit_code == 2 and "not empty" in refused.output
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", "--probabilities", "--out", tmp_path / "prob")
    assert res.exit_code == 0, res.output              # softmax on the file's grid, its argmax the written map
    probs = nib.load(tmp_path / "prob" / "v2_probabilities.nii.gz")
    p = np.asarray(probs.dataobj)
    assert p.shape == (*src.shape, 3) and p.dtype == np.float32 and np.allclose(probs.affine, src.affine)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-5) and np.array_equal(p.argmax(-1), np.asarray(pred.dataobj))
    res = invoke("predict", tmp_path / "ft", data / "img" / "v1.nii.gz", "--out", tmp_path / "prob", "--overwrite")
    assert res.exit_code == 0 and not (tmp_path / "prob" / "v2_probabilities.nii.gz").exists()   # an earlier output
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", "--tta", "--out", tmp_path / "tta")
    assert res.exit_code == 0, res.output
    mirrored = np.asarray(nib.load(tmp_path / "tta" / "v2.nii.gz").dataobj)
    assert mirrored.shape == pred.shape and not np.array_equal(mirrored, np.asarray(pred.dataobj))   # 8 passes, averaged
    (tmp_path / "pred" / "notes.txt").write_text("mine")
    res = invoke("predict", tmp_path / "ft", data / "img" / "v1.nii.gz", "--out", tmp_path / "pred", "--overwrite")
    assert res.exit_code == 0, res.output                 # the earlier predictions go, the user's own file stays
    assert sorted(f.name for f in (tmp_path / "pred").iterdir()) == ["notes.txt", "v1.nii.gz", "volumes.json"]
    refused = invoke("predict", tiny_run, data / "img", "--out", tmp_path / "pred2")
    assert refused.exit_code == 2 and "pretraining run" in refused.output and not (tmp_path / "pred2").exists()


def test_predict_on_a_resampled_run_writes_and_scores_on_each_files_own_grid(tiny_run: Path, tmp_path: Path) -> None:
    """Fine-tuned at 3 mm on 1.5 mm files: predict writes each map on its file's grid (probabilities resampled there,
    then decoded), and --labels scores that map against the label file as given, with the file's voxel spacing."""
    from sslkit.domains.medical3d.segmentation import dice_per_class, surface_distances
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3, affine=np.diag([1.5, 1.5, 1.5, 1.0]))
    res = invoke("finetune", tiny_run, data / "img", data / "lab", "--train", "2", "--out", tmp_path / "ft",
                 "--set", "data.spacing=[3.0, 3.0, 3.0]", "--set", "finetune.steps=20")
    assert res.exit_code == 0, res.output
    res = invoke("predict", tmp_path / "ft", data / "img" / "v2.nii.gz", "--labels", data / "lab" / "v2.nii.gz",
                 "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    written = np.asarray(nib.load(tmp_path / "p" / "v2.nii.gz").dataobj).astype(np.int64)
    truth = np.asarray(nib.load(data / "lab" / "v2.nii.gz").dataobj).astype(np.int64)
    assert written.shape == truth.shape == (32, 32, 32) and (written > 0).any()
    test = json.loads((tmp_path / "p" / "evaluation.json").read_text())
    assert test["dice_per_volume"]["v2.nii.gz"] == pytest.approx(dice_per_class(written, truth, 3), nan_ok=True)
    assert test["hd95_mm_per_volume"]["v2.nii.gz"] == pytest.approx(surface_distances(written, truth, 3, [1.5] * 3)[0],
                                                                    nan_ok=True)


def test_finetune_maps_sparse_label_values_and_writes_them_back(tiny_run: Path, tmp_path: Path) -> None:
    """Labels 0, 1, 4 (BraTS-like, no 2 or 3) train as classes 0, 1, 2: the same run as with labels 0, 1, 2 (same Dice,
    same predictions), but the predictions carry the file's values and the names follow them."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3)
    sparse = tmp_path / "sparse_labels"
    sparse.mkdir()
    for f in sorted((data / "lab").glob("*.nii.gz")):
        lab = nib.load(f)
        seg = np.asarray(lab.dataobj).astype(np.int16)
        nib.save(nib.Nifti1Image(np.where(seg == 2, 4, seg).astype(np.int16), lab.affine), sparse / f.name)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "edema", "4": "enhancing"}}))
    runs = {}
    regions = ["--set", "finetune.regions={whole: [1, 4], enhancing: [4]}"]      # BraTS-style unions of values
    for name, labels, extra in (("dense", data / "lab", []), ("sparse", sparse, regions)):
        res = invoke("finetune", tiny_run, data / "img", labels, "--train", "2", "--out", tmp_path / f"ft-{name}",
                     "--set", "finetune.steps=4", *extra)
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / f"ft-{name}" / "evaluation.json").read_text())
    assert runs["sparse"]["classes"] == 3 and runs["sparse"]["label_values"] == [0, 1, 4]
    assert runs["sparse"]["class_names"] == ["edema", "enhancing"]
    np.testing.assert_allclose(runs["sparse"]["dice_per_class"], runs["dense"]["dice_per_class"])
    dense = np.asarray(nib.load(tmp_path / "ft-dense" / "predictions" / "v2.nii.gz").dataobj)
    mapped = np.asarray(nib.load(tmp_path / "ft-sparse" / "predictions" / "v2.nii.gz").dataobj)
    assert (dense == 2).any() and set(np.unique(mapped)) <= {0, 1, 4}
    np.testing.assert_array_equal(mapped, np.array([0, 1, 4])[dense])
    by_region = runs["sparse"]["regions"]
    assert by_region["members"] == {"whole": [1, 4], "enhancing": [4]}
    truth = np.asarray(nib.load(sparse / "v2.nii.gz").dataobj)
    whole = 2 * ((mapped > 0) & (truth > 0)).sum() / ((mapped > 0).sum() + (truth > 0).sum())
    assert by_region["dice_per_volume"]["v2.nii.gz"][0] == pytest.approx(whole)             # the union, scored
    assert by_region["dice_per_volume"]["v2.nii.gz"][1] == runs["sparse"]["dice_per_volume"]["v2.nii.gz"][1]
    res = invoke("predict", tmp_path / "ft-sparse", data / "img" / "v2.nii.gz", "--labels", sparse / "v2.nii.gz",
                 "--out", tmp_path / "p")                                    # the run's regions, scored again
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "evaluation.json").read_text())["regions"] == by_region
    assert "test (regions) Dice" in res.output
    res = invoke("finetune", tiny_run, data / "img", sparse, "--set", "finetune.regions={core: [2, 4]}",
                 "--out", tmp_path / "bad-region")
    assert res.exit_code == 2 and "core = [2, 4]" in res.output and not (tmp_path / "bad-region").exists()


def test_finetune_region_training_learns_nested_lesions_and_predict_paints_them(tiny_run: Path, tmp_path: Path) -> None:
    """finetune.region_training: one sigmoid output per BraTS region (the checkpoint's output layer has 3 channels,
    not 4 classes); 60 steps learn the nested lesions (WT Dice > 0.8; from a 0.5 start instead of the 0.1 prior it
    scored 0.32); the prediction holds the labels' own values; predict reproduces it, and with --keep-largest keeps
    one connected part of it; unpaintable regions are refused before any folder is written."""
    from scipy import ndimage

    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.domains.medical3d.samples import write_lesions

    write_lesions(tmp_path / "d", 3, size=48)
    data = tmp_path / "d"
    regions = ["--set", "finetune.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}"]
    out = tmp_path / "ft"
    res = invoke("finetune", tiny_run, data / "images", data / "labels", "--train", "2", "--out", out, *regions,
                 "--set", "finetune.region_training=true", "--set", "finetune.steps=60")
    assert res.exit_code == 0, res.output
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["label_values"] == [0, 1, 2, 4] and ev["regions"]["dice_per_class"][0] > 0.8, ev["regions"]
    weights = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert weights["model.decoder.out.conv.conv.weight"].shape[0] == 3
    written = np.asarray(nib.load(out / "predictions" / "lesion_02.nii.gz").dataobj)
    assert set(np.unique(written)) == {0, 1, 2, 4}
    res = invoke("predict", out, data / "images" / "lesion_02.nii.gz", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "p" / "lesion_02.nii.gz").dataobj), written)
    two = np.concatenate([np.asarray(nib.load(data / "images" / f"lesion_0{i}.nii.gz").dataobj) for i in (0, 2)])
    nib.save(nib.Nifti1Image(two, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "two.nii.gz")    # two lesions side by side
    parts = {}
    for flag in ("--no-keep-largest", "--keep-largest"):
        res = invoke("predict", out, tmp_path / "two.nii.gz", "--out", tmp_path / flag, flag)
        assert res.exit_code == 0, res.output
        parts[flag] = np.asarray(nib.load(tmp_path / flag / "two.nii.gz").dataobj)
    count = {k: ndimage.label(v > 0, structure=np.ones((3, 3, 3)))[1] for k, v in parts.items()}
    assert count["--no-keep-largest"] > 1 and count["--keep-largest"] == 1, count
    kept, full = parts["--keep-largest"], parts["--no-keep-largest"]
    assert ((kept == full) | (kept == 0)).all() and (kept > 0).sum() > (full > 0).sum() / 3
    for extra, message in (([], "needs finetune.regions"),
                           (["--set", "finetune.regions={WT: [1, 2, 4], ET: [4]}"], "WT adds [1, 2]")):
        res = invoke("finetune", tiny_run, data / "images", data / "labels", "--out", tmp_path / "bad", *extra,
                     "--set", "finetune.region_training=true")
        assert res.exit_code == 2 and message in res.output and not (tmp_path / "bad").exists(), res.output


def test_finetune_foreground_mask_and_augment(tiny_run: Path, tmp_path: Path) -> None:
    """--set finetune.foreground_mask=true: no class predicted where the held-out image is air (zero, open to the
    border); without it the same run predicts objects there. Augmented fine-tuning runs through the CLI."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3)
    img = nib.load(data / "img" / "v2.nii.gz")
    arr = img.get_fdata()
    arr[:, :12, :12] = 0.0                                          # an air bar along x, touching the border
    nib.save(nib.Nifti1Image(arr.astype(np.float32), img.affine), data / "img" / "v2.nii.gz")
    lab = nib.load(data / "lab" / "v2.nii.gz")
    seg = np.asarray(lab.dataobj).copy()
    seg[:, :12, :12] = 0
    nib.save(nib.Nifti1Image(seg, lab.affine), data / "lab" / "v2.nii.gz")
    air = {}
    for mask in ("false", "true"):
        out = tmp_path / f"ft-{mask}"
        res = invoke("finetune", tiny_run, data / "img", data / "lab", "--train", "2", "--out", out, "--set",
                     f"finetune.foreground_mask={mask}", "--set", "finetune.augment=true",
                     "--set", "finetune.seed=0")
        assert res.exit_code == 0, res.output
        pred = np.asarray(nib.load(out / "predictions" / "v2.nii.gz").dataobj)
        air[mask] = int((pred[:, :12, :12] > 0).sum())
    assert air["true"] == 0 and air["false"] > 0


def test_finetune_from_a_swin_run_and_the_roi_its_deepest_map_needs(volumes: Path, tmp_path: Path) -> None:
    run = tmp_path / "swin"
    res = invoke("pretrain", volumes / "img", "-r", "tiny-swin", "--set", "train.steps=2", "--out", run)
    assert res.exit_code == 0, res.output
    res = invoke("finetune", run, volumes / "img", volumes / "lab", "--train", "3", "--set", "finetune.steps=2",
                 "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ft" / "evaluation.json").read_text())["dice_per_volume"].keys() == {"v3.nii.gz"}
    res = invoke("finetune", run, volumes / "img", volumes / "lab", "--set", "finetune.roi=32", "--out", tmp_path / "f2")
    assert res.exit_code == 2 and "--set finetune.roi=64" in res.output and not (tmp_path / "f2").exists()


def test_unet_reconstruction_decoder_starts_the_finetuning_decoder(volumes: Path, tmp_path: Path) -> None:
    from tests.domains.medical3d.conftest import write_volumes

    run = tmp_path / "unet"
    res = invoke("pretrain", volumes / "img", "-r", "tiny", "--out", run, "--set", "alice.recon_decoder=unet",
                 "--set", "alice.centering=sinkhorn", "--set", "train.steps=2")
    assert res.exit_code == 0, res.output
    data = write_volumes(tmp_path / "d", n=2)
    for arm, flags, moved in (("pre", [], True), ("fresh", ["--set", "finetune.transfer_decoder=false"], False)):
        res = invoke("finetune", run, data / "img", data / "lab", "--train", "1", "--out", tmp_path / arm,
                     "--set", "finetune.steps=1", *flags)
        assert res.exit_code == 0, res.output
        manifest = json.loads((tmp_path / arm / "manifest.json").read_text())
        assert (manifest.get("decoder_from_pretraining", 0) > 0) == moved


def test_4d_multichannel_volumes_split_for_pretraining_one_or_all_channels_for_finetuning(tmp_path: Path) -> None:
    """The Decathlon's BrainTumour layout: 4-D images (several MRI contrasts), 3-D labels."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3)
    for f in sorted((data / "img").glob("*.nii.gz")):                 # three contrasts of one anatomy per file
        img = nib.load(f)
        x = np.asarray(img.dataobj, np.float32)
        nib.save(nib.Nifti1Image(np.stack([x, 1.0 - x, x ** 2], -1), img.affine), f)
    refused = invoke("pretrain", data / "img", "-r", "tiny", "--strict", "--out", tmp_path / "no")
    assert refused.exit_code == 2 and "data.channel=split" in refused.output and not (tmp_path / "no").exists()
    res = invoke("pretrain", data / "img", "-r", "tiny", "--set", "data.channel=split", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["medical3d"]["volumes"] == 9 and manifest["medical3d"]["skipped_count"] == 0
    res = invoke("embed", tmp_path / "run", data / "img", "--out", tmp_path / "e.parquet", "--grid-dir", tmp_path / "g")
    assert res.exit_code == 0, res.output
    from sslkit.core.embeddings import read_embeddings

    ids, vecs = read_embeddings(tmp_path / "e.parquet")
    assert ids[:3] == ["v0.nii.gz#c0", "v0.nii.gz#c1", "v0.nii.gz#c2"] and len(ids) == 9
    assert sorted(p.name for p in (tmp_path / "g").iterdir())[:3] == ["v0_c0.npy", "v0_c1.npy", "v0_c2.npy"]
    assert not np.allclose(vecs[0], vecs[1])                         # the contrasts are different inputs
    split_ft = invoke("finetune", tmp_path / "run", data / "img", data / "lab", "--out", tmp_path / "ft0")
    assert split_ft.exit_code == 2 and "--set data.channel=N" in split_ft.output
    res = invoke("finetune", tmp_path / "run", data / "img", data / "lab", "--train", "2", "--set", "data.channel=1",
                 "--set", "finetune.steps=2", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "ft" / "predictions").iterdir()] == ["v2.nii.gz"]
    pred = nib.load(tmp_path / "ft" / "predictions" / "v2.nii.gz")
    assert pred.shape == (32, 32, 32)                                # the label's grid: 3-D, not 4-D
    res = invoke("finetune", tmp_path / "run", data / "img", data / "lab", "--train", "2", "--set", "data.channel=all",
                 "--set", "finetune.steps=2", "--out", tmp_path / "ft_all")
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "ft_all" / "checkpoints" / "last.pt", weights_only=True)
    stem = ckpt["model"]["model.encoder.stages.0.0.0.weight"]
    assert stem.shape[1] == 3 and json.loads(ckpt["encoder_spec"])["kwargs"]["in_channels"] == 3
    assert nib.load(tmp_path / "ft_all" / "predictions" / "v2.nii.gz").shape == (32, 32, 32)
    assert json.loads((tmp_path / "ft_all" / "evaluation.json").read_text())["dice_per_volume"].keys() == {"v2.nii.gz"}
    three = nib.load(data / "img" / "v0.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(three.dataobj)[..., 0], three.affine), data / "img" / "v0.nii.gz")  # now 3-D
    res = invoke("finetune", tmp_path / "run", data / "img", data / "lab", "--set", "data.channel=all",
                 "--out", tmp_path / "ft_mixed")
    assert res.exit_code == 2 and "differ in their number of channels" in res.output
    res = invoke("pretrain", data / "img", "-r", "tiny", "--set", "data.channel=all", "--out", tmp_path / "no2")
    assert res.exit_code == 2 and "differ in their number of channels" in res.output and not (tmp_path / "no2").exists()


def three_contrast_volumes(out: Path, n: int = 3) -> Path:
    """n labelled 4-D images (X, Y, Z, 3): three contrasts of one anatomy per file, 3-D labels."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(out, n=n)
    for f in sorted((data / "img").glob("*.nii.gz")):
        img = nib.load(f)
        x = np.asarray(img.dataobj, np.float32)
        nib.save(nib.Nifti1Image(np.stack([x, 1.0 - x, x ** 2], -1), img.affine), f)
    return data


@pytest.mark.parametrize("recipe", ["tiny", "tiny-swin"])
def test_pretraining_on_all_channels_gives_a_multichannel_encoder_that_finetune_takes_as_is(tmp_path: Path,
                                                                                            recipe: str) -> None:
    data = three_contrast_volumes(tmp_path / "d")
    run = tmp_path / "run"
    res = invoke("pretrain", data / "img", "-r", recipe, "--set", "data.channel=all", "--set", "train.steps=2",
                 "--out", run)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "manifest.json").read_text())["medical3d"]["volumes"] == 3      # one per file
    encoder = sslkit.load_encoder(run)
    assert encoder.sslkit_config["kwargs"]["in_channels"] == 3
    with torch.no_grad():
        assert encoder(torch.rand(1, 3, 32, 32, 32)).shape[0] == 1
    res = invoke("embed", run, data / "img", "--out", tmp_path / "e.parquet", "--grid-dir", tmp_path / "g")
    assert res.exit_code == 0, res.output
    from sslkit.core.embeddings import read_embeddings

    ids, vecs = read_embeddings(tmp_path / "e.parquet")
    assert ids == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"] and np.isfinite(vecs).all()
    if recipe != "tiny":
        return
    # finetune follows the run's data.channel=all; with the encoder frozen its 3-channel stem stays the pretrained one
    res = invoke("finetune", run, data / "img", data / "lab", "--train", "2", "--set", "finetune.steps=2",
                 "--set", "finetune.encoder_lr_mult=0", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    stem = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)["model"][
        "model.encoder.stages.0.0.0.weight"]
    assert stem.shape[1] == 3 and torch.equal(stem, encoder.stages[0][0][0].weight)
    res = invoke("predict", tmp_path / "ft", data / "img", "--out", tmp_path / "p")     # follows data.channel=all
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "p" / "v1.nii.gz").shape == (32, 32, 32)
    one = invoke("finetune", run, data / "img", data / "lab", "--set", "data.channel=0", "--out", tmp_path / "ft1")
    assert one.exit_code == 2 and "pretrained on 3 input channels" in one.output and not (tmp_path / "ft1").exists()
    single = tmp_path / "single"
    write_single = three_contrast_volumes(single, n=1)
    img = nib.load(write_single / "img" / "v0.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), write_single / "img" / "v0.nii.gz")
    res = invoke("embed", run, write_single / "img", "--out", tmp_path / "e1.parquet")
    assert res.exit_code == 2 and "pretrained on 3-channel images" in res.output and not (tmp_path / "e1.parquet").exists()
    res = invoke("predict", tmp_path / "ft", write_single / "img", "--out", tmp_path / "p1")
    assert res.exit_code == 2 and "segments 3-channel images and these have 1" in res.output
    assert not (tmp_path / "p1").exists()
    res = invoke("pretrain", write_single / "img", "-r", recipe, "--set", "data.channel=all", "--resume", "--out", run)
    assert res.exit_code == 2 and "3-channel images and these have 1" in res.output


def test_finetune_on_a_labelled_datalist_uses_its_labels_and_prints_the_run_folder(tiny_run: Path,
                                                                                    tmp_path: Path) -> None:
    """A Decathlon datalist as IMAGES trains on its "label" entries, LABELS left out or the same file: the held-out
    Dice of the same pairs given as folders (its images were read again as their own labels). predict --labels pairs
    a datalist by its image -> label entries. stdout is the run folder; a fine-tuning run where the pretraining run
    belongs is refused in one line."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3)
    dl = data / "dataset.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "bright"}, "training": [
        {"image": f"./img/v{i}.nii.gz", "label": f"./lab/v{i}.nii.gz"} for i in range(3)]}))
    steps = ["--train", "2", "--set", "finetune.steps=2"]
    res = invoke("finetune", tiny_run, data / "img", data / "lab", *steps, "--out", tmp_path / "folders")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "folders")
    folders = json.loads((tmp_path / "folders" / "evaluation.json").read_text())
    for name, extra in (("alone", []), ("again", [dl])):
        res = invoke("finetune", tiny_run, dl, *extra, *steps, "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        ev = json.loads((tmp_path / name / "evaluation.json").read_text())
        assert ev["dice_per_volume"] == {"img/v2.nii.gz": folders["dice_per_volume"]["v2.nii.gz"]}
        assert ev["class_names"] == ["bright", "class 2"] and ev["label_values"] == [0, 1, 2]
        assert (tmp_path / name / "predictions" / "img" / "v2.nii.gz").is_file()
        assert json.loads((tmp_path / name / "manifest.json").read_text())["medical3d"]["skipped_count"] == 0
    ft = tmp_path / "alone"
    scored = {}
    for name, labels in (("folder", data / "lab"), ("datalist", dl)):
        res = invoke("predict", ft, data / "img" / "v2.nii.gz", "--labels", labels, "--out", tmp_path / f"p-{name}")
        assert res.exit_code == 0, res.output
        scored[name] = json.loads((tmp_path / f"p-{name}" / "evaluation.json").read_text())["dice_per_volume"]
    assert scored["datalist"] == scored["folder"] and list(scored["folder"]) == ["v2.nii.gz"]
    refusals = [
        (("finetune", tiny_run, dl, data / "lab", "--out", tmp_path / "r1"), "already pairs every image"),
        (("finetune", tiny_run, data / "img", "--out", tmp_path / "r2"), "finetune needs LABELS"),
        (("finetune", tiny_run, data / "img", data / "img", "--out", tmp_path / "r3"), "is given as its own label"),
        (("finetune", ft, data / "img", data / "lab", "--out", tmp_path / "r4"), "is a fine-tuning run"),
        (("embed", ft, data / "img", "--out", tmp_path / "r5.parquet"), "is a fine-tuning run"),
    ]
    for args, needle in refusals:
        res = invoke(*args)
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not args[-1].exists(), res.output
    assert str(tiny_run) in invoke("embed", ft, data / "img", "--out", tmp_path / "r5.parquet").output


def test_outputs_keep_sub_folders_and_names_that_would_clash_are_refused_before_writing(tiny_run: Path,
                                                                                       tmp_path: Path) -> None:
    """s1/t1.nii.gz and s2/t1.nii.gz write s1/t1.* and s2/t1.* (once both t1.*), case.001/case.002 keep their dots
    (once both `case`), folder-per-case labels pair by path; A.nii.gz beside a.nii.gz is refused before any file."""
    import shutil

    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=3)
    cases = tmp_path / "cases"
    for k in range(3):
        for kind, folder in (("images", "img"), ("labels", "lab")):
            (cases / kind / f"case_{k}").mkdir(parents=True, exist_ok=True)
            shutil.copy(data / folder / f"v{k}.nii.gz", cases / kind / f"case_{k}" / "img.nii.gz")
    ft = tmp_path / "ft"
    res = invoke("finetune", tiny_run, cases / "images", cases / "labels", "--train", "2", "--set", "finetune.steps=2",
                 "--out", ft)
    assert res.exit_code == 0, res.output
    assert list(json.loads((ft / "evaluation.json").read_text())["dice_per_volume"]) == ["case_2/img.nii.gz"]
    assert [p.relative_to(ft / "predictions").as_posix() for p in (ft / "predictions").rglob("*.nii.gz")] == \
        ["case_2/img.nii.gz"]
    tree = tmp_path / "tree"
    for rel, k in (("s1/t1.nii.gz", 0), ("s2/t1.nii.gz", 1), ("case.001.nii.gz", 2), ("case.002.nii.gz", 0)):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "img" / f"v{k}.nii.gz", tree / rel)
    res = invoke("predict", ft, tree / "s1", tree / "s2", tree / "case.001.nii.gz", tree / "case.002.nii.gz",
                 "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    written = {"s1/t1.nii.gz": 0, "s2/t1.nii.gz": 1, "case.001.nii.gz": 2, "case.002.nii.gz": 0}
    summary = json.loads((tmp_path / "p" / "volumes.json").read_text())["volumes"]
    assert {k: v["prediction"] for k, v in summary.items()} == {k: str(tmp_path / "p" / k) for k in written}
    maps = {k: np.asarray(nib.load(tmp_path / "p" / k).dataobj) for k in written}
    assert np.array_equal(maps["s1/t1.nii.gz"], maps["case.002.nii.gz"])         # the same image twice
    assert not np.array_equal(maps["s1/t1.nii.gz"], maps["s2/t1.nii.gz"])
    res = invoke("predict", ft, tree / "case.001.nii.gz", "--out", tmp_path / "p", "--overwrite")
    assert res.exit_code == 0, res.output                  # the earlier maps and their emptied folders go
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["case.001.nii.gz", "volumes.json"]
    res = invoke("embed", tiny_run, tree, "--out", tmp_path / "e.parquet", "--grid-dir", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(tmp_path / "g").as_posix() for p in (tmp_path / "g").rglob("*.npy")) == \
        ["case.001.npy", "case.002.npy", "s1/t1.npy", "s2/t1.npy"]
    shutil.copy(data / "img" / "v1.nii.gz", tree / "s1" / "T1.nii.gz")         # differs from t1.nii.gz in case only
    for args in (("predict", ft, tree / "s1", "--out", tmp_path / "clash"),
                 ("embed", tiny_run, tree / "s1", "--out", tmp_path / "clash.parquet", "--grid-dir", tmp_path / "cg")):
        res = invoke(*args)
        assert res.exit_code == 2 and "would both be written as" in res.output, res.output
        assert not any((tmp_path / n).exists() for n in ("clash", "clash.parquet", "cg"))


def test_bad_inputs_are_one_line_exit_2(tiny_run: Path, volumes: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        (("pretrain", tmp_path / "empty", "-r", "tiny", "--out", tmp_path / "r1"), "no volumes found"),
        (("pretrain", volumes / "img", "-r", "tiny", "--set", "data.rio=3", "--out", tmp_path / "r2"), "rio"),
        (("pretrain", volumes / "img", "-r", "tiny", "--set", "data.roi=24", "--out", tmp_path / "r3"), "multiple"),
        (("pretrain", volumes / "img", "-r", "tiny", "--modality", "pet", "--out", tmp_path / "r4"), "pet"),
    ]
    for args, needle in cases:
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert needle in res.output and "Traceback" not in res.output
    bad = tmp_path / "lab"
    bad.mkdir()
    for i in range(4):
        nib.save(nib.Nifti1Image(np.zeros((20, 32, 32), np.uint8), np.eye(4)), bad / f"v{i}.nii.gz")
    res = invoke("finetune", tiny_run, volumes / "img", bad, "--strict", "--out", tmp_path / "ft")
    assert res.exit_code == 2 and "has shape (20, 32, 32) but image" in res.output


def test_one_corrupt_volume_is_skipped_and_counted(volumes: Path, tmp_path: Path) -> None:
    data = tmp_path / "mixed"
    data.mkdir()
    for f in sorted((volumes / "img").iterdir())[:2]:
        (data / f.name).write_bytes(f.read_bytes())
    (data / "corrupt.nii.gz").write_bytes(b"\x1f\x8b truncated")
    args = ["pretrain", data, "-r", "tiny", "--set", "train.steps=1", "--out", tmp_path / "run"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    skipped = json.loads((tmp_path / "run" / "manifest.json").read_text())["medical3d"]["skipped"]
    assert [s["id"] for s in skipped] == ["corrupt.nii.gz"]
    strict = invoke(*args[:-1], tmp_path / "run2", "--strict")
    assert strict.exit_code == 2 and "corrupt.nii.gz" in strict.output


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_when_no_volume_is_usable_the_reason_is_one_error_line(tiny_run: Path, volumes: Path, tmp_path: Path) -> None:
    """A lone bad volume: its reason once, as the error, not also as a `skipping` warning above it; several: the first
    reason and the others' names."""
    bad = tmp_path / "bad"
    bad.mkdir()
    nan = np.ones((20, 20, 20), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), bad / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), bad / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 3), np.float32), np.eye(4)), bad / "fourd.nii.gz")
    (bad / "garbage.nii.gz").write_bytes(b"\x1f\x8b junk")
    for name, needle in (("nan", "NaN"), ("flat", "not a 3-D volume"), ("fourd", "is 4-D"),
                         ("garbage", "not a readable NIfTI")):
        res = invoke("pretrain", bad / f"{name}.nii.gz", "-r", "tiny", "--out", tmp_path / f"r-{name}")
        assert res.exit_code == 2 and needle in res.output, res.output
        assert _lines(res.output) == [_lines(res.output)[0]] and res.output.startswith("error: "), res.output
    res = invoke("pretrain", bad, "-r", "tiny", "--out", tmp_path / "r-all")
    assert res.exit_code == 2 and len(_lines(res.output)) == 1, res.output
    assert "none of the 4 volumes could be read" in res.output and "(and 3 more: " in res.output
    lab = tmp_path / "lab"
    lab.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((20, 32, 32), np.uint8), np.eye(4)), lab / "v0.nii.gz")
    res = invoke("finetune", tiny_run, volumes / "img" / "v0.nii.gz", lab / "v0.nii.gz", "--out", tmp_path / "ft")
    assert res.exit_code == 2 and "has shape (20, 32, 32) but image" in res.output
    assert len(_lines(res.output)) == 1 and "skipping" not in res.output, res.output


def test_finetune_on_one_volume_says_it_trains_on_the_left_half_and_scores_the_right(tiny_run: Path,
                                                                                    tmp_path: Path) -> None:
    """One labelled volume is both the training and the held-out volume: the split line, the table row, the
    manifest and evaluation.json say which half is which, so it does not read as leakage."""
    from tests.domains.medical3d.conftest import write_volumes

    data = write_volumes(tmp_path / "d", n=1)
    res = invoke("finetune", tiny_run, data / "img", data / "lab", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if line.startswith("split: ")]
    assert said == ["split: one labelled volume, v0.nii.gz, in halves along RAS x (32 voxels after preprocessing): "
                    "training on its left half, scoring its right half (x voxels 16–31), whose labels training "
                    "never uses"], res.output
    assert res.output.index("split: ") < res.output.index("held-out Dice")
    assert "v0.nii.gz (right half)" in res.output
    ev = json.loads((tmp_path / "ft" / "evaluation.json").read_text())
    assert list(ev["dice_per_volume"]) == ["v0.nii.gz"]                       # keys stay the ids
    assert ev["split"] == {"train": ["v0.nii.gz"], "held_out": ["v0.nii.gz"], "by": "halves along RAS x",
                           "train_x": [0, 16], "held_out_x": [16, 32]}
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())["medical3d"]
    assert manifest["by"] == "halves along RAS x" and manifest["held_out_x"] == [16, 32]
    # the Dice reported is the written prediction's on the right half alone (identity affine: RAS x = voxel x)
    pred = np.asarray(nib.load(tmp_path / "ft" / "predictions" / "v0.nii.gz").dataobj)
    label = np.asarray(nib.load(data / "lab" / "v0.nii.gz").dataobj)
    assert pred.shape == label.shape == (32, 32, 32)

    def dice(p: np.ndarray, t: np.ndarray) -> float:
        return 2 * float((p & t).sum()) / float(p.sum() + t.sum())

    reported = ev["dice_per_volume"]["v0.nii.gz"]
    right = [dice(pred[16:] == c, label[16:] == c) for c in (1, 2)]
    whole = [dice(pred == c, label == c) for c in (1, 2)]
    assert reported == pytest.approx(right, abs=1e-4)
    assert all(abs(w - r) > 1e-3 for w, r in zip(whole, right))          # the halves differ: the check discriminates


def test_sample_data_says_what_it_wrote_in_words(tmp_path: Path) -> None:
    res = invoke("sample-data", tmp_path / "s", "--subjects", "1", "--synthetic", "2", "--size", "16",
                 "--lesions", "0")
    assert res.exit_code == 0, res.output
    assert f"wrote 1 labelled MRI, 1 unlabelled subject, 2 synthetic volumes, 0 lesions under {tmp_path / 's'}" \
        in res.output and "{" not in res.output


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_resume_after_sigterm_matches_uninterrupted(volumes: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    args = [sys.executable, "-m", "sslkit", "medical3d", "pretrain", str(volumes / "img"), "-r", "tiny",
            "--set", "train.checkpoint_every=2", "--set", "train.precision=fp32"]
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True, text=True, env=ENV)
    assert full.returncode == 0, full.stderr
    code, err, step = sigterm_at_first_checkpoint([*args, "--out", str(tmp_path / "cut")], tmp_path / "cut", ENV)
    assert code == 130 and 0 < step < 6, err
    res = subprocess.run([*args, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    a = load_file(str(tmp_path / "full" / "encoder" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "cut" / "encoder" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_resume_after_sigterm_matches_uninterrupted(tiny_run: Path, volumes: Path, tmp_path: Path) -> None:
    """finetune --resume (the interrupted run's message tells users to use it): the resumed run ends with the same
    weights and held-out Dice as one that was never stopped; another split, another pretraining run or a pretraining
    folder are refused without touching the run."""
    args = [sys.executable, "-m", "sslkit", "medical3d", "finetune", str(tiny_run), str(volumes / "img"),
            str(volumes / "lab"), "--train", "2", "--set", "finetune.steps=8", "--set", "train.checkpoint_every=2"]
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True, text=True, env=ENV)
    assert full.returncode == 0, full.stderr
    code, err, step = sigterm_at_first_checkpoint([*args, "--out", str(tmp_path / "cut")], tmp_path / "cut", ENV)
    assert code == 130 and 0 < step < 8 and "--resume" in err, err
    recipe = (tmp_path / "cut" / "recipe.yaml").read_text()
    for bad, message in ((["--train", "3"], "give the same images, labels and --labelled"),
                         (["--from-scratch"], "was fine-tuned from"),):
        res = invoke("finetune", tiny_run, volumes / "img", volumes / "lab", "--train", "2", *bad,
                     "--out", tmp_path / "cut", "--resume")
        assert res.exit_code == 2 and message in res.output, res.output
    assert (tmp_path / "cut" / "recipe.yaml").read_text() == recipe
    res = invoke("finetune", tmp_path / "cut", volumes / "img", volumes / "lab", "--out", tiny_run, "--resume")
    assert res.exit_code == 2 and f"is a fine-tuning run (written by `medical3d finetune`) — finetune needs the " \
        f"pretraining run it started from, {tiny_run}" in " ".join(res.output.split()), res.output   # RUN, --out swapped
    res = invoke("finetune", tiny_run, volumes / "img", volumes / "lab", "--out", tiny_run, "--resume")
    assert res.exit_code == 2 and "is a pretraining run" in res.output, res.output
    res = subprocess.run([*args[:-4], "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True,
                         env=ENV)                                  # the run's own settings: no --set needed
    assert res.returncode == 0, res.stderr
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.pt", weights_only=True) for r in ("full", "cut"))
    assert a["step"] == b["step"] == 8 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ev = [json.loads((tmp_path / r / "evaluation.json").read_text())["dice_per_class"] for r in ("full", "cut")]
    assert ev[0] == ev[1]


@pytest.mark.parametrize(("recipe", "extra", "dim"), [
    ("tiny-swin", [], 192),
    ("tiny", ["--set", "alice.centering=sinkhorn"], 128),   # Alice: Sinkhorn-Knopp targets all-reduced across ranks
])
def test_torchrun_two_processes(volumes: Path, tmp_path: Path, recipe: str, extra: list, dim: int) -> None:
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "sslkit", "medical3d", "pretrain", str(volumes / "img"), "-r", recipe,
                          "--set", "train.steps=2", *extra, "--out", str(out)], capture_output=True, text=True,
                         env=ENV, timeout=600)
    # on failure show the ranks' own errors (the head of stderr), not only torchrun's summary (the tail)
    assert res.returncode == 0, res.stderr[:6000] + "\n…\n" + res.stderr[-1500:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2]
    assert sslkit.load_encoder(out)(torch.rand(1, 1, 32, 32, 32)).shape == (1, dim)


def test_class_names_read_msd_and_nnunet_mappings_and_reject_bad_json(tmp_path: Path) -> None:
    from sslkit.core.errors import UserError
    from sslkit.domains.medical3d.labels import class_names

    labels = tmp_path / "labelsTr"
    labels.mkdir()
    assert class_names(labels, [0, 1, 2]) == ["class 1", "class 2"]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    assert class_names(labels, [0, 1, 2]) == ["liver", "tumour"]
    (labels / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "GM": 1, "WM": 2}}))
    assert class_names(labels / "a.nii.gz", [0, 1, 2]) == ["GM", "WM"]
    (labels / "dataset.json").write_text(json.dumps({"labels": ["GM", "WM"]}))
    with pytest.raises(UserError, match="labels"):
        class_names(labels, [0, 1, 2])


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one_process(volumes: Path, tmp_path: Path) -> None:
    """Cross-volume pairs and Alice's masks are drawn per item (not per process), so 2 processes with the same global
    batch train the same weights as 1 (fp32; bf16 would add rounding noise)."""
    args = ["medical3d", "pretrain", str(volumes / "img"), "-r", "tiny", "--set", "train.steps=2",
            "--set", "train.log_every=1", "--set", "train.device=cpu", "--set", "train.precision=fp32"]
    weights = []
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []
        res = subprocess.run([sys.executable, *launch, "-m", "sslkit", *args, "--out", str(out)], capture_output=True,
                             text=True, timeout=600, env=ENV)
        assert res.returncode == 0, res.stderr[-2000:]
        weights.append(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"])
    for k, v in weights[0].items():
        torch.testing.assert_close(v, weights[1][k], rtol=1e-4, atol=5e-5, msg=k)
    # the logged loss is the global batch's (each rank's mean, averaged over ranks), not rank 0's own half
    curve = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert curve(tmp_path / "two") == pytest.approx(curve(tmp_path / "one"), rel=1e-4)


def test_test_inference_and_predict_run_in_the_precision_fit_trained_in(
        tiny_run: Path, volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`precision: auto` on a CPU is decided per (domain, method). Were (medical3d, finetune) measured faster in bf16,
    fit() would train in bf16 — and the test-volume inference and `predict` must then run in bf16 too, not in the
    fp32 that a choice made without the method gives on every CPU (the bug this guards)."""
    import sslkit.domains.medical3d.predict as predict_module
    from sslkit.core import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    monkeypatch.setitem(precision.CPU_AUTO, ("medical3d", "finetune"), precision.Choice("bf16", "as if measured"))
    seen: list[bool] = []
    segment = predict_module.segment

    def spy(model, npy, ft, device, bf16, *rest):  # noqa: ANN001, ANN002, ANN202
        seen.append(bf16)
        return segment(model, npy, ft, device, bf16, *rest)

    monkeypatch.setattr(predict_module, "segment", spy)
    res = invoke("finetune", tiny_run, volumes / "img", volumes / "lab", "--train", "3", "--out", tmp_path / "ft",
                 "--set", "finetune.precision=auto", "--set", "finetune.steps=2", "--set", "train.device=cpu")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ft" / "manifest.json").read_text())["precision"]["used"] == "bf16"
    assert seen == [True]                                   # the one held-out volume, inferred as fit() trained
    one = volumes / "img" / "v3.nii.gz"
    assert invoke("predict", tmp_path / "ft", one, "--out", tmp_path / "p1", "--device", "cpu").exit_code == 0
    monkeypatch.delitem(precision.CPU_AUTO, ("medical3d", "finetune"))      # unmeasured: auto is fp32 on a CPU
    assert invoke("predict", tmp_path / "ft", one, "--out", tmp_path / "p2", "--device", "cpu").exit_code == 0
    assert seen == [True, True, False]
