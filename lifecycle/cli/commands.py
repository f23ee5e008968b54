"""The ``lifecycle`` commands for data, features, training and the registry: what each does and its options
(``render`` shows the results; ``application`` holds the application and its entry point)."""

from __future__ import annotations

import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from features.errors import LifecycleError
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
    TrainingEngineOption,
    TransactionsOption,
    app,
    command_settings,
    config_app,
    data_app,
    settings_with_inputs,
    spark_session,
)
from lifecycle.cli.render import console, errors
from lifecycle.config import DEFAULT_CONFIG


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML.

    Example: [bold]LIFECYCLE_CHURN_HORIZON_DAYS=60 lifecycle config show[/bold]
    """
    console.print(command_settings(ctx).to_toml(), markup=False, highlight=False)


@app.command()
def init(
    ctx: typer.Context,
    files: Annotated[list[str], typer.Argument(
        help="Your orders export (CSV or Parquet, a glob in quotes), then optionally engagement events and a "
             "customer table.")],
    force: Annotated[bool, typer.Option(help="Replace an existing lifecycle.toml.")] = False,
) -> None:
    """Write a commented lifecycle.toml that reads your own export: Shopify, WooCommerce and Stripe exports are
    recognised by their headers, other files get their columns guessed from common names.

    Example: [bold]lifecycle init orders_export_1.csv[/bold], then [bold]lifecycle train[/bold]
    """
    from lifecycle.onboarding import initialise

    target = ctx.obj or DEFAULT_CONFIG
    made = initialise(files, Path(target), force)
    render.onboarding(made)


@data_app.command("cdnow")
def data_cdnow(
    out: Annotated[Path, typer.Option(help="Folder to write transactions.csv into.")] = Path("data/cdnow"),
) -> None:
    """Write the real CDNOW master log (ships inside lifetimes) in our canonical schema.

    Example: [bold]lifecycle data cdnow --out data/cdnow[/bold]
    """
    from features import cdnow

    path = cdnow.write_master(out)
    console.print(f"wrote [bold]{path}[/bold]: 69,659 orders of 23,570 customers, 1997-01-01..1998-06-30")


@data_app.command("simulate")
def data_simulate(
    out: Annotated[Path, typer.Option(help="Folder to write the tables and the ground truth into.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers (buyers and prospects).")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same shop.")] = 0,
    days: Annotated[int, typer.Option(min=30, help="Length of the observation window in days.")] = 730,
    start: Annotated[str, typer.Option(help="First day of the window.")] = "2024-01-01",
    events: Annotated[bool, typer.Option(help="Also simulate engagement events.")] = True,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    process: Annotated[str, typer.Option(help="How customers drop out: bgnbd (after a repeat purchase) or "
                                              "pareto_nbd (at any moment).")] = "bgnbd",
) -> None:
    """Simulate a shop with known ground truth (BG/NBD or Pareto/NBD purchases, Gamma-Gamma spend, engagement).

    Example: [bold]lifecycle data simulate --customers 100000 --seed 7 --process pareto_nbd --out data/sim[/bold]
    """
    from features.simulator import SimulationParams, simulate

    if fmt not in ("parquet", "csv"):
        raise LifecycleError(f"--format must be parquet or csv, not {fmt!r}")
    if process not in ("bgnbd", "pareto_nbd"):
        raise LifecycleError(f"--process must be bgnbd or pareto_nbd, not {process!r}")
    try:
        start_date = date.fromisoformat(start)
    except ValueError:
        raise LifecycleError(f"--start must be a date like 2024-01-01, not {start!r}") from None
    with console.status(f"simulating {customers:,} customers..."):
        sim = simulate(SimulationParams(customers=customers, seed=seed, days=days, start=str(start_date),
                                        events=events, process=process))
        paths = sim.write(out, fmt)
    table = Table("table", "rows", "file",
                  title=f"simulated {process} shop (seed {seed}), {start_date}..{sim.end.date()}")
    for name, path in paths.items():
        table.add_row(name, f"{len(getattr(sim, name)):,}", str(path))
    console.print(table)
    console.print(f"ground truth parameters: {out / 'truth.json'} (see docs/simulator.md)")


@app.command()
def features(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv; rejects go next to it.")],
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    exclude: ExcludeOption = None,
    include: IncludeOption = None,
    as_of: AsOfOption = None,
) -> None:
    """Build one row of point-in-time features per customer and write it to a file.

    Inputs and column maps come from the configuration; flags override the paths.

    Example: [bold]lifecycle features --transactions data/cdnow/transactions.csv --out out/features.parquet[/bold]
    """
    from lifecycle.pipeline import build_features

    settings = settings_with_inputs(ctx, transactions, events, customers, as_of, exclude=exclude, include=include)
    with console.status("validating inputs and building features..."):
        run = build_features(settings, out)
    render.feature_run(run)


@app.command()
def train(
    ctx: typer.Context,
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    exclude: ExcludeOption = None,
    include: IncludeOption = None,
    as_of: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d"], help="Train as of this day, on nothing later (backfills, reruns; default: the last "
                                   "order day). A model older than the champion's data is never promoted by the "
                                   "gate.")] = None,
    engine: TrainingEngineOption = Engine.local,
) -> None:
    """Train out of time, log to MLflow, register a version and promote it if it passes the gate.

    Example: [bold]lifecycle train --transactions data/cdnow/transactions.csv[/bold]
    """
    from lifecycle.training import run_training

    settings = settings_with_inputs(ctx, transactions, events, customers, as_of, exclude=exclude, include=include)
    spark = spark_session(settings, "lifecycle train") if engine is Engine.spark else None
    where = ""
    if spark:
        from features.spark import where as spark_where

        where = f" on Spark ({spark_where(spark)})"
    with console.status(f"training{where} (features, purchase models, Gamma-Gamma, LightGBM) and gating...") as status:
        run = run_training(settings, on_wait=lambda line: status.update(line), spark=spark)
    render.training_run(run, settings.clv.model)


@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Registered version to promote.")],
    force: Annotated[bool, typer.Option(help="Also promote a version without a gate decision (its training was "
                                             "interrupted).")] = False,
) -> None:
    """Make a registered version the champion by hand (the current one becomes `previous`).

    Example: [bold]lifecycle promote 3[/bold]
    """
    from lifecycle.training import open_registry, registry, writing

    settings = command_settings(ctx)
    client, _ = open_registry(settings)
    with writing(settings, client, render.waiting) as cleaned:
        render.notes(cleaned, errors)
        registry.promote(client, version, force=force)
    console.print(f"version {version} is the champion")


@app.command()
def rollback(ctx: typer.Context) -> None:
    """Make the previous champion the champion again.

    Example: [bold]lifecycle rollback[/bold]
    """
    from lifecycle.training import open_registry, registry, writing

    settings = command_settings(ctx)
    client, _ = open_registry(settings)
    with writing(settings, client, render.waiting) as cleaned:
        render.notes(cleaned, errors)
        console.print(f"version {registry.rollback(client)} is the champion again")


@app.command()
def models(ctx: typer.Context) -> None:
    """List the registered versions with their aliases, gate decision and key metrics.

    Example: [bold]lifecycle models[/bold]
    """
    from lifecycle.training import open_registry, registry

    client, uri = open_registry(command_settings(ctx))
    table = Table("version", "aliases", "gate", "quality", "purchase model", "churn from", "CLV from", "churn AUC",
                  "next stage AUC", "CLV Gini", "purchases MAE", "created", title=f"{registry.MODEL_NAME} in {uri}")
    for version in registry.list_versions(client):
        table.add_row(version.version, ", ".join(version.aliases) or "-", version.gate,
                      *(version.tags.get(key, "-") for key in (registry.QUALITY_TAG, "purchase_model", "churn_source",
                                                               "clv_source")),
                      *(f"{version.metrics[m]:.4f}" if m in version.metrics else "-" for m in registry.GATED),
                      version.created.strftime("%Y-%m-%d %H:%M"))
    console.print(table)
    champion = registry.alias_version(client, "champion")
    if champion is not None:
        rows, decisions = registry.track_record(client, champion)
        render.track_record(rows, decisions, f"the champion's (version {champion}) track record")


@app.command()
def ui(
    ctx: typer.Context,
    port: PortOption = 5000,
    host: HostOption = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the configured store: runs, metrics, plots, versions and gate decisions.

    With a remote tracking server configured, prints its address instead.

    Example: [bold]lifecycle ui --port 5000[/bold]
    """
    settings = command_settings(ctx)
    uri = settings.mlflow.tracking_uri
    if uri and uri.startswith(("http://", "https://")):
        console.print(f"the tracking server is remote: open [bold]{uri}[/bold]")
        return
    from lifecycle.training import open_registry

    _, uri = open_registry(settings)
    console.print(f"MLflow UI for {uri} on [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    # Browsing needs no MLflow job runner (GenAI evaluation jobs, trace rollups): without it the UI is 2 processes,
    # not 10, and starts on 9 s of CPU instead of 21 (each runner imports MLflow). A setting of the user's stands.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)  # the UI takes this process over: its PID is ours


@app.command()
def schedule(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help='When to train, in crontab form: "0 3 * * 1" is Mondays at 03:00.')],
    timezone: Annotated[str | None, typer.Option(help="Time zone of the cron times (default: this machine's).")]
    = None,
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    exclude: ExcludeOption = None,
    include: IncludeOption = None,
    engine: TrainingEngineOption = Engine.local,
) -> None:
    """Run `lifecycle train` on a schedule, in the foreground; a run still going makes the next one skip.

    Example: [bold]lifecycle schedule --cron "0 3 * * 1" --transactions data/orders/*.parquet[/bold]
    """
    from lifecycle.schedule import CrontabTrigger, scheduler

    settings = settings_with_inputs(ctx, transactions, events, customers, exclude=exclude, include=include)
    trigger = CrontabTrigger(cron, timezone)
    spark = spark_session(settings, "lifecycle schedule") if engine is Engine.spark else None

    def train_once() -> None:
        from lifecycle.training import run_training

        console.print(f"[bold]{datetime.now():%Y-%m-%d %H:%M:%S}[/bold] training...")
        render.training_run(run_training(settings, spark=spark), settings.clv.model)

    jobs = scheduler(trigger, train_once, lambda line: console.print(line, highlight=False))
    first = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    console.print(f"training on {cron!r}; the first run is at {first:%Y-%m-%d %H:%M %Z} (Ctrl-C stops)")
    try:
        jobs.start()
    except KeyboardInterrupt:
        console.print("stopped")
