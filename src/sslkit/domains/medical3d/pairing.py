"""Pairing images with their label maps (`finetune`, `predict --labels`): by volume id, then by file name, then by
sorted order (said on stderr); or through a JSON datalist's image -> label entries.

A wrong pairing trains or scores silently on the wrong labels, so every rule that can tell is tried before order,
and pairings that cannot be right (an image as its own label, two images on one label) are refused.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.discover import (PRETRAIN_SECTIONS, UNLABELLED_SECTIONS, find_volumes, load_datalist,
                                               read_datalist)
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


def attach_labels(images: list[Volume], labels: Path, *, parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """`images` with their labels from `labels`: a label folder or file (`pair_labels`), or a JSON datalist whose
    entries name each image's label (matched by the image's resolved path; its images are not labels). `parsed`:
    the datalists this command has read (`discover.load_datalist`)."""
    if not is_datalist(labels):
        return pair_labels(images, find_volumes([labels]))
    listed: dict[Path, Path | None] = {}
    # an image also listed under "test" keeps its label
    for v in read_datalist(labels, UNLABELLED_SECTIONS, parsed=parsed):
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


def labelled_volumes(images: Path, labels: Path | None, *, parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """`finetune`'s labelled volumes: a JSON datalist as IMAGES brings its own "label" entries (LABELS then left out
    or the same file); otherwise LABELS is paired with the images by `attach_labels`. `parsed`: the datalists this
    command has read (`discover.load_datalist`), filled here."""
    volumes = find_volumes([images], parsed=parsed)
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
    return attach_labels(volumes, labels, parsed=parsed)


def test_volumes(images: Path, labels: Path | None, *, parsed: dict[Path, Any] | None = None) -> list[Volume] | None:
    """The labelled "test" entries of a datalist given as IMAGES (LABELS left out or the same file): what `finetune`
    scores. None when there is no "test" list, or its entries carry no labels (then said on stderr: the held-out
    training volumes are scored as without one). An image listed under both "training" and "test" is refused.
    `parsed`: the datalists this command has read (`discover.load_datalist`)."""
    if not is_datalist(images) or (labels is not None and labels.resolve() != images.resolve()):
        return None
    data = load_datalist(images, parsed)
    if not isinstance(data, dict) or not isinstance(data.get("test"), list) or not data["test"]:
        return None
    tests = read_datalist(images, ("test",), parsed=parsed)
    if all(v.label is None for v in tests):
        from sslkit.core.console import info

        info(f"{images.name}: its {len(tests)} \"test\" images have no labels, so they cannot be scored — the "
             "labelled training volumes not trained on are scored instead")
        return None
    if unlabelled := [v.id for v in tests if v.label is None]:
        raise UserError(f"{images}: test entry {unlabelled[0]} has no \"label\" while others do — give every test "
                        "entry its label map, or none")
    training = {v.path.resolve() for v in read_datalist(images, PRETRAIN_SECTIONS, unlabelled=True, parsed=parsed)}
    if both := [v.id for v in tests if v.path.resolve() in training]:
        raise UserError(f"{images}: {both[0]} is listed under both \"training\" and \"test\" ({len(both)} in all) "
                        "— a test image must not be trained on; list it once")
    return check_pairs(tests)


def _id_keys(v: Volume) -> set[str]:
    """Names a user may give for a volume in --labelled: its id, id without the volume suffix, file name, and file
    name without the suffix."""
    stem = volume_stem(v.id)
    return {v.id, stem, v.id.rpartition("/")[2], stem.rpartition("/")[2]}


def order_labelled(pairs: list[Volume], spec: str | None, images: Path,
                   has_tests: bool) -> tuple[list[Volume], int | None, str]:
    """(pairs with the chosen training volumes first, how many train, how they were chosen) from `--labelled`:
    N (the first N in datalist or sorted order), a comma list of ids, or a file of ids (one a line, # comments).
    None: every labelled volume with a test list, else half (`finetune.split`). Unknown ids, repeats and more
    volumes than there are are refused."""
    order = "datalist" if is_datalist(images) else "sorted"
    if spec is None:
        return pairs, None, f"all {len(pairs)}" if has_tests else ""
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= len(pairs) or (not has_tests and n == len(pairs) > 1):
            top = len(pairs) if has_tests else max(1, len(pairs) - 1)
            held = "" if has_tests else " (the others are held out and scored, as there is no \"test\" list)"
            raise UserError(f"--labelled {n}: there are {len(pairs)} labelled training volumes in {images}{held} — "
                            f"use 1..{top}")
        return pairs, n, f"the first {n} in {order} order"
    source = Path(spec)
    if source.is_file():
        names = [ln.split("#")[0].strip() for ln in source.read_text().splitlines()]
        how = f"the {{n}} listed in {source}"
    else:
        names = [x.strip() for x in spec.split(",")]
        how = "the {n} listed"
    names = [x for x in names if x]
    if not names:
        raise UserError(f"--labelled {spec!r} names no volume — give N, a comma list of ids, or a file of ids")
    index: dict[str, int] = {}
    for i, v in enumerate(pairs):
        for key in _id_keys(v):
            index.setdefault(key, i)
    picked: list[int] = []
    for name in names:
        if name not in index:
            raise UserError(f"--labelled: {name!r} is not one of the {len(pairs)} labelled training volumes of "
                            f"{images} (e.g. {pairs[0].id}) — give ids as listed there, or file names")
        if index[name] in picked:
            raise UserError(f"--labelled names {pairs[index[name]].id} twice — list each volume once")
        picked.append(index[name])
    if not has_tests and len(picked) == len(pairs) > 1:
        raise UserError(f"--labelled lists all {len(pairs)} labelled volumes, leaving none held out to score — list "
                        "fewer, or give a datalist with a \"test\" list")
    chosen = sorted(picked)                 # datalist (or sorted) order, whatever order the list gave
    rest = [v for i, v in enumerate(pairs) if i not in set(picked)]
    return [pairs[i] for i in chosen] + rest, len(chosen), how.format(n=len(chosen)) + f", in {order} order"


def unlabelled_volumes(paths: list[Path], labelled: list[Volume], tests: list[Volume], *,
                       parsed: dict[Path, Any] | None = None) -> list[Volume]:
    """`finetune --unlabelled`: volumes for mean-teacher consistency — folders and files as found, a datalist's
    training images (never its "test" ones) — less those that are `labelled` (they train with labels, or are held
    out and scored) or `tests`; said on stderr. `parsed`: the datalists this command has read."""
    from sslkit.core.console import info

    found = find_volumes(paths, PRETRAIN_SECTIONS, parsed=parsed)
    taken = {v.path.resolve() for v in [*labelled, *tests]}
    kept = [v for v in found if v.path.resolve() not in taken]
    if not kept:
        raise UserError(f"--unlabelled: all {len(found)} volumes found are labelled training or test volumes of this "
                        "run — give other volumes, or fewer with --labelled")
    left = len(found) - len(kept)
    info(f"unlabelled: {len(kept)} volumes for mean-teacher consistency" +
         (f" ({left} labelled or scored volumes among those given left out)" if left else ""))
    return [replace(v, label=None) for v in kept]
