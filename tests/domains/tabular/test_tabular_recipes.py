"""Every shipped tabular recipe validates; the defaults match the method card (METHODS.md §6, SCARF paper)."""
from __future__ import annotations

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, shipped_recipes
from sslkit.domains.tabular.method import RECIPE_SCHEMA, TabularRecipe


@pytest.mark.parametrize("name", [n for _, n, _ in shipped_recipes("tabular")])
def test_shipped_recipe_loads(name):
    r = load_recipe(RECIPE_SCHEMA, "tabular", name)
    assert r.domain == "tabular" and r.train.steps > 0


def test_tjepa_defaults_follow_the_card():
    r = load_recipe(TabularRecipe, "tabular", "t-jepa")
    assert (r.model.dim, r.model.depth, r.model.heads, r.model.ffn) == (64, 16, 2, 64)
    assert (r.model.pred_dim, r.model.pred_depth, r.model.pred_heads) == (16, 16, 4)
    assert r.masks.context == (0.136, 0.368) and r.masks.target == (0.156, 0.622) and r.masks.n_targets == 4
    assert (r.ema.start, r.ema.end) == (0.996, 1.0)
    assert (r.train.lr, r.train.batch_size, r.train.weight_decay, r.train.clip_grad) == (3.66e-4, 512, 0.0, 1.0)


def test_scarf_defaults_follow_the_paper():
    r = load_recipe(TabularRecipe, "tabular", "scarf")
    assert r.method == "scarf" and r.scarf.corruption == 0.6 and r.scarf.temperature == 1.0
    assert (r.scarf.hidden, r.scarf.depth, r.scarf.head_depth) == (256, 4, 2)


def test_unknown_method_is_rejected():
    with pytest.raises(UserError, match="method"):
        load_recipe(TabularRecipe, "tabular", "tiny", ["method=mae"])
