"""How the ``lifecycle`` commands show their results: tables and lines on the terminal (``console``) and
warnings and errors, one line each (``errors``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from lifecycle.pipeline import FeatureRun

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one line per message, however narrow the terminal
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # a log or a pipe: wide enough for every table (a terminal keeps its own width)


def waiting(line: str) -> None:
    """A line while a command waits (for another run's lock)."""
    errors.print(line, highlight=False, markup=False)


def notes(lines: list[str], to: Console) -> None:
    """One ``note:`` line each."""
    for line in lines:
        to.print(f"[yellow]note:[/yellow] {escape(line)}", highlight=False)


def money(value: float, currency: str | None) -> str:
    """An amount as the CLI shows it: whole units, with the currency where it is known."""
    return f"{value:,.0f} {currency}" if currency else f"{value:,.0f}"


def _in(currency: str | None) -> str:
    """A money column's unit in its heading: `` (EUR)``, or nothing where the currency is not known."""
    return f" ({currency})" if currency else ""


@contextmanager
def step(what: str) -> Iterator[None]:
    """A long step: a spinner on a terminal; elsewhere (a log, CI) a line as it starts and one when it is done."""
    if console.is_terminal:
        with console.status(f"{what}..."):
            yield
        return
    started = time.monotonic()
    console.print(f"{what}...", highlight=False)
    yield
    console.print(f"  done in {time.monotonic() - started:.0f} s", highlight=False)


def business_summary(run, scores, built, out: Path) -> None:
    """What a shop acts on, first: the model that scored, the base and its value at risk, stages and segments,
    the most valuable customers, the forecast, and where the report and every record are."""
    model = run.result.model
    verdict = "promoted to champion" if run.decision.promote else "held back (the champion scored)"
    console.print(f"\nmodel version {run.version}, {verdict}: {model.purchases.label} purchases, churn from the "
                  f"{'classifier' if model.churn_source == 'classifier' else 'purchase model'}, the "
                  f"{'learned' if model.clv_source == 'learned' else 'BTYD'} CLV"
                  + (f"; weak: {'; '.join(model.weaknesses)}" if model.weaknesses else ""), highlight=False)
    report_made(built, model.currency)
    scored(scores, out, model.currency)
    _forecast(run.result.forecast, model.horizons, model.currency)


def report_made(built, currency: str | None) -> None:
    """The report's headline, its sections without numbers, its audiences, and where its tables and page are."""
    from serving.audiences import FOLDER  # loaded already: the report was built with it

    h = built.headline
    console.print(f"lifecycle report as of {built.as_of}: {h['customers']:,} customers, {h['active']:,} active; "
                  f"predicted CLV {money(h['clv'], currency)}, of which {money(h['value_at_risk'], currency)} "
                  f"({h['value_at_risk_share']:.0%}) at high churn risk")
    for section, why in built.missing.items():
        console.print(f"[yellow]note:[/yellow] the {section.replace('_', ' ')} section has no numbers: {why}")
    counts = ", ".join(f"{row['audience'].lower()} {row['customers']:,}" for row in built.audiences)
    console.print(f"audiences: {counts} ({built.html.parent / FOLDER}/)")
    console.print(f"tables: {', '.join(path.name for path in built.tables.values())}")
    console.print(f"report: [bold]{built.html}[/bold]")


def row_accounting(counts: dict[str, tuple[int, int, int]], rejects) -> None:
    """Per input table (name -> rows in, valid, rejected): rows in = valid + rejected, and where the rejects are."""
    for name, (rows, valid, rejected) in counts.items():
        console.print(f"{name}: {rows:,} rows in = {valid:,} valid + {rejected:,} rejected"
                      + (f" (reasons: {rejects})" if rejected else ""))


def scored(scores, out: Path, currency: str | None) -> None:
    """Scored customers by stage and status, by RFM segment, the CLV total and the ten most valuable (amounts in
    ``currency``)."""
    import pandas as pd

    statuses = ["active", "at risk", "lapsed", "churned"]
    by_stage = pd.crosstab(scores.stage, scores.activity_status.fillna("prospect"))
    by_stage = by_stage.reindex(columns=[*statuses, "prospect"], fill_value=0)
    table = Table("stage", "customers", *statuses, "prospects (no purchase)",
                  title=f"lifecycle stages and activity status as scored by version {scores.model_version.iloc[0]}")
    for stage in scores.stage.drop_duplicates():
        counts = by_stage.loc[stage]
        table.add_row(stage, f"{counts.sum():,}", *(f"{n:,}" for n in counts))
    segments = Table("RFM segment", "customers", f"mean CLV{_in(currency)}", "mean churn probability",
                     title="RFM segments")
    by_segment = scores.groupby("rfm_segment").agg(n=("clv", "size"), clv=("clv", "mean"),
                                                   churn=("churn_probability", "mean"))
    for name, row in by_segment.sort_values("n", ascending=False).iterrows():
        segments.add_row(name, f"{int(row.n):,}", f"{row.clv:,.2f}", f"{row.churn:.2f}")
    console.print(table, segments)
    clv = scores.clv.fillna(0).sort_values(ascending=False)
    top = clv.iloc[: max(1, len(clv) // 10)].sum()
    source = "learned" if scores.clv.equals(scores.clv_learned) else "BTYD"
    console.print(f"expected CLV ({source}) over the next 12 months: {money(clv.sum(), currency)} in total; the "
                  f"top 10 % of customers hold {money(top, currency)} ({top / clv.sum():.0%})")
    best = Table("customer", "segment (status)", f"spent so far{_in(currency)}", f"CLV{_in(currency)}", "tier",
                 "purchases (interval)", f"spend (interval){_in(currency)}",
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


def _clv(evaluation, model, w, clv_model: str) -> None:
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


def _forecast(forecast, horizons, currency: str | None) -> None:
    """The base's totals over the CLV horizon with their intervals, overall and per stage."""
    level = f"{horizons.interval:.0%}"
    table = Table("buyers", "customers", "purchases", f"{level} interval", f"spend{_in(currency)}",
                  f"{level} interval",
                  title=f"forecast for the next {horizons.clv_days} days (undiscounted; customer and parameter "
                        "uncertainty)")
    for row in forecast[forecast.group.isin(["all", "stage"])].itertuples():
        table.add_row(row.value, f"{row.customers:,}", f"{row.purchases:,.0f}",
                      f"{row.purchases_low:,.0f} - {row.purchases_high:,.0f}", f"{row.spend:,.0f}",
                      f"{row.spend_low:,.0f} - {row.spend_high:,.0f}")
    console.print(table)


def published_fits(fitted: dict) -> None:
    """The purchase models fitted on the published estimation sample beside the papers' estimates."""
    from features import cdnow

    for name, model in fitted.items():
        published = cdnow.PUBLISHED_FITS[name]
        table = Table(model.label, "ours", published.source,
                      title=f"{model.label} on the published CDNOW sample (2,357 customers, weeks 1-39)")
        for key, value in published.params.items():
            table.add_row(key, f"{model.params_[key]:.4f}", f"{value}")
        table.add_row("log-likelihood", f"{model.log_likelihood_:.2f}", f"{published.log_likelihood}")
        console.print(table)


def training_run(run, clv_model: str) -> None:
    """A training run: its cut dates, the purchase models, the track record, the newest cut date's evaluation,
    the CLV, the forecast, notes, drift and the gate's verdict."""
    from training.backtest import MOST_JUDGED
    from training.judging import EVALUATION_TABLE

    result, decision = run.result, run.decision
    evaluation, w = result.evaluation, result.windows
    console.print(f"MLflow run {run.run_id} in {run.tracking_uri}")
    console.print(f"judged on {len(result.cuts)} cut date(s), one churn horizon apart: "
                  f"{', '.join(str(c.end) for c in result.cuts)}")
    if result.judged_share < 1:
        console.print(f"each judged on about {MOST_JUDGED:,} customers ({result.judged_share:.0%}, a sample by "
                      "customer id); the purchase models and Gamma-Gamma are fitted on every buyer")
    if len(result.features) < result.customers:
        console.print(f"the classifiers and the learned CLV learn from {len(result.features):,} of the "
                      f"{result.customers:,} customers ({len(result.features) / result.customers:.0%}, a sample "
                      "by customer id: sample_customers)")
    console.print(f"newest windows: classifiers trained at {w.t0}, judged on {w.t1}..{w.end}; purchase models and "
                  f"Gamma-Gamma fitted to {w.btyd_calibration_end}, judged on the next {w.btyd_holdout_days} days")
    _purchase_models(evaluation.purchase_models, result.model.purchases.name)
    track_record(result.model.track_record, result.model.decisions)
    table = Table("metric", "model", "baseline", "baseline value", title=f"out-of-time evaluation at {w.end}")
    values = evaluation.metrics | evaluation.baselines
    for label, metric, baseline, key in EVALUATION_TABLE:
        table.add_row(label, f"{values[metric]:.4f}", baseline, f"{values[key]:.4f}" if key else "")
    console.print(table)
    _clv(evaluation, result.model, w, clv_model)
    _forecast(result.forecast, result.model.horizons, result.model.currency)
    notes([*result.notes, *run.cleaned], console)
    verdict = "promoted to champion" if decision.promote else "held back as challenger"
    why = "; ".join(decision.reasons) or "no gated metric worse"
    if run.drift:
        drift(run.drift, f"the champion's training data (version {decision.champion_version})")
    console.print(f"version {run.version}: [bold]{verdict}[/bold] ({why})")


def _purchase_models(compared, chosen: str) -> None:
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


def track_record(rows: list[dict], decisions: dict[str, str], title: str = "track record of what serves"
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


def drift(psi: dict[str, float], reference: str, shown: int = 10) -> None:
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


def inputs(data) -> None:
    """Each input table's rows (and the lines they were rolled up from): in, valid, rejected and why."""
    table = Table("input", "rows", "valid", "rejected", "reasons", title="inputs")
    for name, report in data.report.items():
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in report.rejected.items()) or "-"
        rows = f"{report.rows:,}" + (f" ({report.lines:,} lines)" if report.lines is not None else "")
        table.add_row(name, rows, f"{report.valid:,}", f"{report.rejected_total:,}", reasons)
    console.print(table)


def feature_run(run: FeatureRun) -> None:
    """A feature build: its inputs, stages, RFM segments and where the table went."""
    inputs(run.data)
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


def onboarding(made) -> None:
    """What ``lifecycle init`` decided, could not decide and warns about, and what to run next."""
    reading = made.orders
    for line in reading.decided:
        console.print(f"- {escape(line)}", highlight=False)
    if reading.currency:
        console.print(f"- amounts in {reading.currency}", highlight=False)
    for table, source in made.others.items():
        console.print(f"- {escape(source.path)}: {table}", highlight=False)
    for line in [*reading.missing, *reading.warnings]:
        errors.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    console.print(f"wrote [bold]{made.path}[/bold]; next: [bold]lifecycle train[/bold], then [bold]lifecycle "
                  "score[/bold] and [bold]lifecycle report[/bold]")
