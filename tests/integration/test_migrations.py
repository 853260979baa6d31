"""The Alembic migrations build exactly the schema declared in db/tables.py."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from balance_ledger import BalanceService
from balance_ledger.db import backfill
from balance_ledger.db.backfill import account_pages
from balance_ledger.db.migrate import VERSION_TABLE, alembic_config
from balance_ledger.db.tables import metadata
from balance_ledger.db.tables import user_balances as balances
from tests.conftest import empty_database


def test_migrated_schema_matches_the_declared_tables(svc: BalanceService):
    with svc.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, metadata) == []


def test_create_schema_is_idempotent(svc: BalanceService):
    svc.create_schema()
    svc.create_schema()
    names = set(inspect(svc.engine).get_table_names())
    assert {"user_balances", "user_balance_transactions", VERSION_TABLE} <= names


def test_migrations_keep_their_own_version_table(svc: BalanceService):
    assert "alembic_version" not in inspect(svc.engine).get_table_names()


def _schema_diff(svc: BalanceService) -> list[object]:
    with svc.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(context, metadata))


def test_every_migration_downgrades_and_upgrades_again(svc: BalanceService):
    config = alembic_config(svc.engine)
    try:
        command.downgrade(config, "0006")
        assert "balance_api_keys" not in inspect(svc.engine).get_table_names()
        command.downgrade(config, "base")
        assert inspect(svc.engine).get_table_names() == [VERSION_TABLE]
    finally:
        command.upgrade(config, "head")  # the backend's other tests share this database
    assert _schema_diff(svc) == []


def test_the_policy_migration_marks_the_accounts_already_depleted(backend_url, monkeypatch):
    """Migration 0009's backfill (pages of 2 where pages commit, with gaps between the
    ids): an account at or below zero available gets no depletion alert until it
    recovers and falls again."""
    monkeypatch.setattr(backfill, "PAGE", 2)
    empty_database(backend_url)
    engine = create_engine(backend_url)
    config = alembic_config(engine)
    funded = {1: 0, 2: 50, 7: 0, 9: 10, 20: 0}
    try:
        with BalanceService.from_url(backend_url) as svc:
            for user_id, funds in funded.items():
                svc.open_account(user_id, credit_limit=100 if user_id == 20 else 0)
                if funds:
                    svc.recharge(user_id, funds)
            svc.charge_service(20, 100, "vps")  # at its credit limit
        command.downgrade(config, "0008")
        command.upgrade(config, "head")
        with engine.connect() as conn:
            rows = conn.execute(select(balances.c.user_id, balances.c.depleted_alerted)).all()
        flags = {user_id: bool(flag) for user_id, flag in rows}
        assert flags == {1: True, 2: False, 7: True, 9: False, 20: True}
    finally:
        command.upgrade(config, "head")
        engine.dispose()
        empty_database(backend_url)


def test_account_pages_cover_every_account_in_order(svc: BalanceService):
    for user_id in (20, 1, 9, 2, 7):
        svc.open_account(user_id)
    with svc.engine.connect() as conn:
        assert list(account_pages(conn, 2)) == [(1, 2), (7, 9), (20, 20)]
        assert list(account_pages(conn)) == [(1, 20)]  # fewer than PAGE, or no paging
