"""Feature drift: how far a population of customers has moved from the one a model was fitted on.

At fit, ``FeatureProfile`` records, for every feature, the share of customers in each of its bins:
for a number, the bins between its deciles (fewer where values tie) plus one for missing values;
for text, one per category seen plus one for anything else or missing. A later population is
counted into the same bins (chunk by chunk, if need be: counts add up) and compared by the
population stability index,

    PSI = sum over bins of (actual share - expected share) * ln(actual share / expected share),

with every share floored at 1e-4 so that an empty bin stays finite. The usual reading (Siddiqi,
*Credit Risk Scorecards*, 2006): below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a major
one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

MODERATE, MAJOR = 0.1, 0.25
FLOOR = 1e-4
DECILES = np.linspace(0.1, 0.9, 9)


@dataclass
class FeatureProfile:
    """The binned distribution of each feature over the population a model was fitted on."""

    edges: dict[str, np.ndarray]  # number column -> ascending distinct inner edges
    categories: dict[str, list[str]]  # text column -> the categories seen
    expected: dict[str, np.ndarray]  # column -> share of the population in each bin

    @classmethod
    def fit(cls, features: pd.DataFrame) -> FeatureProfile:
        """Profile every column of ``features`` (numbers and booleans by deciles, anything else as text)."""
        edges, categories = {}, {}
        for name in features.columns:
            column = features[name]
            if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                values = column.to_numpy(dtype=float, na_value=np.nan)
                values = values[~np.isnan(values)]
                edges[name] = np.unique(np.quantile(values, DECILES)) if len(values) else np.array([])
            else:
                categories[name] = sorted(column.dropna().astype(str).unique())
        profile = cls(edges, categories, {})
        counts = profile.counts(features)
        profile.expected = {name: n / max(n.sum(), 1) for name, n in counts.items()}
        return profile

    def counts(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """How many rows of ``features`` fall in each bin of each profiled column (missing columns count
        as missing values)."""
        rows = len(features)
        out = {}
        for name, edges in self.edges.items():
            if name in features:
                values = features[name].to_numpy(dtype=float, na_value=np.nan)
                bins = np.where(np.isnan(values), len(edges) + 1, np.searchsorted(edges, values, side="right"))
            else:
                bins = np.full(rows, len(edges) + 1)
            out[name] = np.bincount(bins, minlength=len(edges) + 2)
        for name, known in self.categories.items():
            if name in features:
                codes = pd.Index(known).get_indexer(features[name].astype("string"))
                bins = np.where(codes < 0, len(known), codes)  # -1: unknown or missing
            else:
                bins = np.full(rows, len(known))
            out[name] = np.bincount(bins, minlength=len(known) + 1)
        return out

    def psi(self, counts: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The PSI of each profiled column, given a population's ``counts``, largest first."""
        result = {}
        for name, expected in self.expected.items():
            actual = counts[name] / max(counts[name].sum(), 1)
            e, a = np.maximum(expected, FLOOR), np.maximum(actual, FLOOR)
            result[name] = float(np.sum((a - e) * np.log(a / e)))
        return dict(sorted(result.items(), key=lambda item: -item[1]))


def add_counts(total: dict[str, np.ndarray], more: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``total`` with ``more`` (the counts of another chunk) added."""
    return {name: total.get(name, 0) + n for name, n in more.items()}


def shifted(psi: Mapping[str, float], threshold: float = MODERATE) -> dict[str, float]:
    """The features whose PSI is at least ``threshold``, largest first."""
    return {name: value for name, value in psi.items() if value >= threshold}
