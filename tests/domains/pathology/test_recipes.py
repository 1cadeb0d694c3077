"""Every shipped pathology recipe loads; the realistic ones carry the card's values; bad keys name the valid ones."""
from __future__ import annotations

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, shipped_recipes
from sslkit.domains.pathology.method import RECIPE_SCHEMA

NAMES = [name for _, name, _ in shipped_recipes("pathology")]


def test_the_issue_recipes_are_shipped() -> None:
    assert {"dino", "dino-tiny", "simclr", "tiny"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads(name: str) -> None:
    r = load_recipe(RECIPE_SCHEMA, "pathology", name)
    assert r.domain == "pathology" and r.method in ("dino", "simclr")
    assert r.aug.global_px >= 8 and r.data.tile_px >= 8


def test_card_values_in_the_dino_recipe() -> None:
    r = load_recipe(RECIPE_SCHEMA, "pathology", "dino")
    assert r.model.arch == "vit_small_patch16_224" and r.data.tile_px == 224      # ViT-S/16 on 224-px tiles
    assert r.aug.stain == "hed" and r.aug.hed_sigma == 0.05                       # HED jitter ≈ ±0.05
    assert r.aug.rot90 and r.aug.flip                                             # rot90 + flips
    assert (r.loss.ema_start, r.loss.ema_end) == (0.996, 1.0) and r.loss.out_dim == 65536
    tiny = load_recipe(RECIPE_SCHEMA, "pathology", "tiny")                        # card CPU-lite sizes
    assert (tiny.model.embed_dim, tiny.model.depth, tiny.model.patch_size, tiny.data.tile_px) == (64, 4, 8, 32)
    assert tiny.loss.out_dim == 256


def test_wrong_keys_and_bad_values_are_user_errors() -> None:
    with pytest.raises(UserError, match="valid keys under 'aug'"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", ["aug.solarize=0.2"])
    with pytest.raises(UserError, match="aug.stain"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", ["aug.stain=purple"])
    with pytest.raises(UserError, match="data.mpp"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", ["data.mpp=[0.5,-1]"])
    with pytest.raises(UserError, match="method"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", ["method=mae"])
