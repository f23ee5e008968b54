"""The ``lifecycle`` command line."""

from __future__ import annotations

import os
import sys
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from features.errors import LifecycleError
from features.sources import TableSource, output_format
from lifecycle.config import Settings, load_settings, unknown_variables
from lifecycle.pipeline import FeatureRun, build_features, open_dataset


class Engine(StrEnum):
    """Where ``lifecycle score`` runs."""

    local = "local"
    spark = "spark"


console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one line per message, however narrow the terminal
_state: dict[str, Path] = {}  # "folder": the state folder, once a command has read the configuration
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # a log or a pipe: wide enough for every table (a terminal keeps its own width)
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
AsOfOption = Annotated[
    datetime | None, typer.Option(formats=["%Y-%m-%d"], help="As-of date (default: the last order day).")
]
HostOption = Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None) -> None:
    ctx.obj = config


def _settings(ctx: typer.Context, **overrides) -> Settings:
    for line in unknown_variables(os.environ):
        errors.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    settings = load_settings(ctx.obj, **overrides)
    _state["folder"] = settings.state_dir
    return settings


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML.

    Example: [bold]LIFECYCLE_CHURN_HORIZON_DAYS=60 lifecycle config show[/bold]
    """
    console.print(_settings(ctx).to_toml(), markup=False, highlight=False)


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
    as_of: AsOfOption = None,
) -> None:
    """Build one row of point-in-time features per customer and write it to a file.

    Inputs and column maps come from the configuration; flags override the paths.

    Example: [bold]lifecycle features --transactions data/cdnow/transactions.csv --out out/features.parquet[/bold]
    """
    settings = _settings(ctx, as_of=as_of.date() if as_of else None)
    _use_inputs(settings, transactions, events, customers)
    with console.status("validating inputs and building features..."):
        run = build_features(settings, out)
    _print_run(run)


@app.command()
def train(
    ctx: typer.Context,
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    as_of: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d"], help="Train as of this day, on nothing later (backfills, reruns; default: the last "
                                   "order day). A model older than the champion's data is never promoted by the "
                                   "gate.")] = None,
) -> None:
    """Train out of time, log to MLflow, register a version and promote it if it passes the gate.

    Example: [bold]lifecycle train --transactions data/cdnow/transactions.csv[/bold]
    """
    from lifecycle.training import run_training

    settings = _settings(ctx, as_of=as_of.date() if as_of else None)
    _use_inputs(settings, transactions, events, customers)
    with console.status("training (features, purchase models, Gamma-Gamma, LightGBM) and gating...") as status:
        run = run_training(settings, on_wait=lambda line: status.update(line))
    _print_training(run, settings.clv.model)


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

    settings = _settings(ctx)
    client, _ = open_registry(settings)
    with writing(settings, client, _say_waiting) as cleaned:
        _print_notes(cleaned, errors)
        registry.promote(client, version, force=force)
    console.print(f"version {version} is the champion")


@app.command()
def rollback(ctx: typer.Context) -> None:
    """Make the previous champion the champion again.

    Example: [bold]lifecycle rollback[/bold]
    """
    from lifecycle.training import open_registry, registry, writing

    settings = _settings(ctx)
    client, _ = open_registry(settings)
    with writing(settings, client, _say_waiting) as cleaned:
        _print_notes(cleaned, errors)
        console.print(f"version {registry.rollback(client)} is the champion again")


def _say_waiting(line: str) -> None:
    errors.print(line, highlight=False, markup=False)


def _print_notes(lines: list[str], to: Console) -> None:
    for line in lines:
        to.print(f"[yellow]note:[/yellow] {escape(line)}", highlight=False)


@app.command()
def models(ctx: typer.Context) -> None:
    """List the registered versions with their aliases, gate decision and key metrics.

    Example: [bold]lifecycle models[/bold]
    """
    from lifecycle.training import open_registry, registry

    client, uri = open_registry(_settings(ctx))
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
        _print_track_record(rows, decisions, f"the champion's (version {champion}) track record")


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
    settings = _settings(ctx)
    uri = settings.mlflow.tracking_uri
    if uri and uri.startswith(("http://", "https://")):
        console.print(f"the tracking server is remote: open [bold]{uri}[/bold]")
        return
    from lifecycle.training import open_registry

    _, uri = open_registry(settings)
    console.print(f"MLflow UI for {uri} on [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
               "--workers", "1"]
    os.execv(sys.executable, command)  # the UI takes this process over: its PID is ours


@app.command()
def serve(
    ctx: typer.Context,
    port: PortOption = 3000,
    host: HostOption = "127.0.0.1",
) -> None:
    """Serve the scoring API (BentoML): POST /score and /model; follows the champion without restarts.

    Bearer-token auth when LIFECYCLE_SERVING__API_TOKEN is set. OpenAPI at /docs.json.

    Example: [bold]lifecycle serve --port 3000[/bold]
    """
    from lifecycle.training import open_registry, registry

    settings = _settings(ctx)
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
def schedule(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help='When to train, in crontab form: "0 3 * * 1" is Mondays at 03:00.')],
    timezone: Annotated[str | None, typer.Option(help="Time zone of the cron times (default: this machine's).")]
    = None,
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
) -> None:
    """Run `lifecycle train` on a schedule, in the foreground; a run still going makes the next one skip.

    Example: [bold]lifecycle schedule --cron "0 3 * * 1" --transactions data/orders/*.parquet[/bold]
    """
    from lifecycle.schedule import CrontabTrigger, scheduler

    settings = _settings(ctx)
    _use_inputs(settings, transactions, events, customers)
    trigger = CrontabTrigger(cron, timezone)

    def train_once() -> None:
        from lifecycle.training import run_training

        console.print(f"[bold]{datetime.now():%Y-%m-%d %H:%M:%S}[/bold] training...")
        _print_training(run_training(settings), settings.clv.model)

    jobs = scheduler(trigger, train_once, lambda line: console.print(line, highlight=False))
    first = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))
    console.print(f"training on {cron!r}; the first run is at {first:%Y-%m-%d %H:%M %Z} (Ctrl-C stops)")
    try:
        jobs.start()
    except KeyboardInterrupt:
        console.print("stopped")


@app.command()
def score(
    ctx: typer.Context,
    out: Annotated[str, typer.Option(help="Output file: .parquet or .csv; rejected input rows go next to it "
                                          "(with --engine spark: a folder, local or a URL like s3a://...).")],
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
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

    from lifecycle.training import load_model
    from serving.batch import load_customer_list, score_batch

    settings = _settings(ctx, as_of=as_of.date() if as_of else None)
    _use_inputs(settings, transactions, events, customers)
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
    day = settings.as_of or data.date_range()[1].date()
    if listed is not None:
        _warn_about_list(data, listed, customer_list)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("building features...", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, description="scoring", completed=done, total=total)

        run = score_batch(model, data, day, out, customer_list=listed is not None, on_chunk=advance)
    _print_inputs(data)
    _print_row_accounting({name: (r.rows, r.valid, r.rejected_total) for name, r in data.report.items()},
                          run.rejects)
    whom = f"{listed:,} listed customers, {run.without_history:,} without history" if listed is not None else (
        "every known customer")
    console.print(f"scored {run.scored:,} customers ({whom}) as of {day} with model version {model.version}: "
                  f"[bold]{run.out}[/bold]")
    if run.drift:
        _print_drift(run.drift, f"the training data of version {model.version}")
        console.print(f"every feature's drift: [bold]{run.drift_file}[/bold]")


@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for report.html and the KPI tables (CSV).")] = Path("report"),
    transactions: TransactionsOption = None,
    events: EventsOption = None,
    customers: CustomersOption = None,
    scores: Annotated[str | None, typer.Option(
        help="Records of `lifecycle score` (Parquet or CSV) to report on, scored from these inputs; default: score "
             "every customer with the champion first (into the report's folder).")] = None,
    as_of: AsOfOption = None,
) -> None:
    """Lifecycle KPIs (funnel, cohorts, CLV:CAC by channel, NPS/CSAT, value at risk) as tables and one HTML page.

    Example: [bold]lifecycle report --transactions orders.csv --customers customers.csv --out report[/bold]
    """
    from lifecycle.training import load_model
    from serving.batch import score_batch
    from serving.report import build_report

    settings = _settings(ctx, as_of=as_of.date() if as_of else None)
    _use_inputs(settings, transactions, events, customers)
    with console.status("loading the model..."):
        model = load_model(settings)
    with console.status("validating inputs..."):
        data = open_dataset(settings)
    if scores is None:
        scores = str(out / "scores.parquet")
        day = settings.as_of or data.date_range()[1].date()
        with console.status(f"scoring every customer as of {day} with version {model.version}..."):
            score_batch(model, data, day, scores)
    with console.status("computing the KPIs..."):
        built = build_report(data, model, scores, out)
    _print_report(built)


def _print_report(built) -> None:
    h = built.headline
    console.print(f"lifecycle report as of {built.as_of}: {h['customers']:,} customers, {h['active']:,} active; "
                  f"predicted CLV {h['clv']:,.0f}, of which {h['value_at_risk']:,.0f} "
                  f"({h['value_at_risk_share']:.0%}) at high churn risk")
    for section, why in built.missing.items():
        console.print(f"[yellow]note:[/yellow] the {section.replace('_', ' ')} section has no numbers: {why}")
    console.print(f"tables: {', '.join(path.name for path in built.tables.values())}")
    console.print(f"report: [bold]{built.html}[/bold]")


def _score_on_spark(settings: Settings, out: str, customer_list: str | None, model_uri: str | None) -> None:
    try:
        from serving.spark import score_spark, session
    except ImportError:
        raise LifecycleError("the Spark engine needs pyspark: pip install 'customer-lifecycle[spark]'") from None
    if settings.as_of is None:
        raise LifecycleError("the Spark engine needs the scoring day: pass --as-of (or set as_of)")
    from lifecycle.training import open_registry

    open_registry(settings)
    inputs = settings.inputs
    with console.status(f"scoring on Spark ({settings.spark.master})..."):
        run = score_spark(session(settings.spark.master), model_uri or settings.serving.model_uri,
                          {"transactions": inputs.transactions, "events": inputs.events,
                           "customers": inputs.customers}, settings.as_of, out,
                          now=datetime.now(UTC).replace(tzinfo=None), customer_list=customer_list,
                          partitions=settings.spark.partitions, future_tolerance_days=settings.future_tolerance_days)
    _print_row_accounting({name: (rows, rows - run.rejected[name], run.rejected[name])
                           for name, rows in run.rows.items()}, run.rejects)
    whom = f"listed customers, {run.without_history:,} without history" if customer_list else "every known customer"
    console.print(f"scored {run.scored:,} customers ({whom}) as of {run.as_of} on Spark: [bold]{run.out}[/bold]")


def _warn_about_list(data, listed: int, path: str) -> None:
    """A warning when fewer than half of the listed ids occur in the order log, with the likely cause."""
    from serving.batch import list_matches

    matched, without_zeros = list_matches(data)
    if listed and matched < listed / 2:
        cause = (f"; {without_zeros:,} would match without leading zeros (ids are compared as text: '1' is not "
                 "'00001')" if without_zeros > matched else "")
        errors.print(f"[yellow]warning:[/yellow] only {matched:,} of the {listed:,} ids in {escape(path)} occur in the "
                     f"order log: the rest are scored as prospects we know nothing about{cause}", highlight=False)


def _print_row_accounting(counts: dict[str, tuple[int, int, int]], rejects) -> None:
    """Per input table (name -> rows in, valid, rejected): rows in = valid + rejected, and where the rejects are."""
    for name, (rows, valid, rejected) in counts.items():
        console.print(f"{name}: {rows:,} rows in = {valid:,} valid + {rejected:,} rejected"
                      + (f" (reasons: {rejects})" if rejected else ""))


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job on the real CDNOW data: train, register the champion, score every customer.

    Example: [bold]lifecycle demo[/bold]
    """
    import pandas as pd

    from features import cdnow
    from lifecycle.training import load_model, run_training
    from serving.batch import score_batch
    from serving.report import build_report

    settings = _settings(ctx)
    with console.status("writing the CDNOW master log..."):
        path = cdnow.write_master(settings.state_dir / "data" / "cdnow")
    settings.inputs.transactions = TableSource(path=str(path))
    data = open_dataset(settings)
    _print_inputs(data)
    with console.status("training (features, purchase models, Gamma-Gamma, LightGBM) and gating..."):
        run = run_training(settings, data)
    _print_training(run, settings.clv.model)
    out = settings.state_dir / "output" / "cdnow_scores.parquet"
    with console.status("scoring every customer with the champion..."):
        model = load_model(settings)
        score_batch(model, data, run.result.windows.end, out)
        scores = pd.read_parquet(out)
    _print_scores(scores, out)
    _print_published_models()
    with console.status("writing the lifecycle report..."):
        built = build_report(data, model, out, settings.state_dir / "output" / "report")
    _print_report(built)


def _print_scores(scores, out: Path) -> None:
    import pandas as pd

    statuses = ["active", "at risk", "lapsed", "churned"]
    by_stage = pd.crosstab(scores.stage, scores.activity_status.fillna("prospect"))
    by_stage = by_stage.reindex(columns=[*statuses, "prospect"], fill_value=0)
    table = Table("stage", "customers", *statuses, "prospects (no purchase)",
                  title=f"lifecycle stages and activity status as scored by version {scores.model_version.iloc[0]}")
    for stage in scores.stage.drop_duplicates():
        counts = by_stage.loc[stage]
        table.add_row(stage, f"{counts.sum():,}", *(f"{n:,}" for n in counts))
    segments = Table("RFM segment", "customers", "mean CLV", "mean churn probability", title="RFM segments")
    by_segment = scores.groupby("rfm_segment").agg(n=("clv", "size"), clv=("clv", "mean"),
                                                   churn=("churn_probability", "mean"))
    for name, row in by_segment.sort_values("n", ascending=False).iterrows():
        segments.add_row(name, f"{int(row.n):,}", f"{row.clv:,.2f}", f"{row.churn:.2f}")
    console.print(table, segments)
    clv = scores.clv.fillna(0).sort_values(ascending=False)
    top = clv.iloc[: max(1, len(clv) // 10)].sum()
    source = "learned" if scores.clv.equals(scores.clv_learned) else "BTYD"
    console.print(f"expected CLV ({source}) over the next 12 months: {clv.sum():,.0f} in total; the top 10 % of "
                  f"customers hold {top:,.0f} ({top / clv.sum():.0%})")
    best = Table("customer", "segment (status)", "spent so far", "CLV", "tier", "purchases (interval)",
                 "spend (interval)",
                 "next order", "churn risk", title="ten most valuable (purchases and spend: the CLV horizon; next "
                 "order: as likely as not by then)")
    for row in scores.nlargest(10, "clv").itertuples():
        best.add_row(str(row.customer_id), f"{row.rfm_segment} ({row.activity_status})", f"{row.total_spend:,.0f}",
                     f"{row.clv:,.0f}",
                     str(row.value_tier),
                     f"{row.clv_purchases:.1f} ({row.clv_purchases_low:.0f}-{row.clv_purchases_high:.0f})",
                     f"{row.clv_spend:,.0f} ({row.clv_spend_low:,.0f}-{row.clv_spend_high:,.0f})",
                     "-" if pd.isna(row.next_order_date) else f"{row.next_order_date:%Y-%m-%d}",
                     f"{row.churn_risk} ({row.churn_probability:.2f})")
    console.print(best)
    console.print(f"every customer's record: [bold]{out}[/bold]")


def _print_clv(evaluation, model, w, clv_model: str) -> None:
    """The BTYD CLV, the learned CLV and the past spend rate judged on the same window, and which CLV serves (and
    why: it did better, or the configuration's ``clv_model`` chose it)."""
    days, horizon = w.clv_label_days, model.horizons.clv_days
    values = evaluation.metrics | evaluation.baselines
    table = Table("prediction", "normalized Gini", "Spearman", "top-decile capture", "decile MAPE", "total error", "",
                  title=f"CLV judged on spend over {w.clv_judged}..{w.end} ({days} days; learned CLV fitted at "
                        f"{w.clv_fitted})")
    for label, prefix, suffix, name in ((f"BTYD ({model.purchases.label}, Gamma-Gamma)", "clv_btyd_", "", "btyd"),
                                        ("learned (LightGBM on BTYD)", "clv_learned_", "", "learned"),
                                        ("past spend rate", "clv_", "_spend_rate", "")):
        if f"{prefix}gini{suffix}" in values:
            table.add_row(label, *(f"{values[f'{prefix}{k}{suffix}']:{spec}}" for k, spec in (
                ("gini", ".4f"), ("spearman", ".4f"), ("top_decile_capture", ".4f"), ("decile_mape", ".4f"),
                ("aggregate_error", "+.4f"))), "served" if name == model.clv_source else "")
    console.print(table)
    if clv_model == model.clv_source:
        why = f" (clv.model is {clv_model})"
    elif model.clv_source == "learned":
        why = " (it ranks better, with a decile MAPE close to BTYD's)"
    else:
        why = " (the learned CLV did not beat it)" if "clv_learned_gini" in values else ""
    served = ("the learned CLV" if model.clv_source == "learned" else "the BTYD CLV") + why
    console.print(f"clv: [bold]{served}[/bold]; both are in every record (clv_btyd, clv_learned)")
    if days < horizon:
        console.print(f"the learned CLV's labels cover {days} days (the history is too short for {horizon}): each "
                      f"customer's own BTYD ratio of CLV to {days}-day spend carries it to the CLV horizon")


def _print_forecast(forecast, horizons) -> None:
    """The base's totals over the CLV horizon with their intervals, overall and per stage."""
    level = f"{horizons.interval:.0%}"
    table = Table("buyers", "customers", "purchases", f"{level} interval", "spend", f"{level} interval",
                  title=f"forecast for the next {horizons.clv_days} days (undiscounted; customer and parameter "
                        "uncertainty)")
    for row in forecast[forecast.group.isin(["all", "stage"])].itertuples():
        table.add_row(row.value, f"{row.customers:,}", f"{row.purchases:,.0f}",
                      f"{row.purchases_low:,.0f} - {row.purchases_high:,.0f}", f"{row.spend:,.0f}",
                      f"{row.spend_low:,.0f} - {row.spend_high:,.0f}")
    console.print(table)


def _print_published_models() -> None:
    """BG/NBD and Pareto/NBD on the published estimation sample (CDNOW 1/10, weeks 1-39) beside the papers."""
    import pandas as pd

    from features import cdnow
    from models.purchase_models import PURCHASE_MODELS

    sample = pd.read_csv(cdnow.dataset_path("cdnow_customers_summary_with_transactions.csv"))
    for name, published in cdnow.PUBLISHED_FITS.items():
        model = PURCHASE_MODELS[name]().fit(sample.x, sample.t_x, sample["T"])
        table = Table(model.label, "ours", published.source,
                      title=f"{model.label} on the published CDNOW sample (2,357 customers, weeks 1-39)")
        for key, value in published.params.items():
            table.add_row(key, f"{model.params_[key]:.4f}", f"{value}")
        table.add_row("log-likelihood", f"{model.log_likelihood_:.2f}", f"{published.log_likelihood}")
        console.print(table)


def _use_inputs(settings: Settings, transactions: str | None, events: str | None, customers: str | None) -> None:
    """Command-line paths override the configured ones (keeping their column maps)."""
    for name, path in (("transactions", transactions), ("events", events), ("customers", customers)):
        if path is not None:
            source: TableSource = getattr(settings.inputs, name)
            setattr(settings.inputs, name, source.model_copy(update={"path": path}))


def _print_training(run, clv_model: str) -> None:
    from training.backtest import MOST_JUDGED

    result, decision = run.result, run.decision
    evaluation, w = result.evaluation, result.windows
    console.print(f"MLflow run {run.run_id} in {run.tracking_uri}")
    console.print(f"judged on {len(result.cuts)} cut date(s), one churn horizon apart: "
                  f"{', '.join(str(c.end) for c in result.cuts)}")
    if result.judged_share < 1:
        console.print(f"each judged on about {MOST_JUDGED:,} customers ({result.judged_share:.0%}, a sample by "
                      "customer id); every model is fitted on all of them")
    console.print(f"newest windows: classifiers trained at {w.t0}, judged on {w.t1}..{w.end}; purchase models and "
                  f"Gamma-Gamma fitted to {w.btyd_calibration_end}, judged on the next {w.btyd_holdout_days} days")
    _print_purchase_models(evaluation.purchase_models, result.model.purchases.name)
    _print_track_record(result.model.track_record, result.model.decisions)
    table = Table("metric", "model", "baseline", "baseline value", title=f"out-of-time evaluation at {w.end}")
    btyd = "P(no purchase)"
    rows = [("churn ROC-AUC", "churn_roc_auc", "recency alone", "churn_roc_auc_recency"),
            ("classifier ROC-AUC, buyers", "churn_buyers_classifier_roc_auc", btyd, "churn_buyers_roc_auc_btyd"),
            ("classifier Brier, buyers", "churn_buyers_classifier_brier", btyd, "churn_buyers_brier_btyd"),
            ("churn PR-AUC", "churn_pr_auc", "", ""), ("churn Brier", "churn_brier", "", ""),
            ("churn ECE", "churn_ece", "", ""), ("next-stage ROC-AUC", "next_stage_roc_auc", "", ""),
            ("holdout purchases MAE", "holdout_purchases_mae", "past purchase rate",
             "holdout_purchases_mae_past_rate"),
            ("holdout purchases total error", "holdout_purchases_aggregate_error", "past purchase rate",
             "holdout_purchases_aggregate_error_past_rate"),
            ("purchases in their interval", "holdout_purchases_interval_coverage", "stated by the intervals",
             "holdout_purchases_interval_stated"),
            ("purchases interval, PIT coverage", "holdout_purchases_interval_pit", "", ""),
            ("spend in its interval", "holdout_spend_interval_coverage", "stated by the intervals",
             "holdout_spend_interval_stated"),
            ("spend interval, PIT coverage", "holdout_spend_interval_pit", "", "")]
    values = evaluation.metrics | evaluation.baselines
    for label, metric, baseline, key in rows:
        table.add_row(label, f"{values[metric]:.4f}", baseline, f"{values[key]:.4f}" if key else "")
    console.print(table)
    _print_clv(evaluation, result.model, w, clv_model)
    _print_forecast(result.forecast, result.model.horizons)
    _print_notes([*result.notes, *run.cleaned], console)
    verdict = "promoted to champion" if decision.promote else "held back as challenger"
    why = "; ".join(decision.reasons) or "no gated metric worse"
    if run.drift:
        _print_drift(run.drift, f"the champion's training data (version {decision.champion_version})")
    console.print(f"version {run.version}: [bold]{verdict}[/bold] ({why})")


def _print_purchase_models(compared, chosen: str) -> None:
    """Every candidate purchase model's holdout metrics over the cut dates, the chosen one marked."""
    from models.purchase_models import PURCHASE_MODELS

    table = Table("model", "holdout LL", "behind the best", "MAE", "total error", "P(none) AUC", "P(none) Brier", "",
                  title="purchase models on the holdouts (means over the cut dates; within noise of the best: tied)")
    for name, row in compared.iterrows():
        table.add_row(PURCHASE_MODELS[name].label, f"{row.holdout_log_likelihood:.4f}",
                      f"{row.ll_behind_best:+.4f} +/- {row.ll_noise:.4f}", f"{row.holdout_purchases_mae:.4f}",
                      f"{row.holdout_purchases_aggregate_error:+.4f}", f"{row.churn_roc_auc:.4f}",
                      f"{row.churn_brier:.4f}", "chosen" if name == chosen else "tied" if row.tied else "")
    console.print(table)


def _print_track_record(rows: list[dict], decisions: dict[str, str], title: str = "track record of what serves"
                        ) -> None:
    """What serves, per cut date, beside the simple baselines (in brackets); then each decision with its evidence."""
    def pair(row: dict, served: str, baseline: str) -> str:
        return "-" if row[served] is None else f"{row[served]:.3f} ({row[baseline]:.3f})"

    table = Table("cut date", "churn ROC-AUC (recency alone)", "churn Brier", "CLV Gini (past spend rate)",
                  "CLV decile MAPE (spend rate)", "purchases in interval (stated)", "spend in interval (stated)",
                  title=title)
    for row in rows:
        table.add_row(row["cut"], pair(row, "churn_roc_auc", "churn_roc_auc_recency"), f"{row['churn_brier']:.4f}",
                      pair(row, "clv_gini", "clv_gini_spend_rate"), pair(row, "clv_decile_mape",
                                                                          "clv_decile_mape_spend_rate"),
                      *(pair(row, f"holdout_{n}_interval_coverage", f"holdout_{n}_interval_stated")
                        for n in ("purchases", "spend")))
    console.print(table)
    for what, why in decisions.items():
        style = "bold red" if why.startswith("weak:") else "default"  # the quality line of a run that learned little
        console.print(f"{what.replace('_', ' ')}: {escape(why)}", style=style, highlight=False)


def _print_drift(psi: dict[str, float], reference: str, shown: int = 10) -> None:
    """One line when no feature moved, else the features that moved most (PSI, largest first)."""
    from models.drift import MAJOR, MODERATE, shifted

    moved = shifted(psi)
    if not moved:
        name, value = next(iter(psi.items()))
        console.print(f"feature drift from {reference}: none (largest PSI {value:.3f}, {name})")
        return
    more = f", the first {shown} shown" if len(moved) > shown else ""
    console.print(f"feature drift from {reference}: {len(moved)} of {len(psi)} features moved "
                  f"(PSI >= {MODERATE}; above {MAJOR}: major){more}")
    table = Table("feature", "PSI", "shift")
    for name, value in list(moved.items())[:shown]:
        table.add_row(name, f"{value:.3f}", "[red]major[/red]" if value >= MAJOR else "moderate")
    console.print(table)


def _print_inputs(data) -> None:
    inputs = Table("input", "rows", "valid", "rejected", "reasons", title="inputs")
    for name, report in data.report.items():
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in report.rejected.items()) or "-"
        inputs.add_row(name, f"{report.rows:,}", f"{report.valid:,}", f"{report.rejected_total:,}", reasons)
    console.print(inputs)


def _print_run(run: FeatureRun) -> None:
    _print_inputs(run.data)
    if run.rows_after_as_of:
        console.print(f"{run.rows_after_as_of:,} valid orders fall after the as-of date and were not read")
    stages = Table("stage", "customers", title="lifecycle stages")
    for stage, n in run.stages:
        stages.add_row(stage, f"{n:,}")
    segments = Table("RFM segment", "customers", "avg total spend", title="RFM segments (buyers)")
    for segment, n, spend in run.segments:
        segments.add_row(segment, f"{n:,}", f"{spend:,.2f}")
    console.print(stages, segments)
    console.print(f"features as of {run.as_of} for {run.customers:,} customers: [bold]{run.out}[/bold] "
                  f"({run.total_seconds:.1f} s)")
    if run.rejects:
        console.print(f"rejected rows with reasons: [bold]{run.rejects}[/bold]")


def main() -> None:
    """Entry point: user mistakes end with one clear line and exit code 2, never a traceback."""
    # MLflow's INFO lines (creating the store's tables, validating the input example) are not
    # news to a user; MLFLOW_LOGGING_LEVEL=INFO brings them back.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        app()
    except LifecycleError as exc:
        _fail(str(exc), 2)
    except duckdb.Error as exc:
        _fail(str(exc).splitlines()[0], 2)
    except OSError as exc:  # the machine refused: a read-only or missing folder, a full disk
        _fail(_os_problem(exc), 2)
    except Exception as exc:  # a bug of ours: one line for the user, the trace for the report
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
