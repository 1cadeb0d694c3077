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


def _sections():  # noqa: ANN202
    from sslkit.domains.graph.method import GraphData, GraphEmbedding, GraphLoss, GraphModel

    return [(f"{name}.{key}", section) for name, section in (("data", GraphData), ("model", GraphModel),
            ("loss", GraphLoss), ("embedding", GraphEmbedding)) for key in section.model_fields]


@pytest.mark.parametrize("key,section", _sections())
def test_every_graph_setting_refuses_a_negative_value(key: str, section) -> None:  # noqa: ANN001
    """A new numeric field without a range fails here: -1 is wrong for every graph setting."""
    from pydantic import ValidationError

    field = key.split(".")[1]
    bad = [-1] if field == "hidden" else (-1.0, -1.0) if field.startswith("drop_") else -1
    with pytest.raises(ValidationError):
        section.model_validate({field: bad})


@pytest.mark.parametrize("override", [
    "model.out_dim=0", "model.proj_dim=0", "model.hidden=[32,0]", "data.structural_dim=-1", "data.fanout=-1",
    "loss.cluster_warmup=-5", "loss.beta=-0.1", "loss.noise=-0.1", "loss.kernel_scale=0", "loss.temperature=0",
    "loss.drop_edge=[0.2,1.5]", "loss.drop_feature=[-0.1,0.4]", "loss.centroid_lr_mult=-1", "clusters=1",
])
def test_out_of_range_values_are_refused_with_the_key_named(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"recipe key '{key}' has a bad value"):
        load_recipe(RECIPE_SCHEMA, "graph", "tiny", [override])


def test_structural_dim_zero_is_refused_only_where_diffusion_features_stand_in(samples) -> None:  # noqa: ANN001
    """No features: one-hot node features up to data.identity_max_nodes nodes (structural_dim unread), the
    structural_dim-wide diffusion features above; given features read neither."""
    import numpy as np

    from sslkit.domains.graph.batches import prepare_inputs
    from sslkit.domains.graph.io import load_graph

    cfg = load_recipe(RECIPE_SCHEMA, "graph", "tiny", ["data.structural_dim=0"])
    assert prepare_inputs(load_graph(samples / "sbm")[0], cfg, quiet=True).x.shape[1] == 8  # features given: unused
    karate = load_graph(samples / "karate")[0]
    one_hot = prepare_inputs(karate, cfg, quiet=True)                                       # 34 nodes <= 5,000
    assert one_hot.x.shape == (34, 34) and one_hot.summary()["structural_features"] == "one-hot"
    # after the filter each row is the node's 2-step diffusion profile Â²e_i, unit length
    from sslkit.domains.graph.transforms import adjacency

    a = adjacency(karate.edge_index, karate.edge_weight, 34, "sym").toarray()
    profile = (a @ a)[5] / np.linalg.norm((a @ a)[5])
    np.testing.assert_allclose(one_hot.x[5], profile, atol=1e-6)
    cfg.data.identity_max_nodes = 33
    with pytest.raises(UserError, match="structural_dim=0 but the graph has no node features"):
        prepare_inputs(karate, cfg, quiet=True)
    cfg.data.structural_dim = 16
    assert prepare_inputs(karate, cfg, quiet=True).summary()["structural_features"] == "diffusion"
