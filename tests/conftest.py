"""One parametrized fixture runs every database test on SQLite, PostgreSQL and MariaDB.

Servers come from ``BALANCE_TEST_POSTGRESQL_URL`` / ``BALANCE_TEST_MARIADB_URL``
(defaults: the local servers). A server that cannot be reached skips its tests with
the reason, unless ``BALANCE_TEST_REQUIRE`` names it (``postgresql,mariadb,redis`` or
``all``): then its absence fails the run, as it must in CI. (Redis, for the Redis
Streams sink, is checked in tests/integration/test_redis_sink.py.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, make_url, select

from balance_ledger import AccountPolicy, Balance, BalanceService
from balance_ledger.db.drills import overwrite_cache
from balance_ledger.db.guards import APPEND_ONLY_TABLES, install_append_only, remove_append_only
from balance_ledger.db.tables import metadata
from tests.databases import recreate_database, server_url

BACKENDS = ("sqlite", "postgresql", "mariadb")
# Its own name lets two test runs share a server (BALANCE_TEST_DATABASE=…).
TEST_DATABASE = os.environ.get("BALANCE_TEST_DATABASE", "balance_ledger_test")
SERVER_URLS = {
    backend: server_url(backend, "BALANCE_TEST") for backend in ("postgresql", "mariadb")
}


def _required(backend: str) -> bool:
    required = {b.strip() for b in os.environ.get("BALANCE_TEST_REQUIRE", "").split(",")}
    return backend in required or "all" in required


@pytest.fixture(scope="session", params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of one backend, shared by that backend's tests."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'ledger.db'}"
    else:
        try:
            url = recreate_database(SERVER_URLS[backend], TEST_DATABASE)
        except Exception as error:
            cause = " ".join(str(getattr(error, "orig", None) or error).split())
            reason = f"{backend} server not reachable at {SERVER_URLS[backend]}: {cause}"
            if _required(backend):
                pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
            pytest.skip(reason)
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    return url


@pytest.fixture
def backend(backend_url: str) -> str:
    name = make_url(backend_url).get_backend_name()
    return "mariadb" if name == "mysql" else name


@contextmanager
def append_only_lifted(engine: Engine) -> Iterator[Connection]:
    """A transaction in which the ledger's append-only triggers are gone.

    Only tests do this: to empty the database, or to play the attacker who disabled
    the triggers and edited history (what the verifier must then catch).
    """
    with engine.begin() as conn:
        remove_append_only(conn, APPEND_ONLY_TABLES)
        yield conn
        install_append_only(conn, APPEND_ONLY_TABLES)


def empty_database(url: str) -> None:
    """Remove every row, referencing tables first."""
    engine = create_engine(url)
    with append_only_lifted(engine) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def database_url(backend_url: str) -> str:
    """The backend's database, emptied for this test."""
    empty_database(backend_url)
    return backend_url


@pytest.fixture
def svc(database_url: str) -> Iterator[BalanceService]:
    with BalanceService.from_url(database_url) as service:
        yield service


AccountFactory = Callable[..., Balance]


@pytest.fixture
def account_factory(svc: BalanceService) -> AccountFactory:
    """Open a fresh account (ids 1, 2, …), optionally recharged with ``balance``."""
    next_id = iter(range(1, 10**6))

    def open_account(
        *,
        balance: int = 0,
        currency: str = "VND",
        credit_limit: int = 0,
        user_id: int | None = None,
        policy: AccountPolicy | None = None,
    ) -> Balance:
        uid = user_id if user_id is not None else next(next_id)
        svc.open_account(uid, currency=currency, credit_limit=credit_limit, policy=policy)
        if balance:
            svc.recharge(uid, balance, description="opening balance")
        return svc.get_balance(uid)

    return open_account


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


Dump = Callable[[], dict[str, list[tuple[object, ...]]]]


@pytest.fixture
def dump(svc: BalanceService) -> Dump:
    """Every row of every table, to assert that a refused call changed nothing."""

    def dump_rows() -> dict[str, list[tuple[object, ...]]]:
        with svc.engine.connect() as conn:
            return {
                table.name: [
                    tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))
                ]
                for table in metadata.sorted_tables
            }

    return dump_rows


@pytest.fixture
def corrupt(svc: BalanceService) -> Callable[..., None]:
    """Overwrite cache columns behind the service's back (how drift looks)."""

    return partial(overwrite_cache, svc.engine)
