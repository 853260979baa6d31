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


def test_postgresql_keeps_no_plan_of_a_key_lookup(svc, backend, account_factory):
    """psycopg prepares a statement after five runs, and the server keeps the plan it
    made for the tables as they were then: a key lookup or a chain head planned while
    the ledger was small read every row of a hot account, or the whole ledger, later.
    They are planned on each run; the statement run as often beside them is kept, so
    the check can tell."""
    if backend != "postgresql":
        pytest.skip("plans kept by the server are PostgreSQL's")
    from sqlalchemy import select

    from balance_ledger.db import queries, refusals
    from balance_ledger.db.tables import user_balance_transactions as ledger

    user_id = account_factory(balance=100).user_id
    newest = select(ledger.c.id).where(ledger.c.user_id == user_id)
    with svc.engine.connect() as conn:
        for n in range(8):
            key = f"k{n}"
            assert refusals.earlier_answer(conn, user_id, key) is None
            answer, head = refusals.answer_and_head(conn, user_id, key, rows=True)
            assert answer is None
            assert head is not None
            assert list(queries.keyed_rows(conn, ledger, {(user_id, key)})) == []
            assert queries.find_hold_by_key(conn, user_id, key) is None
            assert queries.chain_head(conn, user_id) is not None
            assert list(queries.chain_heads(conn, [user_id])) == [user_id]
            conn.execute(newest).all()
        kept = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars()
        kept = list(kept)
    assert any("FROM user_balance_transactions" in sql for sql in kept), kept
    lookups = (
        "user_balance_transactions.idempotency_key",
        "balance_holds.idempotency_key",
        "ORDER BY user_balance_transactions.id DESC",  # an account's chain head
        "max(newer.id)",  # the chain heads of a batch's accounts
    )
    assert not [sql for sql in kept if any(lookup in sql for lookup in lookups)], kept


def test_a_keyed_movement_reads_its_key_and_chain_head_in_one_statement(
    database_url, account_factory
):
    """Under the account's lock, the key's earlier answer and the account's newest row
    come in one round trip: lock, that read, then the writes."""
    from sqlalchemy import event

    from balance_ledger import BalanceService

    user_id = account_factory(balance=100).user_id
    with BalanceService.from_url(database_url, one_statement=False) as locked:
        sent: list[str] = []
        record = lambda *args: sent.append(" ".join(args[2].split()))  # noqa: E731
        event.listen(locked.engine, "before_cursor_execute", record)
        try:
            locked.charge_service(user_id, 5, "vps", idempotency_key="k1")
        finally:
            event.remove(locked.engine, "before_cursor_execute", record)
        replay = locked.charge_service(user_id, 5, "vps", idempotency_key="k1")
        intact = locked.verify_chain(user_id).intact

    reads = [sql for sql in sent if sql.startswith("SELECT")]
    assert len(reads) == 2, reads  # the locking read, then the key's answer with the head
    assert "user_balances" in reads[0]  # the locking read (SQLite: under BEGIN IMMEDIATE)
    assert "user_balance_transactions" not in reads[0]
    assert "idempotency_key" in reads[1]
    assert "ORDER BY" in reads[1]
    assert replay.replayed
    assert intact
