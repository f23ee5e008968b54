"""Row utilities of the BTYD models: columns checked into arrays, and their distinct rows.

Fits and predictions work on the distinct (frequency, recency, T) rows with their counts: on a
shop's customers there are many times fewer of them than customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from features.errors import LifecycleError

FEW_TO_DEDUPLICATE = 1000  # rows up to which finding the distinct ones would cost more than it saves


def as_arrays(*columns) -> list[np.ndarray]:
    """The columns as float arrays; raises LifecycleError if they differ in length or miss values."""
    arrays = [np.asarray(c, dtype=float) for c in columns]
    if any(a.shape != arrays[0].shape for a in arrays) or any(np.isnan(a).any() for a in arrays):
        raise LifecycleError("BTYD inputs must be equally long and free of missing values")
    return arrays


def unique_rows(*columns: np.ndarray, weights: np.ndarray | None = None
                ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The distinct rows of the given columns (sorted), how often each occurs (the sum of its rows' ``weights``,
    when given: rows that stand for several customers each), and each row's index.

    Rows are hashed to 64 bits and the hashes factorized, many times faster than the sort behind
    ``np.unique(axis=0)``; every row is then checked against its representative, and a hash
    collision (never seen, but possible) falls back to the exact sort. The distinct rows come out
    sorted: the likelihoods sum over them in this order, which fixes the fits' last bits.
    """
    hashes = pd.util.hash_pandas_object(pd.DataFrame(dict(enumerate(columns))), index=False).to_numpy()
    inverse, _ = pd.factorize(hashes)
    first = np.zeros(inverse.max() + 1, dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # the first row of each distinct hash
    levels = [c[first] for c in columns]
    if not all(np.array_equal(level[inverse], c) for level, c in zip(levels, columns, strict=True)):
        unique, inverse = np.unique(np.column_stack(columns), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return list(unique.T), np.bincount(inverse, weights), inverse
    order = np.lexsort(levels[::-1])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inverse = rank[inverse]
    return [level[order] for level in levels], np.bincount(inverse, weights), inverse


def per_unique(function, *columns, squeeze: bool = True) -> np.ndarray:
    """Evaluate ``function`` once per distinct (frequency, recency, T) row and spread the result back
    (a few rows go straight through: finding the distinct ones would cost more than it saves)."""
    arrays = as_arrays(*columns)
    if len(arrays[0]) <= FEW_TO_DEDUPLICATE:
        unique, inverse = arrays, slice(None)
    else:
        unique, _, inverse = unique_rows(*arrays)
    values = np.asarray(function(*unique))
    if squeeze and values.ndim == 2:
        values = values[:, 0]
    return values[inverse]


@dataclass(frozen=True)
class BuyerRows:
    """Every buyer of a table as the BTYD fits take them: distinct (frequency, recency, T) rows and distinct
    (frequency, monetary_value) rows, each with how many buyers it stands for (``count``)."""

    purchases: pd.DataFrame  # frequency, recency, T, count
    spend: pd.DataFrame  # frequency, monetary_value, count

    @property
    def customers(self) -> int:
        return int(self.purchases["count"].sum())


def buyer_rows(relation: duckdb.DuckDBPyRelation, buyers: str = "orders > 0") -> BuyerRows:
    """The ``BuyerRows`` of the rows of ``relation`` (BTYD summary columns) where ``buyers`` holds."""
    def grouped(columns: str) -> pd.DataFrame:
        return relation.filter(buyers).aggregate(f"{columns}, count(*)::DOUBLE AS count", columns).order(columns).df()

    return BuyerRows(grouped("frequency, recency, T"), grouped("frequency, monetary_value"))
