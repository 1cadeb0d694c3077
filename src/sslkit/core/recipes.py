"""Typed recipes: YAML -> pydantic models, `--set a.b=value` overrides, clear errors.

A recipe is a YAML file that maps 1:1 onto a domain's `Recipe` subclass. Shipped
recipes live in `recipes/<domain>/<name>.yaml` (package data). Unknown keys are
rejected with the valid ones listed; overrides are type-checked by the same model.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sslkit.core.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TrainConfig(Section):
    """Settings of `core.loop.fit` shared by every domain."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, ge=0.0)          # 0 is allowed: a control run that keeps its initial weights
    lr_scale_batch: int | None = Field(None, ge=1)
    min_lr: float = Field(0.0, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: Literal["adamw", "adam", "sgd", "lars"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "infinite", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    cooldown_frac: float = Field(0.15, ge=0.0, le=1.0)
    constant_lr_frac: float = Field(0.5, ge=0.0, le=1.0)
    anneal_frac: float = Field(0.2, ge=0.0, le=1.0)
    clip_grad: float | None = Field(1.0, gt=0.0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    tensorboard: bool = False
    compile: bool = False
    sync_batchnorm: bool = False


class Recipe(Section):
    """Base of each domain's recipe; domains add their own sections."""

    domain: str
    method: str
    description: str = ""
    train: TrainConfig = Field(default_factory=TrainConfig)


R = TypeVar("R", bound=Recipe)


def shipped_recipes(domain: str | None = None) -> list[tuple[str, str, Path]]:
    """(domain, name, path) of every shipped recipe, sorted."""
    found = []
    for path in sorted(RECIPES_DIR.glob("*/*.yaml")):
        if domain is None or path.parent.name == domain:
            found.append((path.parent.name, path.stem, path))
    return found


def find_recipe(domain: str, name_or_path: str) -> Path:
    """Resolve a shipped recipe name or a YAML path; UserError lists the choices."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise UserError(f"recipe file {candidate} does not exist — give a shipped name or an existing YAML file")
        return candidate
    path = RECIPES_DIR / domain / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(n for _, n, _ in shipped_recipes(domain)) or "none"
        raise UserError(f"unknown {domain} recipe '{name_or_path}' — choose one of: {names} (or pass a YAML path)")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML ({str(exc).splitlines()[0]}) — fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of sections — see `sslkit recipes show`")
    return data


def merge_recipe(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: sections merge key by key (recursively), every other value (lists included) replaces."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge_recipe(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(domain: str, path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's mapping with its `extends: NAME` chain resolved: the named recipe (a shipped name of the same
    domain, or a YAML path, relative to this file's folder first), then this file's keys over it."""
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"recipe {path}: 'extends' must name one recipe (a shipped name or a YAML path), not {base!r}")
    local = path.parent / base
    base_path = local if local.suffix in (".yaml", ".yml") and local.is_file() else find_recipe(domain, base)
    names = [p.resolve() for p in (*chain, path)]
    if base_path.resolve() in names:
        loop = " -> ".join(p.name for p in (*chain, path, base_path))
        raise UserError(f"recipe {path}: 'extends' loops ({loop}) — make one of them stand alone")
    return merge_recipe(read_recipe(domain, base_path, (*chain, path)), data)


def _valid_keys(schema: type[BaseModel], dotted: list[str]) -> tuple[str, list[str]]:
    """Walk the schema along `dotted` as far as it goes; return (prefix, valid keys there)."""
    model: Any = schema
    prefix: list[str] = []
    for part in dotted:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            break
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model, prefix = ann, prefix + [part]
        else:
            break
    fields = getattr(model, "model_fields", {})
    return ".".join(prefix), sorted(fields)


def apply_override(data: dict[str, Any], override: str, schema: type[BaseModel]) -> None:
    """Apply one `a.b=value` override in place (value parsed as a YAML scalar/list)."""
    if "=" not in override:
        raise UserError(f"--set '{override}' must look like key=value, e.g. --set train.lr=3e-4")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    prefix, valid = _valid_keys(schema, parts[:-1])
    depth = len(prefix.split(".")) if prefix else 0
    if depth != len(parts) - 1 or parts[-1] not in valid:
        where = f" under '{prefix}'" if prefix else ""
        raise UserError(f"--set {key}: unknown recipe key — valid keys{where}: {', '.join(valid)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def _explain(exc: ValidationError, schema: type[BaseModel], source: str) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        prefix, valid = _valid_keys(schema, loc[:-1])
        where = f" under '{prefix}'" if prefix else ""
        return f"{source}: unknown recipe key '{key}' — valid keys{where}: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"{source}: recipe key '{key}' is required — add it to the recipe"
    return f"{source}: recipe key '{key}' has a bad value {err.get('input')!r} ({err['msg']}) — fix it with --set {key}=..."


def validate_recipe(schema: type[R], data: dict[str, Any], source: str) -> R:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise UserError(_explain(exc, schema, source)) from None


def load_recipe(schema: type[R], domain: str, name_or_path: str, overrides: list[str] | tuple = ()) -> R:
    """Read a shipped or user recipe (with the recipe it `extends`, if any), apply `--set` overrides, validate."""
    path = find_recipe(domain, name_or_path)
    data = read_recipe(domain, path)
    data.setdefault("domain", domain)
    if data["domain"] != domain:
        raise UserError(f"recipe {path} is for domain '{data['domain']}', not '{domain}' — use a {domain} recipe")
    for override in overrides:
        apply_override(data, override, schema)
    return validate_recipe(schema, data, f"recipe {path.name}")


def recipe_to_dict(recipe: BaseModel) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def recipe_to_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def resolve_recipe(schema: type[R], domain: str, name_or_path: str, overrides: list[str] | tuple,
                   out: Path | None, resume: bool) -> R:
    """The recipe for `pretrain`: with --resume, the run's own saved recipe.yaml (plus any --set),
    so a default --recipe on the command line cannot silently change a resumed run."""
    if not resume or out is None or not (Path(out) / "recipe.yaml").is_file():
        return load_recipe(schema, domain, name_or_path, overrides)
    if any(a in ("--recipe", "-r") or a.startswith("--recipe=") for a in sys.argv[1:]):
        from sslkit.core.console import warn

        warn(f"--recipe is not read with --resume: {out} continues with its own recipe.yaml (change a setting with "
             "--set key=value)")
    return load_recipe(schema, domain, str(Path(out) / "recipe.yaml"), overrides)
