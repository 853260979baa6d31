"""Transactions the server aborts (lock timeouts) are retried, boundedly, then a typed error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from balance_ledger import BalanceService, InsufficientBalance, RetriesExhausted, StorageError

# How each backend is told to give up waiting for a row lock quickly.
SHORT_LOCK_WAIT: dict[str, dict[str, Any]] = {
    "sqlite": {"connect_args": {"timeout": 0.1}},
    "postgresql": {"connect_args": {"options": "-c lock_timeout=100"}},
    "mariadb": {"connect_args": {"init_command": "SET innodb_lock_wait_timeout = 1"}},
}


@contextmanager
def account_locked_elsewhere(url: str, backend: str, seconds: float) -> Iterator[None]:
    """Another connection holds the account's lock for ``seconds`` (in a thread)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    locked = threading.Event()

    def hold() -> None:
        with engine.connect() as conn:
            if backend == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")
                conn.execute(text("SELECT * FROM user_balances WHERE user_id = 1 FOR UPDATE"))
            locked.set()
            threading.Event().wait(seconds)
            conn.exec_driver_sql("ROLLBACK")

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(10)
    try:
        yield
    finally:
        holder.join()
        engine.dispose()


@pytest.fixture
def funded_account(svc: BalanceService) -> int:
    svc.open_account(1)
    svc.recharge(1, 1_000)
    return 1


def test_charge_waiting_out_a_held_lock_is_retried_and_succeeds(
    database_url, backend, funded_account, caplog
):
    with (
        BalanceService.from_url(database_url, max_attempts=30, **SHORT_LOCK_WAIT[backend]) as svc,
        caplog.at_level(logging.INFO, logger="balance_ledger"),
        account_locked_elsewhere(database_url, backend, seconds=1.5),
    ):
        tx = svc.charge_service(funded_account, 100, "vps")

    assert tx.balance_after == 900
    assert "retry 1" in caplog.text


def test_each_charge_reports_its_lock_wait(svc, funded_account):
    waits: list[float] = []
    svc.on_lock_wait(waits.append)

    svc.charge_service(funded_account, 100, "vps")

    assert len(waits) == 1
    assert 0 <= waits[0] < 1


def test_a_charge_queued_behind_a_held_lock_reports_the_wait(database_url, backend, funded_account):
    waits: list[float] = []
    with BalanceService.from_url(database_url) as svc:
        svc.on_lock_wait(waits.append)
        with account_locked_elsewhere(database_url, backend, seconds=0.5):
            svc.charge_service(funded_account, 100, "vps")

    assert len(waits) == 1
    assert 0.4 < waits[0] < 5


def test_a_failing_lock_wait_observer_never_fails_the_charge(svc, funded_account, caplog):
    def broken(_seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    svc.on_lock_wait(broken)

    assert svc.charge_service(funded_account, 100, "vps").balance_after == 900
    assert "lock-wait observer" in caplog.text


def test_retries_are_bounded_then_raise_retries_exhausted(
    database_url, backend, funded_account, dump
):
    before = dump()
    with (
        BalanceService.from_url(database_url, max_attempts=2, **SHORT_LOCK_WAIT[backend]) as svc,
        account_locked_elsewhere(database_url, backend, seconds=2.5),
        pytest.raises(RetriesExhausted, match="gave up after 2 attempts") as exhausted,
    ):
        svc.charge_service(funded_account, 100, "vps")

    assert isinstance(exhausted.value, StorageError)
    assert dump() == before


def test_unreachable_database_raises_storage_error():
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with (
        BalanceService.from_url(url) as svc,
        pytest.raises(StorageError, match="database error"),
    ):
        svc.get_balance(1)


def test_in_memory_sqlite_is_shared_safely_between_threads():
    with BalanceService.from_url("sqlite://") as svc:
        svc.create_schema()
        svc.open_account(1)
        svc.recharge(1, 100)

        def charge(_: int) -> int:
            try:
                svc.charge_service(1, 3, "api")
            except InsufficientBalance:
                return 0
            return 1

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(charge, range(50))) == 33
        assert svc.ledger_totals(1).balance == svc.get_balance(1).balance == 1
