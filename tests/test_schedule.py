"""Retraining on a schedule: cron's own calendar, one run at a time, failures reported and survived."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from features.errors import LifecycleError
from lifecycle.schedule import CrontabTrigger, scheduler

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_4AM = datetime(2026, 11, 23, 4, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 3 * * 1", datetime(2026, 11, 30, 3, 0)),  # Monday is 1, as in cron (APScheduler 3 would say Tuesday)
    ("0 3 * * 0", datetime(2026, 11, 29, 3, 0)),  # Sunday is 0 ...
    ("0 3 * * 7", datetime(2026, 11, 29, 3, 0)),  # ... and 7
    ("30 4 * * *", datetime(2026, 11, 23, 4, 30)),
    ("0 0 1 * 1", datetime(2026, 11, 30, 0, 0)),  # day of month OR day of week: Monday the 30th comes first
    ("0 0 1 * *", datetime(2026, 12, 1, 0, 0)),
])
def test_cron_times_mean_what_they_mean_in_cron(expression, expected):
    trigger = CrontabTrigger(expression, "Europe/Berlin")
    assert trigger.get_next_fire_time(None, MONDAY_4AM) == expected.replace(tzinfo=BERLIN)


def test_the_next_time_counts_from_the_previous_run():
    trigger = CrontabTrigger("0 3 * * 1", "Europe/Berlin")
    previous = datetime(2026, 11, 30, 3, 0, tzinfo=BERLIN)
    assert trigger.get_next_fire_time(previous, previous) == datetime(2026, 12, 7, 3, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(("expression", "timezone", "message"), [
    ("0 3 * *", None, "needs five fields"),
    ("0 25 * * *", None, "out of range"),
    ("0 3 * * 1", "Mars/Olympus", "is not a time zone"),
])
def test_bad_schedules_are_clear_errors(expression, timezone, message):
    with pytest.raises(LifecycleError, match=message):
        CrontabTrigger(expression, timezone)


def run_for(seconds: float, job, interval: float = 0.5) -> list[str]:
    """Run ``job`` under ``scheduler`` every ``interval`` seconds for ``seconds``; returns the reports."""
    reports: list[str] = []
    schedule = scheduler(IntervalTrigger(seconds=interval), job, reports.append)
    thread = threading.Thread(target=schedule.start, daemon=True)
    thread.start()
    time.sleep(seconds)
    schedule.shutdown(wait=True)
    thread.join(timeout=10)
    return reports


def test_a_run_still_going_makes_the_next_ones_skip():
    running, most, runs = 0, 0, 0
    lock = threading.Lock()

    def slow_training():
        nonlocal running, most, runs
        with lock:
            running += 1
            runs += 1
            most = max(most, running)
        time.sleep(1.6)
        with lock:
            running -= 1

    reports = run_for(4.2, slow_training)
    assert most == 1  # never two at once
    assert 2 <= runs <= 3
    skipped = [r for r in reports if r.startswith("skipped the run due at")]
    assert len(skipped) >= 3 and all("the previous one is still going" in r for r in skipped)


def test_a_failed_run_is_reported_and_the_schedule_goes_on():
    calls = []

    def flaky_training():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise LifecycleError("only 3 repeat buyers; BG/NBD needs at least 10")

    reports = run_for(1.8, flaky_training)
    assert len(calls) >= 2
    assert reports[0] == "the run failed, the champion is unchanged: only 3 repeat buyers; BG/NBD needs at least 10"
