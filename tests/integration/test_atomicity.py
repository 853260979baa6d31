"""The seed's scenario 8: a failure mid-transaction leaves no partial data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event

from balance_ledger import BalanceService, StorageError
from balance_ledger.db.tables import user_balance_transactions as ledger


@contextmanager
def rewrite_statement(
    svc: BalanceService, fragment: str, replacement: str, *, whole: bool = False
) -> Iterator[None]:
    """In statements containing ``fragment``, put ``replacement`` in its place (the
    parameters kept), or instead of the ``whole`` statement: a real database error.

    A fragment, not a prefix: on PostgreSQL the ledger INSERT and the balance UPDATE
    are one statement (a writable CTE), and its INSERT must still run before the UPDATE fails.
    """

    def swap(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool):
        if fragment in statement:
            if whole:
                return replacement, ()
            return statement.replace(fragment, replacement), parameters
        return statement, parameters

    event.listen(svc.engine, "before_cursor_execute", swap, retval=True)
    try:
        yield
    finally:
        event.remove(svc.engine, "before_cursor_execute", swap)


def test_failed_cache_update_rolls_back_the_ledger_row(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    before = dump()

    # The ledger INSERT succeeds; then the UPDATE of the cache violates a CHECK.
    violating_update = "UPDATE user_balances SET credit_limit = -1, "
    with (
        rewrite_statement(svc, "UPDATE user_balances SET ", violating_update),
        pytest.raises(StorageError, match="database error"),
    ):
        svc.charge_service(account.user_id, 100, "vps")

    assert dump() == before


def test_failed_ledger_insert_leaves_the_cache_unchanged(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    before = dump()

    with (
        rewrite_statement(svc, "INTO user_balance_transactions ", "INTO no_such_table "),
        pytest.raises(StorageError),
    ):
        svc.recharge(account.user_id, 100)

    assert dump() == before


def test_service_works_normally_after_a_failed_transaction(svc, account_factory):
    account = account_factory(balance=1_000)
    with (
        rewrite_statement(svc, "UPDATE user_balances ", "UPDATE no_such_table "),
        pytest.raises(StorageError),
    ):
        svc.charge_service(account.user_id, 100, "vps")
    assert svc.charge_service(account.user_id, 100, "vps").balance_after == 900


def test_database_itself_refuses_a_ledger_row_with_wrong_arithmetic(svc, account_factory):
    account = account_factory(balance=1_000)
    bad_row = (
        "INSERT INTO user_balance_transactions (user_id, transaction_type, amount, "
        f"balance_before, balance_after, created_at) VALUES ({account.user_id}, 'charge', 100, "
        "1000, 950, '2026-01-01 00:00:00')"
    )
    with (
        rewrite_statement(svc, "INTO user_balance_transactions ", bad_row, whole=True),
        pytest.raises(StorageError, match=r"(?i)check|constraint"),
    ):
        svc.charge_service(account.user_id, 100, "vps")


def test_a_refused_bulk_insert_is_a_storage_error_and_leaves_nothing(svc, account_factory, dump):
    # Batches insert with Backend.insert_rows: binary COPY on PostgreSQL, which bypasses
    # SQLAlchemy, so its errors must still arrive typed.
    account = account_factory(balance=1_000)
    before = dump()
    zero_amount = {column.name: None for column in ledger.c} | {
        "id": 10**9,
        "user_id": account.user_id,
        "transaction_type": "charge",
        "amount": 0,
        "balance_before": 1_000,
        "balance_after": 1_000,
        "created_at": datetime.now(UTC),
    }

    with pytest.raises(StorageError, match=r"(?i)check|constraint"):
        svc._db.write(lambda conn: svc._db.backend.insert_rows(conn, ledger, [zero_amount]))

    assert dump() == before
