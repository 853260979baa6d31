"""The SQL of reconciliation: the set-based comparison of cache and ledger, checkpoints,
the audit of runs and fixes (reconcile/ holds the rules)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    RowMapping,
    Subquery,
    and_,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)

from ..models import (
    HoldStatus,
)
from .dialects import Backend, execute_locking
from .queries import POLICY_COLUMNS, effect_on, insert_one, ledger_sums
from .tables import balance_holds as holds
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


_ROW_COLUMNS = ("id", "user_id", "transaction_type", "amount", "balance_before", "balance_after")


def _rows_to_verify(low: int, high: int, incremental: bool) -> Subquery:
    """Ledger rows of accounts low..high still to verify, with the balance they start from.

    Full mode: every row, starting from 0. Incremental mode: the rows after each
    account's checkpoint, starting from its last verified balance; accounts without a
    checkpoint contribute every row.
    """
    columns = [ledger.c[name] for name in _ROW_COLUMNS]
    if not incremental:
        in_chunk = ledger.c.user_id.between(low, high)
        return select(*columns, literal(0).label("start_after")).where(in_chunk).subquery("rows")
    # Driven from the chunk's checkpoints, so each account is one (user_id, id) index
    # seek past its checkpoint: rows verified before are not read at all.
    after_checkpoint = (
        select(*columns, checkpoints.c.last_balance_after.label("start_after"))
        .select_from(checkpoints.join(ledger, ledger.c.user_id == checkpoints.c.user_id))
        .where(
            checkpoints.c.user_id.between(low, high),
            ledger.c.id > checkpoints.c.last_transaction_id,
        )
    )
    chunk_checkpoints = and_(
        checkpoints.c.user_id == balances.c.user_id, checkpoints.c.user_id.between(low, high)
    )
    never_verified = (
        select(balances.c.user_id)
        .outerjoin(checkpoints, chunk_checkpoints)
        .where(balances.c.user_id.between(low, high), checkpoints.c.user_id.is_(None))
    )
    from_start = select(*columns, literal(0).label("start_after")).where(
        ledger.c.user_id.between(low, high), ledger.c.user_id.in_(never_verified)
    )
    return union_all(after_checkpoint, from_start).subquery("rows")


def compare_chunk(conn: Connection, low: int, high: int, *, incremental: bool) -> list[Row[Any]]:
    """Cache, checkpoint and new-row sums of accounts low..high, in ONE statement.

    One statement reads one snapshot, so a charge committing mid-scan moves the cache
    and the ledger sums together and is never mistaken for a discrepancy.
    """
    rows = _rows_to_verify(low, high, incremental)
    new = select(rows.c.user_id, *ledger_sums(rows)).group_by(rows.c.user_id).subquery("new")
    checkpoint_columns: list[Any] = [
        checkpoints.c.last_transaction_id.label("cp_last_transaction_id"),
        checkpoints.c.last_balance_after.label("cp_last_balance_after"),
        checkpoints.c.balance.label("cp_balance"),
        checkpoints.c.total_recharged.label("cp_total_recharged"),
        checkpoints.c.total_spent.label("cp_total_spent"),
        checkpoints.c.row_count.label("cp_row_count"),
    ]
    active = (
        select(holds.c.user_id, func.sum(holds.c.amount).label("held"))
        .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.user_id.between(low, high))
        .group_by(holds.c.user_id)
        .subquery("active_holds")
    )
    joined = balances.outerjoin(new, new.c.user_id == balances.c.user_id).outerjoin(
        active, active.c.user_id == balances.c.user_id
    )
    if incremental:
        # The row the checkpoint ended at, to check it is still there as verified.
        anchor = ledger.alias("anchor")
        joined = joined.outerjoin(
            checkpoints, checkpoints.c.user_id == balances.c.user_id
        ).outerjoin(
            anchor,
            and_(
                anchor.c.id == checkpoints.c.last_transaction_id,
                anchor.c.user_id == checkpoints.c.user_id,
            ),
        )
        checkpoint_columns.append(anchor.c.balance_after.label("anchor_balance_after"))
    else:
        checkpoint_columns.append(null().label("anchor_balance_after"))
        checkpoint_columns = [null().label(column.name) for column in checkpoint_columns]
    stmt = (
        select(
            balances.c.user_id,
            balances.c.balance.label("cached_balance"),
            balances.c.total_recharged.label("cached_total_recharged"),
            balances.c.total_spent.label("cached_total_spent"),
            balances.c.credit_limit,
            *(balances.c[name] for name in POLICY_COLUMNS),
            balances.c.suspend_at,
            balances.c.status.label("cached_status"),
            balances.c.held.label("cached_held"),
            func.coalesce(active.c.held, 0).label("actual_held"),
            new.c.row_count,
            new.c.balance,
            new.c.total_recharged,
            new.c.total_spent,
            new.c.last_transaction_id,
            *checkpoint_columns,
        )
        .select_from(joined)
        .where(balances.c.user_id.between(low, high))
        .order_by(balances.c.user_id)
    )
    return list(conn.execute(stmt))


def snapshot_breaks(conn: Connection, low: int, high: int, *, incremental: bool) -> list[Row[Any]]:
    """Ledger rows of accounts low..high whose snapshot does not follow the previous row.

    A row is broken when ``balance_after != balance_before ± amount`` or when its
    ``balance_before`` is not the previous row's ``balance_after`` (0 before the first
    row; the checkpoint's last balance before the first unverified row).
    """
    rows = _rows_to_verify(low, high, incremental)
    previous_after = func.lag(rows.c.balance_after).over(
        partition_by=rows.c.user_id, order_by=rows.c.id
    )
    walk = select(
        *[rows.c[name] for name in _ROW_COLUMNS],
        effect_on("balance", rows).label("effect"),
        func.coalesce(previous_after, rows.c.start_after).label("previous_after"),
    ).subquery("walk")
    stmt = (
        select(walk)
        .where(
            or_(
                walk.c.balance_after != walk.c.balance_before + walk.c.effect,
                walk.c.balance_before != walk.c.previous_after,
            )
        )
        .order_by(walk.c.user_id, walk.c.id)
    )
    return list(conn.execute(stmt))


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
