"""`medical3d finetune`: few-label segmentation from a pretrained (or fresh) encoder, held-out Dice, NIfTI predictions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.labels import (class_map, class_names, label_values, region_classes, region_layout,
                                             value_lut)
from sslkit.domains.medical3d.recipe import FinetuneRecipe, Medical3DRecipe
from sslkit.domains.medical3d.scoring import overlay, score_volume, scores_payload
from sslkit.domains.medical3d.volumes import Volume


# region outputs start at this sigmoid probability (RetinaNet's prior initialisation): from 0.5, where every voxel is
# borderline tumour, 60 steps on the test's three 48³ lesions scored WT Dice 0.32; from 0.1, 0.89
REGION_PRIOR = 0.1


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
        raise UserError(f"--labelled {n} leaves no held-out volume among {len(entries)} — use 1..{len(entries) - 1}")
    held = entries[n:]
    return entries[:n], held, None, [(0, e[1]["shape"][0]) for e in held]


def _listing(ids: list[str], limit: int = 4) -> str:
    return ", ".join(ids[:limit]) + (f", … {len(ids)} in all" if len(ids) > limit else "")


def split_summary(train_e: list, eval_e: list, train_regions: list | None, tests: bool = False, chosen: str = "",
                  labelled: int = 0) -> tuple[str, dict[str, Any]]:
    """(info line, record) of what trains and what is scored: with one labelled volume it is both the training and
    the held-out volume, which reads as leakage unless it says that the left half along RAS x trains and the right
    half is scored. With a datalist's test list (`tests`) the training volumes — `chosen` ("the first 8 in datalist
    order") of the `labelled` ones — are listed in full and the test volumes are scored. The record (manifest,
    evaluation.json) holds the ids and, for halves, the voxel ranges."""
    def volumes(n: int) -> str:
        return f"{n} labelled volume{'' if n == 1 else 's'}"

    ids = {"train": [m["id"] for _, m in train_e], "held_out": [m["id"] for _, m in eval_e]}
    if tests:
        return (f"split: training on {len(train_e)} of the {labelled} labelled training volumes ({chosen}): "
                f"{', '.join(ids['train'])}; scoring the datalist's {len(eval_e)} test volumes "
                f"({_listing(ids['held_out'])})"), {**ids, "by": "test entries", "chosen": chosen,
                                                     "labelled_available": labelled}
    if train_regions is None:
        return (f"split: training on {volumes(len(train_e))} ({_listing(ids['train'])}), scoring "
                f"{volumes(len(eval_e))} held out ({_listing(ids['held_out'])})"), {**ids, "by": "volume"}
    (lo, hi), x = train_regions[0], eval_e[0][1]["shape"][0]
    part = "its left half" if (lo, hi) == (0, x // 2) else f"a slab of its left half (x voxels {lo}–{hi - 1})"
    record = {**ids, "by": "halves along RAS x", "train_x": [lo, hi], "held_out_x": [x // 2, x]}
    return (f"split: one labelled volume, {ids['train'][0]}, in halves along RAS x ({x} voxels after "
            f"preprocessing): training on {part}, scoring its right half (x voxels {x // 2}–{x - 1}), whose labels "
            "training never uses"), record


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
                 resume: bool = False, tests: list[Volume] | None = None, chosen: str = "",
                 unlabelled: list[Volume] | None = None,
                 parsed: dict[Path, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train, predict the scored volumes, write predictions and evaluation.json; returns the run folder and the
    evaluation (empty on ranks other than 0). `tests` (a datalist's labelled test entries): the first `n_train` of
    `pairs` (all when None) train and `tests` are scored; without them the first `n_train` train and the rest of
    `pairs` are held out and scored (`split`). `unlabelled`: volumes for mean-teacher consistency
    (`finetune.semisup`). `resume` continues the interrupted run in `out` from its checkpoint (same data split, else
    refused). `data_paths`: IMAGES and LABELS, or a labelled datalist alone; `parsed`: the datalists the command has
    read (`discover.load_datalist`), for the class names."""
    from sslkit.core import distributed
    from sslkit.core.console import info
    from sslkit.core.export import load_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.runs import Run
    from sslkit.core.views import views_per_input
    from sslkit.domains.medical3d.datasets import LabelledCrops
    from sslkit.domains.medical3d.method import build_encoder
    from sslkit.domains.medical3d.predict import inference_bf16
    from sslkit.domains.medical3d.preprocess import cache_for, input_channels, prepare
    from sslkit.domains.medical3d.recipe import finetune_train_config
    from sslkit.domains.medical3d.segmentation import Segmenter, SegmentationTask, inflate_input
    from sslkit.domains.medical3d.semisup import MeanTeacher
    from sslkit.domains.medical3d.volumes import output_stems

    ft = cfg.finetune
    training = pairs[:n_train] if tests is not None and n_train else pairs
    output_stems([v.id for v in [*pairs, *(tests or [])]])   # predictions are written per volume: no two on one file
    cache = cache_for(cfg.data)
    # a fixed split (a test list) must stay the split it says: a bad labelled or test volume stops the run
    entries, skipped = prepare(training, cache, strict or tests is not None)
    if tests is not None:
        eval_e, skipped_test = prepare(tests, cache, True)
        train_e, train_regions, eval_regions = entries, None, [(0, m["shape"][0]) for _, m in eval_e]
        skipped, entries = skipped + skipped_test, entries + eval_e
    else:
        train_e, eval_e, train_regions, eval_regions = split(entries, n_train, ft.label_fraction)
    u_entries = prepare(unlabelled, cache, strict)[0] if unlabelled else None
    channels = input_channels(entries + (u_entries or []))
    values = label_values(entries)
    region_classes(ft.regions, values)        # checked before training, used in evaluate
    members, _ = region_layout(ft, values)
    classes, lut = len(values), value_lut(values)
    names = class_names(data_paths[-1], values, parsed)
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
    said, split_ids = split_summary(train_e, eval_e, train_regions, tests is not None, chosen, len(pairs))
    before = Run(out).manifest.get("medical3d", {}) if resume and out is not None else {}
    if resume and any(before.get(k) != split_ids[k] for k in ("train", "held_out")):
        raise UserError(f"--resume: these labelled volumes split into training {split_ids['train']} and held-out "
                        f"{split_ids['held_out']}, and {out} trained on {before.get('train')} — give the same "
                        "images, labels and --labelled (or --train)")
    run = Run.open(out, domain="medical3d", recipe=rec, data_paths=data_paths, overwrite=overwrite, resume=resume)
    run.update_manifest(medical3d={"volumes": len(entries), "skipped_count": len(skipped), "skipped": skipped,
                                   "cache": str(cache.root), **split_ids,
                                   "unlabelled": [m["id"] for _, m in u_entries] if u_entries else []})
    info(said)
    segmenter = Segmenter(encoder, classes if members is None else members.shape[1], ft.decoder_channels, channels,
                          prior=None if members is None else REGION_PRIOR)
    if pretrained is not None and ft.transfer_decoder and cfg.alice.recon_decoder == "unet":
        moved = load_decoder(segmenter.decoder, Run.load(pretrained).checkpoint_path)
        run.update_manifest(decoder_from_pretraining=moved)
    teacher = MeanTeacher(segmenter, ft.semisup, rec.train.steps) if u_entries else None
    task = SegmentationTask(segmenter, spec, encoder_lr_mult=ft.encoder_lr_mult, weight_decay=rec.train.weight_decay,
                            members=members, mean_teacher=teacher)
    spv = views_per_input(len(train_e), ft.samples_per_volume, rec.train.batch_size, "crops", "labelled volume",
                          "finetune.samples_per_volume")
    data = LabelledCrops(train_e, ft.roi, spv, train_regions, ft.aug if ft.augment else None, lut, ft.pos_fraction,
                         u_entries)
    result = fit(task, data, rec.train, run, resume=resume)
    if not distributed.is_main():
        return run.dir, {}
    # the test volumes are inferred in the precision fit() trained in (its manifest record), not a fresh guess
    bf16 = inference_bf16(rec.train.precision, result.device, run.manifest.get("precision", {}).get("used"))
    return run.dir, evaluate(task, run, eval_e, eval_regions, names, values, ft, bf16, result.device, split_ids,
                             "test" if tests is not None else "held-out", cfg.data.spacing)



def evaluate(task: Any, run: Any, eval_e: list, eval_regions: list, names: list[str], values: list[int], ft: Any,
             bf16: bool, device: torch.device, split_record: dict[str, Any] | None = None, title: str = "held-out",
             spacing: Any = None) -> dict[str, Any]:
    """Dice, Jaccard, HD95 and ASD per foreground class `names` (classes 1..K-1, label `values[1:]`) of the scored
    (`title`: "test" or "held-out") volumes on the preprocessed grid — at `spacing` mm (`data.spacing`, labels
    resampled by nearest neighbour) or the files' own when None — NIfTI predictions in the label files' values on
    the files' grids, evaluation.json (`split_record` as its `split`, see `split_summary`), overlay. A volume scored
    on its right half only is shown as "<id> (right half)"; its evaluation.json keys stay the id."""
    from sslkit.core.files import atomic_write_text
    from sslkit.core.progress import Progress
    from sslkit.domains.medical3d.predict import segment, write_prediction
    from sslkit.domains.medical3d.volumes import volume_stem

    classes, lut = len(values), value_lut(values)
    regions, paint = region_classes(ft.regions, values), region_layout(ft, values)[1]
    model = task.model.eval()
    scores, shown = {}, None
    with Progress(total=len(eval_e), label="evaluate") as progress:     # a sliding window per held-out volume
        for done, ((npy, meta), (x0, x1)) in enumerate(zip(eval_e, eval_regions), 1):
            image, probs, pred = segment(model, npy, ft, device, bf16, ft.tta, paint)
            label = class_map(meta, lut)
            region = np.zeros(label.shape, dtype=bool)
            region[x0:x1] = True
            scores[meta["id"]] = score_volume(pred, label, classes, regions, meta["spacing"], region)
            # under the id's sub-path (predictions/s1/t1.nii.gz); run_finetune refused ids that would share a file
            write_prediction(pred, meta, values, run.path("predictions", f"{volume_stem(meta['id'])}.nii.gz"), probs,
                             paint, ft.keep_largest)
            shown = shown or (image, label, pred, x0, x1)
            progress.advance(done, meta["id"])
    halves = split_record is not None and split_record.get("by", "").startswith("halves")
    shown_as = {k: f"{k} (right half)" for k in scores} if halves else None
    if spacing is not None:
        from sslkit.core.console import info

        info(f"scored at {' × '.join(f'{s:g}' for s in spacing)} mm (data.spacing: images and labels resampled, "
             "labels by nearest neighbour), not on the files' own grids — `medical3d predict --labels` scores there")
    payload = scores_payload(scores, names, values, ft.regions, title, shown_as)
    payload["scored_at"] = {"spacing_mm": list(spacing) if spacing is not None else "the files' own",
                            "grid": "preprocessed (data.spacing; labels resampled by nearest neighbour)"
                            if spacing is not None else "preprocessed (files' own spacing)"}
    if split_record is not None:
        payload["split"] = split_record
    atomic_write_text(run.path("evaluation.json"), json.dumps(payload, indent=2))
    if shown is not None:
        overlay(*shown, run.path("plots", "segmentation.png"), split=title)
    return payload
