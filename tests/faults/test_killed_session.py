"""The server kills the session that is charging, in the middle of its transaction.

Right after the ledger INSERT (or the balance UPDATE) has executed, an administrator's
connection terminates that very session (pg_terminate_backend / KILL). The caller gets
a typed StorageError, the server rolled everything back, and a retry with the same
idempotency key charges exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from balance_ledger import BalanceService, StorageError
from tests.faults.conftest import FaultDatabase
from tests.faults.ledger import charges, dump, ledger_rows
from tests.faults.sabotage import ONE_STATEMENT, OneShot, kill_sessions, session_id

# What the statement to kill after contains. On PostgreSQL both are one statement (the
# INSERT in a CTE of the UPDATE): both cases then kill after it.
AFTER = {
    "after-ledger-insert": "INSERT INTO user_balance_transactions ",
    "after-balance-update": "UPDATE user_balances ",
}


@contextmanager
def session_killed_after(
    svc: BalanceService, db: FaultDatabase, fragment: str
) -> Iterator[OneShot]:
    """Once armed, the session that executes a statement containing ``fragment`` is
    killed by the server right after it, before the transaction can commit."""
    shot = OneShot()
    admin = db.admin_engine()

    def kill_own_session(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if fragment in statement and shot.take():
            kill_sessions(admin, db.backend, [session_id(db.backend, cursor.connection)])

    event.listen(svc.engine, "after_cursor_execute", kill_own_session)
    try:
        yield shot
    finally:
        event.remove(svc.engine, "after_cursor_execute", kill_own_session)
        admin.dispose()


@pytest.fixture(params=list(AFTER))
def killed_mid_charge(
    request: pytest.FixtureRequest, server_db: FaultDatabase
) -> Iterator[tuple[BalanceService, OneShot]]:
    with (  # the locked path, whose writes have a COMMIT after them
        BalanceService.from_url(server_db.url, one_statement=False) as svc,
        session_killed_after(svc, server_db, AFTER[request.param]) as shot,
    ):
        yield svc, shot


def test_killed_session_raises_storage_error_and_leaves_nothing(killed_mid_charge, open_account):
    svc, shot = killed_mid_charge
    user_id = open_account(svc, 1_000)
    before = dump(svc.engine, [user_id])

    shot.arm()
    # StorageError, or CommitUnknown when the kill is noticed only by the COMMIT after
    # the last statement: the client cannot tell that from a commit whose answer was lost.
    with pytest.raises(StorageError):
        svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")

    assert shot.fired.is_set()
    assert dump(svc.engine, [user_id]) == before


def test_retry_with_the_same_key_after_a_killed_session_charges_exactly_once(
    killed_mid_charge, open_account
):
    svc, shot = killed_mid_charge
    user_id = open_account(svc, 1_000)
    shot.arm()
    with pytest.raises(StorageError):
        svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")

    tx = svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")
    replay = svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")

    assert [row.id for row in charges(ledger_rows(svc.engine, [user_id]))] == [tx.id]
    assert replay.id == tx.id
    assert svc.get_balance(user_id).balance == 900


# -- a charge in one statement (money/post.py: post_unchanged, PostgreSQL) --------------


@pytest.fixture
def one_statement(server_db: FaultDatabase) -> Iterator[BalanceService]:
    if server_db.backend != "postgresql":
        pytest.skip("only PostgreSQL writes a charge in one statement")
    with BalanceService.from_url(server_db.url) as svc:
        yield svc


def test_a_session_ended_before_the_one_statement_ran_charges_on_the_locked_path(
    one_statement, server_db, open_account
):
    svc, shot, admin = one_statement, OneShot(), server_db.admin_engine()
    user_id = open_account(svc, 1_000)
    svc.charge_service(user_id, 1, "vps")  # the next charge is decided on this snapshot

    def kill_first(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if ONE_STATEMENT in statement and shot.take():
            kill_sessions(admin, server_db.backend, [session_id("postgresql", cursor.connection)])

    event.listen(svc.engine, "before_cursor_execute", kill_first)
    shot.arm()
    try:
        tx = svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1")
    finally:
        event.remove(svc.engine, "before_cursor_execute", kill_first)
        admin.dispose()

    assert shot.fired.is_set()  # its statement met a dead session: nothing was written
    assert [row.id for row in charges(ledger_rows(svc.engine, [user_id]))][-1] == tx.id
    assert svc.get_balance(user_id).balance == 899
    assert svc.charge_service(user_id, 100, "vps", idempotency_key="usage-1").id == tx.id


def test_a_session_ended_after_the_one_statement_committed_answers_its_row(
    one_statement, server_db, open_account
):
    """The server ends the session after the statement committed and before its answer
    is read: the row is found by its hash and answered, never written twice."""
    svc, shot, admin = one_statement, OneShot(), server_db.admin_engine()
    user_id = open_account(svc, 1_000)

    def answer_lost(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if ONE_STATEMENT in statement and shot.take():
            kill_sessions(admin, server_db.backend, [session_id("postgresql", cursor.connection)])
            raise psycopg.errors.AdminShutdown(
                "terminating connection due to administrator command"
            )

    event.listen(svc.engine, "after_cursor_execute", answer_lost)
    shot.arm()
    try:
        tx = svc.charge_service(user_id, 100, "vps")  # no key: found by its row hash
    finally:
        event.remove(svc.engine, "after_cursor_execute", answer_lost)
        admin.dispose()

    assert shot.fired.is_set()
    assert [row.id for row in charges(ledger_rows(svc.engine, [user_id]))] == [tx.id]
    assert tx.balance_after == svc.get_balance(user_id).balance == 900
