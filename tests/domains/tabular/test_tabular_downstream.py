"""Downstream feature sets: HistGradientBoosting sees a few principal components of the embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from sslkit.domains.tabular.downstream import (HGB_EMBED_COMPONENTS, FeatureSet, choose_components, embedding_features,
                                               reduce_embedded, run_evaluation)


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
    xtr, xte, cats = reduce_embedded(fs, fs.trees[:300], fs.trees[300:], 4)
    assert xtr.shape == (300, 3 + 4) and xte.shape == (100, 3 + 4)
    assert np.array_equal(xtr[:, :3], fs.trees[:300, :3]) and not cats.any()
    assert abs(xtr[:, 3:].mean()) < 1e-4 and abs(xte[:, 3:].mean()) > 1e-4   # centred on the training rows only
    # raw alone and embeddings alone pass through unchanged
    for name in ("raw", "embeddings"):
        a, b, _ = reduce_embedded(sets[name], sets[name].trees[:300], sets[name].trees[300:], 4)
        assert a.shape[1] == sets[name].trees.shape[1]


def test_run_evaluation_hgb_on_raw_plus_embeddings():
    sets, y = _sets()
    res = run_evaluation(sets, y, "classification", [0], models=("hgb",))
    assert res["raw+embeddings / hgb"]["accuracy"][0] > 0.75     # label is a noisy threshold on raw column 0
    assert res["raw+embeddings / hgb"]["settings"][0]["pca_components"] in HGB_EMBED_COMPONENTS


def test_choose_components_keeps_enough_components_for_the_signal():
    """The label lives in the embedding direction with the 7th-largest variance: 2 or 4 components miss it."""
    rng = np.random.default_rng(0)
    n = 1500
    raw = rng.normal(size=(n, 2)).astype(np.float32)
    scales = np.array([8, 7, 6, 5, 4, 3, 2] + [0.1] * 13)
    z = (rng.normal(size=(n, 20)) * scales).astype(np.float32)
    y = (z[:, 6] > 0).astype(int)
    fs = FeatureSet.concat(FeatureSet(raw, raw, np.zeros(2, dtype=bool)), embedding_features(z))
    assert max(HGB_EMBED_COMPONENTS) >= 7
    assert choose_components("classification", fs, fs.trees, y, seed=0) >= 7


def test_torch_mlp_learns_a_nonlinear_rule_and_is_reproducible():
    """XOR of two signs: a linear model sits at chance, the MLP does not; same seed, same predictions."""
    from sslkit.domains.tabular.downstream import TorchMLP

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 4)).astype(np.float32) * 5 + 3       # unscaled on purpose: the MLP standardises
    y = ((x[:, 0] > 3) ^ (x[:, 1] > 3)).astype(int)
    a = TorchMLP("classification", hidden=(32, 32), epochs=30, seed=1).fit(x[:1000], y[:1000])
    proba = a.predict_proba(x[1000:])
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1.0)
    assert (a.predict(x[1000:]) == y[1000:]).mean() > 0.9
    assert -0.4 < a.best_validation_score_ < 0 and 1 <= a.n_iter_ <= 30   # minus the validation log-loss
    b = TorchMLP("classification", hidden=(32, 32), epochs=30, seed=1).fit(x[:1000], y[:1000])
    assert np.array_equal(a.predict_proba(x[1000:]), b.predict_proba(x[1000:]))


def test_torch_mlp_regression_beats_the_mean():
    from sslkit.domains.tabular.downstream import TorchMLP

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + x[:, 1] ** 2).astype(np.float32)
    y = (y - y.mean()) / y.std()
    m = TorchMLP("regression", hidden=(64, 64), epochs=40).fit(x[:800], y[:800])
    rmse = float(np.sqrt(np.mean((m.predict(x[800:]) - y[800:]) ** 2)))
    assert rmse < 0.5 * float(y[800:].std()) and m.best_validation_score_ > -0.5


def test_run_evaluation_mlp_records_the_chosen_setting():
    from sslkit.domains.tabular.downstream import MLP_GRID

    sets, y = _sets()
    res = run_evaluation({"raw": sets["raw"]}, y, "classification", [0], models=("mlp",))
    entry = res["raw / mlp"]
    assert entry["accuracy"][0] > 0.75
    chosen = entry["settings"][0]
    assert {k: chosen[k] for k in ("dropout", "weight_decay")} in MLP_GRID and chosen["epochs"] >= 1


def test_parallel_evaluation_does_not_restart_workers():
    """Worker processes that start with a tree model and import torch later looked like a memory leak to
    joblib, which restarted them with a warning printed to the user."""
    import warnings

    sets, y = _sets(n=600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_evaluation(sets, y, "classification", [0, 1], models=("hgb", "linear", "mlp"), jobs=2)
    assert len(res) == 9
    assert not [w for w in caught if "worker stopped" in str(w.message)]


def test_ple_features_code_each_numeric_over_the_given_bins_and_skip_trees():
    """raw-ple: a step function of a numeric column (what a piecewise-linear code makes linear) is learnt by a
    linear model on raw-ple, not on raw; HistGradientBoosting is not run on it (trees see raw already)."""
    from sslkit.domains.tabular.downstream import ple_features, raw_features
    from sslkit.domains.tabular.model import data_edges

    rng = np.random.default_rng(0)
    n = 1200
    num = rng.normal(size=(n, 2)).astype(np.float32)
    miss = np.zeros((n, 2), dtype=np.uint8)
    cat = rng.integers(0, 3, size=(n, 1))
    y = (np.abs(num[:, 0]) > 1).astype(int)                   # not monotone in the value: linear on raw cannot
    edges = np.stack([data_edges(num[:, j], 8) for j in range(2)])
    ple = ple_features(num, miss, cat, [3], [False, False], edges)
    assert ple.dense.shape == (n, 2 * 8 + 3) and ple.trees is None
    codes = ple.dense[:, :8]
    assert np.all((codes[:, 1:-1] >= 0) & (codes[:, 1:-1] <= 1))
    assert np.all(np.diff(codes[:, 1:-1], axis=1) <= 0)       # thermometer: full bins, then the partial one, then empty
    raw = raw_features(num, miss, cat, [3], [False, False])
    res = run_evaluation({"raw": raw, "raw-ple": ple}, y, "classification", [0], models=("linear", "hgb"))
    assert "raw-ple / hgb" not in res and "raw / hgb" in res
    assert res["raw-ple / linear"]["accuracy"][0] > 0.9 > res["raw / linear"]["accuracy"][0]


def test_label_fraction_trains_on_the_same_stratified_subset_for_every_feature_set():
    from sslkit.core.errors import UserError
    from sslkit.domains.tabular.downstream import check_label_fraction, label_subset

    sets, y = _sets(n=1000)
    full = run_evaluation(sets, y, "classification", [0, 1], models=("linear",))
    few = run_evaluation(sets, y, "classification", [0, 1], models=("linear",), label_fraction=0.05)
    assert {s["train_rows"] for s in full["raw / linear"]["settings"]} == {800}
    for name in sets:
        assert {s["train_rows"] for s in few[f"{name} / linear"]["settings"]} == {40}
    keep = label_subset(y[:800], 0.05, 0, "classification")
    assert len(keep) == 40 and abs(y[:800][keep].mean() - y[:800].mean()) < 0.05       # stratified
    assert not np.array_equal(keep, label_subset(y[:800], 0.05, 1, "classification"))  # a new draw per seed
    check_label_fraction(y, 0.05, "classification", fixed_test=False)                # ~19 rows of the rarer class
    with pytest.raises(UserError, match="--label-fraction 0.01 leaves about"):
        check_label_fraction(y, 0.01, "classification", fixed_test=False)


def _results(emb: float, mlp: float, hgb: float, metric: str = "accuracy", seeds: int = 2) -> dict:
    return {k: {metric: [v, 0.01], "per_seed": [{}] * seeds, "settings": [{"train_rows": 120}] * seeds}
            for k, v in (("embeddings / mlp", emb), ("raw / mlp", mlp), ("raw / hgb", hgb))}


def test_comparison_note_reads_the_table():
    from sslkit.domains.tabular.evaluation_report import comparison_note

    note = comparison_note(_results(0.86, 0.84, 0.87), "classification")
    assert note.startswith("the MLP on embeddings beats the MLP on raw features but not HistGradientBoosting")
    assert "common on tables" in note and "0.8600 vs raw MLP 0.8400 and raw HistGradientBoosting 0.8700" in note
    assert "beats both" in comparison_note(_results(0.88, 0.84, 0.87), "classification")
    assert "does not beat the MLP on raw" in comparison_note(_results(0.84, 0.84, 0.87), "classification")
    assert "beats both" in comparison_note(_results(0.5, 0.7, 0.6, "rmse"), "regression")   # lower RMSE is better
    assert comparison_note({"raw / linear": {"accuracy": [0.8, 0.0]}}, "classification") is None   # --models linear


def test_result_rows_show_no_spread_for_one_seed():
    from sslkit.domains.tabular.evaluation_report import labelled_rows, result_rows

    _, rows = result_rows(_results(0.86, 0.84, 0.87, seeds=1), "classification")
    assert rows[0] == ["embeddings", "mlp", "0.8600"]
    _, rows = result_rows(_results(0.86, 0.84, 0.87), "classification")
    assert rows[0] == ["embeddings", "mlp", "0.8600 ± 0.0100"]
    assert labelled_rows(_results(0.86, 0.84, 0.87)) == "120"
