"""Reconciliation: audit of sync runs and fixes, per-account checkpoints, job leases.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MARIADB_TABLE = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}


def utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def row_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def counter(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "balance_sync_runs",
        sa.Column("id", row_id(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("fix", sa.Boolean(), nullable=False),
        sa.Column("full_scan", sa.Boolean(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("scheduled_for", utc_datetime(), nullable=True),
        sa.Column("started_at", utc_datetime(), nullable=False),
        sa.Column("finished_at", utc_datetime(), nullable=True),
        counter("checked"),
        counter("synced"),
        counter("fixed"),
        counter("discrepancies"),
        counter("errors"),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_balance_sync_runs"),
        sa.UniqueConstraint(
            "kind", "scheduled_for", name="uq_balance_sync_runs_kind_scheduled_for"
        ),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index("ix_balance_sync_runs_started_at", "balance_sync_runs", ["started_at"])
    op.create_table(
        "balance_sync_fixes",
        sa.Column("id", row_id(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("column_name", sa.String(32), nullable=False),
        sa.Column("old_value", sa.String(32), nullable=False),
        sa.Column("new_value", sa.String(32), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["balance_sync_runs.id"],
            name="fk_balance_sync_fixes_run_id_balance_sync_runs",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_balance_sync_fixes"),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index("ix_balance_sync_fixes_user_id", "balance_sync_fixes", ["user_id"])
    op.create_table(
        "balance_sync_checkpoints",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("last_balance_after", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("total_recharged", sa.BigInteger(), nullable=False),
        sa.Column("total_spent", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("verified_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_balance_sync_checkpoints"),
        **MARIADB_TABLE,
    )
    op.create_table(
        "balance_job_locks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_balance_job_locks"),
        **MARIADB_TABLE,
    )


def downgrade() -> None:
    op.drop_table("balance_job_locks")
    op.drop_table("balance_sync_checkpoints")
    op.drop_table("balance_sync_fixes")
    op.drop_table("balance_sync_runs")
