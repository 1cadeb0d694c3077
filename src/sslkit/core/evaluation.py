"""Evaluate frozen embeddings: clustering (Hungarian accuracy, NMI, ARI), linear and k-NN probes.

Inputs are an embedding matrix `x` of shape (N, D) and labels `y` of shape (N,) (ints or
strings). Every probe repeats over seeds and reports `(mean, std)` so a table shows both the
score and how much it moves with the split or the k-means start.

sklearn and scipy are imported inside the functions: `sslkit --help` must stay fast.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sslkit.core.errors import UserError

MeanStd = tuple[float, float]


# ---- inputs -------------------------------------------------------------------------------


def _labels(y: Any, name: str) -> np.ndarray:
    """Labels as a 1-D array; NaN labels are refused (a missing label is not a class)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise UserError(f"{name} must be one label per sample (1-D), got shape {arr.shape} — flatten it")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        row = int(np.flatnonzero(np.isnan(arr))[0])
        raise UserError(f"{name} has a NaN label at row {row} — drop unlabeled rows before evaluating")
    return arr


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if len(y_true) != len(y_pred):
        raise UserError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)} — give one prediction per sample")
    if len(y_true) == 0:
        raise UserError("no samples to evaluate — check that the labels were read")


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """x as float (N, D), y as (N,) with >= 2 classes; one-line UserError otherwise."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise UserError(f"embeddings must be a 2-D array (samples, features), got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise UserError(f"embeddings must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    y = _labels(y, "y")
    if len(x) != len(y):
        raise UserError(f"embeddings have {len(x)} rows but there are {len(y)} labels — give one label per row")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise UserError(f"embeddings contain NaN or inf in {len(rows)} row(s), first at row {int(rows[0])} "
                        "— fix or drop those samples (a diverged encoder gives NaN)")
    classes = np.unique(y)
    if len(classes) < 2:
        raise UserError(f"labels have {len(classes)} class(es); evaluation needs at least 2 — check the label column")
    return x, y


def _check_stratifiable(y: np.ndarray) -> None:
    """A stratified split needs every class in both train and test: at least 2 samples each."""
    classes, counts = np.unique(y, return_counts=True)
    small = classes[counts < 2]
    if len(small):
        raise UserError(f"class {small[0].item()!r} has only 1 sample; a stratified split needs at least 2 per class "
                        "— drop or merge rare classes")


def _split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """Stratified train/test split; sklearn's ValueError (test set too small) becomes a UserError."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise UserError(f"test_size must be between 0 and 1, got {test_size}")
    try:
        return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    except ValueError as exc:
        raise UserError(f"cannot split {len(y)} samples of {len(np.unique(y))} classes with test_size={test_size}: "
                        f"{exc} — use more samples or a larger test_size") from None


# ---- aggregation and display --------------------------------------------------------------


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean and *population* standard deviation (ddof=0) of per-seed scores.

    ddof=0 because the seeds are the whole set we report on, and it stays defined (0.0) for one seed.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(arr.mean()), float(arr.std(ddof=0))


def format_mean_std(ms: MeanStd, digits: int = 3) -> str:
    """(0.8123, 0.0041) -> '0.812 ± 0.004'."""
    mean, std = ms
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _aggregate(per_seed: list[dict[str, float]]) -> dict[str, MeanStd]:
    return {key: mean_std(r[key] for r in per_seed) for key in per_seed[0]}


def metrics_table_rows(results: Mapping[str, Mapping[str, MeanStd]], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """{"name": {"acc": (m, s), ...}} -> (columns, rows) for `console.print_table`.

    Columns are the union of metric names in first-seen order; a metric a row lacks shows as "-".
    """
    metrics: list[str] = []
    for scores in results.values():
        metrics += [m for m in scores if m not in metrics]
    rows = [[name, *(format_mean_std(scores[m], digits) if m in scores else "-" for m in metrics)]
            for name, scores in results.items()]
    return ["name", *metrics], rows


# ---- clustering ---------------------------------------------------------------------------


def _hungarian(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Best one-to-one map of clusters onto classes.

    Returns (true codes (N,), mapped codes (N,), matched count). Classes are coded 0..C-1;
    clusters left without a class (more clusters than classes) map to -1, i.e. always wrong.
    """
    from scipy.optimize import linear_sum_assignment

    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)  # (clusters, classes)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)  # rectangular is fine
    mapping = np.full(counts.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return t, mapping[p], int(counts[rows, cols].sum())


def cluster_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of samples correct under the best one-to-one cluster->class map (Hungarian).

    Works when the number of clusters differs from the number of classes: extra clusters
    count as wrong, extra classes get no cluster.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _check_pair(y_true, y_pred)
    return _hungarian(y_true, y_pred)[2] / len(y_true)


def cluster_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """acc (Hungarian), nmi, ari and macro f1 over the true classes after the Hungarian map."""
    from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _check_pair(y_true, y_pred)
    t, mapped, matched = _hungarian(y_true, y_pred)
    return {
        "acc": matched / len(t),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
        "f1": float(f1_score(t, mapped, labels=np.arange(t.max() + 1), average="macro", zero_division=0)),
    }


def kmeans_eval(x: Any, y: Any, k: int, seeds: Sequence[int] = (0, 1, 2, 3, 4), n_init: int = 10) -> dict[str, MeanStd]:
    """k-means on x (N, D) once per seed; cluster_metrics against y as (mean, std) over seeds."""
    from sklearn.cluster import KMeans

    x, y = _check_xy(x, y)
    if not 1 <= k <= len(x):
        raise UserError(f"k={k} clusters is not possible with {len(x)} samples — choose 1 <= k <= {len(x)}")
    per_seed = []
    for seed in seeds:
        pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
        per_seed.append(cluster_metrics(y, pred))
    return _aggregate(per_seed)


# ---- probes -------------------------------------------------------------------------------


def _macro_ovr_auc(y_test: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over classes present in the test split.

    For two classes this equals the plain binary AUC (both one-vs-rest AUCs are the same).
    Classes absent from a small test split are skipped instead of crashing the probe.
    """
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j, c in enumerate(classes):
        positive = y_test == c
        if positive.any() and not positive.all():
            aucs.append(roc_auc_score(positive, proba[:, j]))
    return float(np.mean(aucs)) if aucs else math.nan


PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0)   # the logistic probe's inverse L2 strengths that c=None chooses from
INNER_FOLDS = 3                            # folds of the inner split that chooses it


def inner_folds(y: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> list | None:
    """The inner split that chooses a probe's C on training rows only: whole groups per fold when there are groups
    (a patient or a voice is never on both sides, as in the outer split), else stratified; None when the training
    rows cannot be split."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if groups is not None:
        n = len(np.unique(groups))
        return list(GroupKFold(n_splits=min(INNER_FOLDS, n)).split(y, y, groups)) if n >= 2 else None
    folds = min(INNER_FOLDS, int(np.unique(y, return_counts=True)[1].min()))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)) if folds >= 2 else None


def logistic_probe(x: np.ndarray, y: np.ndarray, *, c: float | None = 1.0, seed: int = 0,
                   groups: np.ndarray | None = None, class_weight: str | None = None, standardize: bool = True,
                   max_iter: int = 2000) -> tuple[Any, float]:
    """Fit the linear probe every domain uses: logistic regression (L2) on frozen x (N, D), standardised first.

    C is fixed, or with c=None chosen from PROBE_C_GRID by accuracy on `inner_folds` of these rows (the test rows
    never take part). -> (the fitted model, the C it used). Fits with one BLAS thread: lbfgs's products here are
    about N × D × classes, too small to share, and on 2 cores the threaded BLAS made the FSDD probe 4x slower.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    inner = inner_folds(y, groups, seed) if c is None else None
    if inner is None:
        clf = LogisticRegression(C=1.0 if c is None else c, max_iter=max_iter, class_weight=class_weight,
                                 random_state=seed)
    else:
        clf = LogisticRegressionCV(Cs=list(PROBE_C_GRID), cv=inner, scoring="accuracy", l1_ratios=(0.0,),
                                   use_legacy_attributes=False, max_iter=max_iter, class_weight=class_weight,
                                   random_state=seed)
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    with threadpool_limits(1):
        model.fit(x, y)
    return model, float(clf.C_ if inner is not None else clf.C)


def linear_probe(x: Any, y: Any, seeds: Sequence[int] = (0, 1, 2, 3, 4), test_size: float = 0.2,
                 standardize: bool = True, max_iter: int = 1000) -> dict[str, MeanStd]:
    """Logistic regression on frozen x (N, D), one stratified split per seed.

    Returns accuracy, macro f1 and auc (binary ROC AUC; multiclass one-vs-rest macro) as (mean, std).
    Standardizing first keeps the default L2 penalty comparable across embedding scales.
    """
    from sklearn.metrics import accuracy_score, f1_score

    x, y = _check_xy(x, y)
    _check_stratifiable(y)
    per_seed = []
    for seed in seeds:
        x_tr, x_te, y_tr, y_te = _split(x, y, test_size, seed)
        model, _ = logistic_probe(x_tr, y_tr, seed=seed, standardize=standardize, max_iter=max_iter)
        pred = model.predict(x_te)
        per_seed.append({
            "accuracy": float(accuracy_score(y_te, pred)),
            "f1": float(f1_score(y_te, pred, average="macro", zero_division=0)),
            "auc": _macro_ovr_auc(y_te, model.predict_proba(x_te), model.classes_),
        })
    return _aggregate(per_seed)


def knn_probe(x: Any, y: Any, k: int = 20, seeds: Sequence[int] = (0, 1, 2, 3, 4), test_size: float = 0.2,
              metric: str = "cosine") -> dict[str, MeanStd]:
    """k-nearest-neighbour vote on frozen x (N, D), one stratified split per seed.

    Returns accuracy and macro f1 as (mean, std). Cosine is the default because SSL
    embeddings are usually compared by angle.
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _check_xy(x, y)
    _check_stratifiable(y)
    per_seed = []
    for seed in seeds:
        x_tr, x_te, y_tr, y_te = _split(x, y, test_size, seed)
        if not 1 <= k <= len(x_tr):
            raise UserError(f"k={k} neighbours but the training split has {len(x_tr)} samples — lower k")
        pred = KNeighborsClassifier(n_neighbors=k, metric=metric).fit(x_tr, y_tr).predict(x_te)
        per_seed.append({
            "accuracy": float(accuracy_score(y_te, pred)),
            "f1": float(f1_score(y_te, pred, average="macro", zero_division=0)),
        })
    return _aggregate(per_seed)
