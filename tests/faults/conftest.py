"""Databases of the fault tests: their own, never the main suite's ``balance_ledger_test``.

Each pytest process creates ``balance_ledger_faults_<pid>`` on each server (these tests
kill every session of their database, so a shared name would hit a concurrent run),
migrates it once and drops it at the end. Tests never empty it: each opens accounts
with fresh user ids and only looks at those. A missing server skips, or fails under
``BALANCE_TEST_REQUIRE`` exactly as in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, text

from balance_ledger import BalanceService
from tests.conftest import SERVER_URLS, _required
from tests.databases import recreate_database
from tests.faults.ledger import new_user_ids

BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVER_BACKENDS = ("postgresql", "mariadb")
FAULTS_DATABASE = f"balance_ledger_faults_{os.getpid()}"


@dataclass(frozen=True)
class FaultDatabase:
    backend: str  # "sqlite" | "postgresql" | "mariadb"
    url: str  # the migrated database the service under test uses
    server_url: str | None  # an administrator's connection to the server (None: SQLite)
    name: str

    def admin_engine(self) -> Engine:
        """An autocommit engine on the server, outside the database under test."""
        assert self.server_url is not None, "SQLite has no server"
        return create_engine(self.server_url, isolation_level="AUTOCOMMIT")


class FaultDatabases:
    """Creates each backend's database on first use; remembers why one is unavailable."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._made: dict[str, FaultDatabase] = {}
        self._unavailable: dict[str, str] = {}

    def get(self, backend: str) -> FaultDatabase:
        if backend in self._unavailable:
            self._skip_or_fail(backend, self._unavailable[backend])
        if backend not in self._made:
            self._made[backend] = self._create(backend)
        return self._made[backend]

    def _create(self, backend: str) -> FaultDatabase:
        if backend == "sqlite":
            path = self._tmp.mktemp("faults-sqlite") / "ledger.db"
            database = FaultDatabase(backend, f"sqlite:///{path}", None, str(path))
        else:
            try:
                url = recreate_database(SERVER_URLS[backend], FAULTS_DATABASE)
            except Exception as error:
                cause = " ".join(str(getattr(error, "orig", None) or error).split())
                self._unavailable[backend] = (
                    f"{backend} server not reachable at {SERVER_URLS[backend]}: {cause}"
                )
                self._skip_or_fail(backend, self._unavailable[backend])
            database = FaultDatabase(backend, url, SERVER_URLS[backend], FAULTS_DATABASE)
        with BalanceService.from_url(database.url) as svc:
            svc.create_schema()
        return database

    @staticmethod
    def _skip_or_fail(backend: str, reason: str) -> None:
        if _required(backend):
            pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
        pytest.skip(reason)

    def drop_all(self) -> None:
        for database in self._made.values():
            if database.server_url is None:
                continue
            admin = database.admin_engine()
            force = " WITH (FORCE)" if database.backend == "postgresql" else ""
            try:
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {database.name}{force}"))
            finally:
                admin.dispose()


@pytest.fixture(scope="session")
def fault_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultDatabases]:
    databases = FaultDatabases(tmp_path_factory)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module", params=BACKENDS)
def any_db(request: pytest.FixtureRequest, fault_databases: FaultDatabases) -> FaultDatabase:
    """The fault database of each backend, SQLite included."""
    return fault_databases.get(request.param)


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def server_db(request: pytest.FixtureRequest, fault_databases: FaultDatabases) -> FaultDatabase:
    """The fault database of each server backend (sessions that can be killed)."""
    return fault_databases.get(request.param)


OpenAccount = Callable[..., int]


@pytest.fixture
def open_account() -> OpenAccount:
    """Open a fresh account on ``svc`` and recharge it; return its user id."""

    def open_funded(svc: BalanceService, balance: int) -> int:
        (user_id,) = new_user_ids(1)
        svc.open_account(user_id)
        svc.recharge(user_id, balance, idempotency_key=f"opening-{user_id}")
        return user_id

    return open_funded
