"""`model.num_bins` is one name: the recipe key, the exported encoder's kwarg and the tokenizer's attribute; an
encoder exported under the old kwarg name `n_bins` still loads."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import sslkit
from sslkit.core.export import export_encoder
from sslkit.domains.tabular.method import TJepa, TJepaEMA, TJepaMasks, TJepaModel

CARDS = [5, 3, 4]


def _encoder() -> TJepa:
    torch.manual_seed(0)
    model = TJepaModel(dim=16, depth=1, heads=2, ffn=16, pred_dim=8, pred_depth=1, num_bins=8)
    return TJepa(4, CARDS, model, TJepaMasks(), TJepaEMA())


def test_export_names_num_bins_as_the_recipe_does_and_old_n_bins_exports_load(tmp_path: Path) -> None:
    m = _encoder()
    spec = m.encoder_spec()
    assert spec["kwargs"]["num_bins"] == 8 and "n_bins" not in spec["kwargs"]
    export_encoder(m.encoder, spec, tmp_path / "new")
    # an encoder exported before the rename: the same weights, the kwarg spelled n_bins
    export_encoder(m.encoder, spec, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["kwargs"]["n_bins"] = config["kwargs"].pop("num_bins")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    new, old = sslkit.load_encoder(tmp_path / "new"), sslkit.load_encoder(tmp_path / "old")
    assert new.tokenizer.num_bins == old.tokenizer.num_bins == 8
    num, miss = torch.randn(6, 4), torch.zeros(6, 4, dtype=torch.uint8)
    cat = torch.stack([torch.randint(0, c, (6,)) for c in CARDS], 1)
    torch.testing.assert_close(new(num, miss, cat), old(num, miss, cat))
