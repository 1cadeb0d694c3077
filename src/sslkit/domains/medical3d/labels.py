"""Label maps of fine-tuning and predict: the label values present, their class indices and names, and the
nested regions (BraTS WT/TC/ET) a network can be trained on."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sslkit.core.errors import UserError


def label_values(entries: list[tuple[Path, dict]]) -> list[int]:
    """The label values present in the label volumes, background 0 first: class i of the network is value [i].

    Values need not be contiguous: BraTS writes 0, 1, 2, 4 and FreeSurfer's aseg up to 255; they are mapped to
    classes 0..K-1 for training and back to the file's values in the predictions.
    """
    found: set[int] = set()
    for _, meta in entries:
        lab = np.load(meta["label"], mmap_mode="r")
        if lab.min() < 0:
            raise UserError(f"label volume for {meta['source']} has negative values — labels must be 0 or positive")
        found.update(int(v) for v in np.unique(lab))
    values = [0] + sorted(found - {0})
    if len(values) < 2:
        raise UserError("the label volumes hold only background (0) — give labels with at least one class > 0")
    return values


def value_lut(values: list[int]) -> np.ndarray | None:
    """Label value -> class index lookup table; None when the values already are 0..K-1."""
    if values == list(range(len(values))):
        return None
    lut = np.zeros(values[-1] + 1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    return lut


def class_names(labels: Path, values: list[int], parsed: dict[Path, Any] | None = None) -> list[str]:
    """Names of the foreground label values from a `dataset.json` in the label folder or the folder above it, or from
    `labels` itself when it is a JSON datalist (nnU-Net v2 `{"labels": {"name": value}}` or MSD
    `{"labels": {"value": "name"}}`; taken from `parsed` when the command has read it already, see
    `discover.load_datalist`); "class v" where none is given."""
    names = {v: f"class {v}" for v in values[1:]}
    folder = labels if labels.is_dir() else labels.parent
    own = [labels] if labels.is_file() and labels.suffix.lower() == ".json" else []     # a datalist (the Decathlon's)
    found = next((p for p in (*own, folder / "dataset.json", folder.parent / "dataset.json") if p.is_file()), None)
    if found is None:
        return [names[v] for v in values[1:]]
    try:
        data = parsed[found.resolve()] if parsed and found.resolve() in parsed else json.loads(found.read_text())
        table = data.get("labels", {}) if isinstance(data, dict) else {}
        pairs = [(int(v), str(k)) if not str(k).isdigit() else (int(k), str(v)) for k, v in table.items()]
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{found}: cannot read its \"labels\" mapping ({e}) — write it as "
                        '{"labels": {"background": 0, "name": 1, ...}} or delete the file') from None
    names.update({i: n for i, n in pairs if i in names})
    return [names[v] for v in values[1:]]


def class_map(meta: dict[str, Any], lut: np.ndarray | None) -> np.ndarray:
    """A cached volume's label map as class indices (label values through `lut` when they are not 0..K-1)."""
    label = np.load(meta["label"]).astype(np.int64)
    return lut[label] if lut is not None else label


def region_classes(regions: dict[str, list[int]], values: list[int]) -> dict[str, list[int]]:
    """`finetune.regions` (unions of label values) as class indices; a value the labels do not hold is an error."""
    out = {}
    for name, members in regions.items():
        if not members or (unknown := sorted(set(members) - set(values[1:]))):
            raise UserError(f"finetune.regions: {name} = {members} names no label value or values the labels do not "
                            f"hold ({unknown if members else 'empty'}; they hold {values[1:]}) — use those values")
        out[name] = [values.index(v) for v in members]
    return out


def region_layout(ft: Any, values: list[int]) -> tuple[np.ndarray | None, list[tuple[int, int]] | None]:
    """(members, paint) of a region-trained network, or (None, None) without `finetune.region_training`.

    members (K, R) 0/1: class k lies in region r (the network's output r). paint [(output, class)]: the regions
    largest first, each with the one class it adds to the regions nested inside it (BraTS: WT adds edema, TC
    necrosis, ET enhancing tumour), so a voxel takes the class of the innermost region predicted there. Regions must
    be nested or disjoint, each must add exactly one value, and together they must cover every label value."""
    if not ft.region_training:
        return None, None
    if not ft.regions:
        raise UserError("finetune.region_training needs finetune.regions — e.g. for BraTS labels "
                        "--set 'finetune.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}'")
    sets = {name: set(cls) for name, cls in region_classes(ft.regions, values).items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if sets[a] == sets[b] or (sets[a] & sets[b] and not (sets[a] < sets[b] or sets[b] < sets[a])):
                raise UserError(f"finetune.regions: {a} and {b} overlap without one holding the other — region "
                                "training needs regions that are nested or disjoint")
    if missing := sorted(set(range(1, len(values))) - set().union(*sets.values())):
        raise UserError(f"finetune.region_training: label values {[values[k] for k in missing]} lie in no region, so "
                        "they could never be predicted — add them to a region")
    paint = []
    for name in sorted(names, key=lambda n: -len(sets[n])):
        own = sets[name] - set().union(*(sets[m] for m in names if sets[m] < sets[name]))
        if len(own) != 1:
            raise UserError(f"finetune.regions: {name} adds {sorted(values[k] for k in own) or 'no value'} to the "
                            "regions inside it — for region training each region must add exactly one label value")
        paint.append((names.index(name), own.pop()))
    members = np.zeros((len(values), len(names)), dtype=np.float32)
    for r, name in enumerate(names):
        members[sorted(sets[name]), r] = 1.0
    return members, paint


def check_known(found: list[int], values: list[int], run_dir: Path, where: str) -> None:
    """Label values `found` in `where` must be ones the fine-tuning run in `run_dir` segments (`values`)."""
    if unknown := sorted(set(found) - set(values)):
        raise UserError(f"the labels in {where} hold values {unknown} that {run_dir} was not fine-tuned on (it "
                        f"segments {values}) — give labels with the fine-tuning run's values")
