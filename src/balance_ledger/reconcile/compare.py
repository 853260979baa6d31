"""Comparing one account's cache with its ledger: the figures, the expected status, the
broken chain rows, the checkpoint to keep (mostly pure; the chain checks read rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from .. import policy
from ..chain import anchors
from ..db import scan
from ..db.dialects import Backend
from ..db.scan import ChunkScan
from ..models import (
    AccountPolicy,
    Balance,
    LedgerTotals,
)
from .reports import NO_POLICY, Discrepancy, SyncError


def ledger_figures(row: Row[Any]) -> LedgerTotals:
    """Checkpoint sums plus the sums of the rows after it (or all rows, in full mode)."""
    return LedgerTotals(
        user_id=row.user_id,
        balance=int(row.cp_balance or 0) + int(row.balance or 0),
        total_recharged=int(row.cp_total_recharged or 0) + int(row.total_recharged or 0),
        total_spent=int(row.cp_total_spent or 0) + int(row.total_spent or 0),
        row_count=int(row.cp_row_count or 0) + int(row.row_count or 0),
    )


Stored = tuple[int, int, int, str, int]  # balance, total_recharged, total_spent, status, held


def discrepancy_of(
    user_id: int,
    stored: Stored | None,
    actual: LedgerTotals,
    actual_held: int = 0,
    *,
    credit_limit: int = 0,
    rules: AccountPolicy = NO_POLICY,
    suspend_at: datetime | None = None,
) -> Discrepancy | None:
    """The discrepancy between a cache row (None: missing) and the ledger, if any."""
    expected_status = policy.expected_status(
        None if stored is None else stored[3],
        actual.balance,
        credit_limit=credit_limit,
        policy=rules,
        suspend_at=suspend_at,
    )
    expected = (
        actual.balance,
        actual.total_recharged,
        actual.total_spent,
        expected_status,
        actual_held,
    )
    if stored == expected:
        return None
    balance, recharged, spent, status, held = stored or (0, 0, 0, None, 0)
    return Discrepancy(
        user_id=user_id,
        stored_balance=balance,
        actual_balance=actual.balance,
        stored_total_recharged=recharged,
        actual_total_recharged=actual.total_recharged,
        stored_total_spent=spent,
        actual_total_spent=actual.total_spent,
        stored_status=status,
        expected_status=expected_status,
        difference=balance - actual.balance,
        missing_balance_row=stored is None,
        stored_held=held,
        actual_held=actual_held,
    )


def _stored(row: Row[Any]) -> Stored:
    return (
        int(row.cached_balance),
        int(row.cached_total_recharged),
        int(row.cached_total_spent),
        str(row.cached_status),
        int(row.cached_held),
    )


def stored_of_account(account: Balance) -> Stored:
    """The same figures as ``_stored``, from a locked balance row."""
    return (
        account.balance,
        account.total_recharged,
        account.total_spent,
        account.status.value,
        account.held,
    )


def scanned_discrepancy(row: Row[Any], actual: LedgerTotals | None = None) -> Discrepancy | None:
    """A scanned row's discrepancy (cache against checkpoint + new rows and holds)."""
    totals = ledger_figures(row) if actual is None else actual
    return discrepancy_of(
        row.user_id,
        _stored(row),
        totals,
        int(row.actual_held),
        credit_limit=int(row.credit_limit),
        rules=AccountPolicy.from_columns(row._mapping),
        suspend_at=row.suspend_at,
    )


def scanned_chunk(
    conn: Connection,
    backend: Backend,
    low: int,
    high: int,
    *,
    incremental: bool,
    passing: bool = False,
    checkpoint_at: datetime | None = None,
) -> tuple[ChunkScan, dict[int, SyncError]]:
    """The chunk's scan (see db/scan.py), and the first broken row of each account whose
    chain the scan found broken: looked for only in those accounts, where the hashes
    were checked in SQL; in every account of the chunk where they were not (SQLite)."""
    found = scan.scan_chunk(
        conn,
        backend,
        low,
        high,
        incremental=incremental,
        passing=passing,
        checkpoint_at=checkpoint_at,
    )
    if not incremental and not found.hashes_checked:
        return found, chain_errors(conn, backend, low, high, incremental)
    breaks: dict[int, SyncError] = {}
    for row in found.rows:
        if row.broken:
            breaks.update(chain_errors(conn, backend, row.user_id, row.user_id, incremental))
    return found, breaks


def chain_errors(
    conn: Connection, backend: Backend, low: int, high: int, incremental: bool
) -> dict[int, SyncError]:
    """The first broken row of each account low..high (hashes too in full mode)."""
    first = {} if incremental else _hash_chain_errors(conn, backend, low, high)
    for row in scan.snapshot_breaks(conn, low, high, incremental=incremental):
        earlier = first.get(row.user_id)
        if earlier is not None and (earlier.transaction_id or 0) <= row.id:
            continue  # a hash break at or before this row is the one to report
        if row.balance_before != row.previous_after:
            why = (
                f"balance_before {row.balance_before} != previous balance_after "
                f"{row.previous_after} (this row or the one before it was altered or removed)"
            )
        else:
            why = (
                f"balance_after {row.balance_after} != balance_before {row.balance_before} "
                f"{row.effect:+d} ({row.transaction_type} of {row.amount})"
            )
        first[row.user_id] = SyncError(
            row.user_id,
            row.id,
            f"ledger chain broken at row {row.id} of account {row.user_id}: {why}",
        )
    return first


def _hash_chain_errors(
    conn: Connection, backend: Backend, low: int, high: int
) -> dict[int, SyncError]:
    return {
        user_id: SyncError(user_id, found.transaction_id, found.message)
        for user_id, found in anchors.chain_breaks(conn, backend, low, high).items()
    }


def checkpoint_of(row: Row[Any], actual: LedgerTotals, now: datetime) -> dict[str, Any] | None:
    last_id = row.last_transaction_id or row.cp_last_transaction_id
    if last_id is None or row.row_count is None:
        return None  # no rows, or nothing new since the checkpoint
    return {
        "user_id": row.user_id,
        "last_transaction_id": int(last_id),
        "last_balance_after": actual.balance,  # the chain holds, so the last row ends here
        "balance": actual.balance,
        "total_recharged": actual.total_recharged,
        "total_spent": actual.total_spent,
        "row_count": actual.row_count,
        "verified_at": now,
    }


def stale_checkpoint(row: Row[Any]) -> SyncError | None:
    """The checkpoint's last row must still be there, ending where the checkpoint says."""
    if row.cp_last_transaction_id is None or row.cp_row_balance_after == row.cp_last_balance_after:
        return None
    return SyncError(
        row.user_id,
        int(row.cp_last_transaction_id),
        f"ledger row {row.cp_last_transaction_id} of account {row.user_id}, where its last "
        "verification ended, was removed or altered; its checkpoint is dropped: run verify --full",
    )


def history_changed(user_id: int, checkpoint_id: int | None) -> SyncError:
    return SyncError(
        user_id,
        checkpoint_id,
        f"the ledger of account {user_id} up to row {checkpoint_id} changed after it was "
        "verified (its checkpoint's sums no longer match); its checkpoint is dropped: "
        "run verify --full",
    )


def actual_of_sums(row: Row[Any]) -> LedgerTotals:
    return LedgerTotals(
        user_id=row.user_id,
        balance=int(row.balance),
        total_recharged=int(row.total_recharged),
        total_spent=int(row.total_spent),
        row_count=int(row.row_count),
    )
