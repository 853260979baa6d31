"""The Galera cluster the tests of tests/cluster/ run against: its nodes' URLs for the
tests' own database (the ``urls`` fixture), a service per node (``nodes``) and the
checks after a race. Imported by the test modules that use the cluster.

`tests/cluster/galera.sh start` runs the cluster on 127.0.0.1:3307-3309
(`BALANCE_TEST_GALERA_URLS`, a comma list, names others); CI starts it and requires it
(`BALANCE_TEST_REQUIRE=all` or `galera`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text

from balance_ledger import BalanceService
from tests.conftest import TEST_DATABASE, _required
from tests.databases import reachable, recreate_database

NODES = os.environ.get(
    "BALANCE_TEST_GALERA_URLS",
    ",".join(f"mysql+pymysql://root@127.0.0.1:{port}/" for port in (3307, 3308, 3309)),
).split(",")
NAME = f"{TEST_DATABASE}_galera"


def _has_tables(url: str) -> bool:
    engine = create_engine(url)
    try:
        return "user_balances" in inspect(engine).get_table_names()
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def urls() -> list[str]:
    """The test database's URL on each node, migrated through the first."""
    if not all(reachable(url) for url in NODES):
        reason = f"no Galera cluster at {', '.join(NODES)} (tests/cluster/galera.sh)"
        if _required("galera"):
            pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
        pytest.skip(reason)
    first = recreate_database(NODES[0], NAME)
    with BalanceService.from_url(first) as svc:
        svc.create_schema()
    urls = [make_url(url).set(database=NAME).render_as_string(hide_password=False) for url in NODES]
    deadline = time.monotonic() + 30
    while not all(_has_tables(url) for url in urls):
        assert time.monotonic() < deadline, "the schema did not reach every node"
        time.sleep(0.1)
    return urls


@pytest.fixture
def nodes(urls: list[str]) -> Iterator[list[BalanceService]]:
    """One BalanceService per node."""
    services = [BalanceService.from_url(url) for url in urls]
    yield services
    for svc in services:
        svc.close()


def fresh_account(svc: BalanceService) -> int:
    user_id = time.time_ns() % 10**12
    svc.open_account(user_id)
    return user_id


def every_node_agrees(urls: list[str]) -> None:
    """On every node: the cache equals the ledger, every chain is intact, and the
    ledger's tables are identical to the other nodes' (CHECKSUM TABLE)."""
    checksums = []
    for url in urls:
        with BalanceService.from_url(url) as svc:
            assert svc.verify_and_fix_balance(full=True).in_sync
            assert svc.verify_chain().intact
            with svc.engine.connect() as conn:
                tables = "user_balances, user_balance_transactions, balance_events"
                checksums.append(conn.execute(text(f"CHECKSUM TABLE {tables}")).all())
    assert checksums[0] == checksums[1] == checksums[2]


@contextmanager
def ledger_inserts() -> Iterator[list[tuple[int, int]]]:
    """(server port, user_id) of every ledger row insert any engine sends meanwhile."""
    sent: list[tuple[int, int]] = []

    def record(conn, _cursor, statement, params, *_args) -> None:
        if statement.startswith("INSERT INTO user_balance_transactions"):
            rows = params if isinstance(params, list | tuple) else [params]
            port = conn.engine.url.port
            for row in rows:  # a batch's many rows: user_id__0, user_id__1, …
                sent.extend((port, v) for k, v in row.items() if k.split("__")[0] == "user_id")

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)
