"""Fresh, migrated benchmark databases on each backend, and the servers' durability settings."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from tests.databases import recreate_database, server_url

from balance_ledger import BalanceService

BENCH_DATABASE = "balance_ledger_bench"
# BALANCE_BENCH_ONE_STATEMENT=0: the services of `charges` and `cost` post every single
# movement under the account's lock (BalanceService(one_statement=False)), for comparison.
ONE_STATEMENT = os.environ.get("BALANCE_BENCH_ONE_STATEMENT", "1") != "0"

# What decides the cost of a commit on each server (all are read, none is changed).
_SETTINGS = {
    "postgresql": (
        "SELECT current_setting('server_version'), current_setting('fsync'), "
        "current_setting('synchronous_commit'), current_setting('wal_sync_method'), "
        "current_setting('full_page_writes'), current_setting('shared_buffers')",
        (
            "version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "shared_buffers",
        ),
    ),
    "mariadb": (
        "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, "
        "@@innodb_doublewrite, @@innodb_flush_method, @@innodb_buffer_pool_size DIV 1048576",
        (
            "version",
            "innodb_flush_log_at_trx_commit",
            "sync_binlog",
            "log_bin",
            "innodb_doublewrite",
            "innodb_flush_method",
            "innodb_buffer_pool_size MiB",
        ),
    ),
}


def fresh_database(backend: str, name: str = BENCH_DATABASE) -> str:
    """Create an empty, migrated database ``name`` (a temporary file on SQLite); return its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='balance-bench-')}/bench.db"
    else:
        url = recreate_database(server_url(backend, "BALANCE_BENCH"), name)
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    return url


@contextmanager
def bench_database(backend: str, name: str = BENCH_DATABASE) -> Iterator[str]:
    """``fresh_database``, and the SQLite file's directory removed afterwards.

    Server databases stay until the next run drops them, as they always have.
    """
    url = fresh_database(backend, name)
    try:
        yield url
    finally:
        if backend == "sqlite":
            database = make_url(url).database
            assert database, "bench SQLite databases are files"
            shutil.rmtree(Path(database).parent, ignore_errors=True)


def server_settings(backend: str) -> dict[str, str]:
    """The version and the durability settings the figures were measured under."""
    if backend == "sqlite":
        # The ledger's engine sets these on every connection (db/dialects.py).
        return {
            "version": sqlite3.sqlite_version,
            "journal_mode": "WAL",
            "synchronous": "FULL",
        }
    query, names = _SETTINGS[backend]
    engine = create_engine(server_url(backend, "BALANCE_BENCH"))
    try:
        with engine.connect() as conn:
            row = conn.execute(text(query)).one()
    finally:
        engine.dispose()
    return dict(zip(names, map(str, row), strict=True))
