"""Downstream feature sets: HistGradientBoosting sees a few principal components of the embeddings."""
from __future__ import annotations

import numpy as np

from sslkit.domains.tabular.downstream import (HGB_EMBED_COMPONENTS, FeatureSet, embedding_features, reduce_embedded,
                                               run_evaluation)


def _sets(n: int = 400, seed: int = 0) -> tuple[dict[str, FeatureSet], np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 3)).astype(np.float32)
    y = (raw[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    z = np.hstack([raw[:, :1] @ rng.normal(size=(1, 40)), rng.normal(size=(n, 40))]).astype(np.float32)
    r = FeatureSet(raw, raw, np.zeros(3, dtype=bool))
    e = embedding_features(z)
    return {"raw": r, "embeddings": e, "raw+embeddings": FeatureSet.concat(r, e)}, y


def test_reduce_embedded_keeps_raw_and_fits_pca_on_train_only():
    sets, _ = _sets()
    fs = sets["raw+embeddings"]
    assert fs.embedded_mask().tolist() == [False] * 3 + [True] * 80
    xtr, xte, cats = reduce_embedded(fs, fs.trees[:300], fs.trees[300:])
    assert xtr.shape == (300, 3 + HGB_EMBED_COMPONENTS) and xte.shape == (100, 3 + HGB_EMBED_COMPONENTS)
    assert np.array_equal(xtr[:, :3], fs.trees[:300, :3]) and not cats.any()
    assert abs(xtr[:, 3:].mean()) < 1e-4 and abs(xte[:, 3:].mean()) > 1e-4   # centred on the training rows only
    # raw alone and embeddings alone pass through unchanged
    for name in ("raw", "embeddings"):
        a, b, _ = reduce_embedded(sets[name], sets[name].trees[:300], sets[name].trees[300:])
        assert a.shape[1] == sets[name].trees.shape[1]


def test_run_evaluation_hgb_on_raw_plus_embeddings():
    sets, y = _sets()
    res = run_evaluation(sets, y, "classification", [0], models=("hgb",))
    assert res["raw+embeddings / hgb"]["accuracy"][0] > 0.75     # label is a noisy threshold on raw column 0
