"""`sslkit toy ...`: the built-in test method, end to end (pretrain -> embed -> evaluate -> export)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import (DevicesOpt, JsonOpt, OutOpt, OverwriteOpt, RecipeOpt, ResumeOpt, RunArg, SeedsOpt,
                                     SetOpt, add_export_command, maybe_relaunch)

app = typer.Typer(help="Built-in test method (VICReg on synthetic vectors).", no_args_is_help=True)
DataArg = Annotated[Optional[Path], typer.Argument(help="A .npy array (N, D); default: synthetic vectors from the recipe.")]


def _data(recipe, path: Path | None):  # noqa: ANN001, ANN202
    from sslkit.domains.toy.io import make_vectors, read_vectors

    if path is None:
        d = recipe.data
        return make_vectors(d.n, d.dim, d.classes, d.seed)
    return read_vectors(path), None


@app.command()
def pretrain(data: DataArg = None, recipe: RecipeOpt = "tiny", set_: SetOpt = None, out: OutOpt = None,
             overwrite: OverwriteOpt = False, resume: ResumeOpt = False, devices: DevicesOpt = 1) -> None:
    """Pretrain the MLP encoder with VICReg; writes a run folder and its exported encoder."""
    maybe_relaunch(devices)
    from sslkit.core.console import info
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.core import distributed
    from sslkit.domains.toy.io import TwoViews
    from sslkit.domains.toy.method import ToyRecipe, ToyVICReg

    cfg = resolve_recipe(ToyRecipe, "toy", recipe, set_ or [], out, resume)
    x, _ = _data(cfg, data)
    run = Run.open(out, domain="toy", recipe=cfg, data_paths=[data] if data else [], overwrite=overwrite, resume=resume)
    seed_everything(cfg.train.seed)
    method = ToyVICReg(x.shape[1], cfg.model, cfg.loss)
    result = fit(method, TwoViews(x, cfg.data.noise, cfg.data.drop), cfg.train, run, resume=resume)
    if distributed.is_main():
        export_encoder(method.encoder, method.encoder_spec(), run.path("encoder"))
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


@app.command()
def embed(run: RunArg, data: DataArg = None, out: Annotated[Path, typer.Option("--out", "-o")] = Path("embeddings.parquet"),
          overwrite: OverwriteOpt = False) -> None:
    """Encoder outputs for every vector, as Parquet (row index as id)."""
    import numpy as np
    import torch

    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.core.export import load_encoder
    from sslkit.core.runs import Run
    from sslkit.domains.toy.method import ToyRecipe

    check_embeddings_out(out, overwrite)
    cfg = ToyRecipe.model_validate(Run.load(run, "toy").recipe_dict)
    x, labels = _data(cfg, data)
    encoder = load_encoder(run)
    with torch.no_grad():
        z = encoder(torch.from_numpy(x)).numpy()
    extra = {"label": labels} if labels is not None else None
    write_embeddings(out, np.arange(len(z)), z, extra=extra, overwrite=overwrite)
    typer.echo(str(out))


@app.command()
def evaluate(run: RunArg, seeds: SeedsOpt = 5, json_out: JsonOpt = False) -> None:
    """kNN / linear probe / k-means on the synthetic labels: raw vectors vs embeddings."""
    import torch

    from sslkit.core.console import print_table
    from sslkit.core.evaluation import format_mean_std, kmeans_eval, knn_probe, linear_probe
    from sslkit.core.export import load_encoder
    from sslkit.core.runs import Run
    from sslkit.domains.toy.method import ToyRecipe

    r = Run.load(run, "toy")
    cfg = ToyRecipe.model_validate(r.recipe_dict)
    x, y = _data(cfg, None)
    with torch.no_grad():
        z = load_encoder(run)(torch.from_numpy(x)).numpy()
    seed_list = tuple(range(seeds))
    results = {}
    for name, feats in (("raw vectors", x), ("embeddings", z)):
        results[name] = {"knn_acc": knn_probe(feats, y, seeds=seed_list)["accuracy"],
                         "linear_acc": linear_probe(feats, y, seeds=seed_list)["accuracy"],
                         "kmeans_nmi": kmeans_eval(feats, y, cfg.data.classes, seeds=seed_list)["nmi"]}
    rows = [[name] + [format_mean_std(v) for v in res.values()] for name, res in results.items()]
    print_table(f"toy evaluation ({seeds} seeds)", ["features", "kNN acc", "linear acc", "k-means NMI"], rows)
    payload = {name: {k: list(v) for k, v in res.items()} for name, res in results.items()}
    from sslkit.core.files import atomic_write_text

    atomic_write_text(r.path("evaluation.json"), json.dumps(payload, indent=2))
    typer.echo(json.dumps(payload) if json_out else str(r.path("evaluation.json")))


add_export_command(app, "toy")
