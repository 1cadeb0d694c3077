"""Typer options shared by every domain, so the verbs read alike everywhere."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Shipped recipe name (see `sslkit recipes list`) or a YAML path.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to write (default runs/<domain>-<method>-<time>).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder / output file.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA, else MPS, else CPU), cpu, cuda or cuda:N.")]
DevicesOpt = Annotated[int, typer.Option("--devices", help="Processes to start on this machine (one process group, as torchrun --standalone).", min=1)]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Repeat the evaluation over this many seeds (mean ± std).", min=1)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
RunArg = Annotated[Path, typer.Argument(help="A run folder written by `pretrain`.")]


def maybe_relaunch(devices: int) -> None:
    """With --devices N > 1 outside torchrun, re-run this very command as N ranks on this machine (`core.launch`)
    and exit with the code of the first rank to fail, or 0."""
    if devices <= 1 or "RANK" in os.environ:
        return
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--devices":
            skip = True
            continue
        if a.startswith("--devices="):
            continue
        args.append(a)
    from sslkit.core.launch import launch_local

    print(f"launching {devices} processes: sslkit {' '.join(args)}", file=sys.stderr, flush=True)
    raise typer.Exit(launch_local(devices, args))


def check_paths(paths: list[Path], what: str = "data") -> list[Path]:
    """Every path must exist; a folder must not be empty."""
    from sslkit.core.errors import UserError

    if not paths:
        raise UserError(f"no {what} given — pass a file or folder")
    for p in paths:
        if not p.exists():
            raise UserError(f"{what} path {p} does not exist — check the spelling or the current folder")
        if p.is_dir() and not any(p.iterdir()):
            raise UserError(f"{what} folder {p} is empty — point at a folder that holds the files")
    return paths


def add_export_command(app: typer.Typer, domain: str, what: str = "encoder",
                       unfinished_extra: Callable[[Any, Any], dict[str, Any]] | None = None) -> None:
    """Register `sslkit DOMAIN export RUN --out DIR` on `app`: the same verb, help and checks in every domain.

    The run must be one of `domain`'s (a graph run given to `sslkit tabular export` is refused);
    `unfinished_extra(run, encoder)`: what the domain's pretrain adds to the encoder's config at the end, for a run
    that did not get there (see `export_from_run`).
    """

    def export(run: RunArg, out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
               overwrite: OverwriteOpt = False) -> None:
        from sslkit.core.export import export_from_run

        typer.echo(str(export_from_run(run, out, overwrite=overwrite, domain=domain, unfinished_extra=unfinished_extra)))

    export.__doc__ = f"Write the {what} (safetensors + config.json), loadable with sslkit.load_encoder(DIR)."
    app.command("export")(export)
