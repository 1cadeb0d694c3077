"""The `sslkit` command: one sub-app per domain, plus doctor and recipes.

Kept light: domain sub-apps import their heavy libraries inside commands, so
`sslkit --help` answers fast and imports no torch domain library.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup

try:                 # typer ≥ 0.20 parses with its own copy of Click, whose exceptions are not click's
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import NoArgsIsHelpError, UsageError

from sslkit import __version__
from sslkit.core.errors import Interrupted, UserError

DOMAINS = {
    "medical3d": "3D CT/MRI volumes: Alice-style and SwinUNETR-SSL pretraining, few-label fine-tuning.",
    "pathology": "Whole-slide pathology: tiling, DINO/SimCLR tile pretraining, tile and slide embeddings, attention MIL.",
    "audio": "Audio: SSAMBA (bidirectional Mamba) / SSAST masked-spectrogram pretraining and TERA.",
    "graph": "Graphs: SCGC/SCGC* node embeddings and clustering, GRACE baseline.",
    "lidar": "Roadside LiDAR: simulate, pseudo-label with statistical teachers, train a student detector.",
    "tabular": "Tables: T-JEPA pretraining with SCARF as baseline.",
    "toy": "Built-in test method (VICReg on synthetic vectors) that exercises the whole loop.",
}
_DEBUG = {"on": False}


def _usage_error(exc: Exception) -> None:
    """A Click usage error as one `error:` line naming the command's --help, exit code 2."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "sslkit"
    message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    typer.echo(f"error: {message} — see `{where} --help`", err=True)
    raise typer.Exit(2) from None


def _missing_module(module: str, command: str | None) -> None:
    """A library a command needs is not installed: one line naming the install that brings it, exit code 2."""
    from sslkit.dependencies import DOMAINS as WITH_EXTRAS, distribution, domain_of_module, install_hint

    domain = command if command in WITH_EXTRAS else domain_of_module(module)
    where = f"sslkit {command}" if command else "sslkit"
    typer.echo(f"error: {where} needs the Python package '{distribution(module.split('.')[0])}' (module "
               f"'{module}'), which is not installed — {install_hint(domain)}", err=True)
    raise typer.Exit(2) from None


class SslkitGroup(TyperGroup):
    """Turns UserError and usage errors into one line on stderr with exit code 2 (tracebacks only with --debug)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:                                  # the root's own options (`sslkit --nope`) are parsed here
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        ok = False
        if (runs := sys.modules.get("sslkit.core.runs")) is not None:
            runs.settle_runs(True)        # forget folders made outside a command (the Python API, an earlier call)
        try:
            result = super().invoke(ctx)
            ok = True
            return result
        except typer.Exit as exc:
            ok = exc.exit_code == 0
            raise
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:             # a bad option or argument: one line too, not Click's usage block
            _usage_error(exc)
        except UserError as exc:
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:                # full disk, quota, read-only folder, permissions: the user's to fix
            from sslkit.core.files import environment_error

            if _DEBUG["on"] or (message := environment_error(exc)) is None:
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:    # an optional library is missing: say which extra brings it
            if _DEBUG["on"] or not exc.name or exc.name.split(".")[0] == "sslkit":
                raise
            _missing_module(exc.name, ctx.invoked_subcommand)
        except Interrupted as exc:
            ok = True           # the new run holds a checkpoint to --resume from; the run it replaced is not wanted
            typer.echo(str(exc), err=True)
            raise typer.Exit(130) from None
        finally:
            runs = sys.modules.get("sslkit.core.runs")      # not imported: no run folder was replaced
            if runs is not None:
                runs.settle_runs(ok)
            if (dist := sys.modules.get("sslkit.core.distributed")) is not None:
                dist.finish(ok)                 # ranks leave together, the process group ended before exit


app = typer.Typer(cls=SslkitGroup, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False, help="Self-supervised pretraining from the command line.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sslkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _DEBUG["on"] = debug


for _name, _help in DOMAINS.items():
    app.add_typer(importlib.import_module(f"sslkit.domains.{_name}.cli").app, name=_name, help=_help)


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """Versions, devices, CUDA/bf16, and which domain extras import (with what to install)."""
    from sslkit.doctor import report

    report(json_out)


recipes_app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list(domain: Annotated[Optional[str], typer.Option("--domain", "-d", help="Only this domain.")] = None) -> None:
    """Shipped recipes with their descriptions."""
    from sslkit.core.console import print_table
    from sslkit.core.recipes import read_recipe, shipped_recipes

    if domain is not None and domain not in DOMAINS:
        raise UserError(f"unknown domain '{domain}' — choose one of: {', '.join(DOMAINS)}")
    rows = []
    for dom, name, path in shipped_recipes(domain):
        data = read_recipe(dom, path)   # with the recipe it extends
        rows.append([dom, name, data.get("method", ""), str(data.get("description", "")).strip().split("\n")[0]])
        typer.echo(f"{dom}/{name}")
    print_table("recipes", ["domain", "name", "method", "description"], rows)


def _resolve(name: str) -> Path:
    from sslkit.core.recipes import shipped_recipes

    dom, _, short = name.rpartition("/")
    hits = [p for d, n, p in shipped_recipes(dom or None) if n == short]
    if not hits:
        raise UserError(f"no shipped recipe named '{name}' — see `sslkit recipes list`")
    if len(hits) > 1:
        choices = ", ".join(f"{p.parent.name}/{p.stem}" for p in hits)
        raise UserError(f"recipe name '{name}' is ambiguous — write it as domain/name: {choices}")
    return hits[0]


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name, or domain/name.")],
                 resolved: Annotated[bool, typer.Option("--resolved", help="Print it with the recipe it extends merged "
                                                        "in (every key it sets).")] = False) -> None:
    """Print a shipped recipe's YAML."""
    path = _resolve(name)
    if not resolved:
        typer.echo(path.read_text(), nl=False)
        return
    import yaml

    from sslkit.core.recipes import read_recipe

    typer.echo(yaml.safe_dump(read_recipe(path.parent.name, path), sort_keys=False, allow_unicode=True, width=120), nl=False)


@recipes_app.command("copy")
def recipes_copy(
    name: Annotated[str, typer.Argument(help="Recipe name, or domain/name.")],
    dest: Annotated[Path, typer.Argument(help="File or folder to copy it to.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Copy a shipped recipe to edit it; pass the copy to --recipe."""
    from sslkit.core.files import atomic_write_text

    src = _resolve(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists — pass --overwrite or choose another destination")
    atomic_write_text(target, src.read_text())
    typer.echo(str(target))


def main() -> None:
    """Console entry point: exit 2 for usage errors, 130 when interrupted, 1 for internal errors."""
    # recent typer runs on a vendored copy of click whose exceptions are distinct classes: catch both kinds
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        TyperClickException = click.ClickException
    exits = (click.exceptions.Exit, typer.Exit)
    usage = (click.ClickException, TyperClickException)
    aborts = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="sslkit", standalone_mode=False)
    except exits as exc:
        code = exc.exit_code
    except usage as exc:
        exc.show()
        code = 2
    except aborts:
        typer.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # the one place that catches everything: an internal error, reported plainly
        if _DEBUG["on"]:
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc} — rerun with --debug for the traceback and report it",
                   err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
