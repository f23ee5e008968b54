"""LightGBM binary classifiers (churn, next stage) with calibrated probabilities and drivers.

Training data is split (seeded, stratified) into a fitting part and a validation part, both from
the training window: boosting stops early on the validation log-loss, and an isotonic regression
(scikit-learn) fitted on the validation scores maps them to calibrated probabilities. Drivers are
LightGBM's own ``pred_contrib`` (TreeSHAP): per customer, signed contributions to the log-odds
whose sum plus the bias is the model's raw score.
"""

from __future__ import annotations

from typing import Self

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import train_test_split

from features.errors import LifecycleError

DEFAULT_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


class Classifier:
    """A calibrated LightGBM classifier over a feature table (numeric and text columns)."""

    def __init__(self, params: dict | None = None, seed: int = 0, validation_share: float = 0.2,
                 max_rounds: int = 2000, early_stopping_rounds: int = 50):
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.seed = seed
        self.validation_share = validation_share
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.features_: list[str] = []
        self.categories_: dict[str, list[str]] = {}
        self.booster_: lgb.Booster | None = None
        self.calibrator_: IsotonicRegression | None = None

    def fit(self, X: pd.DataFrame, y) -> Self:
        """Fit on ``X`` (one row per customer) and binary labels ``y``."""
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < 10:
            raise LifecycleError(f"cannot train a classifier on {np.bincount(y, minlength=2).tolist()} "
                                 "negatives/positives: each class needs at least 10 customers")
        self.features_ = list(X.columns)
        self.categories_ = {c: sorted(X[c].dropna().astype(str).unique()) for c in X.columns if _is_text(X[c])}
        frame = self._encode(X)
        fit_rows, valid_rows = train_test_split(np.arange(len(y)), test_size=self.validation_share,
                                                random_state=self.seed, stratify=y)
        train = lgb.Dataset(frame.iloc[fit_rows], y[fit_rows], free_raw_data=False)
        valid = lgb.Dataset(frame.iloc[valid_rows], y[valid_rows], reference=train)
        self.booster_ = lgb.train(
            {**self.params, "seed": self.seed, "num_threads": self.params.get("num_threads", 0)},
            train, num_boost_round=self.max_rounds, valid_sets=[valid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        raw = self.booster_.predict(frame.iloc[valid_rows], raw_score=True)
        self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(raw, y[valid_rows])
        return self

    @property
    def best_iteration_(self) -> int:
        return self._booster().best_iteration

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive class per row."""
        return self.calibrator_.predict(self._booster().predict(self._matrix(X), raw_score=True))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per row and feature, the signed contribution to the raw score (log-odds); column ``bias`` last."""
        values = self._booster().predict(self._matrix(X), pred_contrib=True)
        return pd.DataFrame(values, columns=[*self.features_, "bias"], index=X.index)

    def drivers(self, X: pd.DataFrame, top: int = 3) -> list[list[dict]]:
        """The ``top`` features moving each row's score most, as {feature, contribution}, largest first."""
        return self._top(self.contributions(X).drop(columns="bias").to_numpy(), top)

    def predict_with_drivers(self, X: pd.DataFrame, top: int = 3) -> tuple[np.ndarray, list[list[dict]]]:
        """``predict_proba`` and ``drivers`` together, encoding the rows once."""
        matrix, booster = self._matrix(X), self._booster()
        probability = self.calibrator_.predict(booster.predict(matrix, raw_score=True))
        return probability, self._top(booster.predict(matrix, pred_contrib=True)[:, :-1], top)

    def _top(self, contributions: np.ndarray, top: int) -> list[list[dict]]:
        order = np.argsort(-np.abs(contributions), axis=1)[:, :top]
        return [[{"feature": self.features_[j], "contribution": float(row[j])} for j in picks]
                for row, picks in zip(contributions, order, strict=True)]

    def importance(self) -> pd.Series:
        """Total gain of each feature, largest first."""
        gain = self._booster().feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.features_).sort_values(ascending=False)

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The rows as LightGBM reads a frame from ``_encode``: floats, a category as its code (missing: NaN).

        Handing LightGBM the matrix skips its per-call pandas conversion, most of a small request's time.
        """
        frame, columns = self._encode(X), []
        for column in self.features_:
            values = frame[column]
            if isinstance(values.dtype, pd.CategoricalDtype):
                codes = values.cat.codes.to_numpy(dtype=float)
                columns.append(np.where(codes < 0, np.nan, codes))
            else:
                columns.append(values.to_numpy(dtype=float))
        return np.column_stack(columns)

    def _encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """Numbers as float, text as categoricals with the categories seen at fit (others missing)."""
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise LifecycleError(f"missing feature columns {missing}")
        columns = {}  # built apart and assembled once: inserting columns one by one is slow in pandas
        for column in self.features_:
            if column in self.categories_:
                known = self.categories_[column]
                text = X[column].astype(object).map(lambda v: None if pd.isna(v) else str(v))
                columns[column] = pd.Categorical(text.where(text.isin(known), None), categories=known)
            else:
                columns[column] = pd.to_numeric(X[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return pd.DataFrame(columns, index=X.index)

    def _booster(self) -> lgb.Booster:
        if self.booster_ is None:
            raise LifecycleError("Classifier is not fitted: call fit() first")
        return self.booster_


def _is_text(column: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))
