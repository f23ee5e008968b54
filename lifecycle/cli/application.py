"""The ``lifecycle`` application: its options, the settings every command starts from, and the entry point,
which turns every error into one line and an exit code (the commands are in ``commands``)."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from features.errors import LifecycleError
from features.tables import TableSource
from lifecycle.cli.render import errors
from lifecycle.config import Settings, load_settings, unknown_variables

_state: dict[str, Path] = {}  # "folder": the state folder, once a command has read the configuration
app = typer.Typer(
    help="Predict churn, lifecycle stage and customer lifetime value from an online shop's order log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Write the datasets the project ships or makes.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (default: ./lifecycle.toml if present).",
                 exists=False, dir_okay=False),
]


TransactionsOption = Annotated[str | None, typer.Option(help="Orders: CSV/Parquet file or glob.")]
EventsOption = Annotated[str | None, typer.Option(help="Engagement events: CSV/Parquet file or glob.")]
CustomersOption = Annotated[str | None, typer.Option(help="Customer table: CSV/Parquet file or glob.")]
ExcludeOption = Annotated[list[str] | None, typer.Option(
    help="Orders to leave out, by one of your columns (repeatable; replaces inputs.transactions.exclude): "
    "'Financial Status in [voided, refunded]', 'Tags contains test', 'Cancelled at is not empty'.")]
IncludeOption = Annotated[list[str] | None, typer.Option(
    help="Orders to keep, the others left out (repeatable; replaces inputs.transactions.include): "
    "'Order Status in [completed, processing]'.")]
AsOfOption = Annotated[
    datetime | None, typer.Option(formats=["%Y-%m-%d"], help="As-of date (default: the last order day).")
]
HostOption = Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")]


class Engine(StrEnum):
    """Where ``lifecycle train`` and ``lifecycle score`` run."""

    local = "local"
    spark = "spark"


TrainingEngineOption = Annotated[Engine, typer.Option(
    help="local: DuckDB on this machine. spark: what training needs of every customer (the fits' rows, the samples, "
         "the forecast) computed in Spark partitions of customers, the rest on this machine (pip install "
         "'customer-lifecycle\\[spark]'; master from spark.master).")]


def spark_session(settings: Settings, name: str):
    """A SparkSession on the configured master (``spark.master``) or Spark Connect server (``spark.remote``,
    ``SPARK_REMOTE``), or a one-line error where pyspark (or, for Spark Connect, its gRPC client) is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise LifecycleError("the Spark engine needs pyspark: pip install 'customer-lifecycle[spark]'") from None
    from features.spark import session

    try:
        return session(settings.spark.master, name, settings.spark.conf, settings.spark.remote)
    except ImportError as exc:  # Spark Connect's client (gRPC) missing
        raise LifecycleError(f"the Spark engine misses a package: pip install 'customer-lifecycle[spark]' ({exc})"
                             ) from None


PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None) -> None:
    ctx.obj = config


def command_settings(ctx: typer.Context, **overrides) -> Settings:
    """The configuration (``--config``, the environment, the defaults) with a command's overrides; warns of
    environment variables that are not settings."""
    for line in unknown_variables(os.environ):
        errors.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    settings = load_settings(ctx.obj, **overrides)
    _state["folder"] = settings.state_dir
    return settings


def settings_with_inputs(ctx: typer.Context, transactions: str | None, events: str | None, customers: str | None,
                          as_of: datetime | None = None, exclude: list[str] | None = None,
                          include: list[str] | None = None) -> Settings:
    """The settings with the command line's as-of day, input paths (which keep the configured column maps) and the
    orders' row filters."""
    settings = command_settings(ctx, as_of=as_of.date() if as_of else None)
    for name, path in (("transactions", transactions), ("events", events), ("customers", customers)):
        if path is not None:
            source: TableSource = getattr(settings.inputs, name)
            setattr(settings.inputs, name, source.model_copy(update={"path": path}))
    filters = {key: value for key, value in (("exclude", exclude), ("include", include)) if value}
    if filters:
        try:
            orders = TableSource(**{**settings.inputs.transactions.model_dump(), **filters})
        except ValidationError as exc:
            raise LifecycleError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        settings.inputs.transactions = orders
    return settings


def main() -> None:
    """Entry point: user mistakes end with one clear line and exit code 2, never a traceback."""
    # MLflow's INFO lines (creating the store's tables, validating the input example) are not
    # news to a user; MLFLOW_LOGGING_LEVEL=INFO brings them back.
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING").upper()
    logging.getLogger("mlflow").setLevel(level)  # for an MLflow already loaded in this process
    try:
        app()
    except LifecycleError as exc:
        _fail(str(exc), 2)
    except Exception as exc:
        duckdb = sys.modules.get("duckdb")  # loaded by the commands that read data, if this one did
        if duckdb is not None and isinstance(exc, duckdb.Error):
            _fail(str(exc).splitlines()[0], 2)
        if isinstance(exc, OSError):  # the machine refused: a read-only or missing folder, a full disk
            _fail(_os_problem(exc), 2)
        # a bug of ours: one line for the user, the trace for the report
        where = _write_trace()
        _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (the full trace "
              f"is in {where}; please include it when you report this)", 1)


def _fail(message: str, code: int) -> None:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    sys.exit(code)


def _os_problem(exc: OSError) -> str:
    where = exc.filename or ""
    line = f"{exc.strerror or exc}: {where}" if where else str(exc)
    state = _state.get("folder")
    if state is not None and where and Path(where).resolve().is_relative_to(state):
        line += f" (the state folder {state} must be writable; set state_dir or LIFECYCLE_STATE_DIR to move it)"
    return line


def _write_trace() -> Path:
    """Append the current exception's trace to the state folder's log (or a temporary file); its path."""
    import tempfile
    import traceback

    text = f"--- {datetime.now():%Y-%m-%d %H:%M:%S} lifecycle {' '.join(sys.argv[1:])}\n{traceback.format_exc()}"
    for folder in (_state.get("folder"), Path(tempfile.gettempdir())):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "lifecycle.log"
            with path.open("a") as log:
                log.write(text)
            return path
        except OSError:
            continue
    return Path("(nowhere: no writable folder)")
