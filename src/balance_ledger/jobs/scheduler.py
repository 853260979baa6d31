"""``balance scheduler``: run the reconciliation schedule in-process.

Each firing calls ``BalanceService.run_scheduled_job`` for its slot (the cron fire
time it belongs to), which takes a cross-host database lock and records the slot,
so several schedulers on several hosts run each job once. Hold expiry, the end of
grace periods, the purge of old refusals (idempotency.py), the chain digest and event
delivery (every few seconds) are safe to run on every host at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .. import clock
from ..errors import InvalidRequest, JobBusy
from ..outbox.dispatch import DispatchReport
from ..service import BalanceService

log = logging.getLogger(__name__)

DEFAULT_VERIFY_CRON = "0 2 * * *"  # daily at 02:00: verify-sync --fix
DEFAULT_REBUILD_CRON = "0 3 1 * *"  # the 1st of each month at 03:00: --rebuild
DEFAULT_EXPIRE_HOLDS_CRON = "* * * * *"  # every minute: release expired holds
DEFAULT_SUSPEND_OVERDUE_CRON = "* * * * *"  # every minute: end grace periods (policy.py)
DEFAULT_PURGE_REFUSALS_CRON = "17 * * * *"  # hourly: forget refusals older than 24 h
DEFAULT_ANCHOR_CRON = "30 1 * * *"  # daily at 01:30: the hash chain's digest
DEFAULT_DISPATCH_SECONDS = 10.0  # every 10 s: deliver pending events (0: not here)
DEFAULT_TIMEZONE = "UTC"
MISFIRE_GRACE_SECONDS = 3600  # a firing up to an hour late still runs (once)


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRequest(f"unknown time zone {name!r}") from error


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(expression, timezone=time_zone(timezone))
    except ValueError as error:
        raise InvalidRequest(f"invalid cron expression {expression!r}: {error}") from error


def slot_of(trigger: CronTrigger, now: datetime) -> datetime:
    """The schedule slot a firing at ``now`` belongs to: the latest fire time ≤ now.

    Every host computes the same slot from the cron expression, however late its
    scheduler fires (within the misfire grace time), so the slot identifies the run.
    """
    earliest = now - timedelta(seconds=MISFIRE_GRACE_SECONDS)
    slot = None
    fire = trigger.get_next_fire_time(None, earliest)
    while fire is not None and fire <= now:
        slot = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return slot or now.replace(second=0, microsecond=0)


def run_job(
    svc: BalanceService, job: str, trigger: CronTrigger, now: datetime | None = None
) -> None:
    """One firing of ``job``: run it for its slot, once across every runner."""
    slot = slot_of(trigger, now or clock.now().astimezone(trigger.timezone))
    try:
        result = svc.run_scheduled_job(job, slot)
    except Exception:
        log.exception("scheduled %s for %s failed", job, slot.isoformat())
        return
    if result is not None:
        log.info("scheduled %s for %s: run %s", job, slot.isoformat(), result.run_id)


def expire_holds(svc: BalanceService) -> None:
    """Safe on any number of hosts at once: each hold is re-checked under its lock."""
    _sweep("expire-holds", svc.expire_holds, "released %d holds")


def suspend_overdue(svc: BalanceService) -> None:
    """Safe on any number of hosts at once: each account is settled again under its lock."""
    _sweep("suspend-overdue", svc.suspend_overdue, "suspended %d accounts")


def purge_refusals(svc: BalanceService) -> None:
    """Safe on any number of hosts at once: a refusal deleted twice is deleted once."""
    _sweep("purge-refusals", svc.purge_refusals, "forgot %d refusals older than the retention")


def _sweep(job: str, run: Callable[[], int], done: str) -> None:
    """Run one pass of a sweep; log how much it did (``done`` % count), or its failure:
    a failed pass is retried at the next firing, never the end of the scheduler."""
    try:
        count = run()
    except Exception:
        log.exception("%s failed", job)
        return
    if count:
        log.info("%s " + done, job, count)


def anchor_chains(svc: BalanceService) -> None:
    """Safe on any number of hosts at once: one holds the job lock, the rest skip."""
    try:
        digest = svc.anchor_chains()
    except JobBusy as busy:
        log.info("anchor-chains skipped: %s", busy)
        return
    except Exception:
        log.exception("anchor-chains failed")
        return
    if digest is not None:
        log.info("chain digest %d over %d accounts: %s", digest.id, digest.accounts, digest.digest)


def dispatch_events(svc: BalanceService) -> None:
    """Deliver events until none is due. Safe on any number of hosts and alongside
    ``balance dispatch``: each delivery is claimed under a lease (SKIP LOCKED)."""
    dispatcher = svc.dispatcher()
    try:
        dispatcher.drain(on_pass=_log_pass)
    except Exception:
        log.exception("dispatch failed")
    finally:
        dispatcher.close()


def _log_pass(report: DispatchReport) -> None:
    log.info(
        "dispatch: fanned out %d, delivered %d, failed %d, dead %d",
        report.fanned_out,
        report.delivered,
        report.failed,
        report.dead,
    )


def build_scheduler(
    svc: BalanceService,
    *,
    verify_cron: str = DEFAULT_VERIFY_CRON,
    rebuild_cron: str = DEFAULT_REBUILD_CRON,
    expire_holds_cron: str = DEFAULT_EXPIRE_HOLDS_CRON,
    suspend_overdue_cron: str = DEFAULT_SUSPEND_OVERDUE_CRON,
    purge_refusals_cron: str = DEFAULT_PURGE_REFUSALS_CRON,
    anchor_cron: str = DEFAULT_ANCHOR_CRON,
    dispatch_seconds: float = DEFAULT_DISPATCH_SECONDS,
    timezone: str = DEFAULT_TIMEZONE,
) -> BlockingScheduler:
    """The jobs' schedule; ``dispatch_seconds`` 0 leaves event delivery to others."""
    scheduler = BlockingScheduler(timezone=time_zone(timezone))
    for job, expression in (("verify-fix", verify_cron), ("rebuild", rebuild_cron)):
        trigger = cron_trigger(expression, timezone)
        scheduler.add_job(
            run_job,
            trigger,
            args=(svc, job, trigger),
            id=job,
            name=f"balance {job}",
            max_instances=1,  # in this process; the database lock covers other hosts
            coalesce=True,  # after downtime, run a missed slot once, not once per slot
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
    for job, run, expression in (
        ("expire-holds", expire_holds, expire_holds_cron),
        ("suspend-overdue", suspend_overdue, suspend_overdue_cron),
        ("purge-refusals", purge_refusals, purge_refusals_cron),
        ("anchor-chains", anchor_chains, anchor_cron),
    ):
        scheduler.add_job(
            run,
            cron_trigger(expression, timezone),
            args=(svc,),
            id=job,
            name=f"balance {job}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
    if dispatch_seconds < 0:
        raise InvalidRequest(f"dispatch seconds must be 0 (off) or more, got {dispatch_seconds}")
    if dispatch_seconds:
        scheduler.add_job(
            dispatch_events,
            IntervalTrigger(seconds=dispatch_seconds),
            args=(svc,),
            id="dispatch",
            name="balance dispatch",
            max_instances=1,  # a firing while the last one still delivers is skipped
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
    return scheduler
