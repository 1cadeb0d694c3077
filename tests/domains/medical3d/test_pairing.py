"""Images paired with label maps: by relative path, unique file name, nnU-Net channel suffix, sorted order (said);
JSON datalists; pairings that cannot be right are refused."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.discover import find_volumes
from sslkit.domains.medical3d.pairing import attach_labels, labelled_volumes, pair_labels


def _tree(root: Path, *rels: str) -> Path:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), root / rel)
    return root


def _pairs(images: Path, labels: Path) -> dict[str, str]:
    return {v.id: str(v.label.relative_to(labels)) for v in pair_labels(find_volumes([images]), find_volumes([labels]))}


def test_folder_per_case_pairs_by_relative_path_not_the_repeated_file_name(tmp_path: Path) -> None:
    """images/case_k/img.nii.gz with labels/case_k/img.nii.gz (name-only matching gave every image the last label)."""
    cases = [f"case_{k}/img.nii.gz" for k in range(3)]
    _tree(tmp_path / "images", *cases)
    _tree(tmp_path / "labels", *[c.replace("img.nii.gz", "IMG.nii") for c in cases])   # case and suffix ignored
    assert _pairs(tmp_path / "images", tmp_path / "labels") == {c: c.replace("img.nii.gz", "IMG.nii") for c in cases}


def test_unique_file_names_pair_across_layouts_and_nnunet_channel_suffix(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    _tree(tmp_path / "img", "a/x.nii.gz", "b/y.nii.gz", "case.001.nii.gz", "case.002.nii.gz")
    _tree(tmp_path / "lab", "y.nii.gz", "x.nii.gz", "case.002.nii.gz", "case.001.nii.gz")
    assert _pairs(tmp_path / "img", tmp_path / "lab") == {
        "a/x.nii.gz": "x.nii.gz", "b/y.nii.gz": "y.nii.gz", "case.001.nii.gz": "case.001.nii.gz",
        "case.002.nii.gz": "case.002.nii.gz"}                     # dotted names keep their dots
    _tree(tmp_path / "imagesTr", "liver_7_0000.nii.gz", "liver_3_0000.nii.gz")
    _tree(tmp_path / "labelsTr", "liver_3.nii.gz", "liver_7.nii.gz")
    assert _pairs(tmp_path / "imagesTr", tmp_path / "labelsTr") == {"liver_3_0000.nii.gz": "liver_3.nii.gz",
                                                                    "liver_7_0000.nii.gz": "liver_7.nii.gz"}
    assert "sorted order" not in capsys.readouterr().err


def test_sorted_order_only_as_a_said_fallback_and_impossible_pairings_refused(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    _tree(tmp_path / "img", "p.nii.gz", "q.nii.gz")
    _tree(tmp_path / "lab", "p_seg.nii.gz", "q_seg.nii.gz", "r_seg.nii.gz")
    with pytest.raises(UserError, match="2 images but 3 label volumes, and none matches image p.nii.gz"):
        _pairs(tmp_path / "img", tmp_path / "lab")
    (tmp_path / "lab" / "r_seg.nii.gz").unlink()
    assert _pairs(tmp_path / "img", tmp_path / "lab") == {"p.nii.gz": "p_seg.nii.gz", "q.nii.gz": "q_seg.nii.gz"}
    assert "paired in sorted order (p.nii.gz with p_seg.nii.gz" in " ".join(capsys.readouterr().err.split())
    _tree(tmp_path / "nn", "c_0000.nii.gz", "c_0001.nii.gz")          # two channel files of one case, one label
    _tree(tmp_path / "nnlab", "c.nii.gz")
    with pytest.raises(UserError, match="c_0000.nii.gz and c_0001.nii.gz are both paired with label"):
        _pairs(tmp_path / "nn", tmp_path / "nnlab")
    with pytest.raises(UserError, match="p.nii.gz is given as its own label"):
        _pairs(tmp_path / "img", tmp_path / "img")


def test_datalists_bring_their_labels_and_pair_by_image_path(tmp_path: Path) -> None:
    """A labelled datalist as IMAGES: its "label" entries, not its images read again as labels (image == label)."""
    _tree(tmp_path, "imagesTr/a.nii.gz", "imagesTr/b.nii.gz", "labelsTr/a.nii.gz", "labelsTr/b.nii.gz",
          "other/a.nii.gz", "other/b.nii.gz")
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"training": [{"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/a.nii.gz"},
                                           {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/b.nii.gz"}],
                              "test": ["./imagesTr/a.nii.gz"]}))
    want = {"imagesTr/b.nii.gz": tmp_path / "labelsTr" / "a.nii.gz",
            "imagesTr/a.nii.gz": tmp_path / "labelsTr" / "b.nii.gz"}
    for labels in (None, dl):
        assert {v.id: v.label for v in labelled_volumes(dl, labels)} == want
    with pytest.raises(UserError, match=r"already pairs every image with its \"label\", so LABELS .* is not read"):
        labelled_volumes(dl, tmp_path / "other")
    with pytest.raises(UserError, match="finetune needs LABELS"):
        labelled_volumes(tmp_path / "imagesTr", None)
    # a datalist as LABELS (predict --labels, finetune IMAGES LABELS): matched by the image's resolved path
    images = find_volumes([tmp_path / "imagesTr"])
    assert {v.id: v.label for v in attach_labels(images, dl)} == {"a.nii.gz": want["imagesTr/a.nii.gz"],
                                                                  "b.nii.gz": want["imagesTr/b.nii.gz"]}
    with pytest.raises(UserError, match=r"other/a.nii.gz is not an image of datalist"):
        attach_labels(find_volumes([tmp_path / "other"]), dl)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["imagesTr/a.nii.gz"]))
    with pytest.raises(UserError, match=r"lists .*a.nii.gz without a \"label\""):
        labelled_volumes(plain, plain)
    dl.write_text(json.dumps({"training": [{"image": "imagesTr/a.nii.gz", "label": "imagesTr/a.nii.gz"}]}))
    with pytest.raises(UserError, match=r"imagesTr/a.nii.gz is given as its own label"):
        labelled_volumes(dl, None)
    dl.write_text(json.dumps({"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"},
                                           {"image": "imagesTr/b.nii.gz"}]}))
    with pytest.raises(UserError, match=r"training entry imagesTr/b.nii.gz has no \"label\" while others do"):
        labelled_volumes(dl, None)


def test_finetune_readers_parse_a_datalist_once_and_share_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`finetune DATALIST --unlabelled DATALIST` reads the pairs, the test list, the unlabelled images and the class
    names from one datalist: with the command's `parsed` dict it is read from disk once, and every later reader sees
    that parse (here: the file is broken after the first read and nothing notices)."""
    from sslkit.domains.medical3d.labels import class_names
    from sslkit.domains.medical3d.pairing import test_volumes, unlabelled_volumes

    _tree(tmp_path, *(f"img/v{i}.nii.gz" for i in range(4)), *(f"lab/v{i}.nii.gz" for i in range(4)))
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "atrium"},
                              "training": [{"image": f"img/v{i}.nii.gz", "label": f"lab/v{i}.nii.gz"} for i in range(3)],
                              "test": [{"image": "img/v3.nii.gz", "label": "lab/v3.nii.gz"}]}))
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (reads.append(self), real(self, *a, **k))[1])
    parsed: dict = {}
    pairs = labelled_volumes(dl, None, parsed=parsed)
    dl.write_text("{ broken")                                  # a second read from disk would fail
    tests = test_volumes(dl, None, parsed=parsed)
    extra = unlabelled_volumes([dl], pairs[:1], tests, parsed=parsed)
    assert [v.id for v in pairs] == ["img/v0.nii.gz", "img/v1.nii.gz", "img/v2.nii.gz"]
    assert [v.id for v in tests] == ["img/v3.nii.gz"] and [v.id for v in extra] == ["img/v1.nii.gz", "img/v2.nii.gz"]
    assert class_names(dl, [0, 1], parsed) == ["atrium"]
    assert [p for p in reads if p == dl] == [dl]
    with pytest.raises(UserError, match="is not a readable JSON datalist"):     # without it: read (and refused) again
        test_volumes(dl, None)
