"""Every SQL statement the ledger runs, by name. Nothing else builds SQL."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, insert, select, update

from ..models import AccountStatus, Balance, LedgerTotals, Transaction, TransactionType
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances


def _balance(row: Mapping[str, Any]) -> Balance:
    return Balance(**{**row, "status": AccountStatus(row["status"])})


def _transaction(row: Mapping[str, Any]) -> Transaction:
    return Transaction(**{**row, "transaction_type": TransactionType(row["transaction_type"])})


def get_balance(conn: Connection, user_id: int) -> Balance | None:
    row = conn.execute(select(balances).where(balances.c.user_id == user_id)).mappings().first()
    return _balance(row) if row else None


def lock_balance(conn: Connection, user_id: int) -> Balance | None:
    """Read the balance row and hold its lock until the transaction ends.

    ``FOR UPDATE`` on PostgreSQL and MariaDB; SQLite ignores the clause and relies on
    the ``BEGIN IMMEDIATE`` its write transactions start with (see dialects.py).
    """
    stmt = select(balances).where(balances.c.user_id == user_id).with_for_update()
    row = conn.execute(stmt).mappings().first()
    return _balance(row) if row else None


def insert_balance(
    conn: Connection, *, user_id: int, currency: str, credit_limit: int, now: datetime
) -> None:
    conn.execute(
        insert(balances).values(
            user_id=user_id,
            currency=currency,
            balance=0,
            total_recharged=0,
            total_spent=0,
            credit_limit=credit_limit,
            status=AccountStatus.ACTIVE.value,
            created_at=now,
            updated_at=now,
        )
    )


def update_balance(
    conn: Connection,
    *,
    user_id: int,
    balance: int,
    total_recharged: int,
    total_spent: int,
    status: AccountStatus,
    now: datetime,
) -> None:
    conn.execute(
        update(balances)
        .where(balances.c.user_id == user_id)
        .values(
            balance=balance,
            total_recharged=total_recharged,
            total_spent=total_spent,
            status=status.value,
            updated_at=now,
        )
    )


def find_by_idempotency_key(conn: Connection, user_id: int, key: str) -> Transaction | None:
    stmt = select(ledger).where(ledger.c.user_id == user_id, ledger.c.idempotency_key == key)
    row = conn.execute(stmt).mappings().first()
    return _transaction(row) if row else None


def insert_transaction(conn: Connection, values: dict[str, Any]) -> Transaction:
    """Append one ledger row; ``values`` holds every column but ``id``."""
    result = conn.execute(insert(ledger).values(values))
    (row_id,) = result.inserted_primary_key or (None,)
    return _transaction({**values, "id": row_id})


def transactions_page(
    conn: Connection, user_id: int, *, limit: int, before_id: int | None
) -> list[Transaction]:
    """Newest first; ``before_id`` continues after the last row of the previous page."""
    stmt = select(ledger).where(ledger.c.user_id == user_id)
    if before_id is not None:
        stmt = stmt.where(ledger.c.id < before_id)
    stmt = stmt.order_by(ledger.c.id.desc()).limit(limit)
    return [_transaction(row) for row in conn.execute(stmt).mappings()]


def _sum_of(transaction_type: TransactionType) -> Any:
    amount = case((ledger.c.transaction_type == transaction_type.value, ledger.c.amount), else_=0)
    return func.coalesce(func.sum(amount), 0)


def ledger_totals(conn: Connection, user_id: int) -> LedgerTotals:
    """The account's figures recomputed from its ledger rows (charges and recharges)."""
    stmt = select(
        _sum_of(TransactionType.RECHARGE).label("recharged"),
        _sum_of(TransactionType.CHARGE).label("spent"),
        func.count().label("rows"),
    ).where(ledger.c.user_id == user_id)
    recharged, spent, rows = conn.execute(stmt).one()
    return LedgerTotals(
        user_id=user_id,
        balance=int(recharged) - int(spent),
        total_recharged=int(recharged),
        total_spent=int(spent),
        row_count=int(rows),
    )
