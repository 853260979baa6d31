"""Fresh, migrated benchmark databases on each backend."""

from __future__ import annotations

import os
import tempfile

from tests.databases import recreate_database

from balance_ledger import BalanceService

BENCH_DATABASE = "balance_ledger_bench"
SERVER_URLS = {
    "postgresql": os.environ.get(
        "BALANCE_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("BALANCE_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/"),
}


def fresh_database(backend: str) -> str:
    """Create an empty, migrated database; return its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='balance-bench-')}/bench.db"
    else:
        url = recreate_database(SERVER_URLS[backend], BENCH_DATABASE)
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    return url
