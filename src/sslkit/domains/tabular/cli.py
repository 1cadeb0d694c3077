"""`sslkit tabular ...`: T-JEPA / SCARF pretraining on tables (CSV/TSV, JSON lines, Excel, Parquet, Feather), embed,
evaluate, export, sample-data."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from sslkit.core.cli_options import (DevicesOpt, JsonOpt, OutOpt, OverwriteOpt, ResumeOpt, RunArg, SeedsOpt, SetOpt,
                                     add_export_command, maybe_relaunch)

app = typer.Typer(help="Tables: T-JEPA pretraining with SCARF as baseline.", no_args_is_help=True)

TableArg = Annotated[Path, typer.Argument(help="A .csv, .tsv or JSON lines (.jsonl/.ndjson/.json) table (each may be "
                                               ".gz/.bz2/.zst/.lz4), an Excel .xlsx/.xlsm (first sheet), .parquet/.pq "
                                               "or .feather/.arrow, with a header; a CSV's delimiter, encoding and "
                                               "decimal mark are sniffed.")]
IdOpt = Annotated[Optional[str], typer.Option("--id", help="Row id column (kept in embeddings, never a feature).")]
DropOpt = Annotated[Optional[list[str]], typer.Option("--drop", help="Column to ignore (repeatable).")]
CatOpt = Annotated[Optional[list[str]], typer.Option("--categorical", help="Treat this column as categorical (repeatable).")]
NumOpt = Annotated[Optional[list[str]], typer.Option("--numeric", help="Treat this column as numeric (repeatable).")]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="t-jepa (default; for a GPU), t-jepa-small (for a "
                                                               "CPU), scarf, or tiny/scarf-tiny (seconds; tests), or a "
                                                               "YAML path.")]
PoolOpt = Annotated[Optional[str], typer.Option("--pool", help="T-JEPA output: mean, mean_reg or flatten (default: the recipe's).")]


def _encoder(run, pool: str | None):  # noqa: ANN001, ANN202
    """The run's exported encoder; `pool` switches a T-JEPA encoder's pooling (no retraining needed). A run that
    pretraining left unfinished has no encoder/ yet: say so, and how to complete it."""
    from sslkit.core.errors import UserError
    from sslkit.core.export import load_encoder
    from sslkit.domains.tabular.inference import pretrain_again

    if not run.path("encoder", "config.json").is_file():
        if run.checkpoint_path.is_file():
            raise UserError(f"{run.dir} is an unfinished run (a checkpoint but no encoder/ yet) — complete it with "
                            f"{pretrain_again(run, resume=True)}")
        raise UserError(f"{run.dir} holds no encoder and no checkpoint (pretraining stopped before its first "
                        f"checkpoint) — start it again with {pretrain_again(run, resume=False)}")
    encoder = load_encoder(run.dir)
    if pool is not None:
        if not hasattr(encoder, "pool"):
            raise UserError(f"--pool applies to T-JEPA encoders; {run.dir} holds a {encoder.sslkit_config['kind']} encoder")
        if pool not in ("mean", "mean_reg", "flatten"):
            raise UserError(f"--pool {pool}: choose mean, mean_reg or flatten")
        encoder.pool = pool
    return encoder


def _pretrain_command(data: Path, *options: tuple[str, object]) -> str:
    """`sslkit tabular pretrain DATA` with the options given (None and False left out, a list repeated), shell-quoted:
    a hint to paste must keep --target/--id/--drop, which decide what is a feature, or it trains on the label."""
    words = ["sslkit", "tabular", "pretrain", str(data)]
    for flag, value in options:
        for v in value if isinstance(value, list) else [value]:
            words += [flag] if v is True else [] if v is None or v is False else [flag, str(v)]
    return shlex.join(words)


def _fit_preprocessing(data: Path, cfg, skip: dict[str, str], categorical: list[str], numeric: list[str]):  # noqa: ANN001, ANN202
    """Rank 0 fits the preprocessing in one streaming pass; every rank gets the result (or the same error)."""
    from sslkit.core import distributed
    from sslkit.core.errors import UserError
    from sslkit.domains.tabular.io import iter_batches
    from sslkit.domains.tabular.preprocess import Preprocessor
    from sslkit.domains.tabular.preprocess_fit import fit_preprocessor

    payload = None
    if distributed.is_main():
        try:
            pre = fit_preprocessor(iter_batches(data, categorical, cfg.data.batch_rows), skip=skip, categorical=categorical,
                                   numeric=numeric, scaling=cfg.data.scaling, max_categories=cfg.data.max_categories,
                                   sample_rows=cfg.data.sample_rows, n_quantiles=cfg.data.n_quantiles,
                                   seed=cfg.train.seed, source=str(data))
            payload = ("ok", pre.to_json())
        except UserError as exc:
            payload = ("error", str(exc))
    status, text = distributed.broadcast_object(payload)
    if status == "error":
        raise UserError(text)
    return Preprocessor.from_dict(json.loads(text))


@app.command()
def pretrain(
    data: TableArg,
    target: Annotated[Optional[str], typer.Option("--target", help="Label column: excluded from pretraining.")] = None,
    id_col: IdOpt = None, drop: DropOpt = None, categorical: CatOpt = None, numeric: NumOpt = None,
    recipe: RecipeOpt = "t-jepa", set_: SetOpt = None, out: OutOpt = None, overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False, devices: DevicesOpt = 1,
) -> None:
    """Pretrain an encoder on the table's feature columns; writes a run folder with preprocess.json and encoder/."""
    maybe_relaunch(devices)
    from sslkit.core import distributed
    from sslkit.core.files import atomic_write_text
    from sslkit.core.console import info, warn
    from sslkit.core.errors import UserError
    from sslkit.core.export import export_encoder
    from sslkit.core.loop import fit, seed_everything
    from sslkit.core.recipes import resolve_recipe
    from sslkit.core.runs import Run
    from sslkit.domains.tabular.cache import EncodedRows, write_cache
    from sslkit.domains.tabular.inference import check_named_columns, encoder_extra
    from sslkit.domains.tabular.io import iter_batches, table_columns
    from sslkit.domains.tabular.method import TabularRecipe, build_method
    from sslkit.domains.tabular.preprocess import Preprocessor

    cfg = resolve_recipe(TabularRecipe, "tabular", recipe, set_ or [], out, resume)
    columns = table_columns(data)
    drop, categorical, numeric = drop or [], categorical or [], numeric or []
    check_named_columns(data, columns, target=target, id=id_col, drop=drop, categorical=categorical, numeric=numeric)
    both = set(categorical) & set(numeric)
    if both:
        raise UserError(f"{', '.join(both)} given as both --categorical and --numeric — pick one")
    skip = {**{d: "dropped" for d in drop}, **({id_col: "id"} if id_col else {}), **({target: "target"} if target else {})}
    distributed.init_distributed(distributed.select_device(cfg.train.device))
    if resume:
        if out is None:
            raise UserError("--resume needs --out pointing at the run folder to continue")
        if not Path(out).is_dir():
            start = _pretrain_command(data, ("--target", target), ("--id", id_col), ("--drop", drop),
                                      ("--categorical", categorical), ("--numeric", numeric),
                                      ("--recipe", None if recipe == "t-jepa" else recipe), ("--set", set_ or []),
                                      ("--devices", devices if devices > 1 else None), ("--out", out))
            raise UserError(f"--resume: there is no run folder {out} to resume — start the run without --resume "
                            f"({start})")
        pre = Preprocessor.load(Path(out) / "preprocess.json")
    else:
        pre = _fit_preprocessing(data, cfg, skip, categorical, numeric)
    if cfg.method == "t-jepa" and len(pre.features) < 2:
        raise UserError(f"{data}: T-JEPA needs at least 2 usable feature columns, found {pre.features} — "
                        "add columns or use --recipe scarf")
    if pre.n_rows < cfg.train.batch_size:
        raise UserError(f"{data} has {pre.n_rows} rows, fewer than one batch of {cfg.train.batch_size} — "
                        f"lower it with --set train.batch_size={max(1, pre.n_rows // 2)} or add rows")
    run = Run.open(out, domain="tabular", recipe=cfg, data_paths=[data], overwrite=overwrite, resume=resume)
    if distributed.is_main():
        for note in pre.notes:
            warn(note)
        info(f"{pre.n_rows} rows, {len(pre.numeric)} numeric + {len(pre.categorical)} categorical features "
             f"({cfg.data.scaling} scaling); run folder {run.dir}")
        if not resume:
            atomic_write_text(run.path("preprocess.json"), pre.to_json())
            run.update_manifest(tabular={"features": pre.features, "ignored": pre.ignored, "rows": pre.n_rows})
        if not run.path("cache", "num.npy").is_file():
            write_cache(iter_batches(data, pre.string_columns(), cfg.data.batch_rows), pre, run.path("cache"))
    distributed.barrier()
    seed_everything(cfg.train.seed)
    method = build_method(cfg, len(pre.numeric), pre.cardinalities)
    rows = EncodedRows(run.path("cache"))
    if not resume and hasattr(method, "fit_bin_edges"):   # resume: the edges come back with the checkpoint
        method.fit_bin_edges(rows.arrays["num"], rows.arrays["miss"])
    result = fit(method, rows, cfg.train, run, collate_fn=rows.collate, resume=resume)
    if distributed.is_main():
        extra = encoder_extra(pre, cfg.method, method.encoder)
        export_encoder(method.encoder.cpu(), method.encoder_spec(), run.path("encoder"), extra=extra)
        info(f"done: {result.step} steps in {result.seconds:.1f}s, final loss {result.last_loss:.4f}")
        typer.echo(str(run.dir))


@app.command()
def embed(
    run: RunArg, data: TableArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write (.parquet or .pq).")] = Path("embeddings.parquet"),
    id_col: IdOpt = None, drop: DropOpt = None, pool: PoolOpt = None, overwrite: OverwriteOpt = False,
) -> None:
    """Embeddings of every row (the run's preprocessing applied unchanged), as Parquet with the id column."""
    import numpy as np

    from sslkit.core.console import warn
    from sslkit.core.embeddings import check_embeddings_out, write_embeddings
    from sslkit.core.errors import UserError
    from sslkit.core.runs import Run
    from sslkit.domains.tabular.inference import check_named_columns, embed_rows, encode_table, id_problems
    from sslkit.domains.tabular.io import table_columns
    from sslkit.domains.tabular.preprocess import Preprocessor

    check_embeddings_out(out, overwrite)
    r = Run.load(run, "tabular")
    encoder = _encoder(r, pool)
    pre = Preprocessor.load(r.path("preprocess.json"))
    columns = table_columns(data)
    check_named_columns(data, columns, id=id_col, drop=drop)
    if id_col in pre.features:
        raise UserError(f"--id {id_col}: '{id_col}' was a feature of the encoder at pretraining, so it cannot be the id "
                        "— pass another --id column, or none to number the rows")
    run_id = next((c for c, why in pre.ignored.items() if why == "id"), None)
    if id_col is None and run_id is not None:
        if run_id in columns:
            id_col = run_id
        else:
            warn(f"{data} has no column '{run_id}' (the run's --id): rows are numbered from 0 in column 'row' — pass "
                 "--id COL to use another column")
    table = encode_table(pre, data, keep=[id_col] if id_col else [], drop=drop or [])
    z = embed_rows(encoder, table)
    ids = table.columns[id_col] if id_col else np.arange(len(table))
    if id_col:
        empty, repeated = id_problems(ids)
        if empty:
            warn(f"id column '{id_col}' of {data} is empty in {empty:,} row(s): those embeddings have no id")
        if repeated:
            warn(f"id column '{id_col}' of {data} repeats ids: {repeated:,} row(s) share an id with an earlier row, "
                 "so ids do not tell them apart")
    write_embeddings(out, ids, z, id_name=id_col or "row", overwrite=overwrite,
                     metadata={"run": str(r.dir.resolve()), "method": r.recipe_dict["method"], "table": str(data)})
    typer.echo(str(out))


@app.command()
def evaluate(
    run: RunArg, data: TableArg,
    target: Annotated[str, typer.Option("--target", help="Label column to predict.")],
    task: Annotated[Optional[str], typer.Option("--task", help="classification or regression (default: inferred).")] = None,
    seeds: SeedsOpt = 5,
    test: Annotated[Optional[Path], typer.Option("--test", help="Held-out table to score on (default: a random 20% per seed).")] = None,
    drop: DropOpt = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated subset of linear,mlp,hgb.")] = "linear,mlp,hgb",
    jobs: Annotated[int, typer.Option("--jobs", help="Parallel processes for the seeds × models grid.", min=1)] = 1,
    label_fraction: Annotated[float, typer.Option("--label-fraction", help="Fit the downstream models on this "
                                                  "stratified share of the training rows (few labels); the test "
                                                  "rows do not change.")] = 1.0,
    pool: PoolOpt = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="JSON file for the results (default "
                                                   "RUN/evaluation.json); replaced if it exists.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Downstream models on raw features vs embeddings vs both (mean ± std over seeds); JSON in the run folder
    (or --report)."""
    from sslkit.core.files import atomic_write_text, check_file_out
    from sslkit.core.console import info, print_table, warn
    from sslkit.core.errors import UserError
    from sslkit.core.runs import Run
    from sslkit.domains.tabular.evaluation_report import (comparison_note, evaluation_plots, labelled_rows, load_labelled,
                                                         result_rows)

    if task not in (None, "classification", "regression"):
        raise UserError(f"--task {task}: choose classification or regression")
    chosen = [m.strip() for m in models.split(",") if m.strip()]
    if not chosen or set(chosen) - {"linear", "mlp", "hgb"}:
        raise UserError(f"--models {models}: choose from linear, mlp, hgb (comma-separated)")
    if not 0.0 < label_fraction <= 1.0:
        raise UserError(f"--label-fraction {label_fraction}: give a share of the training rows in (0, 1]")
    if report is not None:
        check_file_out(report, True, "evaluation.json")        # replaced if it exists, as documented
    r = Run.load(run, "tabular")
    report = report or r.path("evaluation.json")
    encoder = _encoder(r, pool)
    train_sets, y, task, classes, dropped = load_labelled(r, encoder, data, target, task, drop or [])
    if dropped:
        warn(f"{dropped} rows of {data} have no '{target}' value and are left out")
    test_pack = None
    if test is not None:
        test_sets, y_test, _, test_classes, _ = load_labelled(r, encoder, test, target, task, drop or [], classes=classes,
                                                              ple="raw-ple" in train_sets)
        test_pack = (test_sets, y_test)
    from sslkit.domains.tabular.downstream import (HGB_EMBED_COMPONENTS, MLP_EPOCHS, MLP_GRID, MLP_HIDDEN,
                                                   check_label_fraction, run_evaluation)

    check_label_fraction(y, label_fraction, task, fixed_test=test is not None)
    labelled = f", {label_fraction:g} of the training labels" if label_fraction < 1 else ""
    info(f"evaluating {len(y)} rows, task {task}, {seeds} seed(s), models {', '.join(chosen)}{labelled}")
    results = run_evaluation(train_sets, y, task, range(seeds), test=test_pack, models=chosen, jobs=jobs,
                             label_fraction=label_fraction)
    columns, rows = result_rows(results, task)
    few = f"{labelled}: {labelled_rows(results)} labelled training rows per seed" if labelled else ""
    print_table(f"tabular evaluation: {r.recipe_dict['method']} embeddings, target '{target}' "
                f"({'test table' if test else '20% held out'}, {seeds} seed{'s' if seeds != 1 else ''}{few})",
                columns, rows)
    note = comparison_note(results, task)
    if note:
        info(note)
    payload = {"pool": getattr(encoder, "pool", None), "task": task, "target": target, "seeds": seeds,
               "n_rows": int(len(y)), "data": str(data), "test": str(test) if test else None, "label_fraction": label_fraction,
               "mlp": {"hidden": list(MLP_HIDDEN), "grid": list(MLP_GRID), "max_epochs": MLP_EPOCHS,
                       "best_epoch_on": "15% validation split of the training rows"},
               "hgb": {"raw+embeddings": "raw + k PCA components of the embeddings (fitted on train; "
                                     f"k in {list(HGB_EMBED_COMPONENTS)} chosen on a validation split of train)"},
               **({"raw-ple": "raw features, each numeric column as its piecewise-linear code over the encoder's bins "
                             "(linear and MLP only)"} if "raw-ple" in train_sets else {}),
               "note": note, "results": results}
    atomic_write_text(report, json.dumps(payload, indent=2))
    evaluation_plots(r, train_sets["embeddings"].dense, y, results, task, target, label_fraction, classes)
    info(f"wrote {report} and {r.path('plots')}")
    typer.echo(json.dumps(payload) if json_out else str(report))


def _unfinished_extra(run, encoder) -> dict:  # noqa: ANN001
    """What `pretrain` adds to the encoder's config at its end, for exporting a run stopped before it."""
    from sslkit.domains.tabular.inference import encoder_extra
    from sslkit.domains.tabular.preprocess import Preprocessor

    return encoder_extra(Preprocessor.load(run.path("preprocess.json")), run.recipe_dict["method"], encoder)


add_export_command(app, "tabular", "encoder with its preprocessing", unfinished_extra=_unfinished_extra)


@app.command("sample-data")
def sample_data(out: Annotated[Path, typer.Argument(help="Folder to write the sample tables into.")],
                overwrite: OverwriteOpt = False) -> None:
    """Write UCI Adult (adult.csv, label `income`, id `id`) and scikit-learn's breast_cancer/wine tables."""
    from sslkit.domains.tabular.samples import write_sample_data

    for path in write_sample_data(out, overwrite=overwrite):
        typer.echo(str(path))
