from __future__ import annotations

import importlib

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, recipe_to_yaml, shipped_recipes, validate_recipe, read_yaml
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
    data = read_yaml(path)
    recipe = validate_recipe(module.RECIPE_SCHEMA, data, str(path))
    assert recipe.domain == domain
    assert recipe.train.steps > 0


def test_shipped_recipes_exist_for_toy():
    names = {n for d, n, _ in shipped_recipes("toy")}
    assert {"tiny", "vicreg"} <= names
