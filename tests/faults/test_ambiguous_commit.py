"""An ambiguous commit: the server committed the charge, the caller saw the connection fail.

Two ways to cause it: the driver raises a lost connection right after the real COMMIT
(every backend), and a TCP proxy that forwards COMMIT, waits for the server's answer and
cuts the connection instead of delivering it (server backends). The caller cannot know
the outcome, so it gets CommitUnknown (a StorageError); its retry with the same key must return the
committed row, and the library itself must never re-run a call that has no key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import make_url

from balance_ledger import BalanceService, CommitUnknown
from tests.faults.conftest import BACKENDS, SERVER_BACKENDS, FaultDatabase, FaultDatabases
from tests.faults.ledger import charges, ledger_rows
from tests.faults.sabotage import (
    CommitCuttingProxy,
    OneShot,
    driver_error_after_commit,
    driver_error_after_one_statement,
)

CASES = [
    *[(backend, "driver-error") for backend in BACKENDS],
    *[(backend, "connection-cut") for backend in SERVER_BACKENDS],
    ("postgresql", "one-statement-answer-lost"),
]


@dataclass
class Ambiguous:
    svc: BalanceService
    after_next_commit: OneShot  # arm() it: the next commit succeeds, the caller sees a failure


@contextmanager
def through_commit_cutting_proxy(db: FaultDatabase) -> Iterator[Ambiguous]:
    url = make_url(db.url)
    default_port = 5432 if db.backend == "postgresql" else 3306
    proxy = CommitCuttingProxy(url.host or "127.0.0.1", url.port or default_port)
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    if db.backend == "postgresql":
        proxied = proxied.update_query_dict({"sslmode": "disable"})  # COMMIT must be visible
    try:
        # The locked path: the proxy knows a COMMIT by its bytes, and a charge in one
        # statement sends none (its lost answer is the driver-error case).
        with BalanceService.from_url(proxied, one_statement=False) as svc:
            yield Ambiguous(svc, proxy.shot)
    finally:
        proxy.close()


@contextmanager
def with_driver_error_after_commit(db: FaultDatabase) -> Iterator[Ambiguous]:
    with (  # the locked path: its writes end with a COMMIT
        BalanceService.from_url(db.url, one_statement=False) as svc,
        driver_error_after_commit(svc.engine) as shot,
    ):
        yield Ambiguous(svc, shot)


@contextmanager
def with_answer_lost_after_one_statement(db: FaultDatabase) -> Iterator[Ambiguous]:
    with (
        BalanceService.from_url(db.url) as svc,
        driver_error_after_one_statement(svc.engine) as shot,
    ):
        yield Ambiguous(svc, shot)


@pytest.fixture(params=CASES, ids=[f"{backend}-{how}" for backend, how in CASES])
def ambiguous(
    request: pytest.FixtureRequest, fault_databases: FaultDatabases
) -> Iterator[Ambiguous]:
    backend, how = request.param
    db = fault_databases.get(backend)
    sabotage: AbstractContextManager[Ambiguous] = {
        "connection-cut": through_commit_cutting_proxy,
        "driver-error": with_driver_error_after_commit,
        "one-statement-answer-lost": with_answer_lost_after_one_statement,
    }[how](db)
    with sabotage as case:
        yield case


def test_ambiguous_commit_raises_commit_unknown_although_the_charge_committed(
    ambiguous, open_account
):
    svc = ambiguous.svc
    user_id = open_account(svc, 1_000)

    ambiguous.after_next_commit.arm()
    with pytest.raises(CommitUnknown):
        svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")

    assert ambiguous.after_next_commit.fired.is_set()
    assert [row.idempotency_key for row in charges(ledger_rows(svc.engine, [user_id]))] == [
        "usage-1"
    ]
    assert svc.get_balance(user_id).balance == 900


def test_retry_with_the_same_key_returns_the_committed_transaction(ambiguous, open_account):
    svc = ambiguous.svc
    user_id = open_account(svc, 1_000)
    ambiguous.after_next_commit.arm()
    with pytest.raises(CommitUnknown):
        svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")
    (committed,) = charges(ledger_rows(svc.engine, [user_id]))

    retry = svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")

    assert retry.id == committed.id
    assert [row.id for row in charges(ledger_rows(svc.engine, [user_id]))] == [committed.id]
    assert svc.get_balance(user_id).balance == 900


def test_library_does_not_rerun_a_charge_without_key_after_an_ambiguous_commit(
    ambiguous, open_account
):
    svc = ambiguous.svc
    user_id = open_account(svc, 1_000)

    ambiguous.after_next_commit.arm()
    with pytest.raises(CommitUnknown):
        svc.charge_service(user_id, 100, "vps")

    # Charged once, and the caller was told it failed: re-running it itself would have
    # charged twice (or returned success for a second charge).
    assert len(charges(ledger_rows(svc.engine, [user_id]))) == 1
    assert svc.get_balance(user_id).balance == 900
