"""Downstream check of tabular representations: raw features vs embeddings vs both.

Three models per feature set, each over several seeds (one stratified 80/20 split per seed,
or a fixed test table): logistic/linear (ridge) regression, an MLP with the same small tuning
budget for every feature set (`MLP_GRID`, picked on a validation split of the training rows),
and scikit-learn's HistGradientBoosting as the strong baseline. Metrics: accuracy and AUC
(classification) or RMSE and R² (regression), mean ± std over seeds.

When the encoder's numeric tokens are piecewise-linear codes (`model.num_bins` > 0), a fourth set,
raw-ple, gives the dense models the raw features with every numeric column replaced by its
piecewise-linear code over the encoder's own bins: the same numeric encoding the embeddings start
from, so a gain of the embeddings over raw-ple is the pretraining's, not the encoding's.

HistGradientBoosting on raw+embeddings gets the embeddings' first k principal components
(PCA fitted on the training rows of each split) beside the raw columns: hundreds of
correlated dense columns next to a dozen raw ones dilute the trees' split search and made
HGB slightly worse than on raw alone; a few components do not. k is chosen from
`HGB_EMBED_COMPONENTS` on a validation split of the training rows (never the test rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sslkit.core.errors import UserError

MLP_HIDDEN = (256, 256, 256)
# The tuning budget, identical for raw features and embeddings: (dropout, weight decay) pairs.
MLP_GRID = ({"dropout": 0.1, "weight_decay": 1e-2}, {"dropout": 0.3, "weight_decay": 1e-1})
MLP_EPOCHS, MLP_PATIENCE = 30, 10
HGB_EMBED_COMPONENTS = (2, 4, 8)  # candidate PCA sizes of the embeddings beside raw columns (chosen on validation)
MIN_LABELLED = 10   # --label-fraction must leave every class at least this many training rows
TEST_SIZE = 0.2     # held-out share of each seed's split when no test table is given


@dataclass
class FeatureSet:
    """`dense` (N, F) for linear/MLP models; `trees` (N, F') with NaN for missing and `categorical` mask for HGB
    (None: a set for the dense models only); `embedded` marks the `trees` columns that are embedding values."""

    dense: np.ndarray
    trees: np.ndarray | None
    categorical: np.ndarray
    embedded: np.ndarray | None = None

    def embedded_mask(self) -> np.ndarray:
        return np.zeros(self.trees.shape[1], dtype=bool) if self.embedded is None else self.embedded

    @staticmethod
    def concat(a: FeatureSet, b: FeatureSet) -> FeatureSet:
        return FeatureSet(np.hstack([a.dense, b.dense]), np.hstack([a.trees, b.trees]),
                          np.concatenate([a.categorical, b.categorical]),
                          np.concatenate([a.embedded_mask(), b.embedded_mask()]))


def raw_features(num: np.ndarray, miss: np.ndarray, cat: np.ndarray, cardinalities: Sequence[int],
                 missing_cols: Sequence[bool]) -> FeatureSet:
    """Preprocessed raw columns: scaled numerics + missing indicators + one-hot categories (dense);
    numerics with NaN + category codes (trees)."""
    dense = _dense(num, miss, cat, cardinalities, missing_cols)
    trees = np.hstack([np.where(miss.astype(bool), np.nan, num), cat.astype(np.float32)])
    mask = np.array([False] * num.shape[1] + [c <= 255 for c in cardinalities], dtype=bool)
    return FeatureSet(dense, trees.astype(np.float32), mask)


def _dense(numeric: np.ndarray, miss: np.ndarray, cat: np.ndarray, cardinalities: Sequence[int],
           missing_cols: Sequence[bool]) -> np.ndarray:
    """[numeric block, missing indicators of the columns that have missing values, one-hot categories]."""
    onehots = [np.eye(c, dtype=np.float32)[cat[:, j]] for j, c in enumerate(cardinalities)]
    ind = miss[:, np.asarray(missing_cols, dtype=bool)].astype(np.float32) if len(missing_cols) else miss.astype(np.float32)
    return np.hstack([numeric, ind, *onehots]).astype(np.float32)


def ple_features(num: np.ndarray, miss: np.ndarray, cat: np.ndarray, cardinalities: Sequence[int],
                 missing_cols: Sequence[bool], edges: np.ndarray) -> FeatureSet:
    """Raw features for the dense models with each numeric column as its piecewise-linear code over `edges`
    ((num_bins + 1,) shared or (Dn, num_bins + 1) per column, the encoder's bins); no tree features."""
    import torch

    from sslkit.domains.tabular.model import piecewise_linear

    codes = piecewise_linear(torch.from_numpy(np.ascontiguousarray(num, dtype=np.float32)),
                             torch.as_tensor(edges, dtype=torch.float32)).flatten(1).numpy()
    return FeatureSet(_dense(codes, miss, cat, cardinalities, missing_cols), None, np.zeros(0, dtype=bool))


def embedding_features(z: np.ndarray) -> FeatureSet:
    return FeatureSet(z.astype(np.float32), z.astype(np.float32), np.zeros(z.shape[1], dtype=bool),
                      np.ones(z.shape[1], dtype=bool))


def reduce_embedded(fs: FeatureSet, xtr: np.ndarray, xte: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For trees on raw+embeddings: keep the raw columns, replace the embedding columns by their first
    `k` principal components fitted on `xtr` alone. Returns (xtr', xte', categorical mask)."""
    from sklearn.decomposition import PCA

    emb = fs.embedded_mask()
    if not emb.any() or emb.all() or emb.sum() <= k:
        return xtr, xte, fs.categorical
    pca = PCA(n_components=k, random_state=0).fit(xtr[:, emb])
    cats = np.concatenate([fs.categorical[~emb], np.zeros(k, dtype=bool)])
    return (np.hstack([xtr[:, ~emb], pca.transform(xtr[:, emb])]).astype(np.float32),
            np.hstack([xte[:, ~emb], pca.transform(xte[:, emb])]).astype(np.float32), cats)


def infer_task(y: np.ndarray) -> str:
    """classification for text/bool labels or integers with at most 20 distinct values; else regression."""
    if y.dtype.kind in "OUSb":
        return "classification"
    if y.dtype.kind in "iu" and len(np.unique(y)) <= 20:
        return "classification"
    return "regression"


def check_target(y: np.ndarray, task: str, name: str) -> np.ndarray:
    """Labels as class indices (classification) or float64 (regression); errors for unusable targets."""
    if task == "classification":
        classes, codes = np.unique(y.astype(str) if y.dtype.kind == "O" else y, return_inverse=True)
        if len(classes) < 2:
            raise UserError(f"target '{name}' has a single class ({classes[0].item()!r}) — a classifier needs at least "
                            "two; choose another --target")
        counts = np.bincount(codes)
        if counts.min() < 2:
            numeric = y.dtype.kind in "iuf"    # only a numeric target can be regressed
            raise UserError(f"target '{name}': class {classes[counts.argmin()].item()!r} has one row — drop that row"
                            + (", or use --task regression" if numeric else ", or choose another --target"))
        return codes
    try:
        values = y.astype(np.float64)
    except (TypeError, ValueError):
        raise UserError(f"target '{name}' is not numeric — use --task classification") from None
    if np.nanstd(values) == 0:
        raise UserError(f"target '{name}' is constant — choose another --target")
    return values


class TorchMLP:
    """The downstream MLP, with scikit-learn's fit / predict / predict_proba.

    Standardised inputs, `hidden` blocks of Linear–BatchNorm–ReLU–Dropout, AdamW with a cosine
    learning rate over `epochs`, batch 256 (on fewer than 2,048 rows an eighth of them, at least 16,
    so a few hundred labelled rows still get 8+ steps an epoch); 15% of the training rows (stratified) are held out
    and the epoch with the best validation score (−log-loss, or −RMSE) is kept, stopping after
    `patience` epochs without improvement. scikit-learn's MLP has neither dropout nor batch
    norm; on Adult it scored the same on raw features and up to 0.8 points lower on embeddings.
    """

    def __init__(self, task: str, hidden: Sequence[int] = MLP_HIDDEN, dropout: float = 0.1, weight_decay: float = 1e-2,
                 epochs: int = MLP_EPOCHS, patience: int = MLP_PATIENCE, lr: float = 1e-3, batch_size: int = 256,
                 seed: int = 0) -> None:
        self.task, self.hidden, self.dropout, self.weight_decay = task, tuple(hidden), dropout, weight_decay
        self.epochs, self.patience, self.lr, self.batch_size, self.seed = epochs, patience, lr, batch_size, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "TorchMLP":
        import torch
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        classify = self.task == "classification"
        self.scaler_ = StandardScaler().fit(x)
        xt = torch.from_numpy(self.scaler_.transform(x).astype(np.float32))
        yt = torch.from_numpy(y.astype(np.int64 if classify else np.float32))
        try:
            fit, val = train_test_split(np.arange(len(y)), test_size=0.15, random_state=self.seed,
                                        stratify=y if classify else None)
        except ValueError:   # a class too rare to stratify
            fit, val = train_test_split(np.arange(len(y)), test_size=0.15, random_state=self.seed)
        torch.manual_seed(self.seed)
        self.n_out_ = int(y.max()) + 1 if classify else 1
        layers: list[torch.nn.Module] = []
        width = x.shape[1]
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(), torch.nn.Dropout(self.dropout)]
            width = h
        net = torch.nn.Sequential(*layers, torch.nn.Linear(width, self.n_out_))
        batch = min(self.batch_size, len(fit), max(16, len(fit) // 8))   # small tables: ≥ 8 steps an epoch
        per_epoch = max(1, len(fit) // batch)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs * per_epoch)
        rng = np.random.default_rng(self.seed)
        best, best_state, since = -np.inf, None, 0
        for epoch in range(self.epochs):
            net.train()
            order = rng.permutation(fit)
            for i in range(per_epoch):       # whole batches only (batch norm needs more than one row)
                rows = torch.from_numpy(order[i * batch: (i + 1) * batch])
                out = net(xt[rows])
                loss = (torch.nn.functional.cross_entropy(out, yt[rows]) if classify
                        else torch.nn.functional.mse_loss(out[:, 0], yt[rows]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            score = self._score(net, xt[val], yt[val])
            if score > best:
                best, best_state, since, self.n_iter_ = score, {k: v.clone() for k, v in net.state_dict().items()}, 0, epoch + 1
            else:
                since += 1
                if since >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_, self.best_validation_score_ = net.eval(), float(best)
        return self

    def _score(self, net: Any, x: Any, y: Any) -> float:
        import torch

        net.eval()
        with torch.no_grad():
            out = net(x)
        if self.task == "classification":   # −log-loss: far less noisy than accuracy on a few thousand rows
            return -float(torch.nn.functional.cross_entropy(out, y))
        return -float(((out[:, 0] - y) ** 2).mean().sqrt())

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.net_(torch.from_numpy(self.scaler_.transform(x).astype(np.float32))).numpy()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x)
        out = np.exp(out - out.max(1, keepdims=True))
        return out / out.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x)
        return out.argmax(1) if self.task == "classification" else out[:, 0]


def _models(task: str, seed: int, categorical: np.ndarray) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cats = categorical if categorical.any() else None
    if task == "classification":
        linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        hgb = HistGradientBoostingClassifier(random_state=seed, categorical_features=cats)
    else:
        linear = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        hgb = HistGradientBoostingRegressor(random_state=seed, categorical_features=cats)
    mlp = [TorchMLP(task, seed=seed, **cfg) for cfg in MLP_GRID]
    return {"linear": linear, "mlp": mlp, "hgb": hgb}


def _scores(task: str, model: Any, x: np.ndarray, y: np.ndarray, y_mean: float = 0.0, y_std: float = 1.0) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    if task == "regression":    # R²: 1 − squared error / the held-out target's variance (0 = predicting its mean)
        pred = model.predict(x) * y_std + y_mean
        mse = float(np.mean((pred - y) ** 2))
        return {"rmse": float(np.sqrt(mse)), "r2": 1.0 - mse / max(float(np.var(y)), 1e-12)}
    proba = model.predict_proba(x)
    out = {"accuracy": float(accuracy_score(y, proba.argmax(1)))}
    if proba.shape[1] == 2:
        out["auc"] = float(roc_auc_score(y, proba[:, 1]))
    elif len(np.unique(y)) == proba.shape[1]:
        out["auc"] = float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    return out


def fit_score(task: str, name: str, model: Any, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
              yte: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit one model (the MLP: each `MLP_GRID` setting, keeping the best validation score) and score it."""
    y_mean, y_std = (float(ytr.mean()), float(ytr.std()) or 1.0) if task == "regression" else (0.0, 1.0)
    target = (ytr - y_mean) / y_std if task == "regression" else ytr
    chosen: dict[str, Any] = {}
    if name == "mlp":
        fitted = [m.fit(xtr, target) for m in model]
        best = int(np.argmax([m.best_validation_score_ for m in fitted]))
        model = fitted[best]
        chosen = {**MLP_GRID[best], "epochs": int(model.n_iter_)}
    else:
        model.fit(xtr, target)
    return _scores(task, model, xte, yte, y_mean, y_std), chosen


def label_subset(y: np.ndarray, fraction: float, seed: int, task: str) -> np.ndarray:
    """Indices of a `fraction` of the training rows, stratified by class: the few-label regime. The same
    rows for every feature set and model of a seed."""
    if fraction >= 1.0:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(y)), train_size=fraction, random_state=seed,
                               stratify=y if task == "classification" else None)
    return np.sort(keep)


def check_label_fraction(y: np.ndarray, fraction: float, task: str, fixed_test: bool,
                         test_size: float = TEST_SIZE) -> None:
    """Refuse a --label-fraction that leaves a class (or the whole set) too few rows to fit and validate on."""
    share = fraction * (1.0 if fixed_test else 1.0 - test_size)
    counts = np.bincount(y) if task == "classification" else np.array([len(y)])
    least = int(np.floor(counts.min() * share))
    if least < MIN_LABELLED:
        which = "the rarest class" if task == "classification" else "the table"
        raise UserError(f"--label-fraction {fraction} leaves about {least} labelled rows of {which} for training — "
                        f"raise it so every class keeps at least {MIN_LABELLED}")


def _task(task: str, sets: dict[str, FeatureSet], y: np.ndarray, seed: int, fname: str, mname: str,
          test: tuple[dict[str, FeatureSet], np.ndarray] | None, test_size: float,
          label_fraction: float = 1.0) -> tuple[dict, dict]:
    """One (seed, feature set, model) cell: split (or use the test table), keep `label_fraction` of the
    training rows, fit, score."""
    from sklearn.model_selection import train_test_split
    # Every cell loads torch (the MLP needs it) so that a worker's first cell already holds it: joblib's loky
    # workers measure their memory after the first cell and restart, with a warning, when it later grows by
    # 300 MB — which a worker that started with a tree model and then imported torch for an MLP did.
    import torch  # noqa: F401

    fs = sets[fname]
    kind = "trees" if mname == "hgb" else "dense"
    x = getattr(fs, kind)
    if test is not None:
        xtr, ytr, xte, yte = x, y, getattr(test[0][fname], kind), test[1]
    else:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed,
                                  stratify=y if task == "classification" else None)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    keep = label_subset(ytr, label_fraction, seed, task)
    xtr, ytr = xtr[keep], ytr[keep]
    categorical = fs.categorical
    chosen: dict[str, Any] = {"train_rows": int(len(ytr))}
    if mname == "hgb" and fs.embedded_mask().any() and not fs.embedded_mask().all():
        k = choose_components(task, fs, xtr, ytr, seed)
        xtr, xte, categorical = reduce_embedded(fs, xtr, xte, k)
        chosen["pca_components"] = k
    model = _models(task, seed, categorical)[mname]
    scores, settings = fit_score(task, mname, model, xtr, ytr, xte, yte)
    return scores, {**settings, **chosen}


def choose_components(task: str, fs: FeatureSet, xtr: np.ndarray, ytr: np.ndarray, seed: int) -> int:
    """The PCA size from `HGB_EMBED_COMPONENTS` whose HistGradientBoosting scores best on a 20%
    validation split of the training rows (accuracy, or −RMSE)."""
    from sklearn.model_selection import train_test_split

    fit, val = train_test_split(np.arange(len(ytr)), test_size=0.2, random_state=seed,
                                stratify=ytr if task == "classification" else None)
    best_k, best = HGB_EMBED_COMPONENTS[0], -np.inf
    for k in HGB_EMBED_COMPONENTS:
        a, b, cats = reduce_embedded(fs, xtr[fit], xtr[val], k)
        scores, _ = fit_score(task, "hgb", _models(task, seed, cats)["hgb"], a, ytr[fit], b, ytr[val])
        score = scores["accuracy"] if task == "classification" else -scores["rmse"]
        if score > best:
            best_k, best = k, score
    return best_k


def run_evaluation(sets: dict[str, FeatureSet], y: np.ndarray, task: str, seeds: Sequence[int],
                   test: tuple[dict[str, FeatureSet], np.ndarray] | None = None, test_size: float = TEST_SIZE,
                   models: Sequence[str] = ("linear", "mlp", "hgb"), jobs: int = 1,
                   label_fraction: float = 1.0) -> dict[str, dict[str, Any]]:
    """{"<features> / <model>": {"per_seed": [...], "<metric>": [mean, std], "settings": [...]}}.

    One stratified split per seed (the same split for every feature set and model), or the
    given test table; `label_fraction` < 1 trains on that stratified share of the training rows
    (the same rows for every feature set and model of a seed; the test rows do not change);
    `jobs` > 1 runs the cells in parallel processes (joblib), `jobs` at a time; the cells done are counted on stderr
    as training steps are (core.progress): a grid of MLP searches on a large table takes minutes.
    """
    from joblib import Parallel, delayed

    from sslkit.core.progress import Progress

    cells = [(seed, f, m) for seed in seeds for f in sets for m in models if m != "hgb" or sets[f].trees is not None]
    outs: list = []
    with Parallel(n_jobs=jobs) as parallel, Progress(total=len(cells), label="evaluate") as progress:
        for start in range(0, len(cells), jobs):
            chunk = cells[start:start + jobs]
            outs += parallel(delayed(_task)(task, sets, y, s, f, m, test, test_size, label_fraction)
                             for s, f, m in chunk)
            seed, fname, mname = chunk[-1]
            progress.advance(len(outs), f"{fname} / {mname}, seed {seed}")
    results: dict[str, dict[str, Any]] = {}
    for (_, fname, mname), (scores, chosen) in zip(cells, outs):
        entry = results.setdefault(f"{fname} / {mname}", {"per_seed": [], "settings": []})
        entry["per_seed"].append(scores)
        entry["settings"].append(chosen)
    for entry in results.values():
        for metric in entry["per_seed"][0]:
            vals = np.array([s[metric] for s in entry["per_seed"]])
            entry[metric] = [float(vals.mean()), float(vals.std())]
    return results
