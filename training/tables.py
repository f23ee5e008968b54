"""The tables a run fits and is judged on: features at a date joined with what customers did after it.

No whole-base table is read into memory: the BTYD fits take every buyer as distinct rows with their counts
(``training.base``); the classifiers and the learned CLV learn from a sample of at most a set number of customers
(``Sample.trained``), and each cut date is judged on another (``Sample.judged``): each a share of the customers drawn
by a salted hash of the id, so the same customers in every table of a run, whichever engine computes it. On shops
smaller than both, every customer is in every table. The temporary DuckDB tables the feature builds leave behind are
dropped phase by phase (``scratch``).

DuckDB returns rows in no fixed order; every table is in customer order and every aggregate sorted, so that the
seeded splits, and so every run, are reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import partial

import duckdb
import pandas as pd

from features.build import FeatureBuilder
from features.sources import Dataset
from models.lifecycle import Horizons
from models.rows import BuyerRows
from training.backtest import judged_share
from training.base import Base
from training.windows import Windows

# Label columns joined to the features (orders renamed: the features have their own).
LABELS = ["purchases", "orders_in_window", "spend", "churned", "reached_next_stage"]
_HASHES = 2.0**64  # DuckDB's hash is a UBIGINT


def _draw(salt: int) -> str:
    """A uniform 64-bit draw per customer id, the same in every query, independent for each ``salt``: the hash of the
    id's text (the same whether an engine reads ids as numbers or as text), salted and hashed again
    (``hash(customer_id, salt)`` would not do: DuckDB combines the two hashes linearly, and two salts' draws correlate
    at 0.88)."""
    return f"hash(xor(hash(CAST(customer_id AS VARCHAR)), {salt}::UBIGINT))"


_names = itertools.count()  # of the temporary tables holding a sample


@dataclass(frozen=True)
class Sample:
    """The customers whose draw (``draw``: SQL over ``customer_id``) falls below ``share`` of its range; 1.0 is
    everyone. Built by ``judged`` or ``trained``."""

    share: float = 1.0
    draw: str = _draw(0x9E3779B97F4A7C15)

    @classmethod
    def judged(cls, customers: int) -> Sample:
        """The customers each cut date is judged on, of a shop of ``customers`` with an order (about
        ``training.backtest.MOST_JUDGED``; the same in every table, at every cut date and in the gate)."""
        return cls(judged_share(customers))

    @classmethod
    def trained(cls, most: int, customers: int) -> Sample:
        """About ``most`` of a shop's ``customers`` (known from any table), drawn independently of the judged sample:
        the customers the classifiers and the learned CLV learn from, the same at every date, every lifecycle stage
        in proportion to its size up to the draw's noise."""
        return cls(min(1.0, most / max(customers, 1)), _draw(0xD1B54A32D192ED03))

    def condition(self) -> str:
        """A SQL condition on rows with a ``customer_id`` that keeps this sample's."""
        return "true" if self.share >= 1 else f"{self.draw} < {self.share * _HASHES!r}"


EVERYONE = Sample()


@contextmanager
def scratch(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Drop, on leaving, the temporary tables made inside (feature builds keep their per-customer aggregates in
    one per date): a phase's tables in DuckDB live no longer than the phase."""
    before = set(_temporary_tables(con))
    try:
        yield
    finally:
        for table in set(_temporary_tables(con)) - before:
            con.execute(f"DROP TABLE IF EXISTS {table}")


def _temporary_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [name for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()]


def _sampled(data: Dataset, features: duckdb.DuckDBPyRelation, sample: Sample) -> str:
    """A temporary table of ``sample``'s rows of ``features``; its name."""
    name = f"sample_{next(_names)}"
    data.con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM ({features.sql_query()}) WHERE {sample.condition()}")
    return name


def _with_window(data: Dataset, table: str, window: duckdb.DuckDBPyRelation, columns: list[str]) -> pd.DataFrame:
    """The rows of ``table`` (one per customer) with ``columns`` of a ``FeatureBuilder.window``, 0 where a customer
    did not order in it."""
    done = ", ".join(f"coalesce(w.{column}, 0) AS {column}" for column in columns)
    return data.con.sql(f"SELECT t.*, {done} FROM {table} AS t LEFT JOIN ({window.sql_query()}) AS w "
                        "USING (customer_id)").df()


def sampled(data: Dataset, features: duckdb.DuckDBPyRelation, sample: Sample) -> pd.DataFrame:
    """``sample``'s rows of ``features``, in customer order."""
    table = _sampled(data, features, sample)
    chosen = data.con.sql(f"SELECT * FROM {table}").df()
    data.con.execute(f"DROP TABLE {table}")
    return chosen.sort_values("customer_id", ignore_index=True)


def labelled(data: Dataset, builder: FeatureBuilder, features: duckdb.DuckDBPyRelation, as_of: date,
             horizons: Horizons, sample: Sample = EVERYONE) -> pd.DataFrame:
    """``sample``'s customers of ``features`` (``builder``'s at ``as_of``) with their labels over the churn horizon,
    in customer order."""
    table = _sampled(data, features, sample)
    labels = builder.labels(data, as_of, horizons.churn_days, population=table)
    chosen = data.con.sql(f"SELECT * FROM {table}").df()
    done = labels.df().rename(columns={"orders": "orders_in_window"})[["customer_id", *LABELS]]
    data.con.execute(f"DROP TABLE {table}")
    return chosen.merge(done, on="customer_id", validate="one_to_one").sort_values("customer_id", ignore_index=True)


def value_table(data: Dataset, builder: FeatureBuilder, features: duckdb.DuckDBPyRelation, as_of: date, days: int,
                sample: Sample = EVERYONE) -> pd.DataFrame:
    """``sample``'s buyers of ``features`` (``builder``'s at ``as_of``): their features and ``spend`` over the next
    ``days`` days, in customer order."""
    table = _sampled(data, features.filter("orders > 0"), sample)
    chosen = _with_window(data, table, builder.window(data, as_of, days), ["spend"])
    data.con.execute(f"DROP TABLE {table}")
    return chosen.sort_values("customer_id", ignore_index=True)


@dataclass(frozen=True)
class Holdout:
    """A cut date's BTYD calibration and holdout: every buyer at the calibration end as ``BuyerRows`` (what the
    holdout models are fitted on), and the judged ones' table (``holdout_table``)."""

    rows: BuyerRows
    table: pd.DataFrame


def holdouts(base: Base, builders: list[FeatureBuilder], cuts: list[Windows], horizons: Horizons,
             sample: Sample = EVERYONE) -> list[Holdout]:
    """The ``Holdout`` of each cut date of ``cuts`` (``builders[k]`` building the summaries of ``cuts[k]``), its table
    holding ``sample``'s buyers: computed where the base's customers are, in one pass (``Base.gather``)."""
    parts = base.gather(partial(_holdout_tables, builders=builders, cuts=cuts, horizons=horizons, sample=sample),
                        sample)
    return [Holdout(base.rows(win.btyd_calibration_end), in_customer_order([part[k] for part in parts]))
            for k, win in enumerate(cuts)]


def _holdout_tables(data: Dataset, builders: list[FeatureBuilder], cuts: list[Windows], horizons: Horizons,
                    sample: Sample) -> list[pd.DataFrame]:
    return [holdout_table(data, builder, win, horizons, sample) for builder, win in zip(builders, cuts, strict=True)]


def in_customer_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One table of the same table's rows from partitions of customers (``Base.gather``), in customer order."""
    if len(parts) == 1:
        return parts[0]
    rows = [part for part in parts if len(part)] or parts[:1]
    return pd.concat(rows, ignore_index=True).sort_values("customer_id", ignore_index=True)


def holdout_table(data: Dataset, builder: FeatureBuilder, win: Windows, horizons: Horizons,
                  sample: Sample = EVERYONE) -> pd.DataFrame:
    """``sample``'s buyers at the BTYD calibration end (a judged sample): their BTYD summary, what they did over the
    holdout (purchases, spend; ``churned``: no purchase in its first churn horizon) and their summary at the end
    (``frequency_end``, ``recency_end``, ``T_end``), in customer order."""
    cut = win.btyd_calibration_end
    table = _sampled(data, builder.summary(data, cut), sample)
    churn = builder.window(data, cut, horizons.churn_days).sql_query()
    end = builder.summary(data, win.end).sql_query()
    done = _with_window(data, f"""(
        SELECT t.*, c.customer_id IS NULL AS churned, e.frequency AS frequency_end, e.recency AS recency_end,
            e.T AS T_end
        FROM {table} AS t LEFT JOIN ({churn}) AS c USING (customer_id) JOIN ({end}) AS e USING (customer_id))""",
                        builder.window(data, cut, win.btyd_holdout_days), ["purchases", "spend"])
    data.con.execute(f"DROP TABLE {table}")
    return done.sort_values("customer_id", ignore_index=True)
