"""Checkpoints are data, never code: atomic writes, `weights_only=True` reads."""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from sslkit.core.errors import UserError
from sslkit.core.files import atomic_write_bytes, atomic_write_text, atomic_writer  # noqa: F401 (re-exported)

FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Replace `path` atomically. When the disk is full (or the folder read-only), the previous checkpoint stays
    whole and the UserError says so and how to go on from it."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.is_file():
        todo = (f"the previous checkpoint is intact; free some space, then continue with "
                f"`--resume --out {run}` (same command)")
    else:
        todo = "no checkpoint was written; free some space (or choose another --out) and run the command again"
    atomic_write_bytes(path, buf.getvalue(), todo=todo)


def load_weights_only(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` without torch's "Detected pickle protocol" warning, which a plain pickle
    triggers just before the refusal that callers already turn into a one-line error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`; a corrupt, truncated or code-carrying file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist — check the run folder or start without --resume")
    try:
        state = load_weights_only(path, map_location)
    except pickle.UnpicklingError:
        raise UserError(f"checkpoint {path} was refused: it holds pickled objects (code), not only tensors, and sslkit "
                        "never loads those — only load checkpoints written by sslkit") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}) — "
                        "delete it and resume from an earlier copy, or start again with --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not an sslkit checkpoint (format {FORMAT}) — use one written by sslkit")
    return state


def check_compatible(state: dict[str, Any], *, domain: str, method: str, model: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint from another domain/method or with other parameter shapes."""
    if state.get("domain") != domain or state.get("method") != method:
        raise UserError(
            f"checkpoint {path} was written by {state.get('domain')}/{state.get('method')}, "
            f"not {domain}/{method} — point --out at a run of this recipe or drop --resume"
        )
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
        raise UserError(
            f"checkpoint {path} does not fit this model (differs at {', '.join(k for k, _ in diff)}) — "
            "resume with the recipe the run was started with (see its recipe.yaml)"
        )
