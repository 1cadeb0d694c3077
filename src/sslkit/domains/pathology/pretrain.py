"""`sslkit pathology pretrain INPUT...`: DINO (or the SimCLR baseline) on H&E tiles, read in the DataLoader workers.

INPUT is slides (tiled on the fly at the recipe's size and magnification), a manifest Parquet from `tile`, or folders
of tile images. Nothing is extracted first: each worker keeps its own open slide handles (data.TileDataset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import DevicesOpt, OutOpt, OverwriteOpt, RecipeOpt, ResumeOpt, SetOpt, maybe_relaunch

InputsArg = Annotated[list[Path], typer.Argument(help="Slides (svs, ndpi, tiff, png, ...), a manifest .parquet from "
                                                      "`tile`, or folders of tile images.", show_default=False)]
SlideMppOpt = Annotated[Optional[float], typer.Option("--slide-mpp", help="µm per pixel of slides that do not store it "
                                                      "(e.g. 0.62 for GlaS JPEGs); the recipe's data.mpp is the "
                                                      "magnification the tiles are read at.", min=0.0)]


def command(inputs: InputsArg, recipe: RecipeOpt = "dino", set_: SetOpt = None, out: OutOpt = None,
            overwrite: OverwriteOpt = False, resume: ResumeOpt = False, devices: DevicesOpt = 1,
            slide_mpp: SlideMppOpt = None) -> None:
    """Self-supervised pretraining (DINO with pathology views; `--recipe simclr` for the baseline); writes a run
    folder with the exported encoder (for DINO its EMA teacher)."""
    maybe_relaunch(devices)
    from sslkit.core import distributed
    from sslkit.core.cli_options import check_paths
    from sslkit.core.console import info
    from sslkit.core.errors import UserError
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.method import PathologyRecipe, build_method, read_tiles, tile_meta
    from sslkit.domains.pathology.transforms import build_views, collate_views

    cfg = resolve_recipe(PathologyRecipe, "pathology", recipe, set_ or [], out, resume)
    check_paths(inputs, "input")
    rows = read_tiles(inputs, cfg.data, slide_mpp)
    if len(rows) == 0:
        raise UserError(f"no tiles found in {', '.join(map(str, inputs))} at data.min_tissue={cfg.data.min_tissue} — "
                        "lower it with --set data.min_tissue=0.2, or check the inputs")
    if cfg.method == "dino" and cfg.aug.global_px > cfg.data.tile_px:
        info(f"note: aug.global_px={cfg.aug.global_px} > data.tile_px={cfg.data.tile_px}: global crops are upsampled")
    seed_everything(cfg.train.seed)
    method = build_method(cfg)     # before the run folder: a bad model setting leaves nothing behind
    views = build_views(cfg.method, cfg.aug, masks=cfg.loss.ibot_weight > 0)   # iBOT: each item's mask seed
    dataset = TileDataset(rows, cfg.data.tile_px, transform=views, mpps=cfg.data.mpp)
    run = Run.open(out, domain="pathology", recipe=cfg, data_paths=list(inputs), overwrite=overwrite, resume=resume)
    run.update_manifest(tiles={"count": len(rows), "tile_px": cfg.data.tile_px, "mpp": cfg.data.mpp,
                               "slide_mpp_override": slide_mpp})
    info(f"pretraining {cfg.method} on {len(rows)} tiles of {cfg.data.tile_px} px at {cfg.data.mpp} µm/px")
    result = fit(method, dataset, cfg.train, run, collate_fn=collate_views, resume=resume)
    if distributed.is_main():
        # DINO: the EMA teacher, as DINO's authors evaluate it (method.EVAL_WEIGHTS); embed/evaluate/mil read this
        export_encoder(method.eval_encoder(), method.encoder_spec(), run.path("encoder"), extra=tile_meta(cfg))
        loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "n/a"
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {loss}")
        typer.echo(str(run.dir))

