"""Everything that differs between SQLite, PostgreSQL and MariaDB, in one place.

* How a connection is configured (isolation level, charset, pragmas).
* How a writer takes the account lock. PostgreSQL and MariaDB lock the balance
  row with ``SELECT ... FOR UPDATE`` (the statement lives in queries.py; SQLAlchemy
  drops the clause on SQLite). SQLite has no row locks: a writer opens its
  transaction with ``BEGIN IMMEDIATE``, which takes the database's write lock up
  front, so two writers can never both read a balance and then both debit it.
* Which driver errors mean "the server aborted this transaction, run it again"
  (deadlock, serialization failure, lock timeout, SQLite busy), and which mean
  "the tables are not there".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

# Execution option a write transaction carries; SQLite's begin hook reads it.
WRITE_OPTION = "balance_ledger_write"

SQLITE_BUSY_TIMEOUT_SECONDS = 30

# PostgreSQL SQLSTATEs that mean the transaction was rolled back and may be retried.
_PG_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock timeout
# MariaDB error numbers: lock wait timeout, deadlock.
_MARIADB_RETRYABLE = {1205, 1213}
_PG_UNDEFINED_TABLE = "42P01"
_MARIADB_NO_SUCH_TABLE = 1146


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" | "postgresql" | "mariadb"
    # An in-memory SQLite database lives in one connection that every thread shares,
    # so its transactions must take turns in Python.
    single_connection: bool = False

    def is_retryable(self, error: DBAPIError) -> bool:
        """True when the server aborted the transaction and running it again is safe."""
        original = error.orig
        if self.name == "postgresql":
            return getattr(original, "sqlstate", None) in _PG_RETRYABLE
        if self.name == "mariadb":
            args = getattr(original, "args", ())
            return bool(args) and args[0] in _MARIADB_RETRYABLE
        # SQLite: the busy timeout ran out waiting for another writer.
        return "database is locked" in str(original) or "database is busy" in str(original)

    def is_missing_table(self, error: DBAPIError) -> bool:
        original = error.orig
        if self.name == "postgresql":
            return getattr(original, "sqlstate", None) == _PG_UNDEFINED_TABLE
        if self.name == "mariadb":
            args = getattr(original, "args", ())
            return bool(args) and args[0] == _MARIADB_NO_SUCH_TABLE
        return "no such table" in str(original)


def backend_of(engine: Engine) -> Backend:
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        return Backend("mariadb")
    if name == "sqlite":
        return Backend(name, single_connection=_is_memory(engine.url))
    if name == "postgresql":
        return Backend(name)
    raise ValueError(f"unsupported database {name!r}: use SQLite, PostgreSQL or MariaDB")


def create_ledger_engine(url: str | URL, **options: Any) -> Engine:
    """An engine configured for the ledger on whichever backend ``url`` names."""
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, options)
    if backend == "postgresql":
        options.setdefault("isolation_level", "READ COMMITTED")
    elif backend in ("mysql", "mariadb"):
        # READ COMMITTED: a plain SELECT after the row lock sees rows committed by the
        # previous lock holder (REPEATABLE READ could keep an older snapshot).
        options.setdefault("isolation_level", "READ COMMITTED")
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        options.setdefault("pool_recycle", 3600)
    else:
        raise ValueError(f"unsupported database {backend!r}: use sqlite, postgresql or mysql")
    options.setdefault("pool_pre_ping", True)
    return create_engine(url, **options)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _sqlite_engine(url: URL, options: dict[str, Any]) -> Engine:
    connect_args = options.setdefault("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_SECONDS)
    connect_args.setdefault("check_same_thread", False)
    if _is_memory(url):
        options.setdefault("poolclass", StaticPool)
        for pool_only in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(pool_only, None)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin hook, not the driver, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if not _is_memory(url):
            cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
        cursor.execute("PRAGMA synchronous = FULL")  # a committed charge survives power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
