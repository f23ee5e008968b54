"""RFM quintile scores and named segments.

Scores are 1-5 from quintile edges *learned at fit time* on the buyers of the training population
(``FeatureBuilder.rfm_edges_``), so a customer scored alone, in a batch chunk or in a Spark
partition gets the same score as in the full table. A value's score is 1 + the number of edges
strictly below it (ties share a score); recency is reversed (recent = 5).

Segments follow the widely used R x FM grid, where FM = round-half-up((F + M) / 2).
"""

from __future__ import annotations

import bisect
import itertools
import math

QUANTILES = (0.2, 0.4, 0.6, 0.8)

# (segment, R score range, FM score range): the first rule that matches names the cell (Lost is
# checked before Hibernating, which takes the rest of its corner); together they cover all 25 cells.
SEGMENTS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("Champions", (5, 5), (4, 5)),
    ("Loyal", (3, 4), (4, 5)),
    ("Potential loyalist", (4, 5), (2, 3)),
    ("New", (5, 5), (1, 1)),
    ("Promising", (4, 4), (1, 1)),
    ("Need attention", (3, 3), (3, 3)),
    ("About to sleep", (3, 3), (1, 2)),
    ("Can't lose", (1, 2), (5, 5)),
    ("At risk", (1, 2), (3, 4)),
    ("Lost", (1, 1), (1, 1)),
    ("Hibernating", (1, 2), (1, 2)),
)

# The RFM measure behind each score, as a column of the base feature table.
MEASURES = {"r": "recency_days", "f": "orders", "m": "total_spend"}

# Scores whose measure is a whole number with few distinct values (days, orders): their edges come
# from how many buyers have each value (a parallel count) instead of a sort of every buyer.
COUNTED = ("r", "f")


def segment_of(r: int, fm: int) -> str:
    """The segment name for an R score and an FM score."""
    for name, (r_lo, r_hi), (fm_lo, fm_hi) in SEGMENTS:
        if r_lo <= r <= r_hi and fm_lo <= fm <= fm_hi:
            return name
    raise ValueError(f"scores out of range: r={r}, fm={fm}")


def quantiles_of_counts(counts: list[tuple[float, int]], quantiles: tuple[float, ...] = QUANTILES) -> list[float]:
    """Quantiles of the values that ``counts`` lists as ascending (value, how many) pairs.

    Linear interpolation between the order statistics around ``(n - 1) * q``, like DuckDB's
    ``quantile_cont`` and numpy's default method.
    """
    values = [value for value, _ in counts]
    ends = list(itertools.accumulate(n for _, n in counts))  # the rank just past each value's copies
    n = ends[-1]

    def nth(rank: int) -> float:
        return values[bisect.bisect_right(ends, min(rank, n - 1))]

    result = []
    for q in quantiles:
        position = (n - 1) * q
        below = math.floor(position)
        result.append(nth(below) + (position - below) * (nth(below + 1) - nth(below)))
    return result


def score_sql(column: str, edges: list[float], reverse: bool = False) -> str:
    """SQL for the 1-5 score of ``column`` (not NULL) given four ascending quintile edges."""
    scores = (5, 4, 3, 2, 1) if reverse else (1, 2, 3, 4, 5)
    # From the highest edge down: the first edge below the value gives its score.
    above = " ".join(f"WHEN {column} > {float(edges[i])!r} THEN {scores[i + 1]}" for i in reversed(range(len(edges))))
    return f"CASE {above} ELSE {scores[0]} END"


def segment_sql(r: str, fm: str) -> str:
    """SQL naming the segment of R score ``r`` and FM score ``fm`` (NULL when either is NULL).

    The 25 cells of the grid are one constant list indexed by the scores: a lookup per row, where
    a CASE would test up to 11 rules.
    """
    names = ", ".join(_quote(segment_of(r_score, fm_score)) for r_score in range(1, 6) for fm_score in range(1, 6))
    return f"[{names}][({r} - 1) * 5 + {fm}]"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
