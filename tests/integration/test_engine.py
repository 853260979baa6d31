"""How the ledger configures the sessions it opens."""

from __future__ import annotations

import pytest


def test_postgresql_sessions_of_the_ledger_run_without_jit(svc, backend):
    if backend != "postgresql":
        pytest.skip("JIT compilation is a PostgreSQL setting")
    with svc.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"


def test_sessions_read_committed(svc, backend):
    if backend == "sqlite":
        pytest.skip("SQLite serialises writers with BEGIN IMMEDIATE instead")
    with svc.engine.connect() as conn:
        assert conn.get_isolation_level() == "READ COMMITTED"
