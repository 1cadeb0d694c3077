"""Every shipped audio recipe validates and builds; the paper-shaped ones hold the method cards' values."""
from __future__ import annotations

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, shipped_recipes
from sslkit.domains.audio.method import RECIPE_SCHEMA, build_method

NAMES = [name for _, name, _ in shipped_recipes("audio")]


def test_the_expected_recipes_ship():
    assert {"tiny", "ssamba", "ssast", "tera", "ssamba-fsdd", "ssast-fsdd", "tera-fsdd", "tera-inv-fsdd"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_and_builds(name):
    r = load_recipe(RECIPE_SCHEMA, "audio", name)
    assert r.domain == "audio" and r.train.steps > 0
    method = build_method(r, -4.268, 4.569)
    assert method.encoder_spec()["kind"] == {"tera-inv": "tera"}.get(r.method, r.method)   # tera-inv: TERA's encoder


def test_tera_inv_fsdd_is_tera_fsdd_plus_the_invariance():
    """The comparison with TERA is fair: same data, encoder, pooling, alterations and optimiser; only the method,
    its `inv` section and the step count (set by the benchmark's time budget) differ."""
    a = load_recipe(RECIPE_SCHEMA, "audio", "tera-fsdd").model_dump()
    b = load_recipe(RECIPE_SCHEMA, "audio", "tera-inv-fsdd").model_dump()
    assert (a["method"], b["method"]) == ("tera", "tera-inv")
    for key in ("data", "model", "mask"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["train"].items() if k != "steps"} == {k: v for k, v in b["train"].items() if k != "steps"}


def params(name: str) -> float:
    return sum(p.numel() for p in build_method(load_recipe(RECIPE_SCHEMA, "audio", name), 0.0, 1.0).encoder.parameters())


def test_ssamba_is_the_card_tiny_model():
    r = load_recipe(RECIPE_SCHEMA, "audio", "ssamba")
    assert (r.model.dim, r.model.depth, r.model.cls_tokens, r.model.patch_freq, r.model.patch_time) == (192, 24, 1, 16, 16)
    assert (r.data.n_mels, r.data.clip_frames, r.data.mean, r.data.std) == (128, 1024, -4.268, 4.569)
    assert (r.mask.count, r.mask.cluster, r.mask.cluster_sizes) == (400, True, [3, 4, 5])
    assert (r.data.n_mels // 16) * (r.data.clip_frames // 16) == 512
    assert (r.loss.nce_weight, r.loss.mse_weight) == (1.0, 10.0)
    t = r.train
    assert (t.lr, t.weight_decay, tuple(t.betas), t.warmup_steps, t.batch_size, t.steps) == \
        (1e-4, 5e-8, (0.95, 0.999), 1000, 64, 40000)
    assert abs(params("ssamba") / 6.8e6 - 1) < 0.05            # card: ≈6.8M parameters


def test_ssast_is_deit_tiny_and_tera_is_base():
    s = load_recipe(RECIPE_SCHEMA, "audio", "ssast")
    assert (s.model.dim, s.model.depth, s.model.heads, s.model.cls_tokens, s.mask.count) == (192, 12, 3, 2, 400)
    t = load_recipe(RECIPE_SCHEMA, "audio", "tera")
    assert (t.data.n_mels, t.data.level_norm_db, t.model.dim, t.model.depth, t.model.heads) == (80, -25.0, 768, 3, 12)
    assert (t.model.mlp_ratio * t.model.dim, t.model.dropout, t.train.lr, t.train.clip_grad) == (3072, 0.3, 2e-4, 5.0)
    m = t.mask
    assert (m.time_frac, m.time_span, m.time_zero, m.time_random, m.freq_frac, m.noise_p, m.noise_std) == \
        (0.15, 7, 0.8, 0.1, 0.2, 0.15, 0.2)
    assert abs(params("tera") / 21.3e6 - 1) < 0.02             # TERA base: 21.3M parameters


@pytest.mark.parametrize("override, needle", [
    ("data.n_mels=100", "n_mels"),
    ("mask.count=32", "mask.count"),
    ("model.patch_time=7", "clip_frames"),
    ("mask.time_zero=0.95", "time_zero"),
])
def test_inconsistent_settings_are_one_line_errors(override, needle):
    with pytest.raises(UserError) as err:
        load_recipe(RECIPE_SCHEMA, "audio", "tiny", [override])
    assert needle in str(err.value) and "\n" not in str(err.value)
