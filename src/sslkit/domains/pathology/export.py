"""`sslkit pathology export RUN --out DIR [--format sslkit|timm]`.

sslkit: `encoder.safetensors` + `config.json`, loadable with `sslkit.load_encoder(DIR)` (core.export).
timm: the layout public pathology encoders (UNI, Virchow, ...) use on the Hugging Face hub — `model.safetensors`
holding the timm model's own state dict and a `config.json` with `architecture`, `num_classes: 0`, `model_args`
and `pretrained_cfg` (mean, std, input size, interpolation), so that

    cfg = json.load(open("DIR/config.json"))
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"])
    model.load_state_dict(safetensors.torch.load_file("DIR/model.safetensors"))

gives the same features as `sslkit.load_encoder` (CLS token; for `model.pool: cls+mean` the config says how the
mean patch token is appended).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from sslkit.core.cli_options import OverwriteOpt, RunArg

FormatOpt = Annotated[str, typer.Option("--format", help="sslkit (sslkit.load_encoder) or timm (timm.create_model + "
                                                         "model.safetensors, as hub pathology encoders ship).")]


def _unfinished_extra(run: Any, encoder: Any) -> dict[str, Any]:  # noqa: ARG001
    """tile size/magnification for a run stopped before pretrain exported its encoder."""
    from sslkit.domains.pathology.method import PathologyRecipe, tile_meta

    return tile_meta(PathologyRecipe.model_validate(run.recipe_dict))


def export_run(run: Path, out: Path, overwrite: bool = False) -> Path:
    """The run's encoder in sslkit format from its last checkpoint (an interrupted run too), with the weights
    embed/evaluate/mil read (method.EVAL_WEIGHTS: a DINO run's EMA teacher, `teacher.encoder.*`)."""
    from sslkit.core.export import export_from_run
    from sslkit.core.runs import Run
    from sslkit.domains.pathology.method import EVAL_WEIGHTS

    which, prefix = EVAL_WEIGHTS.get(Run.load(run, "pathology").recipe_dict.get("method"), ("student", "encoder."))
    return export_from_run(run, out, overwrite=overwrite, domain="pathology", unfinished_extra=_unfinished_extra,
                           prefix=prefix, extra_update={"weights": which})


def timm_config(encoder: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """config.json of a timm export (the hub's layout: architecture, num_classes, model_args, pretrained_cfg)."""
    size = int(extra.get("input_px") or extra.get("tile_px") or encoder.img_size)
    mean, std = ([round(v, 6) for v in t.flatten().tolist()] for t in (encoder.mean, encoder.std))
    return {
        "architecture": encoder.arch,
        "num_classes": 0,
        "num_features": encoder.width,
        "global_pool": "token",
        "model_args": dict(encoder.model_args),
        "pretrained_cfg": {"tag": "sslkit", "custom_load": False, "input_size": [3, size, size],
                           "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                           "mean": mean, "std": std, "num_classes": 0, "pool_size": None,
                           "first_conv": "patch_embed.proj", "classifier": "head"},
        "sslkit": {"pool": encoder.pool, "pool_note": ("features = concat(CLS, mean of patch tokens) of "
                                                       "model.forward_features(x)" if encoder.pool == "cls+mean"
                                                       else "features = model(x), the CLS token"),
                   "tile_px": extra.get("tile_px"), "mpp": extra.get("mpp"), "tile_um": extra.get("tile_um"),
                   "method": extra.get("method"), "weights": extra.get("weights"), "run": extra.get("run"),
                   "step": extra.get("step")},
    }


def export_timm(sslkit_dir: Path, out: Path, overwrite: bool) -> Path:
    """Write the timm layout into `out` (complete or not at all) from an sslkit export folder."""
    from safetensors.torch import save_file

    from sslkit.core.export import load_encoder
    from sslkit.core.files import check_dir_out, staged_dir

    encoder = load_encoder(sslkit_dir)
    extra = encoder.sslkit_config.get("extra", {})
    check_dir_out(out, overwrite)
    with staged_dir(out) as tmp:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.timm_state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(timm_config(encoder, extra), indent=2))
    return out


def command(run: RunArg, out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
            format: FormatOpt = "sslkit", overwrite: OverwriteOpt = False) -> None:  # noqa: A002
    """Write the tile encoder (for DINO its EMA teacher, what embed/evaluate/mil read): sslkit format
    (sslkit.load_encoder(DIR)) or timm format (model.safetensors + config.json for timm.create_model, as public
    pathology encoders are shared)."""
    import tempfile

    from sslkit.core.errors import UserError
    from sslkit.core.files import check_dir_out

    fmt: Literal["sslkit", "timm"] | str = format.lower()
    if fmt not in ("sslkit", "timm"):
        raise UserError(f"--format {format!r} is not known — use sslkit or timm")
    check_dir_out(Path(out), overwrite)
    if fmt == "sslkit":
        typer.echo(str(export_run(run, out, overwrite=overwrite)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        staged = export_run(run, Path(tmp) / "sslkit", overwrite=True)
        typer.echo(str(export_timm(staged, Path(out), overwrite)))
