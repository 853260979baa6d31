"""Fresh, migrated benchmark databases on each backend."""

from __future__ import annotations

import tempfile

from tests.databases import recreate_database, server_url

from balance_ledger import BalanceService

BENCH_DATABASE = "balance_ledger_bench"


def fresh_database(backend: str) -> str:
    """Create an empty, migrated database; return its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='balance-bench-')}/bench.db"
    else:
        url = recreate_database(server_url(backend, "BALANCE_BENCH"), BENCH_DATABASE)
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    return url
