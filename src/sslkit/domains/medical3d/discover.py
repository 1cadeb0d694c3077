"""Finding volumes: folders (recursive, label folders left out), volume files, DICOM series folders and MONAI/Decathlon
JSON datalists; `data.channel` applied to 4-D files."""
from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.dicom import dicom_series, dicom_volumes, is_dicom_file
from sslkit.domains.medical3d.volumes import ALL_CHANNELS, ITK, NIFTI, Volume, distinct_ids, volume_suffix


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
    return p.is_file() and volume_suffix(p) in NIFTI + ITK


def find_volumes(paths: list[Path], sections: tuple[str, ...] = ("training",), *,
                 parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """Volumes under folders (recursive; hidden files and label folders below them left out), given files, or a
    MONAI-style JSON datalist (its `sections`; `UNLABELLED_SECTIONS` reads every image and attaches no labels;
    `parsed`: see `load_datalist`).

    A folder of DICOM files (any name: see `is_dicom_file`) is one volume per series in it; a folder holding
    several series yields one volume per series (ids `folder#k`) and they are listed.
    """
    found: list[Volume] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p} does not exist — check the path")
        if p.is_file() and p.suffix.lower() == ".json":
            if sections == PRETRAIN_SECTIONS:
                found += pretraining_images(p, parsed=parsed)
            else:
                found += read_datalist(p, sections, unlabelled=sections == UNLABELLED_SECTIONS, parsed=parsed)
        elif p.is_file():
            if volume_suffix(p) in NIFTI + ITK:
                found.append(Volume(p.name, p))
            elif is_dicom_file(p):                      # one slice stands for its series, read from its folder
                uid = next((uid for uid, files in dicom_series(p.parent).items() if p in files), None)
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


UNLABELLED_SECTIONS = ("training", "validation", "test")   # every image of a datalist, for embedding and predict
# pretraining (and `finetune --unlabelled`): a datalist's "test" images are held out for scoring, never trained on
PRETRAIN_SECTIONS = ("training", "validation")


def load_datalist(path: Path, parsed: dict[Path, Any] | None = None) -> Any:
    """The parsed JSON of datalist `path`. `parsed` (one dict per command, keyed by resolved path) keeps what was
    read, so that a command reading the same datalist for its pairs, its test list and its unlabelled images parses
    it once and every reader sees the same lists."""
    key = path.resolve()
    if parsed is not None and key in parsed:
        return parsed[key]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON datalist ({exc}) — fix the JSON") from None
    if parsed is not None:
        parsed[key] = data
    return data


def pretraining_images(path: Path, *, parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """The images of a datalist that pretraining may read, without labels: every image of a datalist without a
    "test" list (as before), else those of "training" and "validation" — the "test" images are left out, said on
    stderr, since they are what a fine-tuned model is scored on."""
    from sslkit.core.console import info

    parsed = {} if parsed is None else parsed          # read once here, whichever reader comes next
    data = load_datalist(path, parsed)
    tests = data.get("test") if isinstance(data, dict) else None
    if not isinstance(tests, list) or not tests:
        return read_datalist(path, UNLABELLED_SECTIONS, unlabelled=True, parsed=parsed)
    if not any(isinstance(data.get(k), list) and data[k] for k in PRETRAIN_SECTIONS):
        raise UserError(f"{path} lists only \"test\" images, which are held out for scoring and never pretrained "
                        "on — list the images to pretrain on under \"training\"")
    found = read_datalist(path, PRETRAIN_SECTIONS, unlabelled=True, parsed=parsed)
    held = {(path.parent / (e.get("image") if isinstance(e, dict) else e)).resolve() for e in tests
            if isinstance(e, (dict, str)) and isinstance(e.get("image") if isinstance(e, dict) else e, str)}
    kept = [v for v in found if v.path.resolve() not in held]
    named = " and ".join(f"\"{k}\"" for k in PRETRAIN_SECTIONS if isinstance(data.get(k), list) and data[k])
    info(f"{path.name}: using the {len(kept)} {named} images; its {len(tests)} \"test\" images are left out "
         "(held out for scoring, never trained on)")
    if not kept:
        raise UserError(f"{path}: every training image is also listed under \"test\" — nothing is left to train on")
    return kept


def read_datalist(path: Path, sections: tuple[str, ...] = ("training",), unlabelled: bool = False, *,
                  parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """MONAI/Decathlon datalist JSON: {"training": [{"image": ..., "label": ...}], "test": ["img.nii.gz", ...]}
    or a plain list; paths relative to the JSON. The images of every section in `sections` that the file has
    ("validation" when it has none of them); `unlabelled`: no labels attached (pretraining and embedding);
    `parsed`: see `load_datalist`."""
    data = load_datalist(path, parsed)
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
        if v.series is None and v.path.is_file() and volume_suffix(v.path) in NIFTI:
            try:
                shape = tuple(nib.load(str(v.path)).shape)   # header only
            except Exception:  # a broken file is reported (or skipped) when it is read
                pass
        n = shape[-1] if len(shape) in (4, 5) else 1
        out += [replace(v, id=f"{v.id}#c{c}", channel=c) for c in range(n)] if n > 1 else [v]
    return out
