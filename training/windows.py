"""The cut dates a run is judged at and the windows of each: where models are fitted and what they are judged on
(``training.train`` describes the protocol); and the least data a run accepts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from features.errors import LifecycleError
from models.lifecycle import Horizons
from training.choices import CUTS

if TYPE_CHECKING:
    from training.base import Base

# The least data training accepts, counted on the first day a model is fitted (the earlier of the purchase
# models' calibration end and t0); the history must also span more than two churn horizons (``windows``).
MIN_BUYERS = 100  # customers with an order
MIN_REPEAT_BUYERS = 20  # customers with orders on two or more days


@dataclass(frozen=True)
class Windows:
    """The dates of one run of the protocol."""

    first: date
    end: date
    t0: date
    t1: date
    btyd_calibration_end: date
    clv_label_days: int  # L, the learned CLV's label window

    @property
    def btyd_holdout_days(self) -> int:
        return (self.end - self.btyd_calibration_end).days

    @property
    def clv_fitted(self) -> date:
        """Where the learned CLV judged out of time is fitted: end - 2L."""
        return self.end - timedelta(days=2 * self.clv_label_days)

    @property
    def clv_judged(self) -> date:
        """Where the CLVs are judged, on (end - L, end]."""
        return self.end - timedelta(days=self.clv_label_days)


def windows(first: date, end: date, horizons: Horizons) -> Windows:
    """The protocol's dates for data from ``first`` to ``end``; refuses too short a history."""
    h = timedelta(days=horizons.churn_days)
    t1, t0 = end - h, end - 2 * h
    if t0 <= first:
        raise LifecycleError(f"the data span {first}..{end}; the out-of-time protocol needs more than "
                             f"two churn horizons ({2 * horizons.churn_days} days): a shorter churn_horizon_days (now "
                             f"{horizons.churn_days}) needs less")
    history = (end - first).days + 1
    holdout = min(horizons.clv_days, history // 2)
    label = max(1, min(horizons.clv_days, (history - 2 * horizons.churn_days) // 2))
    return Windows(first, end, t0, t1, end - timedelta(days=holdout), label)


def cut_windows(base: Base, first: date, end: date, horizons: Horizons, cuts: int = CUTS) -> list[Windows]:
    """The protocol's windows at up to ``cuts`` cut dates one churn horizon apart, newest (``end``) first: as many
    as the history allows (each cut must pass ``windows`` and ``check_sufficient``); at least the newest."""
    found = []
    for k in range(cuts):
        try:
            win = windows(first, end - timedelta(days=k * horizons.churn_days), horizons)
            check_sufficient(base, win, horizons)
        except LifecycleError:
            if not found:
                raise
            break
        found.append(win)
    return found


def check_sufficient(base: Base, win: Windows, horizons: Horizons) -> None:
    """Refuse, in one line, data too thin to learn from: fewer than ``MIN_BUYERS`` buyers or ``MIN_REPEAT_BUYERS``
    repeat buyers by the first day a model is fitted, naming the setting that would fit it later (if one would)."""
    day = min(win.btyd_calibration_end, win.t0)
    buyers, repeat = base.buyers(day)
    short = [f"{n:,} customers had ordered{on} (need at least {least})"
             for n, least, on in ((buyers, MIN_BUYERS, ""), (repeat, MIN_REPEAT_BUYERS, " on two or more days"))
             if n < least]
    if short:
        if day == win.t0:
            remedy = f"a shorter churn_horizon_days (now {horizons.churn_days}) fits the classifiers later"
        elif win.btyd_holdout_days == horizons.clv_days:
            remedy = f"a shorter clv_horizon_days (now {horizons.clv_days}) fits the purchase models later"
        else:
            remedy = "the purchase models are fitted on the first half of the history: more history is needed"
        raise LifecycleError(f"too little data to train: by {day} (the first day a model is fitted) "
                             + " and ".join(short) + f"; {remedy}")
