"""ABMIL on a synthetic bag task with a known answer: a few witness tiles decide a bag's label, bags are grouped and
scored out of fold. AUC 0.483 on GlaS with every feature set would have needed this to tell a bug (labels, bag
grouping, folds, AUC orientation) from weak features."""
from __future__ import annotations

import numpy as np

from sslkit.domains.pathology.mil import _drop_instances, bag_folds, cross_validate, predict_abmil, scores, train_abmil


def _bags(seed: int = 0, n: int = 48, dim: int = 16) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """n bags of 8-24 N(0, 1) tiles; positive bags hold 1-2 witnesses shifted by 4 along one direction (so a bag's
    mean moves by <= 1/4 of that: attention must find them). 4 groups, both labels in each."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    y = np.tile([0, 1], n // 2)
    groups = np.repeat(np.arange(4), n // 4)
    bags = []
    for label in y:
        b = rng.normal(size=(int(rng.integers(8, 25)), dim))
        if label:
            b[: int(rng.integers(1, 3))] += 4.0 * direction
        bags.append(b[rng.permutation(len(b))])
    return bags, y, groups


def test_abmil_finds_a_few_witness_tiles_out_of_fold_in_either_label_order() -> None:
    bags, y, groups = _bags()
    cv = cross_validate(bags, y, groups, seeds=1, n_classes=2, epochs=40)
    assert cv["abmil"]["auc"][0] >= 0.9, cv
    assert cv["abmil"]["accuracy"][0] >= 0.8, cv
    # the same bags with the class names swapped: still a high AUC (a score read for the wrong class gives 1 - AUC)
    flipped = cross_validate(bags, 1 - y, groups, seeds=1, n_classes=2, epochs=40)
    assert flipped["abmil"]["auc"][0] >= 0.9, flipped
    # shuffled labels carry no signal: chance, not a leak through groups or bag order
    rng = np.random.default_rng(1)
    noise = cross_validate(bags, rng.permutation(y), groups, seeds=1, n_classes=2, epochs=40)
    assert noise["abmil"]["auc"][0] < 0.75, noise


def test_grouped_folds_never_split_a_group_and_scores_use_the_positive_class() -> None:
    _, y, groups = _bags(n=16)
    for train, test in bag_folds(y, groups, seed=0):
        assert not set(groups[train]) & set(groups[test])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    assert scores(np.array([0, 0, 1, 1]), proba)["auc"] == 1.0
    assert scores(np.array([1, 1, 0, 0]), proba)["auc"] == 0.0


def test_instance_dropout_keeps_about_half_and_never_empties_a_bag() -> None:
    rng = np.random.default_rng(0)
    bag = np.arange(200, dtype=np.float32).reshape(100, 2)
    kept = [_drop_instances(bag, 0.5, rng) for _ in range(50)]
    assert 40 <= np.mean([len(k) for k in kept]) <= 60
    assert all(set(map(tuple, k)) <= set(map(tuple, bag)) for k in kept)            # rows of the bag, unchanged
    assert all(len(_drop_instances(bag[:1], 0.99, rng)) == 1 for _ in range(20))     # one tile stays


def test_uniform_start_is_mean_pooling_until_trained() -> None:
    bags, y, _ = _bags(n=8)
    untrained = train_abmil(bags, y, 2, seed=0, epochs=0, uniform_start=True)
    for b, a in zip(bags, predict_abmil(untrained, bags)[1]):
        np.testing.assert_allclose(a, np.full(len(b), 1 / len(b)), rtol=1e-6)
    default = train_abmil(bags, y, 2, seed=0, epochs=0)
    assert not np.allclose(predict_abmil(default, bags[:1])[1][0], 1 / len(bags[0]))
