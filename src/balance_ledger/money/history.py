"""Reads of an account's past, always from the ledger, never from the cache."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import Connection

from ..db import queries
from ..errors import AccountNotFound, InvalidRequest, TransactionNotFound
from ..models import Balance, LedgerTotals, Statement, Transaction, TransactionType


def existing(conn: Connection, user_id: int) -> Balance:
    """The account's balance row; AccountNotFound if there is none."""
    account = queries.get_balance(conn, user_id)
    if account is None:
        raise AccountNotFound(user_id)
    return account


def statement(conn: Connection, *, user_id: int, start: datetime, end: datetime) -> Statement:
    """Opening balance, the movements written in [start, end), closing balance, totals.

    Rows are stamped when written, so one committing between the two reads falls in the
    period, not before it: closing = opening + the period's rows, always."""
    account = existing(conn, user_id)
    opening = queries.balance_before(conn, user_id, start, inclusive=False)
    rows = queries.transactions_between(conn, user_id, start, end)
    totals: Counter[str] = Counter()
    for tx in rows:
        totals[tx.transaction_type.value] += tx.amount
    return Statement(
        user_id=user_id,
        currency=account.currency,
        start=start,
        end=end,
        opening_balance=opening,
        closing_balance=opening + sum(tx.balance_after - tx.balance_before for tx in rows),
        transactions=rows,
        totals=dict(totals),
    )


def page(conn: Connection, *, user_id: int, limit: int, before_id: int | None) -> list[Transaction]:
    """Ledger rows newest first, below ``before_id`` if given."""
    existing(conn, user_id)
    return queries.transactions_page(conn, user_id, limit=limit, before_id=before_id)


def totals(conn: Connection, *, user_id: int) -> LedgerTotals:
    """The account's balance and totals recomputed from the ledger."""
    existing(conn, user_id)
    return queries.ledger_totals(conn, user_id)


def balance_at(conn: Connection, *, user_id: int, at: datetime) -> int:
    """The balance after every movement written at or before ``at``."""
    existing(conn, user_id)
    return queries.balance_before(conn, user_id, at, inclusive=True)


def refundable_charge(conn: Connection, *, charge_id: int) -> Transaction:
    """The charge a refund names; TransactionNotFound, or InvalidRequest if it is no charge."""
    charge = queries.get_transaction(conn, charge_id)
    if charge is None:
        raise TransactionNotFound(charge_id)
    if charge.transaction_type is not TransactionType.CHARGE:
        raise InvalidRequest(
            f"ledger row {charge_id} is a {charge.transaction_type}; only charges are refunded"
        )
    return charge
