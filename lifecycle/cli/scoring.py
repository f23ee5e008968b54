"""The commands that score and show: ``score`` (locally or on Spark), ``report``, ``serve`` and ``demo``, the main
job (train, score and report on CDNOW)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from features.errors import LifecycleError
from features.tables import TableSource, output_format
from lifecycle.cli import render
from lifecycle.cli.application import (
    AsOfOption,
    CustomersOption,
    Engine,
    EventsOption,
    ExcludeOption,
    HostOption,
    IncludeOption,
    PortOption,
    TransactionsOption,
    app,
    command_settings,
    settings_with_inputs,
    spark_session,
)
from lifecycle.cli.render import console, errors
from lifecycle.config import Settings


@app.command()
def serve(
    ctx: typer.Context,
    port: PortOption = 3000,
    host: HostOption = "127.0.0.1",
) -> None:
    """Serve the scoring API (BentoML), following the champion without restarts.

    POST /score: output records for feature records (one object per customer).
    POST /score_history: output records from raw orders (and events, customer rows) as of a day.
    POST /model: which model answers, its decisions, track record and gate.
    GET /docs: this API's page, with examples; /docs.json: its OpenAPI description; /swagger: the interactive page;
    /livez, /readyz: health; /metrics: Prometheus.
    Bearer-token auth when LIFECYCLE_SERVING__API_TOKEN is set (every POST and /metrics).

    Example: [bold]lifecycle serve --port 3000[/bold]
    """
    from lifecycle.training import open_registry, registry

    settings = command_settings(ctx)
    client, uri = open_registry(settings)
    alias = settings.serving.model_uri.partition("@")[2]
    if alias and registry.alias_version(client, alias) is None:
        raise LifecycleError(f"{settings.serving.model_uri} does not exist yet: run `lifecycle train` first")
    serving = settings.serving
    exported = serving.model_dump(exclude_none=True)  # the service reads them back
    if serving.api_token is not None:
        exported["api_token"] = serving.api_token.get_secret_value()
    # OpenTelemetry off unless asked for (OTEL_SDK_DISABLED=false): BentoML records spans for every request
    # even when it exports none, which costs a busy server about a fifth of its time
    env = {"OTEL_SDK_DISABLED": "true", **os.environ, "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(settings.state_dir / "bentoml"), "LIFECYCLE_MLFLOW__TRACKING_URI": uri,
           **{f"LIFECYCLE_SERVING__{name.upper()}": str(value) for name, value in exported.items()}}
    console.print(f"serving {serving.model_uri} from {uri} on [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:LifecycleService", "--host", host,
               "--port", str(port)]
    os.execve(sys.executable, command, env)  # the server takes this process over: its PID is ours


@app.command()
def score(
    ctx: typer.Context,
    out: Annotated[str, typer.Option(help="Output file: .parquet or .csv; rejected input rows go next to it "
                                          "(with --engine spark: a folder, local or a URL like s3a://...).")
                   ] = "scores.parquet",
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    exclude: ExcludeOption = None,
    include: IncludeOption = None,
    customer_list: Annotated[str | None, typer.Option(
        help="Score only these customers: CSV/Parquet with a customer_id column. Ids without any history "
             "are scored as prospects we know nothing about.")] = None,
    as_of: AsOfOption = None,
    model_uri: Annotated[str | None, typer.Option(
        help="MLflow model URI (default: models:/customer-lifecycle@champion).")] = None,
    engine: Annotated[Engine, typer.Option(
        help="local: DuckDB on this machine. spark: the same feature code in Spark partitions of customers "
             "(pip install 'customer-lifecycle\\[spark]'; master from spark.master), output as a folder.")
    ] = Engine.local,
) -> None:
    """Score every customer (or a list) with the champion into a file, in chunks of bounded memory.

    Example: [bold]lifecycle score --transactions "exports/orders-*.parquet" --out out/scores.parquet[/bold]
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lifecycle.pipeline import as_of_day, open_dataset
    from lifecycle.training import load_model
    from serving.batch import load_customer_list, score_batch

    settings = settings_with_inputs(ctx, transactions, events, customers, as_of, exclude=exclude, include=include)
    if engine is Engine.local:
        output_format(out)  # before anything is read or written
    if engine is Engine.spark:
        _score_on_spark(settings, out, customer_list, model_uri)
        return
    with console.status("loading the model..."):
        model = load_model(settings, model_uri)
    with console.status("validating inputs..."):
        data = open_dataset(settings)
        listed = load_customer_list(data, customer_list) if customer_list else None
    day = as_of_day(settings, data)
    if listed is not None:
        _warn_about_list(data, listed, customer_list)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("building features...", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, description="scoring", completed=done, total=total)

        run = score_batch(model, data, day, out, customer_list=listed is not None, on_chunk=advance)
    render.inputs(data)
    render.row_accounting({name: (r.rows, r.valid, r.rejected_total) for name, r in data.report.items()},
                          run.rejects)
    whom = f"{listed:,} listed customers, {run.without_history:,} without history" if listed is not None else (
        "every known customer")
    console.print(f"scored {run.scored:,} customers ({whom}) as of {day} with model version {model.version}: "
                  f"[bold]{run.out}[/bold]")
    if run.drift:
        render.drift(run.drift, f"the training data of version {model.version}")
        console.print(f"every feature's drift: [bold]{run.drift_file}[/bold]")


@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for report.html and the KPI tables (CSV).")] = Path("report"),
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    exclude: ExcludeOption = None,
    include: IncludeOption = None,
    scores: Annotated[str | None, typer.Option(
        help="Records of `lifecycle score` (Parquet or CSV) to report on, scored from these inputs; default: score "
             "every customer with the champion first (into the report's folder).")] = None,
    as_of: AsOfOption = None,
) -> None:
    """Lifecycle KPIs (funnel, cohorts, CLV:CAC by channel, NPS/CSAT, value at risk) as tables and one HTML page.

    Example: [bold]lifecycle report --transactions orders.csv --customers customers.csv --out report[/bold]
    """
    from lifecycle.pipeline import as_of_day, open_dataset
    from lifecycle.training import load_model
    from serving.batch import score_batch
    from serving.report import build_report

    settings = settings_with_inputs(ctx, transactions, events, customers, as_of, exclude=exclude, include=include)
    with console.status("loading the model..."):
        model = load_model(settings)
    with console.status("validating inputs..."):
        data = open_dataset(settings)
    if scores is None:
        scores = str(out / "scores.parquet")
        day = as_of_day(settings, data)
        with console.status(f"scoring every customer as of {day} with version {model.version}..."):
            score_batch(model, data, day, scores)
    with console.status("computing the KPIs..."):
        built = build_report(data, model, scores, out)
    render.report_made(built, model.currency)


def _score_on_spark(settings: Settings, out: str, customer_list: str | None, model_uri: str | None) -> None:
    if settings.as_of is None:
        raise LifecycleError("the Spark engine needs the scoring day: pass --as-of (or set as_of)")
    from features.spark import where
    from lifecycle.pipeline import reading
    from lifecycle.training import open_registry
    from serving.spark import score_spark

    spark = spark_session(settings, "lifecycle score")
    open_registry(settings)
    inputs = settings.inputs
    engine = where(spark)
    with console.status(f"scoring on Spark ({engine})..."):
        run = score_spark(spark, model_uri or settings.serving.model_uri,
                          inputs.tables(), settings.as_of, out, reading(settings), customer_list=customer_list,
                          partitions=settings.spark.partitions)
    render.row_accounting({name: (rows, rows - run.rejected[name], run.rejected[name])
                           for name, rows in run.rows.items()}, run.rejects)
    whom = f"listed customers, {run.without_history:,} without history" if customer_list else "every known customer"
    console.print(f"scored {run.scored:,} customers ({whom}) as of {run.as_of} with model version {run.version} on "
                  f"Spark ({escape(engine)}): [bold]{run.out}[/bold]")
    if run.drift:
        render.drift(run.drift, f"the training data of version {run.version}")
        console.print(f"every feature's drift: [bold]{run.drift_path}[/bold]")


def _warn_about_list(data, listed: int, path: str) -> None:
    """A warning when fewer than half of the listed ids occur in the order log, with the likely cause."""
    from serving.batch import list_matches

    matched, without_zeros = list_matches(data)
    if listed and matched < listed / 2:
        cause = (f"; {without_zeros:,} would match without leading zeros (ids are compared as text: '1' is not "
                 "'00001')" if without_zeros > matched else "")
        errors.print(f"[yellow]warning:[/yellow] only {matched:,} of the {listed:,} ids in {escape(path)} occur in the "
                     f"order log: the rest are scored as prospects we know nothing about{cause}", highlight=False)


@app.command()
def demo(ctx: typer.Context, verbose: Annotated[bool, typer.Option(
        "--verbose", help="Print the diagnostics too: the inputs, the training run's choices and metrics over its "
                          "cut dates, the published models' fits.")] = False) -> None:
    """The main job on the real CDNOW data: train, register the champion, score every customer, write the report;
    then what a shop acts on (the diagnostics go to a file, or with --verbose to the screen).

    Example: [bold]lifecycle demo[/bold]
    """
    import pandas as pd

    from features import cdnow
    from lifecycle.pipeline import open_dataset
    from lifecycle.training import load_model, run_training
    from serving.batch import score_batch
    from serving.report import build_report

    settings = command_settings(ctx)
    settings.currency = settings.currency or "USD"  # CDNOW's amounts are US dollars
    output = settings.state_dir / "output"
    out = output / "cdnow_scores.parquet"
    with render.step("writing and validating the CDNOW master log"):
        path = cdnow.write_master(settings.state_dir / "data" / "cdnow")
        settings.inputs.transactions = TableSource(path=str(path))
        data = open_dataset(settings)
    with render.step("training out of time (features, purchase models, Gamma-Gamma, LightGBM) and gating"):
        run = run_training(settings, data)
    with render.step("scoring every customer with the champion"):
        model = load_model(settings)
        score_batch(model, data, run.result.windows.end, out)
        scores = pd.read_parquet(out)
    with render.step("writing the lifecycle report"):
        built = build_report(data, model, out, output / "report")
    with render.step("fitting the published models on the papers' sample"):
        published = _fit_published()
    render.business_summary(run, scores, built, out)
    with console.capture() as captured:
        render.inputs(data)
        render.training_run(run, settings.clv.model)
        render.published_fits(published)
    shown, diagnostics = Text.from_ansi(captured.get()), output / "demo_diagnostics.txt"
    diagnostics.write_text(shown.plain, encoding="utf-8")
    if verbose:
        console.print(shown)
    console.print(f"diagnostics (the inputs, the training run's choices and track record, the published fits): "
                  f"[bold]{diagnostics}[/bold]" + ("" if verbose else "; --verbose prints them"))


def _fit_published() -> dict:
    """BG/NBD and Pareto/NBD fitted on the published estimation sample (CDNOW 1/10, weeks 1-39), by name."""
    import pandas as pd

    from features import cdnow
    from models.purchase_models import PURCHASE_MODELS

    sample = pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"))
    return {name: PURCHASE_MODELS[name]().fit(sample.x, sample.t_x, sample["T"]) for name in cdnow.PUBLISHED_FITS}
