"""A datalist with "training" and "test" lists (LA2018's 80/20 split): pretraining reads the training images only,
`finetune --labelled` trains on a listed subset of the training entries and scores the test entries, `--unlabelled`
adds mean-teacher consistency on the training volumes left unlabelled. Generated volumes only."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from sslkit.cli import app

runner = CliRunner()


def invoke(*args):  # noqa: ANN002, ANN201
    return runner.invoke(app, ["medical3d", *map(str, args)])


def said(res) -> str:  # noqa: ANN001
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:  # noqa: ANN001
    """6 training + 2 test volumes (32³, labels 0..1) and datalist.json; test images are brighter (+5) so a
    pretraining run that read them would show it in its intensity range — checked through the ids instead."""
    from tests.domains.medical3d.conftest import write_volumes

    root = write_volumes(tmp_path_factory.mktemp("la-like"), n=8)
    for f in (root / "lab").iterdir():                  # one foreground class, as LA2018
        img = nib.load(f)
        nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine), f)
    (root / "datalist.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "blob"},
        "training": [{"image": f"img/v{i}.nii.gz", "label": f"lab/v{i}.nii.gz"} for i in range(6)],
        "test": [{"image": f"img/v{i}.nii.gz", "label": f"lab/v{i}.nii.gz"} for i in (6, 7)]}))
    return root


@pytest.fixture(scope="module")
def run_on_training(split_data: Path, tmp_path_factory) -> tuple[Path, str]:  # noqa: ANN001
    out = tmp_path_factory.mktemp("la-runs") / "pre"
    res = invoke("pretrain", split_data / "datalist.json", "-r", "tiny", "--set", "train.steps=2", "--out", out)
    assert res.exit_code == 0, res.output
    return out, said(res)


def test_pretraining_on_a_datalist_with_a_test_list_reads_only_the_training_images(run_on_training) -> None:  # noqa: ANN001
    out, text = run_on_training
    assert "using the 6 \"training\" images; its 2 \"test\" images are left out" in text
    assert "6 volumes ready" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["medical3d"]["volumes"] == 6


def test_labelled_n_trains_on_the_first_n_training_entries_and_scores_the_test_entries(
        split_data: Path, run_on_training, tmp_path: Path) -> None:  # noqa: ANN001
    run, _ = run_on_training
    res = invoke("finetune", run, split_data / "datalist.json", "--labelled", "2", "--from-scratch",
                 "--set", "finetune.steps=2", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    text = said(res)
    assert ("training on 2 of the 6 labelled training volumes (the first 2 in datalist order): img/v0.nii.gz, "
            "img/v1.nii.gz; scoring the datalist's 2 test volumes (img/v6.nii.gz, img/v7.nii.gz)") in text
    ev = json.loads((tmp_path / "ft" / "evaluation.json").read_text())
    assert sorted(ev["dice_per_volume"]) == ["img/v6.nii.gz", "img/v7.nii.gz"]
    assert ev["split"]["train"] == ["img/v0.nii.gz", "img/v1.nii.gz"] and ev["split"]["by"] == "test entries"
    for key in ("dice", "jaccard", "hd95_mm", "asd_mm"):
        assert set(ev["summary"][key]) == {"mean", "std", "volumes"}
    d = np.array([v[0] for v in ev["dice_per_volume"].values()])
    assert ev["summary"]["dice"]["mean"] == pytest.approx(d.mean()) and ev["summary"]["dice"]["std"] == \
        pytest.approx(d.std())
    assert "test Dice, Jaccard, HD95 (mm), ASD (mm) — blob" in text and "mean ± std (2)" in text
    assert sorted(p.name for p in (tmp_path / "ft" / "predictions" / "img").iterdir()) == ["v6.nii.gz", "v7.nii.gz"]
    # the same subset as a list of ids (any order, file names without suffix) and as a file
    ids = tmp_path / "ids.txt"
    ids.write_text("# labelled\nv1\nimg/v0.nii.gz\n")
    for spec, name in (("v1.nii.gz,v0", "list"), (str(ids), "file")):
        res = invoke("finetune", run, split_data / "datalist.json", "--labelled", spec, "--from-scratch",
                     "--set", "finetune.steps=2", "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        again = json.loads((tmp_path / name / "evaluation.json").read_text())
        assert again["split"]["train"] == ev["split"]["train"]
        assert again["dice_per_volume"] == ev["dice_per_volume"]          # same volumes, same seed: same run


def test_labelled_subset_refusals_are_one_line_exit_2(split_data: Path, run_on_training, tmp_path: Path) -> None:  # noqa: ANN001
    run, _ = run_on_training
    dl = split_data / "datalist.json"
    missing = split_data / "missing.json"
    missing.write_text(json.dumps({"training": [{"image": "img/nope.nii.gz", "label": "lab/v0.nii.gz"}],
                                   "test": [{"image": "img/v6.nii.gz", "label": "lab/v6.nii.gz"}]}))
    shapes = split_data / "shapes.json"
    (split_data / "badlab").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((20, 32, 32), np.uint8), np.eye(4)), split_data / "badlab" / "v0.nii.gz")
    shapes.write_text(json.dumps({"training": [{"image": "img/v0.nii.gz", "label": "badlab/v0.nii.gz"},
                                               {"image": "img/v1.nii.gz", "label": "lab/v1.nii.gz"}],
                                  "test": [{"image": "img/v6.nii.gz", "label": "lab/v6.nii.gz"}]}))
    cases = [
        ((dl, "--labelled", "7"), "--labelled 7: there are 6 labelled training volumes"),
        ((dl, "--labelled", "v9"), "'v9' is not one of the 6 labelled training volumes"),
        ((dl, "--labelled", "v1,v1"), "names img/v1.nii.gz twice"),
        ((dl, "--labelled", "2", "--train", "2"), "--labelled and --train say the same thing"),
        ((missing,), "does not exist — fix the datalist"),
        ((shapes,), "has shape (20, 32, 32) but image"),        # a fixed split: never skipped, even without --strict
    ]
    for args, needle in cases:
        out = tmp_path / "r"
        res = invoke("finetune", run, *args, "--from-scratch", "--out", out)
        assert res.exit_code == 2 and needle in said(res), res.output
        assert len(res.output.strip().splitlines()) == 1 and not out.exists(), res.output


def test_without_a_test_list_the_labelled_list_trains_and_the_rest_is_held_out(volumes: Path, run_on_training,
                                                                                 tmp_path: Path) -> None:  # noqa: ANN001
    run, _ = run_on_training
    res = invoke("finetune", run, volumes / "img", volumes / "lab", "--labelled", "v2,v0", "--from-scratch",
                 "--set", "finetune.steps=1", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ft" / "evaluation.json").read_text())
    assert ev["split"]["train"] == ["v0.nii.gz", "v2.nii.gz"] and ev["split"]["held_out"] == ["v1.nii.gz", "v3.nii.gz"]
    assert "held-out Dice, Jaccard" in said(res)
    res = invoke("finetune", run, volumes / "img", volumes / "lab", "--labelled", "4", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "use 1..3" in said(res)


def test_unlabelled_adds_mean_teacher_consistency_on_the_training_volumes_left_unlabelled(
        split_data: Path, run_on_training, tmp_path: Path) -> None:  # noqa: ANN001
    """--unlabelled DATALIST: its training images less the labelled ones (never the test ones) feed the mean teacher;
    the loss log carries the consistency term and the checkpoint the teacher, an EMA of the student (not equal)."""
    import torch

    run, _ = run_on_training
    dl = split_data / "datalist.json"
    res = invoke("finetune", run, dl, "--labelled", "2", "--unlabelled", dl, "--set", "finetune.steps=3",
                 "--set", "finetune.semisup.passes=2", "--set", "finetune.semisup.rampup_steps=0",
                 "--out", tmp_path / "semi")
    assert res.exit_code == 0, res.output
    assert "unlabelled: 4 volumes for mean-teacher consistency (2 labelled or scored volumes among those given " \
        "left out)" in said(res)
    manifest = json.loads((tmp_path / "semi" / "manifest.json").read_text())["medical3d"]
    assert manifest["unlabelled"] == [f"img/v{i}.nii.gz" for i in range(2, 6)]
    logged = [json.loads(x) for x in (tmp_path / "semi" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "consistency" in r]
    assert steps and all(np.isfinite(r["consistency"]) and r["cons_weight"] == pytest.approx(0.1) for r in steps)
    state = torch.load(tmp_path / "semi" / "checkpoints" / "last.pt", weights_only=True)["model"]
    teacher = {k[len("mean_teacher.teacher."):]: v for k, v in state.items() if k.startswith("mean_teacher.teacher.")}
    student = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert teacher.keys() == student.keys() and int(state["step"]) == 3
    assert any(not torch.equal(teacher[k], student[k]) for k in student if student[k].is_floating_point())
    res = invoke("finetune", run, dl, "--unlabelled", dl, "--out", tmp_path / "none")
    assert res.exit_code == 2 and "all 6 volumes found are labelled training or test volumes" in said(res)
