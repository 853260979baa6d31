"""The heavy reads on a PostgreSQL streaming replica (db/replica.py), against a real one.

`tests/cluster/pg-replica.sh start` runs a streaming replica of the local server on
127.0.0.1:5433 (`BALANCE_TEST_POSTGRESQL_REPLICA_URL` names another); CI starts it and
requires it (`BALANCE_TEST_REQUIRE=all` or `replica`). The tests use a database of
their own on the primary, which the replica follows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, create_engine, event, make_url, text

from balance_ledger import AccountNotFound, BalanceService, InvalidRequest, StorageError
from balance_ledger.cli import main
from balance_ledger.db import replica as replica_module
from balance_ledger.db.replica import Replica
from balance_ledger.db.transactions import Database
from tests.conftest import SERVER_URLS, TEST_DATABASE, _required
from tests.databases import reachable, recreate_database

REPLICA_SERVER = os.environ.get(
    "BALANCE_TEST_POSTGRESQL_REPLICA_URL", "postgresql+psycopg://postgres@127.0.0.1:5433/postgres"
)
NAME = f"{TEST_DATABASE}_replica"


def _wait_for(check, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {seconds:g} s for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def urls() -> tuple[str, str]:
    """(primary, replica): a migrated database of the tests' own and its replica."""
    if not reachable(REPLICA_SERVER):
        reason = f"no PostgreSQL replica at {REPLICA_SERVER} (tests/cluster/pg-replica.sh)"
        if _required("replica"):
            pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
        pytest.skip(reason)
    primary = recreate_database(SERVER_URLS["postgresql"], NAME)
    with BalanceService.from_url(primary) as svc:
        svc.create_schema()
    replica = make_url(REPLICA_SERVER).set(database=NAME).render_as_string(hide_password=False)
    _wait_for(lambda: reachable(replica), "the replica to have the new database")
    return primary, replica


@pytest.fixture
def svc(urls: tuple[str, str]) -> Iterator[BalanceService]:
    primary, replica = urls
    with BalanceService.from_url(primary, replica_url=replica, max_replica_lag=3600) as service:
        yield service


def _caught_up(svc: BalanceService) -> None:
    _wait_for(lambda: svc.replica_status().reason == "caught up", "the replica to catch up")


@contextmanager
def statements_by_port() -> Iterator[dict[int, list[str]]]:
    """The statements every engine sends meanwhile, by the server's port."""
    sent: dict[int, list[str]] = {}

    def record(conn, _cursor, statement, *_args) -> None:
        sent.setdefault(conn.engine.url.port, []).append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.fixture
def paused(urls: tuple[str, str]) -> Iterator[None]:
    """The replica stops replaying what the primary writes, until the test ends."""
    engine = create_engine(urls[1], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_pause()"))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_wal_replay_resume()"))
    engine.dispose()


def _open(svc: BalanceService) -> int:
    user_id = int(time.time_ns() % 10**12)  # a fresh account in the module's database
    svc.open_account(user_id)
    svc.recharge(user_id, 1_000)
    svc.charge_service(user_id, 100, "vps")
    return user_id


def test_a_caught_up_replica_answers_the_heavy_reads(urls, svc):
    user_id = _open(svc)
    _caught_up(svc)
    replica_port = make_url(urls[1]).port

    status = svc.replica_status()
    assert status.used
    assert status.reason == "caught up"
    assert status.url.endswith(NAME)
    with statements_by_port() as sent:
        statement = svc.statement(user_id, svc.get_balance(user_id).created_at, _later())
        history = svc.get_transactions(user_id)
        intact = svc.verify_chain(user_id).intact
        discrepancies = svc.get_balance_discrepancies()
    assert [tx.amount for tx in statement.transactions] == [1_000, 100]
    assert [tx.amount for tx in history] == [100, 1_000]
    assert intact
    assert discrepancies == []
    on_replica = " ".join(sent[replica_port])
    for table in ("user_balance_transactions", "balance_chain_digests", "user_balances"):
        assert table in on_replica  # history, the chain walk, the discrepancy scan
    primary_reads = [sql for port, sqls in sent.items() if port != replica_port for sql in sqls]
    assert not [sql for sql in primary_reads if "user_balance_transactions" in sql]


def test_a_replica_behind_answers_within_the_bound_and_the_primary_past_it(urls, svc, paused):
    """Proof of where each read went: the paused replica lacks the newest charge."""
    user_id = _open(svc)  # written after the pause: the replica has none of it
    primary, replica = urls
    with BalanceService.from_url(primary, replica_url=replica, max_replica_lag=0) as strict:
        status = strict.replica_status()
        assert not status.used
        assert "past the bound of 0 s" in status.reason
        assert len(strict.get_transactions(user_id)) == 2  # the primary answered

    status = svc.replica_status()
    assert status.used
    assert status.lag_seconds is not None
    assert status.lag_seconds > 0
    assert status.reason.endswith("s behind")
    with pytest.raises(AccountNotFound):  # the replica has not replayed its opening yet
        svc.get_transactions(user_id)


def test_writes_and_fixes_go_to_the_primary(svc):
    user_id = _open(svc)
    assert svc.charge_service(user_id, 1, "vps").balance_after == 899
    assert svc.verify_and_fix_balance(user_id, fix=True).in_sync
    assert svc.get_balance(user_id).balance == 899


def test_an_unreachable_replica_leaves_the_reads_to_the_primary(urls):
    primary, _ = urls
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with BalanceService.from_url(primary, replica_url=nowhere) as svc:
        user_id = _open(svc)
        status = svc.replica_status()
        assert not status.used
        assert status.reason.startswith("unreachable")
        assert len(svc.get_transactions(user_id)) == 2


def test_a_server_that_is_not_a_standby_is_not_used_as_one(urls):
    primary, _ = urls
    with BalanceService.from_url(primary, replica_url=primary) as svc:
        status = svc.replica_status()
        assert not status.used
        assert "not a standby" in status.reason


def test_a_read_the_replica_fails_midway_is_read_from_the_primary(urls, svc):
    primary, replica = urls
    _caught_up(svc)
    on_replica, on_primary = Database(create_engine(replica)), Database(create_engine(primary))
    seen = []

    def read(db: Database) -> str:
        seen.append(db)
        if db is on_replica:
            raise StorageError("database error: the replica went away")
        return "answered"

    assert Replica(on_replica, on_primary, max_lag=60).read(read) == "answered"
    assert seen == [on_replica, on_primary]
    on_replica.engine.dispose()
    on_primary.engine.dispose()


def test_a_burst_of_heavy_reads_asks_the_replica_once(urls, svc, monkeypatch):
    """The answer about the replica is kept (replica.RECHECK_SECONDS; long here, so the
    test does not race the clock): the first read asks, the others reuse it."""
    monkeypatch.setattr(replica_module, "RECHECK_SECONDS", 60.0)
    user_id = _open(svc)
    primary, replica = urls
    with (
        BalanceService.from_url(primary, replica_url=replica, max_replica_lag=3600) as fresh,
        statements_by_port() as sent,
    ):
        for _ in range(5):
            fresh.get_transactions(user_id)
    asks = [sql for sqls in sent.values() for sql in sqls if "pg_current_wal_insert_lsn" in sql]
    assert len(asks) == 1


def test_the_service_says_where_each_thread_read_last(urls, svc):
    primary, _ = urls
    user_id = _open(svc)
    _caught_up(svc)
    assert svc.last_heavy_read() is None  # this thread has made no heavy read yet
    svc.get_transactions(user_id)
    status = svc.last_heavy_read()
    assert status.used
    assert status.lag_seconds < 1  # caught up a moment ago, its answer kept
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with BalanceService.from_url(primary, replica_url=nowhere) as blind:
        blind.get_transactions(user_id)
        assert blind.last_heavy_read().reason.startswith("unreachable")
    with BalanceService.from_url(primary) as plain:
        plain.get_transactions(user_id)
        assert plain.last_heavy_read() is None


def test_http_answers_say_where_their_heavy_read_went(urls, svc, monkeypatch):
    from fastapi.testclient import TestClient

    from balance_ledger.http.app import app_from_environment

    primary, replica = urls
    user_id = _open(svc)
    _, secret = svc.create_api_key("reader", ["read", "admin"])
    _caught_up(svc)
    auth = {"Authorization": f"Bearer {secret}"}
    monkeypatch.setenv("BALANCE_DATABASE_URL", primary)
    for replica_url, expected in (
        (replica, "replica; lag="),
        ("postgresql+psycopg://postgres@127.0.0.1:1/x", 'primary; reason="unreachable'),
    ):
        monkeypatch.setenv("BALANCE_REPLICA_URL", replica_url)
        with TestClient(app_from_environment()) as http:
            for path in (
                f"/v1/accounts/{user_id}/transactions",
                f"/v1/accounts/{user_id}/statement?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
                "/v1/discrepancies",
            ):
                answer = http.get(path, headers=auth)
                assert answer.status_code == 200, answer.text
                assert answer.headers["Balance-Read-From"].startswith(expected), path
            balance = http.get(f"/v1/accounts/{user_id}", headers=auth)
            assert "Balance-Read-From" not in balance.headers  # the cache: the primary's


def test_the_replica_engine_gets_the_engine_options(urls):
    primary, replica = urls
    with BalanceService.from_url(primary, replica_url=replica, pool_size=3) as svc:
        assert svc._replica._replica.engine.pool.size() == 3


def test_a_replica_is_postgresql_of_postgresql(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(InvalidRequest, match="PostgreSQL streaming replica"):
        BalanceService.from_url(url, replica_url=url)
    with pytest.raises(InvalidRequest, match="max_replica_lag"):
        BalanceService.from_url(url, replica_url=url, max_replica_lag=-1)


def test_the_cli_says_where_a_heavy_read_went(urls, svc, capsys):
    primary, replica = urls
    _open(svc)
    _caught_up(svc)
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", primary, "--replica-url", replica, "verify-chain"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert "every chain verifies" in out
    assert "read from the replica" in err
    assert "caught up" in err


def _later():
    from balance_ledger import clock

    return clock.now() + timedelta(seconds=1)
