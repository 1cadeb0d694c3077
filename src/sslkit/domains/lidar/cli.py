"""`sslkit lidar ...`: simulate, pseudo-label, train-student/pretrain, detect, evaluate, render, embed, export."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from sslkit.core.cli_options import (DevicesOpt, JsonOpt, OutOpt, OverwriteOpt, RecipeOpt, ResumeOpt, RunArg, SetOpt,
                                     add_export_command, maybe_relaunch)

app = typer.Typer(help="Roadside LiDAR: simulate, pseudo-label with statistical teachers, train a student detector.",
                  no_args_is_help=True)
FramesArg = Annotated[Path, typer.Argument(help="Folder of frames (.bin/.npy/.pcd/.ply, one format), or a folder holding velodyne/.")]
StudentRecipe = Annotated[str, typer.Option("--recipe", "-r", help="Shipped recipe name or YAML path.")]


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """A folder output (core's one check for every domain)."""
    from sslkit.core.files import check_dir_out

    check_dir_out(path, overwrite)


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden `.OUT.tmp/` to write into; moved over OUT when the block succeeds, removed on any failure
    (a bad frame part-way, Ctrl-C), so neither half-written output nor the staging folder is left behind."""
    import shutil

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place (the old output survives until the new one is complete)."""
    import shutil

    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)


def _labels_dir(labels: Path) -> Path:
    """A pseudo-label output folder means its combined labels."""
    return labels / "combined" if (labels / "combined").is_dir() else labels


@app.command()
def simulate(out: Annotated[Path, typer.Argument(help="Folder to write velodyne/, label_2/ and sensor.json into.")],
             frames: Annotated[int, typer.Option("--frames", min=1, help="Frames at 10 Hz.")] = 100,
             beams: Annotated[int, typer.Option("--beams", help="32 or 64 beams.")] = 32,
             seed: Annotated[int, typer.Option("--seed")] = 0, overwrite: OverwriteOpt = False) -> None:
    """Simulate a pole-mounted LiDAR over a street with moving cars, cyclists and pedestrians (Open3D ray casting)."""
    from sslkit.core.console import info
    from sslkit.core.errors import UserError
    from sslkit.domains.lidar.simulator import SENSORS, simulate as run_sim

    if beams not in SENSORS:
        raise UserError(f"--beams {beams} is not simulated — use 32 or 64")
    _refuse_existing(out, overwrite)
    with _staged(out) as tmp:
        stats = run_sim(tmp, frames, beams, seed)
    info(f"simulated {stats['frames']} frames, {stats['mean_points']:.0f} points/frame, boxes {stats['boxes']}")
    typer.echo(str(out))


@app.command("pseudo-label")
def pseudo_label(frames: FramesArg,
                 teachers: Annotated[Optional[int], typer.Option("--teachers", min=1, help="Use the first N teachers of the recipe.")] = None,
                 out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <teacher>/, combined/ and summary.json.")] = Path("pseudo_labels"),
                 recipe: RecipeOpt = "dinostar", set_: SetOpt = None,
                 gt: Annotated[Optional[Path], typer.Option("--gt", help="True labels: also score every teacher and the merge.")] = None,
                 overwrite: OverwriteOpt = False, json_out: JsonOpt = False) -> None:
    """Label frames with statistical teachers (background model, clustering, box fitting, size rules) and merge them."""
    from sslkit.core.console import info, print_table, warn
    from sslkit.core.errors import UserError
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.lidar import pseudolabel as pl
    from sslkit.domains.lidar.io import list_frames
    from sslkit.domains.lidar.method import LidarRecipe

    cfg = load_recipe(LidarRecipe, "lidar", recipe, set_ or [])
    if teachers is not None and teachers > len(cfg.teachers):
        raise UserError(f"--teachers {teachers}: the recipe defines {len(cfg.teachers)} teachers — "
                        "lower --teachers or add teachers to a copy of the recipe")
    if teachers is not None and cfg.merge.rule == "vote" and teachers < cfg.merge.min_votes:
        raise UserError(f"--teachers {teachers} is fewer than merge.min_votes={cfg.merge.min_votes}, so no box would "
                        f"be kept — raise --teachers or pass --set merge.min_votes={teachers}")
    files = list_frames(frames)
    _refuse_existing(out, overwrite)
    truth = _read_label_set(gt, [f.stem for f in files]) if gt is not None else None
    kept, seq, counts, notes = pl.load_sequence(files)
    for n in notes[:5]:
        warn(n)
    if len(notes) > 5:
        warn(f"... and {len(notes) - 5} more frames with problems (counted in summary.json)")
    per_teacher, merged, timing = pl.run_teachers(seq, cfg, teachers)
    names = [f.stem for f in kept]
    tnames = [c.name for c in cfg.teachers[: len(per_teacher)]]
    payload = pl.summary(names, per_teacher, merged, tnames, timing, counts, cfg.merge.rule)
    rows = [[t["name"], f"{t['frames_per_s']:.1f}", f"{t['points_per_s'] / 1e6:.2f}", f"{t['background_s']:.2f}",
             json.dumps(payload["teachers"][t["name"]])] for t in timing["teachers"]]
    rows.append(["combined", "", "", "", json.dumps(payload["combined"])])
    print_table(f"pseudo-labels for {len(names)} frames ({cfg.merge.rule} merge)",
                ["teacher", "frames/s", "Mpoints/s", "background s", "boxes"], rows)
    if truth is not None:
        from sslkit.domains.lidar.metrics import evaluate_sets

        sets = dict(zip(tnames, [dict(zip(names, p)) for p in per_teacher]))
        sets["combined"] = dict(zip(names, merged))
        scores = {k: evaluate_sets(v, {n: truth[n] for n in names}) for k, v in sets.items()}
        payload["ap_vs_truth"] = scores
        _ap_table("teachers vs truth (BEV AP, R40)", scores)
    with _staged(out) as tmp:
        pl.write_label_sets(tmp, names, per_teacher, merged, tnames)
        pl.dump(tmp / "summary.json", payload)
    info(f"labels in {out}/<teacher>/ and {out}/combined/ (label_2 = KITTI-style, pcdet = OpenPCDet)")
    typer.echo(json.dumps(payload) if json_out else str(out))


def _read_label_set(folder: Path, names: list[str] | None) -> dict:
    from sslkit.core.console import warn
    from sslkit.domains.lidar.labels import label_files, read_labels

    files = label_files(_labels_dir(folder))
    if names is not None:
        orphans = sorted(set(files) - set(names))
        if orphans:
            warn(f"{len(orphans)} label files have no frame (first: {orphans[0]}.txt) — skipped")
        files = {n: files[n] for n in names if n in files}
    return {n: read_labels(p) for n, p in files.items()}


def _ap_table(title: str, scores: dict) -> None:
    from sslkit.core.console import print_table

    rows = []
    for name, res in scores.items():
        row = [name]
        for cls, r in res.items():
            row += [f"{r['bev']['ap']:.3f}", f"{r['3d']['ap']:.3f}"]
        rows.append(row)
    cols = ["labels"] + [f"{c} {m}@{r['iou']}" for c, r in next(iter(scores.values())).items() for m in ("BEV", "3D")]
    print_table(title, cols, rows)


def _train(frames: Path, labels: Path | None, recipe: str, set_: list[str] | None, out: Path | None,
           overwrite: bool, resume: bool) -> None:
    from sslkit.core import distributed
    from sslkit.core.console import info, warn
    from sslkit.core.errors import UserError
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.core.views import RepeatedViews, views_per_input
    from sslkit.domains.lidar import pseudolabel as pl
    from sslkit.domains.lidar.io import list_frames
    from sslkit.domains.lidar.labels import label_files, read_labels
    from sslkit.domains.lidar.method import LidarRecipe, StudentDetector
    from sslkit.domains.lidar.student_data import StudentFrames, collate, pair_labels

    cfg = resolve_recipe(LidarRecipe, "lidar", recipe, set_ or [], out, resume)
    files = list_frames(frames)
    if labels is not None:
        files, lfiles, stats = pair_labels(files, label_files(_labels_dir(labels)))
        if stats["labels_without_frame"]:
            warn(f"{stats['labels_without_frame']} label files have no frame (first: {stats['first_orphan']}.txt) — skipped")
        if stats["frames_without_labels"]:
            warn(f"{stats['frames_without_labels']} frames have no label file — skipped")
        boxes = [read_labels(p) for p in lfiles]
    kept, seq, counts, notes = pl.load_sequence(files)
    for n in notes[:5]:
        warn(n)
    if labels is None:  # self-supervised: the teachers label the sequence first (every rank, deterministically)
        per_teacher, boxes, _ = pl.run_teachers(seq, cfg)
    else:
        boxes = [b for f, b in zip(files, boxes) if f in set(kept)]
    if not seq:
        raise UserError(f"all frames in {frames} are empty — check the sensor export")
    run = Run.open(out, domain="lidar", recipe=cfg, data_paths=[frames] + ([labels] if labels else []),
                   overwrite=overwrite, resume=resume)
    if labels is None and distributed.is_main() and not resume:
        pl.write_label_sets(run.path("pseudo_labels"), [f.stem for f in kept], per_teacher, boxes,
                            [c.name for c in cfg.teachers])
    seed_everything(cfg.train.seed)
    method = StudentDetector(cfg.model)
    data = StudentFrames(seq, boxes, method.encoder, cfg.model.max_objects, cfg.model.flip)
    if cfg.model.flip:   # items are randomly mirrored frames: a few frames fill a batch with more views of each
        data = RepeatedViews(data, views_per_input(len(data), 1, cfg.train.batch_size, "random views", "frame"))
    result = fit(method, data, cfg.train, run, collate_fn=collate, resume=resume)
    if distributed.is_main():
        export_encoder(method.encoder, method.encoder_spec(), run.path("encoder"), extra={"frames": len(seq)})
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


@app.command("train-student")
def train_student(frames: FramesArg,
                  labels: Annotated[Path, typer.Argument(help="Label folder (KITTI label_2 or OpenPCDet text; a pseudo-label output means its combined/).")],
                  recipe: StudentRecipe = "pointpillars-tiny", set_: SetOpt = None, out: OutOpt = None,
                  overwrite: OverwriteOpt = False, resume: ResumeOpt = False, devices: DevicesOpt = 1) -> None:
    """Train the pillar/BEV student detector on (pseudo-)labels with the core loop."""
    maybe_relaunch(devices)
    _train(frames, labels, recipe, set_, out, overwrite, resume)


@app.command()
def pretrain(frames: FramesArg,
             labels: Annotated[Optional[Path], typer.Option("--labels", help="Use these labels instead of running the teachers.")] = None,
             recipe: StudentRecipe = "pointpillars-tiny", set_: SetOpt = None, out: OutOpt = None,
             overwrite: OverwriteOpt = False, resume: ResumeOpt = False, devices: DevicesOpt = 1) -> None:
    """Self-supervised: the recipe's teachers pseudo-label FRAMES, then the student trains on the merged labels."""
    maybe_relaunch(devices)
    _train(frames, labels, recipe, set_, out, overwrite, resume)


def _load_student(run: Path):  # noqa: ANN202
    from sslkit.core.checkpoint import check_compatible, load_checkpoint
    from sslkit.core.errors import UserError
    from sslkit.core.runs import Run
    from sslkit.domains.lidar.method import LidarRecipe, StudentDetector

    r = Run.load(run, "lidar")
    if not r.checkpoint_path.is_file():  # core's own message speaks of --resume, which detect/embed do not have
        raise UserError(f"{r.dir} has no checkpoint ({r.checkpoint_path.name}): its training stopped before the first "
                        f"one — train it with `sslkit lidar train-student ... --out {r.dir} --overwrite`")
    cfg = LidarRecipe.model_validate(r.recipe_dict)
    model = StudentDetector(cfg.model)
    state = load_checkpoint(r.checkpoint_path)
    check_compatible(state, domain="lidar", method=cfg.method, model=model, path=r.checkpoint_path)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def _frame_batches(files: list[Path], cfg, size: int = 4):  # noqa: ANN001, ANN202
    import torch

    from sslkit.domains.lidar.io import clean_frame, read_frame
    from sslkit.domains.lidar.student_data import crop

    m = cfg.model
    for i in range(0, len(files), size):
        chunk = files[i:i + size]
        pts = [crop(clean_frame(read_frame(f), f)[0], m.x_range, m.y_range, m.z_range) for f in chunk]
        batch = torch.cat([torch.cat([torch.full((len(p), 1), float(j)), torch.from_numpy(p)], 1) for j, p in enumerate(pts)])
        yield chunk, batch


@app.command()
def detect(run: RunArg, frames: FramesArg,
           out: Annotated[Path, typer.Option("--out", "-o", help="Folder for label_2/ and pcdet/ predictions.")],
           overwrite: OverwriteOpt = False) -> None:
    """Run a trained student on frames; writes KITTI-style and OpenPCDet labels with scores."""
    import torch

    from sslkit.core.console import info
    from sslkit.domains.lidar.io import list_frames
    from sslkit.domains.lidar.labels import write_kitti, write_pcdet

    model, cfg = _load_student(run)
    files = list_frames(frames)
    _refuse_existing(out, overwrite)
    n = 0
    with _staged(out) as tmp, torch.no_grad():
        (tmp / "label_2").mkdir()
        (tmp / "pcdet").mkdir()
        for chunk, batch in _frame_batches(files, cfg):
            for f, boxes in zip(chunk, model.detect(batch, len(chunk))):
                write_kitti(tmp / "label_2" / f"{f.stem}.txt", boxes)
                write_pcdet(tmp / "pcdet" / f"{f.stem}.txt", boxes)
                n += len(boxes)
    info(f"{n} boxes in {len(files)} frames")
    typer.echo(str(out))


@app.command()
def evaluate(pred: Annotated[Path, typer.Argument(help="Predicted labels (folder of .txt; scores in the last column).")],
             gt: Annotated[Path, typer.Argument(help="True labels (folder of .txt).")],
             out: Annotated[Optional[Path], typer.Option("--out", "-o", help="JSON file (default: <PRED>.evaluation.json beside PRED).")] = None,
             json_out: JsonOpt = False) -> None:
    """KITTI-style AP (BEV and 3D; IoU 0.7 Car, 0.5 Pedestrian/Cyclist; 40 recall points) per class."""
    from sslkit.core.console import warn
    from sslkit.core.errors import UserError
    from sslkit.core.files import check_file_out
    from sslkit.domains.lidar.labels import label_files, read_labels_scored
    from sslkit.domains.lidar.metrics import evaluate_sets
    from sslkit.domains.lidar.pseudolabel import dump

    target = out or _labels_dir(pred).with_name(_labels_dir(pred).name + ".evaluation.json")
    check_file_out(target, True, "evaluation.json")      # the evaluation JSON is replaced, as documented
    truth = _read_label_set(gt, None)
    read = {n: read_labels_scored(p) for n, p in label_files(_labels_dir(pred)).items()}
    preds = {n: boxes for n, (boxes, _) in read.items()}
    if not set(preds) & set(truth):
        raise UserError(f"none of the {len(preds)} prediction files matches a ground-truth frame (predictions are "
                        f"named like {next(iter(preds))}.txt, ground truth like {next(iter(truth))}.txt) — "
                        "pass predictions and labels of the same frames")
    extra = sorted(set(preds) - set(truth))
    if extra:
        warn(f"{len(extra)} predicted frames have no ground truth (first: {extra[0]}) — skipped")
    missing = sorted(set(truth) - set(preds))
    if missing:
        warn(f"{len(missing)} ground-truth frames have no prediction file (first: {missing[0]}) — counted as empty")
    unscored = sum(1 for n in set(preds) & set(truth) if read[n][0] and not read[n][1])
    if unscored:
        warn(f"{unscored} prediction files carry no scores (OpenPCDet text or 15-field KITTI lines) — AP is computed "
             "without a ranking (every box scored 1.0); for a ranked AP give scored ones (detect's label_2/ has them)")
    scores = evaluate_sets(preds, truth)
    _ap_table(f"{pred} vs {gt} ({len(truth)} frames, BEV/3D AP R40)", {pred.name or str(pred): scores})
    payload = {"pred": str(pred), "gt": str(gt), "frames": len(truth), "scored": not unscored, "ap": scores}
    target.parent.mkdir(parents=True, exist_ok=True)
    dump(target, payload)
    typer.echo(json.dumps(payload) if json_out else str(target))


@app.command()
def render(frame: Annotated[Path, typer.Argument(help="One frame file.")],
           out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
           labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels to compare (pseudo-labels or detections): a .txt file or a folder (red).")] = None,
           gt: Annotated[Optional[Path], typer.Option("--gt", help="True labels: a .txt file or a folder (white).")] = None,
           view: Annotated[Optional[str], typer.Option("--range", help="View XMIN,XMAX,YMIN,YMAX in metres, e.g. "
                                                       "-40,40,-20,20; default: fitted to the frame's points and boxes.")] = None,
           overwrite: OverwriteOpt = False) -> None:
    """Bird's-eye-view PNG of a frame, its points coloured by height, with true (white) and --labels (red) boxes."""
    from sslkit.core.errors import UserError
    from sslkit.core.files import check_file_out
    from sslkit.domains.lidar.io import clean_frame, list_frames, read_frame
    from sslkit.domains.lidar.labels import read_labels
    from sslkit.domains.lidar.render import bev_title, parse_range, render_bev

    extent = parse_range(view) if view is not None else None
    files = list_frames(frame)
    check_file_out(out, overwrite, "bev.png")

    def boxes(p: Path | None) -> list:
        if p is None:
            return []
        if p.is_dir():
            p = _labels_dir(p)
            p = (p / "label_2" if (p / "label_2").is_dir() else p) / f"{files[0].stem}.txt"
        if not p.is_file():
            raise UserError(f"no label file {p} for frame {files[0].name} — pass the matching label file or folder")
        return read_labels(p)

    pts = clean_frame(read_frame(files[0]), files[0])[0]
    true, compared = boxes(gt), boxes(labels)
    render_bev(pts, out, true, compared, title=bev_title(files[0].name, true if gt else None,
                                                         compared if labels else None), extent=extent)
    typer.echo(str(out))


@app.command()
def embed(run: RunArg, frames: FramesArg,
          out: Annotated[Path, typer.Option("--out", "-o")] = Path("embeddings.parquet"), overwrite: OverwriteOpt = False) -> None:
    """One vector per frame (mean+max pooled BEV features of the student encoder), as Parquet keyed by frame name."""
    import numpy as np
    import torch

    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.domains.lidar.io import list_frames

    check_embeddings_out(out, overwrite)
    model, cfg = _load_student(run)
    files = list_frames(frames)
    ids, vecs = [], []
    with torch.no_grad():
        for chunk, batch in _frame_batches(files, cfg):
            vecs.append(model.encoder.pooled(batch, len(chunk)).numpy())
            ids += [f.stem for f in chunk]
    write_embeddings(out, ids, np.concatenate(vecs), id_name="frame", overwrite=overwrite)
    typer.echo(str(out))


add_export_command(app, "lidar", "pillar/BEV encoder")
