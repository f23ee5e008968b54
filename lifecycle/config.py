"""The one typed configuration: ``lifecycle.toml`` plus ``LIFECYCLE_*`` environment overrides.

Precedence, highest first: command-line flags, environment (``LIFECYCLE_CHURN_HORIZON_DAYS=60``,
nested keys with ``__``: ``LIFECYCLE_INPUTS__TRANSACTIONS__PATH=orders.parquet``), the TOML file
(``./lifecycle.toml``, or the file named by ``--config`` / ``LIFECYCLE_CONFIG``), then defaults.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, get_origin

import tomli_w
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from features.errors import LifecycleError
from features.params import ActivityRules, FeatureParams, StageRules
from features.tables import TableSource
from models.risk import RiskBands
from serving.settings import ServingSettings
from training.choices import AUTO, CLV_SOURCES, CUTS, MAPE_SLACK, PURCHASE_MODEL_NAMES, SAMPLE_CUSTOMERS

if TYPE_CHECKING:  # DuckDB loads where features are built (the CLI starts without it)
    from features.build import FeatureBuilder

DEFAULT_CONFIG = Path("lifecycle.toml")


class Inputs(BaseModel):
    """Where the input tables are, how their columns map onto ours, and how customer ids compare."""

    transactions: TableSource = Field(default_factory=TableSource)
    events: TableSource = Field(default_factory=TableSource)
    customers: TableSource = Field(default_factory=TableSource)
    customer_ids: Literal["exact", "email"] = Field(
        "exact", description="email: ids are emails, trimmed and compared in any case (as shop platforms do)")

    def tables(self) -> dict[str, TableSource]:
        """Each input table's source, by the table's name."""
        return {"transactions": self.transactions, "events": self.events, "customers": self.customers}


class DuckDBSettings(BaseModel):
    """Resources for the embedded DuckDB engine (None: DuckDB's defaults)."""

    memory_limit: str | None = Field(None, description="e.g. '2GB'; spills to the state folder beyond it")
    threads: int | None = Field(None, ge=1)


class BTYDSettings(BaseModel):
    """The purchase model: chosen on the holdout (``auto``) or forced."""

    model: Literal[(AUTO, *PURCHASE_MODEL_NAMES)] = Field(  # type: ignore[valid-type]
        AUTO, description=f"{AUTO}: the highest holdout log-likelihood among {', '.join(PURCHASE_MODEL_NAMES)}")
    penalizer: float = Field(0.0, ge=0, description="L2 penalty on the BTYD parameters; a fit that fails is "
                             "retried with 0.001, 0.01, 0.1 (the run's notes say so)")


class CLVSettings(BaseModel):
    """Which CLV is served as ``clv``: BTYD's, the learned one, or the better out of time (``auto``)."""

    model: Literal[(AUTO, *CLV_SOURCES)] = Field(  # type: ignore[valid-type]
        AUTO, description=f"{AUTO}: the learned CLV if it ranks the judged window's spend better (normalized Gini) "
        "and its decile MAPE is at most mape_slack above BTYD's")
    mape_slack: float = Field(MAPE_SLACK, ge=0, description="how much worse the learned CLV's decile MAPE may be")


class ChurnRiskSettings(BaseModel):
    """The churn probabilities at which a customer's ``churn_risk`` becomes medium and high."""

    medium: float = Field(RiskBands.medium, gt=0, lt=1, description="medium risk from this churn probability")
    high: float = Field(RiskBands.high, gt=0, lt=1, description="high risk from this churn probability (> medium)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        try:
            RiskBands(self.medium, self.high)  # the one place the thresholds are checked
        except LifecycleError as error:
            raise ValueError(str(error)) from None
        return self


class MlflowSettings(BaseModel):
    """Where runs and the registry live, and how strict the promotion gate is."""

    tracking_uri: str | None = Field(None, description="default: SQLite in the state folder")
    gate_tolerance: float = Field(0.01, ge=0, lt=1, description="relative slack before a gated metric is worse")
    lock_timeout_seconds: float = Field(1800, ge=0, description="how long a command waits for another to finish "
                                        "with the local registry")


class SparkSettings(BaseModel):
    """The Spark engine of ``lifecycle train --engine spark`` and ``lifecycle score --engine spark``."""

    master: str | None = Field(None, description="Spark master URL, e.g. spark://host:7077, yarn, local[4] (default: "
                               "spark-submit's --master, else local[*])")
    remote: str | None = Field(None, description="Spark Connect server, e.g. sc://host:15002; replaces master "
                               "(default: pyspark's SPARK_REMOTE environment variable)")
    partitions: int | None = Field(None, ge=1, description="groups of customers (default: twice the cores, or one "
                                   "per million input rows where that is more)")
    conf: dict[str, str] = Field(default_factory=dict, description="Spark properties for the session, e.g. "
                                 "{ \"spark.driver.memory\" = \"4g\" }")


class Settings(BaseSettings):
    """The effective configuration of one command."""

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(Path(".lifecycle"), description="local state: data, outputs, MLflow, BentoML home")
    as_of: date | None = Field(None, description="score as of this date (default: the last transaction day)")
    currency: Annotated[str, Field(pattern="^[A-Za-z]{3}$")] | None = Field(
        None, description="ISO code of every amount, e.g. EUR (default: the one the orders' currency column names)")
    clv_horizon_days: int = Field(365, ge=1)
    churn_horizon_days: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        AUTO, description="days without an order that make a churner; auto: from the shop's purchase cycle "
        "(features.cycle)")
    annual_discount_rate: float = Field(0.10, ge=0, lt=1)
    prediction_interval: float = Field(0.8, gt=0, lt=1, description="level of the purchase and spend intervals")
    churn_risk: ChurnRiskSettings = Field(default_factory=ChurnRiskSettings)
    future_tolerance_days: int = Field(1, ge=0, description="timestamps later than now + this are rejected")
    inputs: Inputs = Field(default_factory=Inputs)
    features: FeatureParams = Field(default_factory=FeatureParams)
    stages: StageRules = Field(default_factory=StageRules)
    activity: ActivityRules = Field(default_factory=ActivityRules)
    btyd: BTYDSettings = Field(default_factory=BTYDSettings)
    clv: CLVSettings = Field(default_factory=CLVSettings)
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    seed: int = Field(0, description="seed of every random step of training")
    backtest_cuts: int = Field(CUTS, ge=1, description="cut dates, one churn horizon apart, that training judges every "
                               "choice on (as many as the history allows, down to 1)")
    sample_customers: int = Field(SAMPLE_CUSTOMERS, ge=1000, description="about the most customers the classifiers "
                                  "and the learned CLV learn from: on larger shops a sample by customer id, each "
                                  "lifecycle stage in proportion (the BTYD models are fitted on every buyer)")

    toml_file: ClassVar[Path | None] = None  # set by load_settings before construction

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)

    @field_validator("currency")
    @classmethod
    def _upper(cls, code: str | None) -> str | None:
        return code.upper() if code else code

    @property
    def churn_days(self) -> int:
        """The churn horizon in days, once resolved (``lifecycle.pipeline.with_churn_horizon``)."""
        if self.churn_horizon_days == AUTO:
            raise RuntimeError("the churn horizon is not resolved: call lifecycle.pipeline.with_churn_horizon")
        return self.churn_horizon_days

    def feature_builder(self) -> FeatureBuilder:
        """An unfitted feature builder configured by these settings (the churn horizon resolved)."""
        from features.build import FeatureBuilder

        return FeatureBuilder(self.features, self.stages, self.churn_days, self.activity)

    def to_toml(self) -> str:
        """The effective configuration as TOML (unset optional values left out)."""
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read the configuration file (if any) and the environment; ``overrides`` win over both."""
    path = config or (Path(os.environ["LIFECYCLE_CONFIG"]) if os.environ.get("LIFECYCLE_CONFIG") else None)
    if path is not None and not path.is_file():
        raise LifecycleError(f"config file {str(path)!r} not found")
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    Settings.toml_file = path
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LifecycleError(f"invalid configuration{where}: {problems}") from None
    except ValueError as exc:  # malformed TOML
        raise LifecycleError(f"cannot read {path}: {exc}") from None
    settings.state_dir = settings.state_dir.expanduser().resolve()
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``LIFECYCLE_*`` environment variable that names no setting (and so is ignored), with the
    closest real name when there is one."""
    known = {"LIFECYCLE_CONFIG", *_variable_names(Settings, "LIFECYCLE_")}
    open_maps = [name for name in known if name.endswith("__")]  # dictionaries: any key below them
    lines = []
    for name in sorted(n.upper() for n in environ if n.upper().startswith("LIFECYCLE_")):
        if name in known or any(name.startswith(prefix) and len(name) > len(prefix) for prefix in open_maps):
            continue
        close = difflib.get_close_matches(name, sorted(n for n in known if not n.endswith("__")), n=1)
        lines.append(f"{name} is not a setting and is ignored" + (f" (did you mean {close[0]}?)" if close else ""))
    return lines


def _variable_names(model: type[BaseModel], prefix: str) -> list[str]:
    """The environment variable of every setting of ``model``: nested models' fields joined with ``__``;
    a dictionary field as its prefix ending in ``__``."""
    names = []
    for field_name, info in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += [name, *_variable_names(kind, f"{name}__")]
        elif get_origin(kind) is dict:
            names += [name, f"{name}__"]
        else:
            names.append(name)
    return names


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
