"""RFM quintile scores and named segments.

Scores are 1-5 from quintile edges *learned at fit time* on the buyers of the training population
(``FeatureBuilder.rfm_edges_``), so a customer scored alone, in a batch chunk or in a Spark
partition gets the same score as in the full table. A value's score is 1 + the number of edges
strictly below it (ties share a score); recency is reversed (recent = 5).

Segments follow the widely used R x FM grid, where FM = round-half-up((F + M) / 2).
"""

from __future__ import annotations

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


def segment_of(r: int, fm: int) -> str:
    """The segment name for an R score and an FM score."""
    for name, (r_lo, r_hi), (fm_lo, fm_hi) in SEGMENTS:
        if r_lo <= r <= r_hi and fm_lo <= fm <= fm_hi:
            return name
    raise ValueError(f"scores out of range: r={r}, fm={fm}")


def score_sql(column: str, edges: list[float], reverse: bool = False) -> str:
    """SQL for the 1-5 score of ``column`` given four ascending quintile edges."""
    below = " + ".join(f"CAST({column} > {float(edge)!r} AS INTEGER)" for edge in edges)
    return f"(6 - (1 + {below}))" if reverse else f"(1 + {below})"


def segment_sql(r: str, fm: str) -> str:
    """SQL naming the segment of R score ``r`` and FM score ``fm`` (NULL when either is NULL).

    The 25 cells of the grid are one constant list indexed by the scores: a lookup per row, where
    a CASE would test up to 11 rules.
    """
    names = ", ".join(_quote(segment_of(r_score, fm_score)) for r_score in range(1, 6) for fm_score in range(1, 6))
    return f"[{names}][({r} - 1) * 5 + {fm}]"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
