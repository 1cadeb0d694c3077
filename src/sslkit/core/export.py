"""Exported encoders: safetensors weights + a JSON builder spec, loadable with one call."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sslkit.core.errors import UserError
from sslkit.core.files import check_dir_out, staged_dir

DOMAINS = ("medical3d", "pathology", "audio", "graph", "lidar", "tabular", "toy")


def encoder_spec(domain: str, kind: str, **kwargs: Any) -> dict[str, Any]:
    """What `load_encoder` needs to rebuild an encoder: `ENCODERS[kind](**kwargs)` of `domain`."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}")
    json.dumps(kwargs)  # must be JSON-able
    return {"domain": domain, "kind": kind, "kwargs": kwargs}


def export_encoder(encoder: nn.Module, spec: dict[str, Any], out_dir: Path, extra: dict[str, Any] | None = None,
                   overwrite: bool = True) -> Path:
    """Write `encoder.safetensors` + `config.json` into `out_dir` (complete or not at all)."""
    from safetensors.torch import save_file

    import sslkit

    out_dir = Path(out_dir)
    check_dir_out(out_dir, overwrite)
    with staged_dir(out_dir) as tmp:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
        save_file(tensors, str(tmp / "encoder.safetensors"), metadata={"format": "sslkit-encoder"})
        config = {**spec, "sslkit_version": sslkit.__version__, "extra": extra or {}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def read_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if (path / "encoder" / "config.json").is_file():
        path = path / "encoder"
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        manifest = path / "manifest.json"
        domain = json.loads(manifest.read_text()).get("domain", "DOMAIN") if manifest.is_file() else "DOMAIN"
        if (path / "checkpoints" / "last.pt").is_file():
            raise UserError(f"{path} is an unfinished run (a checkpoint but no encoder/ yet) — complete it with "
                            f"`sslkit {domain} pretrain DATA... --resume --out {path}`, or export its last checkpoint "
                            f"with `sslkit {domain} export {path} --out DIR`")
        raise UserError(f"{path} holds no exported encoder (config.json) — give a finished run folder or a folder "
                        f"written by `sslkit {domain} export`")
    config = json.loads(cfg_path.read_text())
    config["_dir"] = str(path)
    return config


def build_encoder(config: dict[str, Any]) -> nn.Module:
    domain = config.get("domain")
    if domain not in DOMAINS:
        raise UserError(f"encoder config names unknown domain {domain!r} — re-export it with this sslkit")
    module = importlib.import_module(f"sslkit.domains.{domain}.model")
    builders = getattr(module, "ENCODERS", {})
    if config.get("kind") not in builders:
        raise UserError(f"{domain} has no encoder kind {config.get('kind')!r} (known: {', '.join(builders)})")
    return builders[config["kind"]](**config.get("kwargs", {}))


def load_encoder(path: Path | str) -> nn.Module:
    """An exported encoder (export dir, or a run dir holding `encoder/`) as an eval-mode nn.Module."""
    from safetensors.torch import load_file

    config = read_config(Path(path))
    encoder = build_encoder(config)
    weights = Path(config["_dir"]) / "encoder.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{weights} is unreadable ({type(exc).__name__}) — export the encoder again") from None
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights} does not match the encoder in config.json (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}) — export again")
    encoder.sslkit_config = {k: v for k, v in config.items() if k != "_dir"}  # type: ignore[attr-defined]
    return encoder.eval()


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def export_from_run(run_dir: Path, out_dir: Path, overwrite: bool = False, domain: str | None = None,
                    unfinished_extra: Callable[[Any, nn.Module], dict[str, Any]] | None = None,
                    prefix: str = "encoder.", extra_update: dict[str, Any] | None = None) -> Path:
    """Re-export the encoder of a run from its last checkpoint (works for interrupted runs too);
    with `domain`, the run must belong to it. `prefix`: where the weights sit in the checkpoint's model state
    (e.g. "teacher.encoder." for an EMA teacher); `extra_update`: entries set on top of the config's `extra`.

    The config's `extra` (what a domain needs besides the weights, e.g. tabular's preprocessing) is copied from the
    run's own encoder/; a run stopped before pretrain wrote it gets `unfinished_extra(run, encoder)` and a warning.
    """
    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.core.runs import Run

    run = Run.load(run_dir, domain)
    if not run.checkpoint_path.is_file():
        raise UserError(f"{run.dir} has no checkpoint yet (pretraining stopped before its first one) — run "
                        f"`sslkit {run.recipe_dict.get('domain')} pretrain` again with --overwrite --out {run.dir}")
    state = load_checkpoint(run.checkpoint_path)
    if not state.get("encoder_spec"):
        raise UserError(f"{run.checkpoint_path} does not say how to build its encoder — re-run pretrain with this sslkit")
    spec = json.loads(state["encoder_spec"])
    encoder = build_encoder(spec)
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{run.checkpoint_path}: encoder weights do not match its spec (missing {missing[:3]}) — "
                        "the checkpoint is from another sslkit version")
    extra = {"run": str(run.dir.resolve()), "step": state["step"]}
    if (run.dir / "encoder" / "config.json").is_file():
        extra = {**json.loads((run.dir / "encoder" / "config.json").read_text()).get("extra", {}), **extra}
    else:
        from sslkit.core.console import warn

        extra = {**(unfinished_extra(run, encoder) if unfinished_extra else {}), **extra}
        warn(f"{run.dir} is unfinished: exporting the encoder of its last checkpoint (step {state['step']} of "
             f"{run.recipe_dict.get('train', {}).get('steps')}) — for the trained one, complete the run with "
             f"`sslkit {run.recipe_dict.get('domain')} pretrain ... --resume --out {run.dir}` first")
    return export_encoder(encoder, spec, out_dir, extra={**extra, **(extra_update or {})}, overwrite=overwrite)
