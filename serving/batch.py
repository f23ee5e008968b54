"""Batch scoring on one machine: features by DuckDB, scores in chunks, memory bounded by the chunk.

The features of every customer (or of a given list) are written to a temporary Parquet file by
DuckDB, which spills beyond its memory limit; the model then scores it a chunk of rows at a time
and each chunk's records are appended to the output, in order. Chunks are scored on one thread per
core (LightGBM, numpy, scipy and Arrow release the GIL), at most two per thread in flight, so
memory stays bounded by a few chunks whatever the number of customers.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.errors import LifecycleError
from features.files import sql_literal, write_relation
from features.sources import Dataset
from features.tables import output_format
from models.drift import add_counts
from models.lifecycle import LifecycleModel

LIST_TABLE = "scoring_list"


@dataclass
class BatchRun:
    """What one batch scoring read and wrote."""

    as_of: date
    out: Path
    rejects: Path | None
    scored: int
    without_history: int
    drift: dict[str, float]  # PSI of each feature against the training population; empty for a list
    drift_file: Path | None  # the same as CSV (feature, psi), next to the output


def load_customer_list(data: Dataset, path: str | Path) -> int:
    """Register the ids in ``path`` (CSV or Parquet with a ``customer_id`` column, or one column of ids)
    as the population to score, typed like the order log's ids; returns how many distinct ids."""
    path = Path(path)
    if not path.is_file():
        raise LifecycleError(f"customer list {str(path)!r} not found")
    reader = "read_parquet" if path.suffix.lower() in (".parquet", ".pq") else "read_csv"
    options = "" if reader == "read_parquet" else ", all_varchar = true, header = true"
    raw = f"{reader}({sql_literal(str(path))}{options})"
    columns = [row[0] for row in data.con.execute(f"DESCRIBE SELECT * FROM {raw}").fetchall()]
    column = "customer_id" if "customer_id" in columns else columns[0] if len(columns) == 1 else None
    if column is None:
        raise LifecycleError(f"customer list {str(path)!r} needs a customer_id column; it has {columns}")
    id_type = data.con.execute("SELECT typeof(customer_id) FROM transactions LIMIT 1").fetchall()
    id_type = id_type[0][0] if id_type else "VARCHAR"
    ids = f'trim(CAST("{column}" AS VARCHAR))'
    misfits = data.con.execute(f"SELECT {ids} FROM {raw} WHERE {ids} IS NOT NULL AND {ids} <> '' "
                               f"AND TRY_CAST({ids} AS {id_type}) IS NULL LIMIT 3").fetchall()
    if misfits:
        raise LifecycleError(f"customer list {str(path)!r}: ids like {[m[0] for m in misfits]} are not of the "
                             f"order log's id type ({id_type})")
    data.con.execute(f"CREATE OR REPLACE TEMP TABLE {LIST_TABLE} AS SELECT DISTINCT CAST({ids} AS {id_type}) "
                     f"AS customer_id FROM {raw} WHERE {ids} IS NOT NULL AND {ids} <> ''")
    return data.con.execute(f"SELECT count(*) FROM {LIST_TABLE}").fetchall()[0][0]


def list_matches(data: Dataset) -> tuple[int, int]:
    """How many of the registered list's ids occur in the order log, and how many would with leading zeros
    stripped from both (the commonest reason a list matches nothing: ``1`` against ``00001``)."""
    matched = data.con.execute(f"SELECT count(*) FROM {LIST_TABLE} WHERE customer_id IN "
                               "(SELECT customer_id FROM transactions)").fetchall()[0][0]
    stripped = "ltrim(CAST(customer_id AS VARCHAR), '0')"
    loose = data.con.execute(f"SELECT count(*) FROM {LIST_TABLE} WHERE {stripped} IN "
                             f"(SELECT {stripped} FROM transactions)").fetchall()[0][0]
    return matched, loose


def score_batch(model: LifecycleModel, data: Dataset, as_of: date, out: str | Path, customer_list: bool = False,
                chunk_rows: int = 100_000, on_chunk: Callable[[int, int], None] | None = None) -> BatchRun:
    """Score every known customer at ``as_of`` (or the registered customer list) into ``out``.

    ``out`` is Parquet or CSV by extension; rejected input rows go next to it with their reasons.
    ``on_chunk(done, total)`` is called after each chunk (for a progress bar). Scoring everyone also
    measures each feature's drift from the population the model was fitted on (a list is a chosen
    few, not a population).
    """
    out = Path(out)
    output_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects = out.with_name(f"{out.stem}.rejects{out.suffix}")
    rejects.unlink(missing_ok=True)
    rejected = data.write_rejects(rejects)
    population = LIST_TABLE if customer_list else None
    with tempfile.TemporaryDirectory() as tmp:
        features_path = Path(tmp) / "features.parquet"
        write_relation(model.builder.transform(data, as_of, population), features_path)
        features = pq.ParquetFile(features_path)
        total, done, without_history, counts = features.metadata.num_rows, 0, 0, {}
        if total == 0:
            raise LifecycleError("nothing to score: no customer is known" + (" from the list" if customer_list else ""))
        threads = os.cpu_count() or 1
        with _Writer(out) as writer, ThreadPoolExecutor(threads) as pool:
            pending = deque()

            def write_oldest() -> None:
                nonlocal done
                records = pending.popleft().result()
                writer.write(records)
                done += len(records)
                if on_chunk:
                    on_chunk(done, total)

            for batch in features.iter_batches(batch_size=chunk_rows):
                frame = batch.to_pandas()
                if customer_list:
                    without_history += int((frame["orders"] == 0).sum())
                elif model.profile is not None:
                    counts = add_counts(counts, model.profile.counts(frame))
                pending.append(pool.submit(model.predict, frame))
                if len(pending) > 2 * threads:
                    write_oldest()
            while pending:
                write_oldest()
    drift = model.profile.psi(counts) if counts else {}
    drift_file = out.with_name(f"{out.stem}.drift.csv")
    drift_file.unlink(missing_ok=True)
    if drift:
        pacsv.write_csv(pa.table({"feature": list(drift), "psi": list(drift.values())}), drift_file)
    return BatchRun(as_of, out, rejects if rejected else None, done, without_history, drift,
                    drift_file if drift else None)


class _Writer:
    """Appends chunks of records to one Parquet or CSV file with one schema."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None
        self.parquet = output_format(path) == "parquet"

    def __enter__(self) -> _Writer:
        return self

    def write(self, records) -> None:
        table = pa.Table.from_pandas(records, preserve_index=False)
        if self.writer is None:
            # A column with no value in the first chunk can only be text (segment, next stage, version).
            self.schema = pa.schema([f.with_type(pa.string()) if f.type == pa.null() else f for f in table.schema])
            self.writer = pq.ParquetWriter(self.path, self.schema) if self.parquet else pacsv.CSVWriter(
                self.path, self.schema)
        self.writer.write_table(table.cast(self.schema))

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
