"""The SQL of reconciliation beside the scan (db/scan.py): chunks, checkpoints,
the audit of runs and fixes (reconcile/ holds the rules)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    RowMapping,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from .dialects import Backend, execute_locking
from .queries import insert_one, ledger_sums
from .tables import balance_sync_checkpoints as checkpoints
from .tables import balance_sync_fixes as sync_fixes
from .tables import balance_sync_runs as sync_runs
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances


def account_exists(conn: Connection, user_id: int) -> bool:
    """A balance row or ledger rows (an orphan account is still an account to verify)."""
    cached = select(balances.c.user_id).where(balances.c.user_id == user_id)
    ledgered = select(ledger.c.user_id).where(ledger.c.user_id == user_id)
    return conn.execute(select(or_(cached.exists(), ledgered.exists()))).scalar_one() in (1, True)


def count_accounts(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(balances)).scalar_one())


def next_user_ids(conn: Connection, *, after: int, limit: int) -> list[int]:
    """The next chunk of account ids, in order (keyset: ``after`` is the last one seen)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.user_id > after)
        .order_by(balances.c.user_id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def lock_balances(conn: Connection, low: int, high: int) -> None:
    """Lock a chunk of balance rows, in user_id order (the order every locker uses)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.user_id.between(low, high))
        .order_by(balances.c.user_id)
        .with_for_update()
    )
    execute_locking(conn, stmt, {}).all()


def orphan_ledger_accounts(conn: Connection, user_id: int | None = None) -> list[Row[Any]]:
    """Accounts with ledger rows but no balance row, with their ledger sums."""
    has_balance = select(balances.c.user_id).where(balances.c.user_id == ledger.c.user_id)
    stmt = select(ledger.c.user_id, *ledger_sums()).where(~has_balance.exists())
    if user_id is not None:
        stmt = stmt.where(ledger.c.user_id == user_id)
    return list(conn.execute(stmt.group_by(ledger.c.user_id).order_by(ledger.c.user_id)))


def save_checkpoints(
    conn: Connection, backend: Backend, rows: list[dict[str, Any]], drop: list[int]
) -> None:
    """Advance the checkpoints of ``rows``; forget those of ``drop`` (re-read from the start)."""
    if rows:
        backend.upsert(conn, checkpoints, rows, key="user_id")
    if drop:
        conn.execute(delete(checkpoints).where(checkpoints.c.user_id.in_(drop)))


def rewrite_balance(conn: Connection, user_id: int, values: dict[str, Any], now: datetime) -> None:
    """The verifier's write to the cache (the ledger is never written here)."""
    conn.execute(
        update(balances).where(balances.c.user_id == user_id).values(**values, updated_at=now)
    )


def start_sync_run(conn: Connection, values: dict[str, Any]) -> int:
    return insert_one(conn, sync_runs, {"outcome": "running", **values})


def finish_sync_run(conn: Connection, run_id: int, values: dict[str, Any]) -> None:
    conn.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(**values))


def slot_was_run(conn: Connection, kind: str, scheduled_for: datetime) -> bool:
    stmt = select(sync_runs.c.id).where(
        sync_runs.c.kind == kind, sync_runs.c.scheduled_for == scheduled_for
    )
    return conn.execute(stmt).first() is not None


def record_fixes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(sync_fixes), rows)


def recent_sync_runs(conn: Connection, limit: int) -> list[RowMapping]:
    stmt = select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    return list(conn.execute(stmt).mappings())


def sync_run_totals(conn: Connection) -> list[RowMapping]:
    """Per kind: runs, and the sums of their discrepancies, fixes and errors."""
    stmt = (
        select(
            sync_runs.c.kind,
            func.count().label("runs"),
            func.coalesce(func.sum(sync_runs.c.discrepancies), 0).label("discrepancies"),
            func.coalesce(func.sum(sync_runs.c.fixed), 0).label("fixed"),
            func.coalesce(func.sum(sync_runs.c.errors), 0).label("errors"),
            func.max(sync_runs.c.finished_at).label("last_finished_at"),
        )
        .group_by(sync_runs.c.kind)
        .order_by(sync_runs.c.kind)
    )
    return list(conn.execute(stmt).mappings())


def fixes_of_run(conn: Connection, run_id: int) -> list[RowMapping]:
    stmt = select(sync_fixes).where(sync_fixes.c.run_id == run_id).order_by(sync_fixes.c.id)
    return list(conn.execute(stmt).mappings())
