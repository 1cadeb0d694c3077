from __future__ import annotations

import math

import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.core.evaluation import (
    cluster_accuracy,
    cluster_metrics,
    format_mean_std,
    kmeans_eval,
    knn_probe,
    linear_probe,
    mean_std,
    metrics_table_rows,
)


def _blobs(n_per_class: int = 40, classes: int = 3, dim: int = 8, spread: float = 10.0, seed: int = 0):
    """Gaussian blobs with unit noise around centres `spread` apart: trivially separable."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * spread
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x, y


# ---- clustering metrics -------------------------------------------------------------------


def test_perfect_clustering_with_permuted_labels_scores_one():
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = [2, 2, 0, 0, 1, 1]
    m = cluster_metrics(y_true, y_pred)
    for key in ("acc", "nmi", "ari", "f1"):
        assert m[key] == pytest.approx(1.0), key


def test_hand_made_six_sample_case():
    # Clusters are named "backwards": identity mapping gets 1/6, the Hungarian map 1->0, 0->1 gets 5/6.
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [1, 1, 0, 0, 0, 0]
    m = cluster_metrics(y_true, y_pred)
    assert m["acc"] == pytest.approx(5 / 6)
    # Mapped predictions [0,0,1,1,1,1]: class 0 P=1 R=2/3 -> F1=0.8; class 1 P=3/4 R=1 -> F1=6/7.
    assert m["f1"] == pytest.approx((0.8 + 6 / 7) / 2)
    # ARI by hand: contingency [[2,1],[0,3]]; sum C(nij,2)=4, rows 6, cols 7, C(6,2)=15
    # expected = 6*7/15 = 2.8, max = 6.5 -> (4-2.8)/(6.5-2.8)
    assert m["ari"] == pytest.approx(1.2 / 3.7)
    # NMI by hand (natural log, arithmetic mean of the entropies, as sklearn's default):
    # joint p(t,c) = (0,1): 2/6, (0,0): 1/6, (1,0): 3/6; p(t) = 1/2, 1/2; p(c=0) = 2/3, p(c=1) = 1/3
    # MI = 1/3 ln2 - 1/6 ln2 + 1/2 ln(3/2);  H(t) = ln2;  H(c) = ln3 - 2/3 ln2
    ln2, ln3 = math.log(2), math.log(3)
    mi = ln2 / 6 + 0.5 * math.log(1.5)
    assert m["nmi"] == pytest.approx(mi / ((ln2 + ln3 - 2 / 3 * ln2) / 2))
    assert m["nmi"] == pytest.approx(0.4787, abs=1e-4)


def test_more_clusters_than_classes_counts_extra_cluster_as_wrong():
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 1, 2, 2, 2]  # cluster 1 gets no class
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(5 / 6)
    # class 0: P=1, R=2/3 -> 0.8; class 1: perfect -> 1.0
    assert cluster_metrics(y_true, y_pred)["f1"] == pytest.approx(0.9)


def test_fewer_clusters_than_classes():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 0, 1, 1]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_cluster_metrics_rejects_mismatched_lengths():
    with pytest.raises(UserError, match="one prediction per sample"):
        cluster_metrics([0, 1, 1], [0, 1])


def test_kmeans_eval_on_separable_blobs_is_perfect_for_every_seed():
    x, y = _blobs()
    res = kmeans_eval(x, y, k=3, seeds=(0, 1, 2))
    assert set(res) == {"acc", "nmi", "ari", "f1"}
    for key, (mean, std) in res.items():
        assert mean == pytest.approx(1.0), key
        assert std == pytest.approx(0.0), key


def test_kmeans_eval_rejects_k_larger_than_samples():
    x, y = _blobs(n_per_class=2, classes=2)
    with pytest.raises(UserError, match="k=10"):
        kmeans_eval(x, y, k=10)


# ---- probes -------------------------------------------------------------------------------


def test_linear_probe_separable_binary():
    x, y = _blobs(n_per_class=60, classes=2)
    res = linear_probe(x, y, seeds=(0, 1, 2))
    assert set(res) == {"accuracy", "f1", "auc"}
    assert res["accuracy"][0] > 0.95
    assert res["f1"][0] > 0.95
    assert res["auc"][0] > 0.95


def test_linear_probe_separable_multiclass_auc_is_ovr():
    x, y = _blobs(n_per_class=40, classes=4)
    res = linear_probe(x, y, seeds=(0, 1))
    assert res["accuracy"][0] > 0.95
    assert res["auc"][0] > 0.95
    assert res["auc"][0] <= 1.0


def test_linear_probe_random_labels_is_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16))
    y = rng.integers(0, 2, size=500)
    res = linear_probe(x, y)  # 5 seeds x 100 test samples: chance 0.5, std of the mean ~0.02
    assert 0.38 < res["accuracy"][0] < 0.62
    assert 0.38 < res["auc"][0] < 0.62


def test_linear_probe_string_labels_and_no_standardize():
    x, y = _blobs(n_per_class=30, classes=2)
    names = np.array(["tumour", "normal"])[y]
    res = linear_probe(x, names, seeds=(0,), standardize=False)
    assert res["accuracy"] == (pytest.approx(1.0), 0.0)


def test_knn_probe_separable_and_random():
    x, y = _blobs(n_per_class=50, classes=3)
    assert knn_probe(x, y, k=5, seeds=(0, 1))["accuracy"][0] == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    xr = rng.normal(size=(500, 16))
    yr = rng.integers(0, 2, size=500)
    assert 0.38 < knn_probe(xr, yr, k=15)["accuracy"][0] < 0.62


def test_knn_probe_rejects_k_larger_than_training_split():
    x, y = _blobs(n_per_class=5, classes=2)
    with pytest.raises(UserError, match="lower k"):
        knn_probe(x, y, k=20)


# ---- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize("probe", [linear_probe, knn_probe, lambda x, y: kmeans_eval(x, y, k=2)])
def test_probes_reject_nan_embeddings_and_name_the_row(probe):
    x, y = _blobs(n_per_class=10, classes=2)
    x[7, 3] = np.nan
    with pytest.raises(UserError, match="row 7"):
        probe(x, y)


@pytest.mark.parametrize("probe", [linear_probe, knn_probe, lambda x, y: kmeans_eval(x, y, k=2)])
def test_probes_reject_single_class(probe):
    x, _ = _blobs(n_per_class=10, classes=2)
    with pytest.raises(UserError, match="at least 2"):
        probe(x, np.zeros(len(x), dtype=int))


def test_probes_reject_mismatched_lengths():
    x, y = _blobs(n_per_class=10, classes=2)
    with pytest.raises(UserError, match="20 rows but there are 19 labels"):
        linear_probe(x, y[:-1])


def test_probe_rejects_class_with_one_sample():
    x, y = _blobs(n_per_class=10, classes=2)
    y = y.copy()
    y[0] = 9
    with pytest.raises(UserError, match="only 1 sample"):
        linear_probe(x, y)


def test_validation_errors_are_one_line():
    x, y = _blobs(n_per_class=10, classes=2)
    x[0, 0] = np.inf
    with pytest.raises(UserError) as info:
        linear_probe(x, y)
    assert "\n" not in str(info.value)


# ---- aggregation and display --------------------------------------------------------------


def test_mean_std_is_population_std():
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert std == pytest.approx(math.sqrt(2 / 3))  # ddof=0; ddof=1 would be 1.0
    assert mean_std([0.7]) == (0.7, 0.0)


def test_format_mean_std():
    assert format_mean_std((0.8123, 0.0041)) == "0.812 ± 0.004"
    assert format_mean_std((0.5, 0.25), digits=1) == "0.5 ± 0.2"


def test_metrics_table_rows_unions_columns():
    cols, rows = metrics_table_rows({
        "kmeans": {"acc": (0.9, 0.01), "nmi": (0.8, 0.02)},
        "linear": {"accuracy": (0.95, 0.005)},
    })
    assert cols == ["name", "acc", "nmi", "accuracy"]
    assert rows == [
        ["kmeans", "0.900 ± 0.010", "0.800 ± 0.020", "-"],
        ["linear", "-", "-", "0.950 ± 0.005"],
    ]


def test_logistic_probe_fixed_or_chosen_c_and_class_weights():
    from sklearn.pipeline import Pipeline

    from sslkit.core.evaluation import PROBE_C_GRID, inner_folds, logistic_probe

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(90, int), np.ones(10, int)]                     # imbalanced
    x = rng.normal(size=(100, 20)) + 0.8 * y[:, None]
    model, c = logistic_probe(x, y, c=0.5)
    assert isinstance(model, Pipeline) and c == 0.5 and model[-1].C == 0.5
    bare, _ = logistic_probe(x, y, standardize=False)
    assert not isinstance(bare, Pipeline)
    plain, _ = logistic_probe(x, y)
    balanced, _ = logistic_probe(x, y, class_weight="balanced")
    assert balanced.predict(x).sum() > plain.predict(x).sum()          # balanced weights call the rare class more
    groups = np.repeat(np.arange(5), 20)
    _, chosen = logistic_probe(x, y, c=None, groups=groups)
    assert chosen in PROBE_C_GRID
    for tr, va in inner_folds(y, groups):                              # whole groups per inner fold
        assert not set(groups[tr]) & set(groups[va])
    assert inner_folds(y, np.zeros(100)) is None                       # one group: nothing to choose C on
