"""`sslkit audio ...`: masked-spectrogram pretraining (SSAMBA, SSAST) and TERA on WAV/FLAC/OGG/MP3; embed, evaluate,
export, sample-data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sslkit.core.cli_options import (DevicesOpt, JsonOpt, OutOpt, OverwriteOpt, ResumeOpt, RunArg, SeedsOpt, SetOpt,
                                     add_export_command, maybe_relaunch)

app = typer.Typer(help="Audio: masked spectrogram modelling (SSAMBA, SSAST) and TERA.", no_args_is_help=True)

AudioArg = Annotated[list[Path], typer.Argument(help="Audio files (WAV/FLAC/OGG; MP3 where libsndfile reads it), "
                                                     "folders (searched recursively) or a manifest CSV/TSV with a "
                                                     "'path' column.")]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="ssamba (default; bidirectional Mamba), ssast (ViT), "
                                                               "tera, tera-inv-fsdd (TERA + speaker invariance, "
                                                               "FSDD-sized), tiny (seconds; tests), or a YAML path.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Stop at the first file that cannot be read (default: skip "
                                                          "it, count it and say so).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]


def patch_frames(cfg: Any) -> int:
    """Frames in one patch along time (clips shorter than this are padded, and said so)."""
    model = getattr(cfg, "model", None)
    for name in ("patch_time", "patch_frames", "patch_size", "patch"):
        value = getattr(model, name, None)
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, (tuple, list)) and value:
            return int(value[-1] if name == "patch_size" and len(value) == 2 else value[0])
    return 16


def _normalisation(run: Any, encoder: Any) -> tuple[float, float]:
    extra = getattr(encoder, "sslkit_config", {}).get("extra", {})
    audio = run.manifest.get("audio", {})
    mean, std = extra.get("mean", audio.get("mean")), extra.get("std", audio.get("std"))
    if mean is None or std is None:
        from sslkit.core.errors import UserError

        raise UserError(f"{run.dir} does not record its fbank mean/std — pretrain it again with this sslkit")
    return float(mean), float(std)


def _data_cfg(run: Any) -> Any:
    from sslkit.domains.audio.features import AudioData

    return AudioData(**run.recipe_dict.get("data", {}))


def _device(spec: str) -> str:
    from sslkit.core.distributed import select_device

    return str(select_device(spec))


@app.command()
def pretrain(
    audio: AudioArg, recipe: RecipeOpt = "ssamba", set_: SetOpt = None, out: OutOpt = None,
    overwrite: OverwriteOpt = False, resume: ResumeOpt = False, devices: DevicesOpt = 1, strict: StrictOpt = False,
) -> None:
    """Pretrain an encoder on unlabelled audio; writes a run folder (decoded-fbank cache, mean/std, encoder/, plots/)."""
    maybe_relaunch(devices)
    from sslkit.core import distributed
    from sslkit.core.console import info
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.audio.data import Windows, prepare_cache
    from sslkit.domains.audio.io import find_audio
    from sslkit.domains.audio.method import RECIPE_SCHEMA, build_method

    cfg = resolve_recipe(RECIPE_SCHEMA, "audio", recipe, set_ or [], out, resume)
    sources = find_audio(audio)
    distributed.init_distributed(distributed.select_device(cfg.train.device))
    run = Run.open(out, domain="audio", recipe=cfg, data_paths=audio, overwrite=overwrite, resume=resume)
    index, report, reused = prepare_cache(sources, cfg.data, run.path("cache"), strict=strict,
                                          min_frames=patch_frames(cfg))
    mean, std = (cfg.data.mean, cfg.data.std) if cfg.data.mean is not None else (index["mean"], index["std"])
    dataset = Windows(run.path("cache"), index, cfg.data, mean, std)
    if distributed.is_main():
        report.warn_all(cfg.data, patch_frames(cfg))
        hours = index["offsets"][-1] * cfg.data.frame_shift_ms / 3.6e6
        info(f"{len(index['ids'])} recordings ({hours:.2f} h), {len(dataset)} windows of {cfg.data.clip_frames} frames; "
             f"fbank mean {mean:.3f} std {std:.3f} ({'given' if cfg.data.mean is not None else 'from this data'}); "
             f"{'cache reused' if reused else ('decoded into ' + str(run.path('cache')))}; run folder {run.dir}")
        run.update_manifest(audio={"recordings": len(index["ids"]), "windows": len(dataset), "mean": mean, "std": std,
                                   "mean_std_from": "recipe" if cfg.data.mean is not None else "pretraining data",
                                   **{k: v for k, v in index["report"].items() if k != "files"}})
    seed_everything(cfg.train.seed)
    method = build_method(cfg, mean, std)
    result = fit(method, dataset, cfg.train, run, resume=resume)
    if distributed.is_main():
        extra = {"mean": mean, "std": std, "clip_frames": cfg.data.clip_frames, "features": cfg.data.feature_spec()}
        export_encoder(method.encoder.cpu(), method.encoder_spec(), run.path("encoder"), extra=extra)
        _spectrogram_picture(method.cpu(), dataset, run, cfg)
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


def _spectrogram_picture(method: Any, dataset: Any, run: Any, cfg: Any) -> None:
    """plots/spectrogram.png: the fullest of the first windows, its mask and the method's reconstruction."""
    import torch

    from sslkit.domains.audio.plots import masked_spectrogram

    if not hasattr(method, "visualise"):
        return
    first = [dataset[i] for i in range(min(len(dataset), 32))]
    order = sorted(range(len(first)), key=lambda i: -int(first[i]["valid"].sum()))[:2]
    batch = {k: torch.stack([first[i][k] for i in order]) for k in first[0]}
    method.eval()
    torch.manual_seed(cfg.train.seed)
    with torch.no_grad():
        view = method.visualise(batch)
    view = {"valid": batch["valid"][0], **view}
    masked_spectrogram(view, run.path("plots", "spectrogram.png"), frame_shift_ms=cfg.data.frame_shift_ms,
                       title=f"{run.recipe_dict['method']}: one training window after pretraining")


@app.command()
def embed(
    run: RunArg, audio: AudioArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write (.parquet or .pq).")] = Path(
        "embeddings.parquet"),
    level: Annotated[str, typer.Option("--level", help="clip: one row per recording (windows averaged); segment: one "
                                                       "row per segment with start/end seconds.")] = "clip",
    segment: Annotated[Optional[float], typer.Option("--segment", help="Segment length in seconds (--level segment; "
                                                                       "default: the run's training window).")] = None,
    hop: Annotated[Optional[float], typer.Option("--hop", help="Seconds between segment starts (default: "
                                                               "--segment).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 32,
    device: DeviceOpt = "auto", overwrite: OverwriteOpt = False, strict: StrictOpt = False,
) -> None:
    """Embeddings of every recording (or segment) as Parquet; ids are the paths as given."""
    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.core.errors import UserError
    from sslkit.core.export import load_encoder
    from sslkit.core.runs import Run
    from sslkit.domains.audio.io import find_audio, iter_fbanks

    if level not in ("clip", "segment"):
        raise UserError(f"--level {level}: choose clip or segment")
    if level == "clip" and (segment is not None or hop is not None):
        raise UserError("--segment/--hop apply to --level segment — add --level segment or drop them")
    for flag, value in (("--segment", segment), ("--hop", hop)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} {value}: give a positive number of seconds")
    check_embeddings_out(out, overwrite)
    r = Run.load(run, "audio")
    encoder = load_encoder(r.dir)
    cfg = _data_cfg(r)
    mean, std = _normalisation(r, encoder)
    sources = find_audio(audio)
    used, fbanks, report = iter_fbanks(sources, cfg, strict=strict, min_frames=1)
    report.warn_all(cfg, 1)
    dev = _device(device)
    meta = {"run": str(r.dir.resolve()), "method": r.recipe_dict["method"], "level": level}
    if level == "clip":
        from sslkit.domains.audio.evaluation import embed_clips

        z = embed_clips(encoder, fbanks, mean, std, cfg.clip_frames, batch_size, dev)
        write_embeddings(out, [s.id for s in used], z, id_name="id", overwrite=overwrite, metadata=meta,
                         extra={"seconds": [f.shape[0] * cfg.frame_shift_ms / 1000 for f in fbanks]})
    else:
        ids, starts, ends, z = _segments(encoder, used, fbanks, cfg, mean, std, segment, hop, batch_size, dev)
        write_embeddings(out, ids, z, id_name="id", overwrite=overwrite, extra={"start": starts, "end": ends},
                         metadata={**meta, "segment_s": segment or cfg.clip_frames * cfg.frame_shift_ms / 1000,
                                   "hop_s": hop or segment or cfg.clip_frames * cfg.frame_shift_ms / 1000})
    typer.echo(str(out))


def _segments(encoder: Any, used: list, fbanks: list, cfg: Any, mean: float, std: float, segment: float | None,
              hop: float | None, batch_size: int, device: str) -> tuple[list, list, list, Any]:
    """One row per segment: frames [s, s + L) of each clip, every H frames (the tail covered by a last segment)."""
    import torch

    from sslkit.domains.audio.data import clip_windows
    from sslkit.domains.audio.evaluation import embed_windows
    from sslkit.domains.audio.features import normalise

    fps = cfg.frames_per_second
    length = max(1, round((segment or cfg.clip_frames / fps) * fps))
    step = max(1, round((hop or segment or cfg.clip_frames / fps) * fps))
    ids, starts, ends, xs, ms = [], [], [], [], []
    for src, f in zip(used, fbanks):
        w, v, st = clip_windows(normalise(f, mean, std), length, step)
        xs.append(w)
        ms.append(v)
        for s, valid in zip(st, v):
            ids.append(src.id)
            starts.append(round(s / fps, 4))
            ends.append(round((s + int(valid.sum())) / fps, 4))
    z = embed_windows(encoder, torch.cat(xs), torch.cat(ms), batch_size, device)
    return ids, starts, ends, z


@app.command()
def evaluate(
    run: RunArg, audio: AudioArg,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="CSV/TSV with 'path' and 'label' columns.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option("--label-pattern", help="Regex over the file name; its first "
                                                         "group is the label (FSDD: '^(\\d)_').")] = None,
    group_pattern: Annotated[Optional[str], typer.Option("--group-pattern", help="Regex over the file name giving a "
                                                         "group (speaker); the split then holds whole groups out "
                                                         "(leave-one-group-out). FSDD: '^\\d_([a-z]+)_'.")] = None,
    seeds: SeedsOpt = 5,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours of the kNN probe.")] = 20,
    probe_c: Annotated[str, typer.Option("--probe-c", help="The linear probe's C (inverse L2 strength): 'auto' "
                                         "chooses it from 0.001/0.01/0.1/1 per fit by a 3-fold split of the training "
                                         "clips (whole groups), never seeing the test clips; or a number.")] = "auto",
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score MFCC statistics and the "
                                            "same encoder with random weights.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 32,
    device: DeviceOpt = "auto", strict: StrictOpt = False, json_out: JsonOpt = False,
) -> None:
    """Linear probe and kNN on frozen clip embeddings, next to MFCC statistics and random weights; JSON in the run."""
    from sslkit.core.errors import UserError
    from sslkit.core.export import load_encoder
    from sslkit.core.runs import Run
    from sslkit.domains.audio.evaluation import evaluate_run, parse_probe_c
    from sslkit.domains.audio.io import find_audio

    if (labels is None) == (label_pattern is None):
        raise UserError("give the labels either as --labels CSV (path,label) or as --label-pattern REGEX, not "
                        f"{'both' if labels else 'neither'}")
    c = parse_probe_c(probe_c)
    r = Run.load(run, "audio")
    encoder = load_encoder(r.dir)
    mean, std = _normalisation(r, encoder)
    payload, report = evaluate_run(r, encoder, _data_cfg(r), mean, std, find_audio(audio), labels=labels,
                                   label_pattern=label_pattern, group_pattern=group_pattern, seeds=seeds, k=k,
                                   baselines=baselines, batch_size=batch_size, device=_device(device), strict=strict,
                                   probe_c=c)
    typer.echo(json.dumps(payload) if json_out else str(report))


def _unfinished_extra(run: Any, encoder: Any) -> dict:  # noqa: ARG001
    """What pretrain adds to the encoder's config at its end, for a run stopped before it."""
    cfg = _data_cfg(run)
    audio = run.manifest.get("audio", {})
    return {"mean": audio.get("mean"), "std": audio.get("std"), "clip_frames": cfg.clip_frames,
            "features": cfg.feature_spec()}


add_export_command(app, "audio", "encoder with its feature settings and fbank mean/std",
                   unfinished_extra=_unfinished_extra)


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the clips and labels.csv into.")],
    voices: Annotated[int, typer.Option("--voices", min=2, max=36, help="Synthetic voices (accent × variant).")] = 12,
    takes: Annotated[int, typer.Option("--takes", min=1, max=20, help="Takes per word and voice (each its own "
                                                                      "speed and pitch).")] = 3,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a spoken-keyword set made offline with espeak-ng: {word}_{voice}_{take}.wav + labels.csv."""
    from sslkit.core.console import info
    from sslkit.domains.audio.samples import GROUP_PATTERN, LABEL_PATTERN, WORDS, write_samples

    paths = write_samples(out, n_voices=voices, takes=takes, overwrite=overwrite)
    info(f"wrote {len(paths)} clips ({len(WORDS)} keywords × {voices} voices × {takes} takes) and labels.csv to {out}; "
         f"labels: --label-pattern '{LABEL_PATTERN}', voices: --group-pattern '{GROUP_PATTERN}'")
    typer.echo(str(out))
