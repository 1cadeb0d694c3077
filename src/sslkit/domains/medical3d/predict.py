"""`medical3d predict`: segmenting volumes with a fine-tuning run (sliding window, NIfTI label maps on each input's
grid, volumes in mL, scores where labels are given); `segment` and `write_prediction` also serve fine-tuning's
held-out evaluation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.core.errors import UserError
from sslkit.domains.medical3d.labels import (check_known, class_map, label_values, region_classes, region_layout,
                                             value_lut)
from sslkit.domains.medical3d.recipe import FinetuneRecipe
from sslkit.domains.medical3d.scoring import overlay, score_volume, scores_payload
from sslkit.domains.medical3d.volumes import Volume


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


def inference_bf16(precision: str, device: torch.device, recorded: str | None = None) -> bool:
    """bf16 autocast for sliding-window inference of a fine-tuning run. `recorded` (the run manifest's
    `precision.used`, what fit() trained in): that — fine-tuning scores its test volumes in the precision it trained
    in. Otherwise fit()'s own choice for a fine-tuning run, (medical3d, finetune) under `precision` on `device`
    (`sslkit.core.precision.decide`): a run predicted on the kind of machine it trained on infers as it trained,
    also where `auto` is decided per method on a CPU."""
    from sslkit.core.precision import decide

    if recorded is not None:
        return recorded == "bf16"
    return decide(precision, device, "medical3d", "finetune").bf16     # FinetuneRecipe's domain and method


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


def load_segmenter(run_dir: Path, checkpoint: Path | None = None) -> tuple[torch.nn.Module, FinetuneRecipe]:
    """The segmentation network of a `finetune` run (encoder + decoder, eval mode) and the run's recipe; the weights
    of `checkpoint` (a copy of the run's checkpoint at an earlier step) instead of the run's last when given."""
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
    path = run.checkpoint_path if checkpoint is None else Path(checkpoint)
    state = load_checkpoint(path)
    outputs = len(rec.finetune.regions) if rec.finetune.region_training else rec.classes
    segmenter = Segmenter(build_encoder(json.loads(state["encoder_spec"])), outputs, rec.finetune.decoder_channels,
                          rec.model.in_channels)
    weights = {k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")}
    missing, unexpected = segmenter.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not hold the segmenter its recipe describes (missing "
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
    from sslkit.core.progress import Progress
    from sslkit.domains.medical3d.io import read_volume, write_nifti
    from sslkit.domains.medical3d.preprocess import (FileGridProbabilities, cache_for, check_channels, prepare,
                                                     spacing_of)
    from sslkit.domains.medical3d.volumes import output_stems

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
    bf16, tta = inference_bf16(rec.finetune.precision, device), rec.finetune.tta if tta is None else tta
    ft = rec.finetune if keep_largest is None else rec.finetune.model_copy(update={"keep_largest": keep_largest})
    with Progress(total=len(entries), label="predict") as progress:
        for done, (npy, meta) in enumerate(entries, 1):
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
            progress.advance(done, meta["id"])
    atomic_write_text(out / "volumes.json", json.dumps(summary, indent=2))
    print_table("predicted volume (mL)", ["volume", *names],
                [[vid, *[f"{v:.1f}" for v in row["ml"].values()]] for vid, row in summary["volumes"].items()])
    if scores:
        payload = scores_payload(scores, names, values, rec.finetune.regions, "test")
        atomic_write_text(out / "evaluation.json", json.dumps(payload, indent=2))
        overlay(*shown, out / "segmentation.png", split="test")
    return summary


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
