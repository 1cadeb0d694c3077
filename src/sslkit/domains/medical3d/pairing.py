"""Pairing images with their label maps (`finetune`, `predict --labels`): by volume id, then by file name, then by
sorted order (said on stderr); or through a JSON datalist's image -> label entries.

A wrong pairing trains or scores silently on the wrong labels, so every rule that can tell is tried before order,
and pairings that cannot be right (an image as its own label, two images on one label) are refused.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.discover import UNLABELLED_SECTIONS, find_volumes, read_datalist
from sslkit.domains.medical3d.volumes import Volume, volume_stem

CHANNEL_SUFFIX = re.compile(r"_\d{4}$")     # nnU-Net: case_0000.nii.gz is channel 0 of case, labelled case.nii.gz


def is_datalist(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".json"


def _keys(v: Volume) -> tuple[str, str]:
    """(id key, base-name key): the id as a relative path without the volume suffix, and its last part; lower case."""
    stem = volume_stem(v.id).lower()
    return stem, stem.rpartition("/")[2]


def pair_labels(images: list[Volume], labels: list[Volume]) -> list[Volume]:
    """Each image with its label volume: by id (the path within the given folder, volume suffix removed, case
    ignored), else by base file name where base names are unique on both sides (folder-per-case layouts repeat
    them), each also with nnU-Net's channel suffix dropped from the image (`case_0000` -> `case`). When that leaves
    an image unpaired and the counts agree, by sorted order, said on stderr."""
    by_id = {_keys(lab)[0]: lab for lab in labels}
    bases = [_keys(lab)[1] for lab in labels]
    unique = len(set(bases)) == len(bases) and len({_keys(im)[1] for im in images}) == len(images)
    by_base = dict(zip(bases, labels)) if unique else {}

    def match(im: Volume) -> Volume | None:
        key, base = _keys(im)
        tries = ((key, by_id), (CHANNEL_SUFFIX.sub("", key), by_id), (base, by_base),
                 (CHANNEL_SUFFIX.sub("", base), by_base))
        return next((table[k] for k, table in tries if k in table), None)

    matched = [match(im) for im in images]
    if missing := [im.id for im, m in zip(images, matched) if m is None]:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} label volumes, and none matches image "
                            f"{missing[0]} by path or file name — give one label file per image with the same "
                            "relative path or name (in another folder), or as many labels as images in the same order")
        from sslkit.core.console import info

        info(f"{len(missing)} of {len(images)} images have no label of the same path or name (e.g. {missing[0]}): "
             f"images and labels are paired in sorted order ({images[0].id} with {labels[0].id}, …)")
        matched = list(labels)
    return check_pairs([replace(im, label=m.path) for im, m in zip(images, matched)])  # type: ignore[union-attr]


def check_pairs(volumes: list[Volume]) -> list[Volume]:
    """Refuse an image given as its own label, and two images (different files) paired with one label."""
    owner: dict[Path, Volume] = {}
    for v in volumes:
        if v.label is None:
            continue
        label = v.label.resolve()
        if label == v.path.resolve():
            raise UserError(f"{v.path} is given as its own label — give the label maps separately (LABELS, --labels, "
                            "or \"label\" in the datalist)")
        other = owner.setdefault(label, v)
        if other.path.resolve() != v.path.resolve():
            raise UserError(f"images {other.id} and {v.id} are both paired with label {v.label} — give one label map "
                            "per image (nnU-Net's channel files case_0000, case_0001: stack them into one 4-D file and "
                            "use --set data.channel=all)")
    return volumes


def attach_labels(images: list[Volume], labels: Path) -> list[Volume]:
    """`images` with their labels from `labels`: a label folder or file (`pair_labels`), or a JSON datalist whose
    entries name each image's label (matched by the image's resolved path; its images are not labels)."""
    if not is_datalist(labels):
        return pair_labels(images, find_volumes([labels]))
    listed: dict[Path, Path | None] = {}
    for v in read_datalist(labels, UNLABELLED_SECTIONS):      # an image also listed under "test" keeps its label
        if listed.get(path := v.path.resolve()) is None:
            listed[path] = v.label
    out = []
    for im in images:
        if (path := im.path.resolve()) not in listed:
            raise UserError(f"{im.path} is not an image of datalist {labels} — list it there with its \"label\", or "
                            "give a label folder")
        if listed[path] is None:
            raise UserError(f"{labels} lists {im.path} without a \"label\" — add its label map there, or give a "
                            "label folder")
        out.append(replace(im, label=listed[path]))
    return check_pairs(out)


def labelled_volumes(images: Path, labels: Path | None) -> list[Volume]:
    """`finetune`'s labelled volumes: a JSON datalist as IMAGES brings its own "label" entries (LABELS then left out
    or the same file); otherwise LABELS is paired with the images by `attach_labels`."""
    volumes = find_volumes([images])
    if is_datalist(images) and any(v.label is not None for v in volumes):
        if unlabelled := [v.id for v in volumes if v.label is None]:
            raise UserError(f"{images}: training entry {unlabelled[0]} has no \"label\" while others do — give every "
                            "training entry its label map (or move it to \"test\")")
        if labels is not None and labels.resolve() != images.resolve():
            raise UserError(f"{images} already pairs every image with its \"label\", so LABELS {labels} is not "
                            "read — leave LABELS out (or give the same datalist)")
        return check_pairs(volumes)
    if labels is None:
        raise UserError("finetune needs LABELS (a label folder or file, one label map per image) — give it after "
                        "IMAGES, or give IMAGES as a JSON datalist whose entries have \"label\"")
    return attach_labels(volumes, labels)
