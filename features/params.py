"""Parameters of the feature build: the part of the configuration that features/ reads."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator, model_validator

EVENT_TYPES = (
    "session",
    "product_view",
    "cart_add",
    "email_send",
    "email_open",
    "email_click",
    "return",
    "review",
    "referral",
    "support_ticket",
    "nps",
)

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


class StageRules(BaseModel):
    """Thresholds of the lifecycle-stage rules (see docs/data.md, 'Lifecycle stages')."""

    high_intent_events: list[str] = Field(default_factory=lambda: ["product_view", "cart_add"])
    consideration_min_sessions: int = Field(3, ge=1)
    advocacy_min_purchases: int = Field(5, ge=2, description="purchase days that make a repeat buyer an advocate")
    advocacy_segments: list[str] = Field(default_factory=lambda: ["Champions"])
    advocacy_events: list[str] = Field(default_factory=lambda: ["referral", "review"])
    advocacy_min_nps: float = Field(9, ge=0, le=10)


class ActivityRules(BaseModel):
    """When a buyer is active, at risk, lapsed or churned, in their own typical gaps between orders
    (see docs/features.md, 'Activity status')."""

    active_within_gaps: float = Field(1.5, gt=0, description="active: the last order at most this many gaps ago")
    lapsed_after_gaps: float = Field(3.0, gt=0, description="lapsed (or churned): more than this many gaps ago")
    churned_after_gaps: float = Field(6.0, gt=0, description="churned: more than this many gaps ago")
    min_p_alive: float = Field(0.5, gt=0, lt=1, description="active needs the purchase model's P(alive) of at "
                               "least this")

    @model_validator(mode="after")
    def _ordered(self) -> ActivityRules:
        if not self.active_within_gaps < self.lapsed_after_gaps < self.churned_after_gaps:
            raise ValueError(f"activity gaps must rise: active_within_gaps ({self.active_within_gaps}) < "
                             f"lapsed_after_gaps ({self.lapsed_after_gaps}) < churned_after_gaps "
                             f"({self.churned_after_gaps})")
        return self


class FeatureParams(BaseModel):
    """Which engagement features to build and over which windows."""

    event_types: list[str] = Field(default_factory=lambda: list(EVENT_TYPES))
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90, 365])
    trend_window_days: int = Field(90, ge=7, description="recent window of the spend and order-rate trends")

    @field_validator("event_types")
    @classmethod
    def _identifiers(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _IDENTIFIER.match(v)]
        if bad:
            raise ValueError(f"event types must be lower_snake_case identifiers, got {bad}")
        return value

    @field_validator("windows_days")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("windows_days must be a non-empty list of positive day counts")
        return sorted(set(value))
