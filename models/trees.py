"""What the service's LightGBM models share: a feature table (numbers and text) in, a booster fitted with
early stopping on a held-out part of the training window, predictions for a few rows or millions."""

from __future__ import annotations

import functools
from typing import ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.model_selection import train_test_split

from features.errors import LifecycleError, NotFittedError

DEFAULT_PARAMS = {
    "learning_rate": 0.05,
    "num_leaves": 31,
    "max_depth": 6,  # shallow trees: as accurate on CDNOW and the simulator, cheaper to explain
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


class BoostedTrees:
    """A LightGBM booster over a feature table (one row per customer; numeric and text columns)."""

    objective: ClassVar[dict[str, object]] = {}  # the subclass's objective, under the caller's params

    def __init__(self, params: dict | None = None, seed: int = 0, validation_share: float = 0.2,
                 max_rounds: int = 2000, early_stopping_rounds: int = 50):
        self.params = {**DEFAULT_PARAMS, **self.objective, **(params or {})}
        self.seed = seed
        self.validation_share = validation_share
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.features_: list[str] = []
        self.categories_: dict[str, list[str]] = {}
        self.booster_: lgb.Booster | None = None

    def _boost(self, X: pd.DataFrame, y: np.ndarray, stratify: bool, init_score: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Fit the booster on ``X`` and ``y``, stopping early on a seeded held-out share of the rows (stratified
        by ``y`` if ``stratify``), boosting from ``init_score`` (raw scores) if given. Returns the matrix of
        ``X`` and the held-out rows."""
        self.features_ = list(X.columns)
        self.categories_ = {c: sorted(X[c].dropna().astype(str).unique()) for c in X.columns if _is_text(X[c])}
        matrix = self._matrix(X)
        fit_rows, valid_rows = train_test_split(np.arange(len(y)), test_size=self.validation_share,
                                                random_state=self.seed, stratify=y if stratify else None)
        categorical = [j for j, column in enumerate(self.features_) if column in self.categories_]
        start = (None, None) if init_score is None else (init_score[fit_rows], init_score[valid_rows])
        train = lgb.Dataset(matrix[fit_rows], y[fit_rows], init_score=start[0], feature_name=self.features_,
                            categorical_feature=categorical, free_raw_data=False)
        valid = lgb.Dataset(matrix[valid_rows], y[valid_rows], init_score=start[1], reference=train)
        self.booster_ = lgb.train(
            {**self.params, "seed": self.seed, "num_threads": self.params.get("num_threads", 0)},
            train, num_boost_round=self.max_rounds, valid_sets=[valid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return matrix, valid_rows

    @property
    def best_iteration_(self) -> int:
        return self._booster().best_iteration

    def importance(self) -> pd.Series:
        """Total gain of each feature, largest first."""
        gain = self._booster().feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.features_).sort_values(ascending=False)

    def _predict(self, matrix: np.ndarray, **kind) -> np.ndarray:
        """LightGBM's predict (which divides by the number of rows: nothing in, nothing out)."""
        booster = self._booster()
        if not len(matrix):
            return np.empty(0, dtype=int)
        return booster.predict(matrix, num_threads=_threads(matrix), **kind)

    def _matrix(self, X) -> np.ndarray:
        """The rows of ``X`` (a DataFrame, or columns by name) as LightGBM reads them: numbers as floats,
        text as the code of a category seen at fit (missing or unseen: NaN)."""
        missing = [c for c in self.features_ if c not in X]
        if missing:
            raise LifecycleError(f"missing feature columns {missing}")
        matrix = np.empty((len(X[self.features_[0]]), len(self.features_)))
        for j, column in enumerate(self.features_):
            if column in self.categories_:
                text = pa.array(X[column], from_pandas=True)
                codes = pc.index_in(text if text.type == pa.string() else text.cast(pa.string()),
                                    options=_lookup(tuple(self.categories_[column])))
                matrix[:, j] = codes.to_numpy(zero_copy_only=False)  # not a category seen at fit: null, NaN
            else:
                matrix[:, j] = _floats(X[column])
        return matrix

    def _booster(self) -> lgb.Booster:
        if self.booster_ is None:
            raise NotFittedError(type(self).__name__)
        return self.booster_


@functools.lru_cache(maxsize=256)
def _lookup(categories: tuple[str, ...]) -> pc.SetLookupOptions:
    """Arrow's lookup of text in ``categories``, built once (building it costs more than a few rows' lookup)."""
    return pc.SetLookupOptions(pa.array(categories, pa.string()))


def _threads(matrix: np.ndarray) -> int:
    """LightGBM threads for predicting ``matrix``: one for a few rows (waking a team of threads costs far
    more than the work, and much more when other processes hold the cores), else all."""
    return 1 if len(matrix) < 1000 else 0


def _floats(values) -> np.ndarray:
    """Values as floats, missing (None, NaN, NA) as NaN; text that is no number is missing too."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _is_text(column: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))
