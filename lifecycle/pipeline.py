"""Jobs the CLI runs, wiring configuration to the feature builders."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from features.build import FeatureBuilder
from features.cycle import purchase_cycle
from features.files import sql_literal, write_relation
from features.sources import Dataset, connect, load
from features.spark import Reading
from features.tables import output_format
from lifecycle.config import Settings
from training.choices import AUTO


@dataclass
class FeatureRun:
    """What one feature build read, wrote and found."""

    data: Dataset
    builder: FeatureBuilder
    as_of: date
    out: Path
    rejects: Path | None
    customers: int
    rows_after_as_of: int
    stages: list[tuple[str, int]]
    segments: list[tuple[str, int, float]]
    seconds: dict[str, float]  # per phase: validate, features, write

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def open_dataset(settings: Settings, now: datetime | None = None) -> Dataset:
    """Load and validate the configured input tables into a fresh DuckDB connection (with ``as_of`` set, what the
    files tell is later is not read: ``features.sources.load``'s ``until``)."""
    con = connect(settings.duckdb.memory_limit, settings.state_dir / "duckdb_tmp", settings.duckdb.threads)
    options = reading(settings, now)  # the same options, whichever engine reads
    return load(con, settings.inputs.tables(), now=options.now, future_tolerance_days=options.future_tolerance_days,
                emails=options.emails, currency=options.currency, until=settings.as_of)


def reading(settings: Settings, now: datetime | None = None) -> Reading:
    """How the input tables are read (``features.spark.Reading``), as ``open_dataset`` reads them."""
    return Reading(now=now or datetime.now(UTC).replace(tzinfo=None),
                   future_tolerance_days=settings.future_tolerance_days, emails=settings.inputs.customer_ids == "email",
                   currency=settings.currency)


@dataclass(frozen=True)
class ChurnHorizon:
    """The churn horizon a command uses: settings that hold it in days, where it comes from, and a warning for a
    configured one far shorter than the shop's purchase cycle."""

    settings: Settings
    why: str
    warning: str | None


def as_of_day(settings: Settings, data: Dataset) -> date:
    """The day a command works as of: the configured one, else the last order day (today without orders)."""
    last = data.date_range()[1]
    return settings.as_of or (last.date() if last is not None else date.today())


def with_churn_horizon(settings: Settings, data: Dataset) -> ChurnHorizon:
    """``settings`` with ``churn_horizon_days`` in days: derived from the orders up to the as-of date (the last
    order day by default) when it is ``"auto"`` (``features.cycle``), else as configured."""
    cycle = purchase_cycle(data, as_of_day(settings, data))
    configured = settings.churn_horizon_days
    days = cycle.churn_horizon if configured == AUTO else configured
    return ChurnHorizon(settings.model_copy(update={"churn_horizon_days": days}), cycle.describe(days),
                        None if configured == AUTO else cycle.warning(configured))


def build_features(settings: Settings, out: Path) -> FeatureRun:
    """Build the feature table at the configured as-of date and write it (and the rejects) to ``out``; an
    ``"auto"`` churn horizon is derived from the data (``with_churn_horizon``)."""
    output_format(out)
    clock = _Clock()
    data = open_dataset(settings)
    settings = with_churn_horizon(settings, data).settings
    as_of = as_of_day(settings, data)
    clock.lap("validate")
    builder = settings.feature_builder()
    features = builder.fit_transform(data, as_of)
    clock.lap("features")
    out = Path(out)
    write_relation(features, out)
    rejects = out.with_name(f"{out.stem}.rejects{out.suffix}")
    rejects.unlink(missing_ok=True)
    written = data.write_rejects(rejects)
    clock.lap("write")
    con = data.con
    source = sql_literal(str(out))
    stages = con.execute(f"SELECT stage, count(*) FROM {source} GROUP BY ALL ORDER BY min(stage_rank)").fetchall()
    segments = con.execute(
        f"SELECT rfm_segment, count(*), avg(total_spend) FROM {source} WHERE rfm_segment IS NOT NULL "
        "GROUP BY ALL ORDER BY 2 DESC"
    ).fetchall()
    after = con.execute(
        f"SELECT count(*) FROM transactions WHERE timestamp >= DATE '{as_of}' + 1"
    ).fetchall()[0][0]
    return FeatureRun(
        data=data, builder=builder, as_of=as_of, out=out, rejects=rejects if written else None,
        customers=sum(n for _, n in stages), rows_after_as_of=after, stages=stages, segments=segments,
        seconds=clock.laps,
    )


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
