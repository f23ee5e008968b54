"""Retraining on a schedule (APScheduler, cron times by croniter): one run at a time, and a failed run
never stops the schedule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from croniter import croniter
from tzlocal import get_localzone

from features.errors import LifecycleError

JOB_ID = "train"


class CrontabTrigger(BaseTrigger):
    """A five-field crontab schedule with cron's own meaning, computed by croniter.

    Sunday is 0 or 7, and when both day of month and day of week are restricted either one
    matches, as in cron and Kubernetes CronJobs. (APScheduler 3's ``CronTrigger.from_crontab``
    counts Monday as 0, so "0 3 * * 1" would run on Tuesdays.)
    """

    def __init__(self, expression: str, timezone: str | None = None):
        if len(expression.split()) != 5:
            raise LifecycleError(f"--cron {expression!r} needs five fields: minute hour day-of-month month "
                                 "day-of-week")
        try:
            croniter(expression)
        except ValueError as exc:
            raise LifecycleError(f"--cron {expression!r}: {exc}") from None
        try:
            self.timezone = ZoneInfo(timezone) if timezone else get_localzone()
        except (ValueError, KeyError):
            raise LifecycleError(f"--timezone {timezone!r} is not a time zone like Europe/Berlin or UTC") from None
        self.expression = expression

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        """The first time after the previous run (or after now) that the expression matches."""
        start = (previous_fire_time or now).astimezone(self.timezone)
        return croniter(self.expression, start).get_next(datetime)

    def __str__(self) -> str:
        return f"cron[{self.expression}] {self.timezone}"


def scheduler(trigger: BaseTrigger, job: Callable[[], None], report: Callable[[str], None]) -> BlockingScheduler:
    """A scheduler that runs ``job`` at each time of ``trigger``.

    A run still going when the next is due makes that next one skip (reported), and runs missed
    while the machine slept collapse into one. A run that raises is reported and the schedule
    goes on: the registry moves the champion only when a run completes. ``report`` gets one line
    per skip or failure.
    """
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # we report skips and failures ourselves
    schedule = BlockingScheduler()

    def run() -> None:
        try:
            job()
        except Exception as exc:
            report(f"the run failed, the champion is unchanged: {exc}")

    def skipped(event: JobSubmissionEvent) -> None:
        due = ", ".join(f"{time:%Y-%m-%d %H:%M:%S}" for time in event.scheduled_run_times)
        report(f"skipped the run due at {due}: the previous one is still going")

    schedule.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
    schedule.add_job(run, trigger, id=JOB_ID, max_instances=1, coalesce=True, misfire_grace_time=None)
    return schedule
