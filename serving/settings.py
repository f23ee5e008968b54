"""The scoring API's settings (kept apart from the service so the CLI can read them without BentoML)."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """How the API finds its model and what it accepts (the MLflow store is ``mlflow.tracking_uri``, read by
    the service from ``LIFECYCLE_MLFLOW__TRACKING_URI`` like every other command)."""

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_SERVING__", extra="ignore")

    model_uri: str = Field("models:/customer-lifecycle@champion", description="what to serve and follow")
    poll_seconds: float = Field(10.0, gt=0, description="how often to look for a new champion")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                         description="server processes, each with the model and its own batching")
    max_customers: int = Field(1000, ge=1, description="most customers per request (more: 413)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body (more: 413, before "
                                "any parsing)")
    api_token: SecretStr | None = Field(None, description="bearer token the requests must carry")
