"""`medical3d finetune`: few-label segmentation from a pretrained (or fresh) encoder, held-out Dice, NIfTI predictions."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.io import Volume
from sslkit.domains.medical3d.recipe import FinetuneRecipe, Medical3DRecipe


# region outputs start at this sigmoid probability (RetinaNet's prior initialisation): from 0.5, where every voxel is
# borderline tumour, 60 steps on the test's three 48³ lesions scored WT Dice 0.32; from 0.1, 0.89
REGION_PRIOR = 0.1


def settings_from(data: Any) -> Any:
    """Preprocessing settings of a recipe's data section."""
    from sslkit.domains.medical3d.preprocess import Settings

    return Settings(modality=data.modality, spacing=tuple(data.spacing) if data.spacing else None,
                    hu_window=tuple(data.hu_window), percentiles=tuple(data.percentiles),
                    crop_foreground=data.crop_foreground, foreground_threshold=data.foreground_threshold)


def cache_for(data: Any) -> Any:
    """The preprocessing cache that a recipe's data section reads and fills (`data.cache_dir`, else the default)."""
    from sslkit.domains.medical3d.preprocess import VolumeCache

    return VolumeCache(Path(data.cache_dir) if data.cache_dir else None, settings_from(data))


def split(entries: list[tuple[Path, dict]], n_train: int | None,
          label_fraction: float = 0.5) -> tuple[list, list, list | None, list]:
    """(train entries, eval entries, train X-regions or None, eval X-regions) — a single volume is split in halves.

    With one labelled volume the left half along RAS x (low x after reorientation: the patient's left) trains and
    the right half is held out; `label_fraction` < 0.5 trains on a slab of that share of the x extent,
    centred in the training half (fewer labels, same held-out half). With several volumes, the first
    `n_train` train and the rest are held out.
    """
    if len(entries) == 1:
        x = entries[0][1]["shape"][0]
        width = min(max(1, round(label_fraction * x)), x // 2)  # 0.5 × 35 rounds to 18: one slice past x // 2
        lo = max(0, min(x // 2 - width, x // 4 - width // 2))
        return entries, entries, [(lo, lo + width)], [(x // 2, x)]
    n = n_train if n_train is not None else max(1, len(entries) // 2)
    if not 1 <= n < len(entries):
        raise UserError(f"--train {n} leaves no held-out volume among {len(entries)} — use 1..{len(entries) - 1}")
    held = entries[n:]
    return entries[:n], held, None, [(0, e[1]["shape"][0]) for e in held]


def split_summary(train_e: list, eval_e: list, train_regions: list | None) -> tuple[str, dict[str, Any]]:
    """(info line, record) of what trains and what is scored: with one labelled volume it is both the training and
    the held-out volume, which reads as leakage unless it says that the left half along RAS x trains and the right
    half is scored. The record (manifest, evaluation.json) holds the ids and, for halves, the voxel ranges."""
    def listing(ids: list[str]) -> str:
        return ", ".join(ids[:4]) + (f", … {len(ids)} in all" if len(ids) > 4 else "")

    def volumes(n: int) -> str:
        return f"{n} labelled volume{'' if n == 1 else 's'}"

    ids = {"train": [m["id"] for _, m in train_e], "held_out": [m["id"] for _, m in eval_e]}
    if train_regions is None:
        return (f"split: training on {volumes(len(train_e))} ({listing(ids['train'])}), scoring "
                f"{volumes(len(eval_e))} held out ({listing(ids['held_out'])})"), {**ids, "by": "volume"}
    (lo, hi), x = train_regions[0], eval_e[0][1]["shape"][0]
    part = "its left half" if (lo, hi) == (0, x // 2) else f"a slab of its left half (x voxels {lo}–{hi - 1})"
    record = {**ids, "by": "halves along RAS x", "train_x": [lo, hi], "held_out_x": [x // 2, x]}
    return (f"split: one labelled volume, {ids['train'][0]}, in halves along RAS x ({x} voxels after "
            f"preprocessing): training on {part}, scoring its right half (x voxels {x // 2}–{x - 1}), whose labels "
            "training never uses"), record


def input_channels(entries: list[tuple[Path, dict]]) -> int:
    """The images' channel count (1 for 3-D volumes); every image must have the same."""
    counts: dict[int, list[str]] = {}
    for _, meta in entries:
        counts.setdefault(int(meta.get("channels", 1)), []).append(meta["id"])
    if len(counts) > 1:
        listing = "; ".join(f"{n} channel(s): {', '.join(ids[:3])}{' …' if len(ids) > 3 else ''}"
                            for n, ids in sorted(counts.items()))
        raise UserError(f"the images differ in their number of channels ({listing}) — give images with the same "
                        "channels, or pick one with --set data.channel=N")
    return next(iter(counts))


def check_channels(entries: list[tuple[Path, dict]], encoder: torch.nn.Module, what: str) -> int:
    """The images' channel count, which must be the one `encoder` reads; `what` opens the refusal ("RUN segments")."""
    from sslkit.domains.medical3d.model import input_conv

    if (channels := input_channels(entries)) != (wanted := input_conv(encoder).in_channels):
        raise UserError(f"{what} {wanted}-channel images and these have {channels} — give images with {wanted} "
                        "channels (data.channel as in that run)")
    return channels


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


def class_names(labels: Path, values: list[int]) -> list[str]:
    """Names of the foreground label values from a `dataset.json` in the label folder or the folder above it, or from
    `labels` itself when it is a JSON datalist (nnU-Net v2 `{"labels": {"name": value}}` or MSD
    `{"labels": {"value": "name"}}`); "class v" where none is given."""
    names = {v: f"class {v}" for v in values[1:]}
    folder = labels if labels.is_dir() else labels.parent
    own = [labels] if labels.is_file() and labels.suffix.lower() == ".json" else []     # a datalist (the Decathlon's)
    found = next((p for p in (*own, folder / "dataset.json", folder.parent / "dataset.json") if p.is_file()), None)
    if found is None:
        return [names[v] for v in values[1:]]
    try:
        data = json.loads(found.read_text())
        table = data.get("labels", {}) if isinstance(data, dict) else {}
        pairs = [(int(v), str(k)) if not str(k).isdigit() else (int(k), str(v)) for k, v in table.items()]
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{found}: cannot read its \"labels\" mapping ({e}) — write it as "
                        '{"labels": {"background": 0, "name": 1, ...}} or delete the file') from None
    names.update({i: n for i, n in pairs if i in names})
    return [names[v] for v in values[1:]]


def load_decoder(decoder: torch.nn.Module, checkpoint: Path) -> int:
    """Start `decoder` from a pretraining checkpoint's U-Net reconstruction decoder (`alice.recon_decoder: unet`).

    All tensors but the output layer (1 channel there) must match by name and shape, else nothing
    moves, with a warning (e.g. another `decoder_channels`). A convolution reading the 1-channel input is widened to
    a several-channel input as `segmentation.inflate_input` widens the encoder. Returns the number of tensors copied.
    """
    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.core.console import warn

    if not checkpoint.is_file():
        return 0
    weights = {k[len("recon."):]: v for k, v in load_checkpoint(checkpoint)["model"].items() if k.startswith("recon.")}
    wanted = {k: v for k, v in decoder.state_dict().items() if not k.startswith("out.")}
    for k, v in wanted.items():   # the input stem's convolutions: 1 channel in pretraining, C in fine-tuning
        w = weights.get(k)
        widened = w is not None and w.dim() == 5 and w.shape[1] == 1 < v.shape[1]
        if widened and (w.shape[0], *w.shape[2:]) == (v.shape[0], *v.shape[2:]):
            weights[k] = w.repeat(1, v.shape[1], 1, 1, 1) / v.shape[1]
    if any(k not in weights or weights[k].shape != v.shape for k, v in wanted.items()):
        warn(f"{checkpoint} holds no reconstruction decoder of this shape (another finetune.decoder_channels, or "
             "pretrained without alice.recon_decoder=unet) — the decoder starts fresh")
        return 0
    decoder.load_state_dict({k: weights[k] for k in wanted}, strict=False)
    return len(wanted)


def resumed_settings(out: Path | None, pretrained: Path | None) -> dict[str, Any]:
    """The `finetune` section of the fine-tuning run in `out` that `--resume` continues; it must have started from
    the same pretraining run (or from scratch, as `pretrained` None says)."""
    from sslkit.core.runs import Run

    if out is None:
        raise UserError("--resume needs --out pointing at the fine-tuning run to continue")
    saved = Run.load(out, "medical3d").recipe_dict
    if saved.get("method") != "finetune":
        raise UserError(f"--resume: {out} is a pretraining run — resume it with `medical3d pretrain --resume`")
    was = saved.get("pretrained")
    if (Path(was).resolve() if was else None) != (Path(pretrained).resolve() if pretrained else None):
        raise UserError(f"--resume: {out} was fine-tuned from {was or 'scratch (--from-scratch)'} — give that run "
                        f"{'' if was else 'and --from-scratch '}to continue it")
    return dict(saved.get("finetune", {}))


def run_finetune(cfg: Medical3DRecipe, pretrained: Path | None, pairs: list[Volume], n_train: int | None,
                 out: Path | None, overwrite: bool, strict: bool, data_paths: list[Path],
                 resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train, predict the held-out part, write predictions and evaluation.json; returns the run folder and the
    evaluation (empty on ranks other than 0). `resume` continues the interrupted run in `out` from its checkpoint
    (same data split, else refused). `data_paths`: IMAGES and LABELS, or a labelled datalist alone."""
    from sslkit.core import distributed
    from sslkit.core.console import info
    from sslkit.core.export import load_encoder
    from sslkit.core.loop import fit, seed_everything, use_bf16
    from sslkit.core.runs import Run
    from sslkit.domains.medical3d.datasets import LabelledCrops
    from sslkit.domains.medical3d.io import output_stems
    from sslkit.domains.medical3d.method import build_encoder
    from sslkit.domains.medical3d.preprocess import prepare
    from sslkit.domains.medical3d.recipe import finetune_train_config
    from sslkit.domains.medical3d.segmentation import Segmenter, SegmentationTask, inflate_input

    ft = cfg.finetune
    output_stems([v.id for v in pairs])         # held-out predictions are written per volume: no two on one file
    cache = cache_for(cfg.data)
    entries, skipped = prepare(pairs, cache, strict)
    channels = input_channels(entries)
    values = label_values(entries)
    region_classes(ft.regions, values)        # checked before training, used in evaluate
    members, _ = region_layout(ft, values)
    classes, lut = len(values), value_lut(values)
    names = class_names(data_paths[-1], values)
    train_e, eval_e, train_regions, eval_regions = split(entries, n_train, ft.label_fraction)
    model = cfg.model.model_copy(update={"in_channels": channels})
    rec = FinetuneRecipe(pretrained=str(pretrained) if pretrained else None, data=cfg.data, model=model,
                         finetune=ft, classes=classes, label_values=values if lut is not None else None,
                         train=finetune_train_config(cfg.train, ft))
    seed_everything(ft.seed)
    if pretrained is not None:
        encoder = load_encoder(pretrained).train()
        spec = {k: encoder.sslkit_config[k] for k in ("domain", "kind", "kwargs")}
    else:
        encoder, spec = build_encoder(model)
    if ft.roi % encoder.stride or ft.roi < 2 * encoder.stride:   # instance norm cannot train on a 1-voxel map
        raise UserError(f"finetune.roi={ft.roi} must be a multiple of the encoder stride {encoder.stride} and at least "
                        f"twice it — e.g. --set finetune.roi={max(2, round(ft.roi / encoder.stride)) * encoder.stride}")
    if inflate_input(encoder, channels) > 1:   # a 1-channel encoder (pretrained on split channels) is widened
        spec = {**spec, "kwargs": {**spec["kwargs"], "in_channels": channels}}
    said, split_ids = split_summary(train_e, eval_e, train_regions)
    before = Run(out).manifest.get("medical3d", {}) if resume and out is not None else {}
    if resume and any(before.get(k) != split_ids[k] for k in ("train", "held_out")):
        raise UserError(f"--resume: these labelled volumes split into training {split_ids['train']} and held-out "
                        f"{split_ids['held_out']}, and {out} trained on {before.get('train')} — give the same "
                        "images, labels and --train")
    run = Run.open(out, domain="medical3d", recipe=rec, data_paths=data_paths, overwrite=overwrite, resume=resume)
    run.update_manifest(medical3d={"volumes": len(entries), "skipped_count": len(skipped), "skipped": skipped,
                                   "cache": str(cache.root), **split_ids})
    info(said)
    segmenter = Segmenter(encoder, classes if members is None else members.shape[1], ft.decoder_channels, channels,
                          prior=None if members is None else REGION_PRIOR)
    if pretrained is not None and ft.transfer_decoder and cfg.alice.recon_decoder == "unet":
        moved = load_decoder(segmenter.decoder, Run.load(pretrained).checkpoint_path)
        run.update_manifest(decoder_from_pretraining=moved)
    task = SegmentationTask(segmenter, spec, encoder_lr_mult=ft.encoder_lr_mult, weight_decay=rec.train.weight_decay,
                            members=members)
    data = LabelledCrops(train_e, ft.roi, ft.samples_per_volume, train_regions, ft.augment, lut)
    result = fit(task, data, rec.train, run, resume=resume)
    if not distributed.is_main():
        return run.dir, {}
    return run.dir, evaluate(task, run, eval_e, eval_regions, names, values, ft,
                             use_bf16(rec.train.precision, result.device), result.device, split_ids)


def evaluate(task: Any, run: Any, eval_e: list, eval_regions: list, names: list[str], values: list[int], ft: Any,
             bf16: bool, device: torch.device, split_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out Dice per foreground class `names` (classes 1..K-1, label `values[1:]`), NIfTI predictions in the
    label files' values, evaluation.json (`split_record` as its `split`, see `split_summary`), overlay. A volume
    scored on its right half only is shown as "<id> (right half)"; its evaluation.json keys stay the id."""
    from sslkit.core.files import atomic_write_text
    from sslkit.domains.medical3d.io import volume_stem

    classes, lut = len(values), value_lut(values)
    regions, paint = region_classes(ft.regions, values), region_layout(ft, values)[1]
    model = task.model.eval()
    scores, shown = {}, None
    for (npy, meta), (x0, x1) in zip(eval_e, eval_regions):
        image, probs, pred = segment(model, npy, ft, device, bf16, ft.tta, paint)
        label = class_map(meta, lut)
        region = np.zeros(label.shape, dtype=bool)
        region[x0:x1] = True
        scores[meta["id"]] = score_volume(pred, label, classes, regions, meta["spacing"], region)
        # under the id's sub-path (predictions/s1/t1.nii.gz); run_finetune refused ids that would share a file
        write_prediction(pred, meta, values, run.path("predictions", f"{volume_stem(meta['id'])}.nii.gz"), probs,
                         paint, ft.keep_largest)
        shown = shown or (image, label, pred, x0, x1)
    halves = split_record is not None and split_record.get("by", "").startswith("halves")
    shown_as = {k: f"{k} (right half)" for k in scores} if halves else None
    payload = scores_payload(scores, names, values, ft.regions, "held-out", shown_as)
    if split_record is not None:
        payload["split"] = split_record
    atomic_write_text(run.path("evaluation.json"), json.dumps(payload, indent=2))
    if shown is not None:
        overlay(*shown, run.path("plots", "segmentation.png"))
    return payload


def segment(model: torch.nn.Module, npy: Path, ft: Any, device: torch.device, bf16: bool, tta: bool,
            paint: list[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, probabilities, class map) of a cached volume: the sliding-window probabilities (mirrored with `tta`;
    regions with `paint`, see `region_layout`), set to background outside the image's foreground with
    `finetune.foreground_mask`, and their class map, reduced to its largest connected part with
    `finetune.keep_largest`. The image is (X, Y, Z) or (C, X, Y, Z)."""
    from sslkit.domains.medical3d.segmentation import clear_outside, decode, largest_component, probabilities

    image = np.load(npy).astype(np.float32)
    probs = probabilities(model, image, ft.roi, ft.sw_overlap, device, bf16, tta, paint is not None)
    if ft.foreground_mask:
        clear_outside(probs, image, paint is not None)
    pred = decode(probs, paint)
    return image, probs, largest_component(pred) if ft.keep_largest else pred


def class_map(meta: dict[str, Any], lut: np.ndarray | None) -> np.ndarray:
    """A cached volume's label map as class indices (label values through `lut` when they are not 0..K-1)."""
    label = np.load(meta["label"]).astype(np.int64)
    return lut[label] if lut is not None else label


def score_report(per_volume: dict[str, list[float]], hd95: dict[str, list[float]], names: list[str],
                 title: str, shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the Dice and HD95 tables (a row per volume, named by `shown_as` where given, a column per class or region
    `names`, with means) and return their part of evaluation.json."""
    from sslkit.core.console import print_table

    with warnings.catch_warnings():      # a class missing from every volume: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.array(list(per_volume.values()), dtype=float), axis=0)
        hd_mean = np.nanmean(np.array(list(hd95.values()), dtype=float), axis=0)
        for name, table, avg, fmt in (("Dice", per_volume, mean, "{:.3f}"), ("HD95 (mm)", hd95, hd_mean, "{:.1f}")):
            rows = [[(shown_as or {}).get(vid, vid), *[fmt.format(x) for x in v], fmt.format(np.nanmean(v))]
                    for vid, v in table.items()]
            rows.append(["mean", *[fmt.format(x) for x in avg], fmt.format(np.nanmean(avg))])
            print_table(f"{title} {name}", ["volume", *names, "mean"], rows)
        return {"dice_per_volume": per_volume, "dice_per_class": mean.tolist(), "mean_dice": float(np.nanmean(mean)),
                "hd95_mm_per_volume": hd95, "hd95_mm_per_class": hd_mean.tolist()}


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


def score_volume(pred: np.ndarray, label: np.ndarray, classes: int, regions: dict[str, list[int]],
                 spacing: list[float], region: np.ndarray | None = None) -> tuple[list[float], ...]:
    """(Dice per class, HD95 per class, Dice per region, HD95 per region) of one class map against its label map;
    a region is the union of its classes (`region_classes`)."""
    from sslkit.domains.medical3d.segmentation import dice_per_class, hd95_per_class

    dice, hd = dice_per_class(pred, label, classes, region), hd95_per_class(pred, label, classes, spacing, region)
    r_dice, r_hd = [], []
    for members in regions.values():
        p, t = np.isin(pred, members).astype(np.int64), np.isin(label, members).astype(np.int64)
        r_dice += dice_per_class(p, t, 2, region)
        r_hd += hd95_per_class(p, t, 2, spacing, region)
    return dice, hd, r_dice, r_hd


def scores_payload(scores: dict[str, tuple[list[float], ...]], names: list[str], values: list[int],
                   regions: dict[str, list[int]], title: str, shown_as: dict[str, str] | None = None) -> dict[str, Any]:
    """Print the class (and region) tables of per-volume `score_volume` results (rows named as in `score_report`);
    the evaluation.json payload."""
    payload = score_report({k: v[0] for k, v in scores.items()}, {k: v[1] for k, v in scores.items()}, names, title,
                           shown_as)
    payload.update(classes=len(values), class_names=names, label_values=values)
    if regions:
        payload["regions"] = {"members": regions, **score_report(
            {k: v[2] for k, v in scores.items()}, {k: v[3] for k, v in scores.items()}, list(regions),
            f"{title} (regions)", shown_as)}
    return payload


def write_prediction(pred: np.ndarray, meta: dict[str, Any], values: list[int], path: Path,
                     probs: np.ndarray | None = None, paint: list[tuple[int, int]] | None = None,
                     keep_largest: bool = False) -> np.ndarray:
    """Write a class map on the preprocessed grid as NIfTI on the input file's grid and affine, in the label files'
    `values`; returns the written array. When preprocessing resampled the volume and its `probs` are given, the
    probabilities are resampled to the file's grid and decoded there instead (`FileGridProbabilities`; `paint` for
    region outputs, `keep_largest` applied again there)."""
    from sslkit.domains.medical3d.io import write_nifti
    from sslkit.domains.medical3d.preprocess import FileGridProbabilities, undo_preprocess
    from sslkit.domains.medical3d.segmentation import decode, largest_component

    if probs is not None and meta["resampled_shape"] != meta["ras_shape"]:
        classes = decode(FileGridProbabilities(probs, meta, paint is not None), paint)
        classes = largest_component(classes) if keep_largest else classes
    else:
        classes = undo_preprocess(pred, meta)
    written = np.asarray(values, dtype=np.int16)[classes] if value_lut(values) is not None else classes
    write_nifti(path, written, np.asarray(meta["affine"]))
    return written


def load_segmenter(run_dir: Path) -> tuple[torch.nn.Module, FinetuneRecipe]:
    """The segmentation network of a `finetune` run (encoder + decoder, eval mode) and the run's recipe."""
    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.core.export import build_encoder
    from sslkit.core.recipes import validate_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.medical3d.segmentation import Segmenter

    run = Run.load(run_dir, "medical3d")
    if run.recipe_dict.get("method") != "finetune":
        raise UserError(f"{run.dir} is a pretraining run — predict needs the folder `medical3d finetune` wrote "
                        "(it holds the segmentation decoder)")
    rec = validate_recipe(FinetuneRecipe, run.recipe_dict, str(run.path("recipe.yaml")))
    state = load_checkpoint(run.checkpoint_path)
    outputs = len(rec.finetune.regions) if rec.finetune.region_training else rec.classes
    segmenter = Segmenter(build_encoder(json.loads(state["encoder_spec"])), outputs, rec.finetune.decoder_channels,
                          rec.model.in_channels)
    weights = {k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")}
    missing, unexpected = segmenter.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{run.checkpoint_path} does not hold the segmenter its recipe describes (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}) — fine-tune again with this sslkit")
    return segmenter.eval(), rec


def run_predict(run_dir: Path, volumes: list[Volume], out: Path, overwrite: bool, strict: bool,
                device_spec: str = "auto", tta: bool | None = None, keep_largest: bool | None = None,
                save_probabilities: bool = False) -> dict[str, Any]:
    """Segment `volumes` with a finetune run: NIfTI label maps on each input's grid under `out`, and per volume the
    voxels and millilitres of every class in `out/volumes.json`; returns that summary. Volumes that carry a label
    (paired by the caller) are also scored: Dice and HD95 per class over the whole volume, on the label file's own
    grid and spacing, `out/evaluation.json`, and the first one drawn in `out/segmentation.png` (on the preprocessed
    grid). `tta` and `keep_largest` None follow the run's `finetune`. `save_probabilities` also writes each volume's
    probabilities on its file's grid as `<name>_probabilities.nii.gz`, (X, Y, Z, K) float32: the softmax over the
    classes (or each region's sigmoid), after the foreground mask and before `keep_largest`."""
    from sslkit.core import distributed
    from sslkit.core.console import print_table
    from sslkit.core.files import atomic_write_text
    from sslkit.core.loop import use_bf16
    from sslkit.domains.medical3d.io import output_stems, read_volume, write_nifti
    from sslkit.domains.medical3d.preprocess import FileGridProbabilities, prepare, spacing_of

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty — pass --overwrite or choose another --out")
    ids = [v.id for v in volumes]
    stems = dict(zip(ids, output_stems(ids, (".nii.gz", "_probabilities.nii.gz") if save_probabilities else
                                       (".nii.gz",))))
    segmenter, rec = load_segmenter(run_dir)
    entries, skipped = prepare(volumes, cache_for(rec.data), strict)
    check_channels(entries, segmenter.encoder, f"{run_dir} segments")
    values = rec.label_values or list(range(rec.classes))
    scored = any(meta.get("label") for _, meta in entries)
    if scored:
        check_known(label_values(entries), values, run_dir, "--labels")
    _remove_earlier_predictions(out)
    device = distributed.select_device(device_spec)
    segmenter.to(device)
    evaluation = Path(run_dir) / "evaluation.json"       # the names fine-tuning read from dataset.json
    names = (json.loads(evaluation.read_text()).get("class_names") if evaluation.is_file() else None) or \
        [f"class {v}" for v in values[1:]]
    summary: dict[str, Any] = {"run": str(run_dir), "label_values": values, "skipped": skipped, "volumes": {}}
    lut, scores, shown = value_lut(values), {}, None
    regions, paint = region_classes(rec.finetune.regions, values), region_layout(rec.finetune, values)[1]
    bf16, tta = use_bf16(rec.finetune.precision, device), rec.finetune.tta if tta is None else tta
    ft = rec.finetune if keep_largest is None else rec.finetune.model_copy(update={"keep_largest": keep_largest})
    for npy, meta in entries:
        image, probs, pred = segment(segmenter, npy, ft, device, bf16, tta, paint)
        path = out / f"{stems[meta['id']]}.nii.gz"
        written = write_prediction(pred, meta, values, path, probs, paint, ft.keep_largest)
        if meta.get("label"):        # scored on the file's own grid, against the label file as given
            truth, affine = read_volume(Path(meta["label_source"]))
            truth = np.rint(truth).astype(np.int64)
            check_known(np.unique(truth).tolist(), values, run_dir, meta["label_source"])
            classes = written.astype(np.int64)
            if lut is not None:
                truth, classes = lut[truth], lut[classes]
            scores[meta["id"]] = score_volume(classes, truth, len(values), regions, spacing_of(affine).tolist())
            shown = shown or (image, class_map(meta, lut), pred, 0, pred.shape[0])
        voxel_ml = abs(float(np.linalg.det(np.asarray(meta["affine"])[:3, :3]))) / 1000.0
        counts = [int((written == v).sum()) for v in values[1:]]
        summary["volumes"][meta["id"]] = {"prediction": str(path), "voxels": dict(zip(names, counts)),
                                          "ml": {n: c * voxel_ml for n, c in zip(names, counts)}}
        if save_probabilities:
            stacked = np.stack(list(FileGridProbabilities(probs, meta, paint is not None)), axis=-1)
            prob_path = write_nifti(out / f"{stems[meta['id']]}_probabilities.nii.gz", stacked,
                                    np.asarray(meta["affine"]))
            summary["volumes"][meta["id"]]["probabilities"] = str(prob_path)
    atomic_write_text(out / "volumes.json", json.dumps(summary, indent=2))
    print_table("predicted volume (mL)", ["volume", *names],
                [[vid, *[f"{v:.1f}" for v in row["ml"].values()]] for vid, row in summary["volumes"].items()])
    if scores:
        payload = scores_payload(scores, names, values, rec.finetune.regions, "test")
        atomic_write_text(out / "evaluation.json", json.dumps(payload, indent=2))
        overlay(*shown, out / "segmentation.png", split="test")
    return summary


def check_known(found: list[int], values: list[int], run_dir: Path, where: str) -> None:
    """Label values `found` in `where` must be ones the fine-tuning run in `run_dir` segments (`values`)."""
    if unknown := sorted(set(found) - set(values)):
        raise UserError(f"the labels in {where} hold values {unknown} that {run_dir} was not fine-tuned on (it "
                        f"segments {values}) — give labels with the fine-tuning run's values")


def _remove_earlier_predictions(out: Path) -> None:
    """Before `predict --overwrite` writes into `out`: remove what an earlier predict wrote there (the files its
    volumes.json lists, and its reports), so the folder describes one run; nothing else in it is touched."""
    listing = out / "volumes.json"
    if not listing.is_file():
        return
    try:
        earlier = [Path(v[k]) for v in json.loads(listing.read_text()).get("volumes", {}).values()
                   for k in ("prediction", "probabilities") if k in v]
    except (ValueError, AttributeError, KeyError, TypeError):
        return
    root = out.resolve()
    for path in earlier + [listing, out / "evaluation.json", out / "segmentation.png"]:
        if root in (path := path.resolve()).parents:       # never anything outside `out`
            path.unlink(missing_ok=True)
            for folder in path.parents:                     # sub-folders that held only predictions (out/s1/)
                if folder == root or not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()


def busiest_slices(label: np.ndarray) -> tuple[int, int]:
    """(axial z, coronal y) through the most labelled voxels of an (X, Y, Z) label volume; the middle if none.

    Middle slices miss small or off-centre structures (the synthetic spheres), leaving the picture blank."""
    fg = label > 0
    if not fg.any():
        return label.shape[2] // 2, label.shape[1] // 2
    return int(fg.sum(axis=(0, 1)).argmax()), int(fg.sum(axis=(0, 2)).argmax())


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, x0: int, x1: int, path: Path,
            split: str = "held-out") -> Path:
    """Axial and coronal slices through the scored part, x0:x1 (where it has the most labels): image (its first
    channel), reference, prediction; `split` ("held-out", "test") names that part in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = image[0] if image.ndim == 4 else image
    xs = slice(x0, x1)
    z, y = busiest_slices(label[xs])
    views = [("axial", lambda a: a[xs, :, z].T), ("coronal", lambda a: a[xs, y, :].T)]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6), dpi=110)
    for r, (name, cut) in enumerate(views):
        for c, (title, arr, cmap) in enumerate([("image", image, "gray"), ("reference", label, "viridis"),
                                                 ("prediction", pred, "viridis")]):
            ax = axes[r, c]
            ax.imshow(cut(image), cmap="gray", origin="lower")
            if c:
                ax.imshow(np.ma.masked_equal(cut(arr), 0), cmap=cmap, alpha=0.6, origin="lower", vmin=0,
                          vmax=max(int(label.max()), 1))
            ax.set_title(f"{title} ({name}, {split})")
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
