"""Output for people goes to stderr (rich); machine output goes to stdout.

Under torchrun every rank runs the same code, so notes and warnings are said by rank 0 only
(`RANK` is set before any process group exists, e.g. while data are found and read).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape

# soft_wrap: a note is one line however narrow the terminal. Not a terminal (a log file, a pipe): rich would assume
# 80 columns and squeeze tables into wrapped cells, so 160 unless COLUMNS says otherwise.
_PIPED = not sys.stderr.isatty() and "COLUMNS" not in os.environ
console = Console(stderr=True, highlight=False, soft_wrap=True, width=160 if _PIPED else None)


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def info(msg: str) -> None:
    if _rank0():
        console.print(msg, markup=False)     # paths and hints hold brackets (`sslkit[audio]`, `runs/[a]`): never markup


def warn(msg: str) -> None:
    if _rank0():
        console.print(f"[yellow]warning:[/yellow] {escape(msg)}")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stderr; floats are shown with 4 significant digits."""
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for col in columns:
        table.add_column(escape(str(col)))
    for row in rows:                       # cells are text, never markup (an install hint holds `sslkit[graph]`)
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else escape(str(v)) for v in row])
    console.print(table)
