"""Every session of the database is killed (or the server restarted) while threads charge.

Threads charge shared accounts through ONE BalanceService; a caller that gets an error
retries with the same idempotency key, as a careful client does. Meanwhile every session
of the test database is terminated, several times. Callers only ever see StorageError,
the same service instance keeps working, every charge is in the ledger exactly once
with the id its caller got, and the cache equals the ledger.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import make_url

from balance_ledger import Balance, BalanceService, Discrepancy, StorageError, SyncReport
from tests.faults.conftest import FaultDatabase, FaultDatabases
from tests.faults.ledger import Ack, LedgerRow, charges, ledger_rows, new_user_ids, recharged
from tests.faults.sabotage import kill_all_sessions, session_id

THREADS = 6
KILL_ROUNDS = 3
PROGRESS = 20  # charges acknowledged before each disruption and after the last one
FUNDS = 10**9
LOAD_SECONDS = 60  # bound on the whole load; a stuck pool fails instead of hanging
RESTART_SECONDS = 60
READY_SECONDS = 30


class ChargingLoad:
    """THREADS threads charging the accounts with their own keys until stopped.

    A charge that raised is retried with the same key until it succeeds: a replay if it
    had committed. Nothing is retried after LOAD_SECONDS, so nothing can hang.
    """

    def __init__(self, svc: BalanceService, accounts: list[int]) -> None:
        self.svc = svc
        self.accounts = accounts
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.acks: list[Ack] = []
        self.storage_errors = 0
        self.unexpected: list[BaseException] = []  # anything but StorageError
        self.gave_up: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self._pool = ThreadPoolExecutor(THREADS)
        self._threads = [self._pool.submit(self._charge, n) for n in range(THREADS)]

    def _charge(self, thread: int) -> None:
        for i in itertools.count():
            if self._stopping.is_set():
                return
            key = f"t{thread}-{i}"
            user_id, amount = self.accounts[i % len(self.accounts)], 1 + i % 9
            while True:
                if time.monotonic() > self.deadline:
                    with self._lock:
                        self.gave_up.append(key)
                    return
                try:
                    tx = self.svc.charge_service(user_id, amount, "vps", idempotency_key=key)
                except StorageError:
                    with self._lock:
                        self.storage_errors += 1
                    time.sleep(0.02)  # then the same key again
                    continue
                except BaseException as error:
                    with self._lock:
                        self.unexpected.append(error)
                    return
                with self._lock:
                    self.acks.append(Ack(key, tx.id, user_id, amount))
                    self._lock.notify_all()
                break

    def wait_for_progress(self) -> None:
        """Until PROGRESS more charges were acknowledged (fails at the deadline)."""
        with self._lock:
            target = len(self.acks) + PROGRESS
            arrived = self._lock.wait_for(
                lambda: len(self.acks) >= target or self.unexpected or self.gave_up,
                timeout=max(0.0, self.deadline - time.monotonic()),
            )
            assert arrived, f"charging stalled at {len(self.acks)} acknowledged charges"
            assert not self.unexpected, self.unexpected
            assert not self.gave_up, f"gave up on {self.gave_up}"

    def stop(self, *, now: bool = False) -> None:
        """Let every thread finish its charge (retries included), or give up ``now``."""
        self._stopping.set()
        if now:
            self.deadline = time.monotonic()
        self._pool.shutdown(wait=True)


@dataclass
class LoadOutcome:
    svc: BalanceService  # the one instance that lived through the disruptions
    accounts: list[int]
    load: ChargingLoad
    disrupted: list[object]  # what each disruption reported (sessions killed)
    rows: list[LedgerRow]
    balances: dict[int, Balance]
    discrepancies: list[Discrepancy]
    report: SyncReport


def charge_through(
    svc: BalanceService, disrupt: Callable[[], object], rounds: int = KILL_ROUNDS
) -> LoadOutcome:
    """Charge fresh accounts, ``disrupt`` that ``rounds`` times mid-load, read it all back."""
    accounts = new_user_ids(2)
    for user_id in accounts:
        svc.open_account(user_id)
        svc.recharge(user_id, FUNDS, idempotency_key=f"opening-{user_id}")
    load = ChargingLoad(svc, accounts)
    disrupted = []
    try:
        for _ in range(rounds):
            load.wait_for_progress()
            disrupted.append(disrupt())
        load.wait_for_progress()  # the load recovered, through the same service
    except BaseException:
        load.stop(now=True)
        raise
    load.stop()
    return LoadOutcome(
        svc=svc,
        accounts=accounts,
        load=load,
        disrupted=disrupted,
        rows=ledger_rows(svc.engine, accounts),
        balances={user_id: svc.get_balance(user_id) for user_id in accounts},
        discrepancies=svc.get_balance_discrepancies(),
        report=svc.verify_and_fix_balance(full=True),  # no fix: it would hide drift
    )


@pytest.fixture(scope="module")
def session_loss(server_db: FaultDatabase) -> Iterator[LoadOutcome]:
    admin = server_db.admin_engine()
    try:
        with BalanceService.from_url(server_db.url) as svc:
            yield charge_through(
                svc, lambda: kill_all_sessions(admin, server_db.backend, server_db.name)
            )
    finally:
        admin.dispose()


def test_killing_every_session_interrupted_charges_in_flight(session_loss):
    assert len(session_loss.disrupted) == KILL_ROUNDS
    assert all(killed > 0 for killed in session_loss.disrupted)
    assert session_loss.load.storage_errors > 0


def test_callers_saw_only_storage_errors_while_sessions_were_killed(session_loss):
    assert session_loss.load.unexpected == []


def test_every_charge_retried_with_its_key_is_in_the_ledger_exactly_once(session_loss):
    assert_each_acknowledged_charge_once(session_loss)


def test_verify_finds_no_discrepancy_after_every_session_was_killed(session_loss):
    assert_in_sync(session_loss)


def test_the_same_service_keeps_charging_after_its_sessions_were_killed(session_loss):
    svc, user_id = session_loss.svc, session_loss.accounts[0]
    before = svc.get_balance(user_id).balance

    svc.charge_service(user_id, 5, "vps", idempotency_key="after-the-kills")

    assert svc.get_balance(user_id).balance == before - 5


def test_idle_pooled_connections_killed_by_the_server_are_replaced_without_an_error(
    server_db, open_account
):
    with BalanceService.from_url(server_db.url, pool_size=4, max_overflow=0) as svc:
        user_id = open_account(svc, 1_000)
        old_sessions = pooled_sessions(svc, server_db.backend, 4)
        admin = server_db.admin_engine()
        try:
            assert kill_all_sessions(admin, server_db.backend, server_db.name) >= 4
        finally:
            admin.dispose()

        # Each checkout finds its connection dead and silently opens a new one.
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda i: svc.charge_service(user_id, 1, "vps"), range(8)))

        assert len(done) == 8
        assert svc.get_balance(user_id).balance == 1_000 - 8
        assert set(pooled_sessions(svc, server_db.backend, 4)).isdisjoint(old_sessions)


def pooled_sessions(svc: BalanceService, backend: str, count: int) -> list[int]:
    """Check ``count`` connections out at once (the pool then holds that many idle)."""
    connections = [svc.engine.connect() for _ in range(count)]
    try:
        return [session_id(backend, conn.connection.dbapi_connection) for conn in connections]
    finally:
        for conn in connections:
            conn.close()


# -- a real PostgreSQL restart (opt-in: it disrupts every other user of the server) ---------


def postgresql_cluster(url: str) -> tuple[str, str]:
    """The (version, name) of the local cluster serving ``url``, from pg_lsclusters."""
    parsed = make_url(url)
    if parsed.host not in ("127.0.0.1", "localhost", "::1") or not shutil.which("pg_lsclusters"):
        pytest.fail(
            f"cannot restart {parsed.host}:{parsed.port}: not a local pg_ctlcluster cluster"
        )
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    port = str(parsed.port or 5432)
    for line in listed.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    pytest.fail(f"no local PostgreSQL cluster listens on port {port}:\n{listed}")


def restart_postgresql(url: str) -> str:
    version, name = postgresql_cluster(url)
    _pg_ctlcluster(version, name, "restart")
    _wait_until_ready(url)
    return f"restarted {version}/{name}"


@contextmanager
def postgresql_stopped(url: str) -> Iterator[None]:
    """The local cluster serving ``url`` is down while the block runs, then up again."""
    version, name = postgresql_cluster(url)
    _pg_ctlcluster(version, name, "stop")
    try:
        yield
    finally:
        _pg_ctlcluster(version, name, "start")
        _wait_until_ready(url)


def _pg_ctlcluster(version: str, name: str, action: str) -> None:
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    subprocess.run(command, check=True, capture_output=True, timeout=RESTART_SECONDS)


def _wait_until_ready(url: str) -> None:
    # pg_ctlcluster waits for the start; pg_isready confirms connections are accepted.
    parsed = make_url(url)
    ready = ["pg_isready", "-q", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
    deadline = time.monotonic() + READY_SECONDS
    while subprocess.run([*ready, "-t", "1"], check=False, timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL not accepting connections {READY_SECONDS} s after restart")
        time.sleep(0.2)


def test_charges_survive_a_postgresql_restart(fault_databases: FaultDatabases):
    if os.environ.get("BALANCE_TEST_MAY_RESTART_SERVER") != "1":
        pytest.skip(
            "restarts the PostgreSQL server, cutting off everyone else using it; "
            "set BALANCE_TEST_MAY_RESTART_SERVER=1 to run it"
        )
    db = fault_databases.get("postgresql")
    with BalanceService.from_url(db.url) as svc:
        outcome = charge_through(svc, lambda: restart_postgresql(db.url), rounds=1)

        assert outcome.load.storage_errors > 0
        assert outcome.load.unexpected == []
        assert_each_acknowledged_charge_once(outcome)
        assert_in_sync(outcome)
        svc.charge_service(outcome.accounts[0], 5, "vps", idempotency_key="after-the-restart")


# -- the checks shared by both ------------------------------------------------------------------


def assert_each_acknowledged_charge_once(outcome: LoadOutcome) -> None:
    rows = charges(outcome.rows)
    copies = Counter(row.idempotency_key for row in rows)
    assert outcome.load.gave_up == []
    assert len(outcome.load.acks) >= (len(outcome.disrupted) + 1) * PROGRESS
    assert [key for key, count in copies.items() if count > 1] == []
    assert sorted((r.idempotency_key, r.id, r.user_id, r.amount) for r in rows) == sorted(
        (a.key, a.transaction_id, a.user_id, a.amount) for a in outcome.load.acks
    )


def assert_in_sync(outcome: LoadOutcome) -> None:
    assert outcome.discrepancies == []
    assert outcome.report.in_sync
    assert outcome.report.fixed == 0
    for user_id in outcome.accounts:
        rows = [row for row in outcome.rows if row.user_id == user_id]
        spent = sum(row.amount for row in charges(rows))
        assert outcome.balances[user_id].balance == recharged(rows, user_id) - spent
