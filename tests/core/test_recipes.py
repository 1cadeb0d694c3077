from __future__ import annotations

import importlib

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, read_recipe, recipe_to_yaml, shipped_recipes, validate_recipe
from sslkit.domains.toy.method import ToyRecipe


def test_overrides_are_typed_and_applied():
    r = load_recipe(ToyRecipe, "toy", "tiny", ["train.lr=3e-4", "model.out_dim=16", "train.precision=fp32"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.model.out_dim == 16
    assert r.train.precision == "fp32"


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "valid keys under 'train'"),
    ("modle.out_dim=3", "valid keys: data"),
    ("train.steps=many", "train.steps"),
    ("train.precision=fp8", "train.precision"),
    ("no_equals_sign", "key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(UserError) as err:
        load_recipe(ToyRecipe, "toy", "tiny", [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("domain: toy\nmethod: vicreg\ntrain:\n  stepz: 3\n")
    with pytest.raises(UserError, match="unknown recipe key 'train.stepz'.*steps"):
        load_recipe(ToyRecipe, "toy", str(path))


def test_unknown_recipe_name_lists_choices():
    with pytest.raises(UserError, match="choose one of: .*tiny"):
        load_recipe(ToyRecipe, "toy", "nope")


def test_yaml_round_trip_is_identical():
    r = load_recipe(ToyRecipe, "toy", "tiny", ["train.steps=7"])
    import yaml

    again = ToyRecipe.model_validate(yaml.safe_load(recipe_to_yaml(r)))
    assert again == r


@pytest.mark.parametrize("domain, name, path", shipped_recipes(), ids=lambda v: str(v))
def test_every_shipped_recipe_validates(domain, name, path):
    """Each YAML in recipes/<domain>/ loads with its domain's schema (no unknown keys, right types)."""
    module = None
    for mod_name in (f"sslkit.domains.{domain}.method", f"sslkit.domains.{domain}.recipe"):
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "RECIPE_SCHEMA"):
            break
    assert module is not None and hasattr(module, "RECIPE_SCHEMA"), f"{domain} exposes no RECIPE_SCHEMA"
    data = read_recipe(domain, path)   # with the recipe it extends, if any
    recipe = validate_recipe(module.RECIPE_SCHEMA, data, str(path))
    assert recipe.domain == domain
    assert recipe.train.steps > 0


def test_shipped_recipes_exist_for_toy():
    names = {n for d, n, _ in shipped_recipes("toy")}
    assert {"tiny", "vicreg"} <= names


def test_extends_merges_sections_key_by_key_and_replaces_the_rest(tmp_path):
    base = load_recipe(ToyRecipe, "toy", "tiny")
    (tmp_path / "child.yaml").write_text("extends: tiny\ntrain:\n  lr: 0.5\n")
    child = load_recipe(ToyRecipe, "toy", str(tmp_path / "child.yaml"), ["train.steps=3"])
    assert child.train.lr == 0.5 and child.train.steps == 3          # its own key, then --set
    assert child.model == base.model and child.train.batch_size == base.train.batch_size   # the rest: tiny's
    # a chain through a local file, relative to the child's folder
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\ntrain:\n  batch_size: 5\n")
    g = load_recipe(ToyRecipe, "toy", str(tmp_path / "grandchild.yaml"))
    assert (g.train.lr, g.train.batch_size, g.model) == (0.5, 5, base.model)


@pytest.mark.parametrize("text, needle", [
    ("extends: a.yaml\n", "'extends' loops (a.yaml -> a.yaml)"),
    ("extends: nope\n", "unknown toy recipe 'nope'"),
    ("extends: [tiny, vicreg]\n", "'extends' must name one recipe"),
])
def test_bad_extends_is_one_line_naming_the_fix(tmp_path, text, needle):
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        load_recipe(ToyRecipe, "toy", str(tmp_path / "a.yaml"))
    assert needle in str(err.value) and "\n" not in str(err.value)
