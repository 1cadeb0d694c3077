"""Every shipped graph recipe loads with the schema; wrong keys name the valid ones."""
from __future__ import annotations

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, shipped_recipes
from sslkit.domains.graph.method import RECIPE_SCHEMA

NAMES = [name for _, name, _ in shipped_recipes("graph")]


def test_the_issue_recipes_are_shipped() -> None:
    assert {"tiny", "scgc-star", "scgc", "grace"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads(name: str) -> None:
    r = load_recipe(RECIPE_SCHEMA, "graph", name)
    assert r.domain == "graph" and r.method in ("scgc-star", "scgc", "grace")


def test_wrong_key_and_bad_values_are_user_errors() -> None:
    with pytest.raises(UserError, match="loss.rr"):
        load_recipe(RECIPE_SCHEMA, "graph", "tiny", ["loss.rr=2"])
    with pytest.raises(UserError):
        load_recipe(RECIPE_SCHEMA, "graph", "tiny", ["loss.tau=-1"])
