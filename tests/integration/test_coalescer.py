"""ChargeCoalescer: concurrent callers' charges share transactions, each keeps its outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event

from balance_ledger import (
    BalanceService,
    Charge,
    ChargeCoalescer,
    CommitUnknown,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    Transaction,
)
from tests.faults.sabotage import driver_error_after_commit

# Long enough that charges released together by a barrier land in one batch.
WINDOW = 0.2


def together(count: int, charge: Callable[[int], Any]) -> list[Any]:
    """Run ``charge(n)`` for n < count from as many threads at once; each outcome or error."""
    start = threading.Barrier(count)

    def call(n: int) -> Any:
        start.wait()
        try:
            return charge(n)
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


@pytest.fixture
def commits(svc: BalanceService) -> Iterator[list[int]]:
    """Counts the transactions the service commits."""
    counted: list[int] = []

    def count(_conn: Any) -> None:
        counted.append(1)

    event.listen(svc.engine, "commit", count)
    yield counted
    event.remove(svc.engine, "commit", count)


def test_each_caller_gets_its_own_committed_row(svc, account_factory):
    account = account_factory(balance=1_000)
    with ChargeCoalescer(svc, window=WINDOW) as coalescer:
        rows = together(20, lambda n: coalescer.charge(account.user_id, n + 1, "api"))

    assert all(isinstance(row, Transaction) for row in rows)
    assert [row.amount for row in rows] == list(range(1, 21))
    assert len({row.id for row in rows}) == 20
    assert svc.get_balance(account.user_id).balance == 1_000 - sum(range(1, 21))
    assert svc.verify_and_fix_balance(full=True).in_sync


def test_concurrent_charges_share_a_transaction(svc, account_factory, commits):
    account = account_factory(balance=1_000)
    with ChargeCoalescer(svc, window=WINDOW) as coalescer:
        together(20, lambda n: coalescer.charge(account.user_id, 1, "api"))

    assert len(commits) < 20


def test_a_refused_charge_does_not_fail_the_others_in_its_batch(svc, account_factory, commits):
    poor = account_factory(balance=5)
    rich = account_factory(balance=1_000)
    with ChargeCoalescer(svc, window=WINDOW) as coalescer:
        outcomes = together(
            10, lambda n: coalescer.charge(poor.user_id if n == 0 else rich.user_id, 10, "api")
        )

    assert isinstance(outcomes[0], InsufficientBalance)
    assert all(isinstance(row, Transaction) for row in outcomes[1:])
    assert svc.get_balance(poor.user_id).balance == 5
    assert svc.get_balance(rich.user_id).balance == 1_000 - 90


def test_malformed_arguments_are_refused_before_queueing(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    before = dump()
    with ChargeCoalescer(svc) as coalescer, pytest.raises(InvalidAmount):
        coalescer.charge(account.user_id, 0, "api")

    assert dump() == before


def test_a_batch_the_database_rejects_is_rerun_charge_by_charge(svc, account_factory):
    account = account_factory(balance=1_000)
    failed = threading.Event()

    def fail_first_balance_update(conn, cursor, statement, parameters, context, many):
        if statement.startswith("UPDATE user_balances ") and not failed.is_set():
            failed.set()
            return "SELECT * FROM no_such_table", ()
        return statement, parameters

    event.listen(svc.engine, "before_cursor_execute", fail_first_balance_update, retval=True)
    try:
        with ChargeCoalescer(svc, window=WINDOW) as coalescer:
            rows = together(10, lambda n: coalescer.charge(account.user_id, 1, "api"))
    finally:
        event.remove(svc.engine, "before_cursor_execute", fail_first_balance_update)

    assert failed.is_set()
    assert all(isinstance(row, Transaction) for row in rows)
    assert svc.get_balance(account.user_id).balance == 990
    assert svc.verify_and_fix_balance(full=True).in_sync


def test_commit_unknown_reaches_every_caller_of_the_batch_and_nothing_is_rerun(
    svc, account_factory
):
    account = account_factory(balance=1_000)
    with (
        driver_error_after_commit(svc.engine) as after_next_commit,
        ChargeCoalescer(svc, window=WINDOW) as coalescer,
    ):
        after_next_commit.arm()
        outcomes = together(5, lambda n: coalescer.charge(account.user_id, 1, "api"))

    failed = [o for o in outcomes if isinstance(o, CommitUnknown)]
    assert failed  # the batch whose commit answer was lost
    # Its charges committed once each, and were not re-run by the coalescer.
    assert svc.get_balance(account.user_id).balance == 1_000 - len(outcomes)


def test_a_repeated_key_in_one_batch_returns_the_same_row(svc, account_factory):
    account = account_factory(balance=1_000)
    with ChargeCoalescer(svc, window=WINDOW) as coalescer:
        rows = together(
            6, lambda n: coalescer.charge(account.user_id, 7, "api", idempotency_key="usage-1")
        )

    assert len({row.id for row in rows}) == 1
    assert svc.get_balance(account.user_id).balance == 993


def test_close_writes_every_queued_charge_first(svc, account_factory):
    account = account_factory(balance=1_000)
    coalescer = ChargeCoalescer(svc, window=0.5)
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(coalescer.charge, account.user_id, 1, "api") for _ in range(8)]
        time.sleep(0.1)  # every charge queued, its batch waiting out the window
        coalescer.close()
        rows = [p.result(timeout=10) for p in pending]

    assert all(isinstance(row, Transaction) for row in rows)
    assert svc.get_balance(account.user_id).balance == 992


def test_close_with_a_timeout_does_not_wait_for_a_writer_stuck_in_the_database(
    svc, account_factory, monkeypatch
):
    account = account_factory(balance=1_000)
    stuck, charge = threading.Event(), svc.charge

    def hangs(request):
        stuck.wait(timeout=30)
        return charge(request)

    monkeypatch.setattr(svc, "charge", hangs)
    coalescer = ChargeCoalescer(svc)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(coalescer.submit, Charge(account.user_id, 5, "api"))
        time.sleep(0.1)  # the writer has it, and hangs
        started = time.monotonic()
        assert coalescer.close(timeout=0.2) is False
        assert time.monotonic() - started < 5
        stuck.set()  # the database answers: the charge is written and answered
        assert pending.result(timeout=10).amount == 5
    assert coalescer.close(timeout=5) is True


def test_a_closed_coalescer_refuses_charges(svc, account_factory):
    account = account_factory(balance=1_000)
    coalescer = ChargeCoalescer(svc)
    coalescer.close()

    with pytest.raises(InvalidRequest, match="closed"):
        coalescer.charge(account.user_id, 1, "api")


@pytest.mark.parametrize(
    "options",
    [
        {"window": -1},
        {"window": 2},
        {"window": "1"},
        {"max_batch": 0},
        {"max_batch": 1_001},
        {"max_batch": True},
        {"writers": 0},
    ],
)
def test_bad_settings_are_refused(svc, options):
    with pytest.raises(InvalidRequest):
        ChargeCoalescer(svc, **options)
