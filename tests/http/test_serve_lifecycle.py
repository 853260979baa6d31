"""``balance serve`` as a process: its workers end with it; SIGTERM drains, in a bound, to 0.

A request is made to be in flight by holding the account's balance row lock from the
test (``SELECT … FOR UPDATE``; on SQLite the database's write lock, ``BEGIN IMMEDIATE``,
which the service waits out on its busy timeout) while the charge is sent.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from balance_ledger import BalanceService
from tests.http.test_serve import (
    START_SECONDS,
    Child,
    Served,
    child_processes,
    free_port,
    serve_process,
)

WORKERS_GONE_SECONDS = 5  # after the supervisor's death: the watchdog polls every 0.5 s
EXIT_SECONDS = 30  # any exit that is due: generous, the real ones take a few seconds
# --shutdown-timeout 1, then 2 s at most for a thread stuck on a lock; generous still, but
# well under SQLite's busy timeout (30 s), whose end would also let the process exit.
BOUNDED_EXIT_SECONDS = 15
BLOCKED_SECONDS = 15  # for the charge to be seen waiting on the lock
SQLITE_BLOCKED_SECONDS = 1.0  # a wait on SQLite's busy timeout cannot be seen: let it start
CHARGE_SECONDS = 60  # the client's timeout
USER_ID = 1
OPENING_BALANCE = 100
CHARGE = {"amount": 30, "service_type": "vps"}


def test_workers_end_with_a_killed_supervisor_and_a_new_serve_gets_the_port(database_url):
    port = free_port()
    with serve_process(database_url, "--workers", "2", port=port) as started:
        children = _spawned_workers(started)
        try:
            started.process.kill()
            started.process.wait(timeout=EXIT_SECONDS)
            deadline = time.monotonic() + WORKERS_GONE_SECONDS
            while any(child.alive for child in children) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [child.describe() for child in children if child.alive]
            assert not left, f"running {WORKERS_GONE_SECONDS} s after the supervisor died: {left}"
        finally:
            for child in children:  # even when the test failed: no orphan outlives it
                child.kill()

    with serve_process(database_url, port=port) as restarted:
        assert restarted.process.poll() is None  # it answered /healthz, not a survivor
        assert httpx.get(f"{restarted.base}/readyz", timeout=5).status_code == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_request_in_flight_finish_and_exits_zero(database_url, workers):
    _open_account(database_url)
    with (
        serve_process(database_url, "--workers", str(workers)) as started,  # drains 10 s
        ThreadPoolExecutor(1) as pool,
        balance_row_locked(database_url) as release,
    ):
        answer = pool.submit(_charge, started)
        _wait_until_blocked(database_url, answer)
        started.process.send_signal(signal.SIGTERM)
        # Each worker stopped listening and waits for the charge (the lock still held).
        started.wait_for_log("Waiting for connections to close", EXIT_SECONDS)
        release()
        charged = answer.result(timeout=CHARGE_SECONDS)
        exit_code = started.process.wait(timeout=EXIT_SECONDS)

    assert charged.status_code == 201, charged.text
    assert charged.json()["balance_after"] == OPENING_BALANCE - CHARGE["amount"]
    assert exit_code == 0, started.log()
    assert _balance(database_url) == OPENING_BALANCE - CHARGE["amount"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_exits_zero_within_its_bound_while_a_request_stays_blocked(database_url, workers):
    _open_account(database_url)
    options = ("--workers", str(workers), "--shutdown-timeout", "1")
    with (
        serve_process(database_url, *options) as started,
        ThreadPoolExecutor(1) as pool,
        balance_row_locked(database_url) as release,
    ):
        answer = pool.submit(_charge, started)
        _wait_until_blocked(database_url, answer)
        started.process.send_signal(signal.SIGTERM)
        # The lock is held until the process is gone: 1 s of grace, then the charge is
        # cancelled and its thread, still waiting in the database, left behind.
        exit_code = started.process.wait(timeout=BOUNDED_EXIT_SECONDS)
        release()
        outcome = _status(answer)

    assert exit_code == 0, started.log()
    assert "timeout graceful shutdown exceeded" in started.log()
    assert outcome != 201
    assert _balance(database_url) == OPENING_BALANCE  # its transaction rolled back


def _spawned_workers(started: Served) -> list[Child]:
    """The supervisor's children once both workers are among them (and its helpers)."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        children = child_processes(started.process.pid)
        if sum("spawn_main" in child.describe() for child in children) >= 2:
            return children
        if time.monotonic() > deadline:
            pytest.fail(f"no two workers: {[child.describe() for child in children]}")
        time.sleep(0.1)


def _open_account(database_url: str) -> None:
    with BalanceService.from_url(database_url) as svc:
        svc.open_account(USER_ID)
        svc.recharge(USER_ID, OPENING_BALANCE)


def _balance(database_url: str) -> int:
    with BalanceService.from_url(database_url) as svc:
        return svc.get_balance(USER_ID).balance


def _charge(started: Served) -> httpx.Response:
    return httpx.post(
        f"{started.base}/v1/accounts/{USER_ID}/charges",
        json=CHARGE,
        headers={"Authorization": f"Bearer {started.secret}"},
        timeout=CHARGE_SECONDS,
    )


def _outcome(answer: Future[httpx.Response]) -> str:
    try:
        response = answer.result(timeout=0)
    except Exception as error:
        return repr(error)
    return f"{response.status_code} {response.text}"


def _status(answer: Future[httpx.Response]) -> int | None:
    """The charge's status, or None if its connection was dropped."""
    try:
        return answer.result(timeout=CHARGE_SECONDS).status_code
    except httpx.TransportError:
        return None


@contextmanager
def balance_row_locked(database_url: str) -> Iterator[Callable[[], None]]:
    """Hold the account's balance row lock (SQLite: the write lock) until ``release()``
    or the block's end."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        holder = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield lambda: holder.execute("ROLLBACK") if holder.in_transaction else None
        finally:
            holder.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.begin()
            conn.execute(
                text("SELECT user_id FROM user_balances WHERE user_id = :user_id FOR UPDATE"),
                {"user_id": USER_ID},
            )
            yield conn.rollback  # again: nothing to do
    finally:
        engine.dispose()


def _wait_until_blocked(database_url: str, answer: Future[httpx.Response]) -> None:
    """Until a session of the test database waits for a lock (SQLite: a moment)."""

    def not_answered_yet() -> None:
        if answer.done():
            pytest.fail(f"the charge did not wait for the lock: {_outcome(answer)}")

    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        time.sleep(SQLITE_BLOCKED_SECONDS)
        not_answered_yet()
        return
    if backend == "postgresql":
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    else:
        waiting = (
            "SELECT COUNT(*) FROM information_schema.innodb_trx t"
            " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
            " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
        )
    engine = create_engine(url, isolation_level="AUTOCOMMIT")  # a fresh look each time
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + BLOCKED_SECONDS
            while not conn.execute(text(waiting)).scalar():
                not_answered_yet()
                if time.monotonic() > deadline:
                    pytest.fail(f"the charge did not wait for the lock in {BLOCKED_SECONDS} s")
                # Not faster: InnoDB refreshes innodb_trx only when unread for 0.1 s.
                time.sleep(0.25)
    finally:
        engine.dispose()
