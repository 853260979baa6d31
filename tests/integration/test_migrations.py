"""The Alembic migrations build exactly the schema declared in db/tables.py."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from balance_ledger import BalanceService
from balance_ledger.db.migrate import VERSION_TABLE, alembic_config
from balance_ledger.db.tables import metadata


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
