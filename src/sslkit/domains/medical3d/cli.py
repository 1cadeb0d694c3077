"""`sslkit medical3d ...`: pretrain (Alice / SwinUNETR-SSL), embed, finetune, predict, export, sample-data."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import (DeviceOpt, DevicesOpt, OutOpt, OverwriteOpt, RecipeOpt, ResumeOpt, RunArg,
                                     SetOpt, add_export_command, maybe_relaunch)

app = typer.Typer(help="3D CT/MRI volumes: Alice-style and SwinUNETR-SSL pretraining, few-label fine-tuning.",
                  no_args_is_help=True)
DataArgs = Annotated[list[Path], typer.Argument(help="Folders (searched recursively; label folders and hidden files "
                                                     "below them left out), volume files (.nii[.gz], .mgz, .nrrd, .mha, "
                                                     "DICOM), DICOM series folders, or a MONAI/Decathlon JSON datalist.")]
ModalityOpt = Annotated[Optional[str], typer.Option("--modality", help="ct (HU window), mri (percentiles) or auto "
                                                    "(per volume: ct when it holds air below -500); default: the "
                                                    "recipe's data.modality.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable volume instead of skipping it.")]


def _recipe(recipe: str, sets: list[str] | None, modality: str | None, out: Path | None = None,  # noqa: ANN202
            resume: bool = False):
    from sslkit.core.errors import UserError
    from sslkit.core.recipes import resolve_recipe
    from sslkit.domains.medical3d.recipe import Medical3DRecipe

    cfg = resolve_recipe(Medical3DRecipe, "medical3d", recipe, sets or [], out, resume)
    if modality is not None:
        if modality not in ("ct", "mri", "auto"):
            raise UserError(f"--modality {modality!r} is not known — use ct, mri or auto")
        cfg.data.modality = modality  # type: ignore[assignment]
    return cfg


def _prepare_all_ranks(volumes, cache, strict: bool):  # noqa: ANN001, ANN202
    """Rank 0 fills the cache; the other ranks then read it (an error on rank 0 stops every rank)."""
    from sslkit.core import distributed
    from sslkit.core.errors import UserError
    from sslkit.domains.medical3d.preprocess import prepare

    result, error = None, None
    if distributed.is_main():
        try:
            result = prepare(volumes, cache, strict)
        except UserError as exc:
            error = str(exc)
    error = distributed.broadcast_object(error)
    if error:
        raise UserError(error)
    if result is None:
        result = prepare(volumes, cache, strict)
    return result


@app.command()
def pretrain(data: DataArgs, recipe: RecipeOpt = "alice", modality: ModalityOpt = None, set_: SetOpt = None,
             out: OutOpt = None, overwrite: OverwriteOpt = False, resume: ResumeOpt = False, strict: StrictOpt = False,
             devices: DevicesOpt = 1) -> None:
    """Self-supervised pretraining on unlabelled volumes; writes a run folder with the exported encoder."""
    maybe_relaunch(devices)
    from sslkit.core import distributed
    from sslkit.core.console import info
    from sslkit.core.errors import UserError
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.runs import Run
    from sslkit.core.views import views_per_input
    from sslkit.domains.medical3d.datasets import CrossVolumePairs, RandomCrops
    from sslkit.domains.medical3d.discover import PRETRAIN_SECTIONS, find_volumes, select_channels
    from sslkit.domains.medical3d.method import build_method
    from sslkit.domains.medical3d.preprocess import cache_for, input_channels

    cfg = _recipe(recipe, set_, modality, out, resume)
    cfg.data.strict = cfg.data.strict or strict
    volumes = select_channels(find_volumes(data, PRETRAIN_SECTIONS), cfg.data.channel, "pretrain")
    distributed.init_distributed(distributed.select_device(cfg.train.device))
    cache = cache_for(cfg.data)
    entries, skipped = _prepare_all_ranks(volumes, cache, cfg.data.strict)
    channels = input_channels(entries)
    if resume and channels != cfg.model.in_channels:
        raise UserError(f"the run was pretrained on {cfg.model.in_channels}-channel images and these have {channels} "
                        "— resume with the same data and data.channel")
    cfg.model.in_channels = channels          # several with data.channel=all: the encoder reads them all
    seed_everything(cfg.train.seed)
    method = build_method(cfg)
    run = Run.open(out, domain="medical3d", recipe=cfg, data_paths=list(data), overwrite=overwrite, resume=resume)
    run.update_manifest(medical3d={"volumes": len(entries), "skipped_count": len(skipped), "skipped": skipped,
                                   "cache": str(cache.root), "shapes": [m["shape"] for _, m in entries[:50]]})
    info(f"{len(entries)} volumes ready ({len(skipped)} skipped), cache {cache.root}")
    # random crops: a few volumes fill a batch with more crops each (said in one line), rather than being refused
    spv = views_per_input(len(entries), cfg.data.samples_per_volume, cfg.train.batch_size,
                          "crop pairs" if cfg.method == "alice" else "crops", "volume", "data.samples_per_volume")
    if cfg.method == "alice":
        if len(entries) == 1:
            info("only one volume: Alice pairs are drawn within it (cross-volume pairs need two or more)")
        dataset = CrossVolumePairs(entries, cfg.data.roi, spv, cfg.data.pair_jitter)
    else:
        dataset = RandomCrops(entries, cfg.data.roi, spv)
    result = fit(method, dataset, cfg.train, run, resume=resume)
    if distributed.is_main():
        export_encoder(method.encoder, method.encoder_spec(), run.path("encoder"),
                       extra={"roi": cfg.data.roi, "modality": cfg.data.modality})
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


@app.command()
def embed(run: RunArg, data: DataArgs, out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")],
          grid_dir: Annotated[Optional[Path], typer.Option("--grid-dir", help="Also save each volume's per-patch "
                                                           "embedding grid (D, x, y, z) as .npy here.")] = None,
          device: DeviceOpt = "auto", overwrite: OverwriteOpt = False, strict: StrictOpt = False) -> None:
    """One vector per volume (mean of the encoder's deepest map over ROI tiles) as Parquet with the volume ids."""
    import numpy as np

    from sslkit.core.distributed import select_device
    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.core.export import load_encoder
    from sslkit.domains.medical3d.discover import UNLABELLED_SECTIONS, find_volumes, select_channels
    from sslkit.domains.medical3d.preprocess import cache_for, check_channels, prepare
    from sslkit.domains.medical3d.recipe import Medical3DRecipe, pretraining_run
    from sslkit.domains.medical3d.transforms import channels_first
    from sslkit.domains.medical3d.volumes import output_stems

    check_embeddings_out(out, overwrite)
    cfg = Medical3DRecipe.model_validate(pretraining_run(run, "embed").recipe_dict)
    volumes = select_channels(find_volumes(data, UNLABELLED_SECTIONS), cfg.data.channel, "embed")
    ids = [v.id for v in volumes]
    stems = dict(zip(ids, output_stems(ids, (".npy",)))) if grid_dir is not None else {}
    encoder = load_encoder(run).to(target := select_device(device))
    entries, skipped = prepare(volumes, cache_for(cfg.data), strict)
    check_channels(entries, encoder, f"{run} was pretrained on")
    ids, vectors = [], []
    for npy, meta in entries:
        image = channels_first(np.load(npy).astype(np.float32))[None].to(target)
        vec, grid = _embed(encoder, image, cfg.data.roi)
        ids.append(meta["id"])
        vectors.append(vec)
        if grid_dir is not None:
            import io

            from sslkit.core.files import atomic_write_bytes

            buf = io.BytesIO()
            np.save(buf, grid)
            atomic_write_bytes(grid_dir / f"{stems[meta['id']]}.npy", buf.getvalue())    # sub-folders made
    write_embeddings(out, ids, np.stack(vectors), extra={"path": [m["source"] for _, m in entries]}, overwrite=overwrite)
    typer.echo(str(out))


def _embed(encoder, image, roi: int):  # noqa: ANN001, ANN202
    import torch

    from sslkit.domains.medical3d.model import embed_volume

    with torch.no_grad():
        vec, grid = embed_volume(encoder, image, roi)
    return vec.cpu().numpy().astype("float32"), grid.cpu().numpy().astype("float32")


@app.command()
def finetune(run: RunArg, images: Annotated[Path, typer.Argument(help="Image folder/file, or a JSON datalist (its "
                                                               "\"label\" entries are the labels; with a \"test\" "
                                                               "list, those labelled test volumes are scored).")],
             labels: Annotated[Optional[Path], typer.Argument(
                 help="Label folder/file: one label map per image, same grid, paired by relative path, then file "
                 "name, then sorted order; or a JSON datalist naming each image's label. Left out when IMAGES is a "
                 "labelled datalist.")] = None,
             from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Random encoder instead of RUN's "
                                                        "(the baseline).")] = False,
             labelled: Annotated[Optional[str], typer.Option(
                 "--labelled", help="Which labelled training volumes train: N (the first N in datalist or sorted "
                 "order), a comma list of ids, or a text file of ids (one a line; an id is the listed path, or its "
                 "file name with or without the suffix). With a datalist's \"test\" list the test volumes are "
                 "scored; otherwise the other training volumes are held out and scored. Default: all of them with a "
                 "test list, else half.")] = None,
             train: Annotated[Optional[int], typer.Option("--train", help="Same as --labelled N (kept for older "
                                                          "scripts).", min=1)] = None,
             unlabelled: Annotated[Optional[list[Path]], typer.Option(
                 "--unlabelled", help="Unlabelled volumes (folders, files, or a datalist: its training images) for "
                 "mean-teacher consistency during fine-tuning (UA-MT; settings finetune.semisup.*). The labelled "
                 "and test volumes are left out of them. Repeatable.")] = None,
             set_: SetOpt = None, out: OutOpt = None, overwrite: OverwriteOpt = False, resume: ResumeOpt = False,
             strict: StrictOpt = False) -> None:
    """Segmentation with the pretrained encoder + UNETR-style decoder; Dice, Jaccard, HD95 and ASD on the test (or
    held-out) volumes; NIfTI predictions. Prints the run folder."""
    from sslkit.core.errors import UserError
    from sslkit.core.recipes import apply_override, validate_recipe
    from sslkit.domains.medical3d.finetune import resumed_settings, run_finetune
    from sslkit.domains.medical3d.discover import select_channels
    from sslkit.domains.medical3d.pairing import labelled_volumes, order_labelled, test_volumes, unlabelled_volumes
    from sslkit.domains.medical3d.recipe import Medical3DRecipe, pretraining_run

    if labelled is not None and train is not None:
        raise UserError("--labelled and --train say the same thing — give one of them")
    base = pretraining_run(run, "finetune")
    raw = base.recipe_dict
    if resume:      # the interrupted run's own fine-tuning settings, then any new --set
        raw["finetune"] = resumed_settings(out, None if from_scratch else base.dir)
    for override in set_ or []:
        apply_override(raw, override, Medical3DRecipe)
    cfg = validate_recipe(Medical3DRecipe, raw, str(base.path("recipe.yaml")))
    parsed: dict = {}               # each datalist is read once, for the pairs, the test list and the unlabelled ones
    pairs = select_channels(labelled_volumes(images, labels, parsed=parsed), cfg.data.channel, "finetune")
    tests = test_volumes(images, labels, parsed=parsed)
    tests = select_channels(tests, cfg.data.channel, "finetune") if tests else None
    pairs, n_train, how = order_labelled(pairs, str(train) if train is not None else labelled, images,
                                         tests is not None)
    extra = None
    if unlabelled:
        # with a test list the training volumes left unlabelled are the point; without one they are held out
        used = pairs[:n_train] if tests is not None and n_train else pairs
        extra = select_channels(unlabelled_volumes(unlabelled, used, tests or [], parsed=parsed), cfg.data.channel,
                                "finetune")
    run_dir, result = run_finetune(cfg, None if from_scratch else base.dir, pairs, n_train, out, overwrite, strict,
                                   [images] if labels is None else [images, labels], resume, tests=tests, chosen=how,
                                   unlabelled=extra, parsed=parsed)
    if result:                     # rank 0; the scores are in RUN/evaluation.json
        typer.echo(str(run_dir))


@app.command()
def predict(run: Annotated[Path, typer.Argument(help="A run folder written by `medical3d finetune`.")],
            images: DataArgs,
            out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the label maps (NIfTI) and volumes.json.")],
            labels: Annotated[Optional[Path], typer.Option("--labels", help="Label folder/file (paired as in "
                                                           "finetune) or a JSON datalist naming each image's label: "
                                                           "also score the predictions (Dice, HD95).")] = None,
            tta: Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Average the 8 mirrorings of each "
                                                        "volume (8× slower); default: the run's finetune.tta.")] = None,
            keep_largest: Annotated[Optional[bool], typer.Option(
                "--keep-largest/--no-keep-largest", help="Keep only the largest connected part of the predicted foreground "
                "(one object per scan); default: the run's finetune.keep_largest.")] = None,
            probabilities: Annotated[bool, typer.Option(
                "--probabilities", help="Also write each volume's class (or region) probabilities on its own grid, "
                "<name>_probabilities.nii.gz (X, Y, Z, K) float32, for ensembling or uncertainty.")] = False,
            device: DeviceOpt = "auto", overwrite: OverwriteOpt = False, strict: StrictOpt = False) -> None:
    """Segment new volumes with a fine-tuned network: label maps on each input's grid, class volumes in mL; with
    --labels, Dice and HD95 on them (a test set from another site, say)."""
    from sslkit.core.runs import Run
    from sslkit.domains.medical3d.discover import UNLABELLED_SECTIONS, find_volumes, select_channels
    from sslkit.domains.medical3d.pairing import attach_labels
    from sslkit.domains.medical3d.predict import run_predict

    channel = Run.load(run, "medical3d").recipe_dict.get("data", {}).get("channel")
    parsed: dict = {}               # a datalist given as IMAGES and --labels is read once
    volumes = select_channels(find_volumes(images, UNLABELLED_SECTIONS, parsed=parsed), channel, "finetune")
    if labels is not None:
        volumes = attach_labels(volumes, labels, parsed=parsed)
    run_predict(run, volumes, out, overwrite, strict, device, tta, keep_largest, probabilities)
    typer.echo(str(out))


add_export_command(app, "medical3d")


@app.command("sample-data")
def sample_data(out: Annotated[Path, typer.Argument(help="Folder to write the sample volumes into.")],
                resolution: Annotated[int, typer.Option("--resolution", help="MNI152 grid in mm: 1 (197×233×189) "
                                                        "or 2 (99×117×95).")] = 2,
                subjects: Annotated[int, typer.Option("--subjects", help="Warped T1 copies for pretraining.")] = 6,
                synthetic: Annotated[int, typer.Option("--synthetic", help="Labelled synthetic volumes.")] = 8,
                size: Annotated[int, typer.Option("--size", help="Side of each synthetic volume.")] = 64,
                lesions: Annotated[int, typer.Option("--lesions", help="Synthetic tumour-like lesions with BraTS's "
                                                     "nested labels (1, 2, 4), to try finetune.regions.")] = 8,
                overwrite: OverwriteOpt = False) -> None:
    """Real MNI152 T1 + grey/white-matter labels (nilearn), warped copies, MONAI synthetic labelled volumes, and
    synthetic lesions with BraTS-style nested labels."""
    from sslkit.core.console import info
    from sslkit.core.errors import UserError
    from sslkit.domains.medical3d.samples import describe_counts, write_sample_data

    if resolution not in (1, 2):
        raise UserError(f"--resolution {resolution} is not offered — use 1 or 2 (mm)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty — pass --overwrite or choose another folder")
    counts = write_sample_data(out, resolution, subjects, synthetic, size, lesions=lesions)
    info(f"wrote {describe_counts(counts)} under {out}")
    typer.echo(str(out))
