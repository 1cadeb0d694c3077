"""Applying a pretraining run to a table: fit/restore preprocessing, encode rows, compute embeddings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sslkit.core.console import warn
from sslkit.core.errors import UserError
from sslkit.domains.tabular.io import iter_batches, table_columns
from sslkit.domains.tabular.preprocess import Preprocessor


def check_named_columns(path: Path, columns: list[str], **named: Sequence[str] | str | None) -> None:
    """Every column named by an option (--target, --id, --drop, ...) must exist in the table."""
    for option, names in named.items():
        if names is None:
            continue
        for name in [names] if isinstance(names, str) else names:
            if name not in columns:
                raise UserError(f"--{option.replace('_', '-')} {name}: no such column in {path} — "
                                f"columns are: {', '.join(columns)}")


@dataclass
class EncodedTable:
    num: np.ndarray
    miss: np.ndarray
    cat: np.ndarray
    columns: dict[str, np.ndarray]     # requested extra columns (id, target) as numpy arrays

    def __len__(self) -> int:
        return len(self.num)


def encode_table(pre: Preprocessor, path: Path, keep: Sequence[str] = (), drop: Sequence[str] = (),
                 batch_rows: int = 65536) -> EncodedTable:
    """Check the columns against pretraining, then encode every row; `keep` columns come back raw."""
    columns = table_columns(path)
    pre.check_columns([c for c in columns if c not in keep], str(path), drop)
    parts: dict[str, list[Any]] = {"num": [], "miss": [], "cat": []}
    extra: dict[str, list[Any]] = {k: [] for k in keep}
    strings = [c for c in pre.string_columns() if c in columns]
    rows, stray = 0, {}
    for batch in iter_batches(path, strings, batch_rows):
        for k, arr in zip(("num", "miss", "cat"), pre.encode(batch, source=str(path), row0=rows, stray=stray)):
            parts[k].append(arr)
        for k in keep:
            extra[k].append(batch.column(batch.schema.get_field_index(k)).to_numpy(zero_copy_only=False))
        rows += batch.num_rows
    if not parts["num"]:
        raise UserError(f"{path} has no rows — give a table with data")
    for name, count in stray.items():   # as at pretraining, where the column had such values too
        warn(f"{path}: column '{name}' has {count:,} text value(s) that are not numbers; they are read as missing, "
             "as at pretraining")
    return EncodedTable(*(np.concatenate(parts[k]) for k in ("num", "miss", "cat")),
                        columns={k: np.concatenate(v) for k, v in extra.items()})


@torch.no_grad()
def embed_rows(encoder: torch.nn.Module, table: EncodedTable, batch: int = 4096, device: str = "auto") -> np.ndarray:
    """(N, out_dim) float32 embeddings, batch by batch, fp32 (CUDA when available)."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    encoder = encoder.to(dev).eval()
    out = []
    for s in range(0, len(table), batch):
        args = [torch.from_numpy(np.ascontiguousarray(a[s: s + batch])).to(dev) for a in (table.num, table.miss, table.cat)]
        out.append(encoder(*args).float().cpu().numpy())
    return np.concatenate(out)


def id_problems(ids: np.ndarray) -> tuple[int, int]:
    """(empty, repeated): rows without an id, and rows whose id an earlier row already has."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(ids, from_pandas=True)   # NaN (a numeric column with gaps) is missing too
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return 0, 0
    return arr.null_count, len(arr) - arr.null_count - pc.count_distinct(arr).as_py()


def pretrain_again(run: Any, resume: bool) -> str:
    """How to complete (`resume`) or restart an unfinished run, for an error message. Resuming reuses the run's recipe
    and preprocessing, so its table and folder suffice; a restart fits the preprocessing again, so it must repeat
    the recorded command (its --target/--id/--drop decide the features, or the label becomes one), with --overwrite."""
    import os
    import shlex

    if resume:
        data = ((run.manifest.get("data") or {}).get("paths") or ["DATA"])[0]
        return f"`sslkit tabular pretrain {shlex.quote(data)} --resume --out {shlex.quote(str(run.dir))}`"
    argv = [str(a) for a in run.manifest.get("command") or []]
    at = next((i for i in range(len(argv) - 1) if argv[i: i + 2] == ["tabular", "pretrain"]), None)
    if at is None:
        return "the `sslkit tabular pretrain` command that started it (the same --target, --id and --drop), with --overwrite"
    words = ["sslkit", "tabular", "pretrain", *(a for a in argv[at + 2:] if a not in ("--resume", "--overwrite")), "--overwrite"]
    cwd = run.manifest.get("cwd")
    return f"`{f'cd {shlex.quote(cwd)} && ' if cwd and cwd != os.getcwd() else ''}{shlex.join(words)}`"


def encoder_extra(pre: Preprocessor, method: str, encoder: Any) -> dict[str, Any]:
    """The encoder config's `extra`: the preprocessing `embed` applies, the method and the embedding width."""
    import json

    return {"preprocess": json.loads(pre.to_json()), "method": method, "out_dim": int(encoder.out_dim)}
