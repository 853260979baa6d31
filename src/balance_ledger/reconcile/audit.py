"""The writes of a run: a chunk's checkpoints and events, a fix's rewrite of the cache
with its recorded columns and events, and each run's outcome and counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from .. import clock
from ..db import outbox, sync_audit
from ..db.dialects import Backend
from ..models import (
    AccountStatus,
    StatusChange,
)
from ..outbox import events
from .reports import Discrepancy, RebuildReport, SyncReport, UserSync


def save_chunk(
    conn: Connection,
    backend: Backend,
    checkpoints: list[dict[str, Any]],
    drop: list[int],
    announced: list[dict[str, Any]],
) -> None:
    """A verified chunk's checkpoints, and the events of the discrepancies it left."""
    sync_audit.save_checkpoints(conn, backend, checkpoints, drop)
    outbox.append_events(conn, backend, announced)


def rewrite_cache(conn: Connection, run_id: int, found: Discrepancy) -> None:
    """Set the cache to the ledger's figures, record each changed column and announce
    it: sync.discrepancy_found, sync.fixed, and the status change if there is one."""
    now = clock.now()
    values: dict[str, Any] = {
        "balance": found.actual_balance,
        "total_recharged": found.actual_total_recharged,
        "total_spent": found.actual_total_spent,
        "status": found.expected_status,
        "held": found.actual_held,
    }
    announced = [events.sync_discrepancy(run_id, found, now), events.sync_fixed(run_id, found, now)]
    if found.stored_status is not None and found.stored_status != found.expected_status:
        values["suspend_at"] = None  # suspended, or back above the line: no grace runs
        change = StatusChange(
            user_id=found.user_id,
            old_status=AccountStatus(found.stored_status),
            new_status=AccountStatus(found.expected_status),
            balance=found.actual_balance,
            transaction_id=None,
        )
        announced.append(events.status_change(change, now))
    sync_audit.rewrite_balance(conn, found.user_id, values, now)
    sync_audit.record_fixes(conn, _fix_rows(run_id, found, now))
    for row in announced:
        outbox.append_event(conn, row)


def _fix_rows(run_id: int, found: Discrepancy, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "user_id": found.user_id,
            "column_name": column,
            "old_value": str(old),
            "new_value": str(new),
            "created_at": now,
        }
        for column, old, new in found.changed_columns()
    ]


def run_outcome(report: SyncReport) -> str:
    if not report.in_sync:
        return "out_of_sync"
    return "fixed" if report.fixed else "in_sync"


def count_passed(report: SyncReport, passed: int, asked_for: int | None) -> None:
    """Accounts the scan itself found in sync: checked and in sync, nothing to judge."""
    report.checked += passed
    report.synced += passed
    if asked_for is not None and passed:
        report.details.append(UserSync(asked_for, "in_sync"))


def verify_counts(report: SyncReport) -> dict[str, int]:
    return {
        "checked": report.checked,
        "synced": report.synced,
        "fixed": report.fixed,
        "discrepancies": report.fixed + len(report.discrepancies),
        "errors": len(report.errors),
    }


def rebuild_counts(report: RebuildReport) -> dict[str, int]:
    return {
        "checked": report.checked,
        "synced": report.checked - report.changed - len(report.errors),
        "fixed": report.changed,
        "discrepancies": report.changed,
        "errors": len(report.errors),
    }
