"""Holds: money reserved while usage is metered, and the cached sum of open holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MARIADB_TABLE = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}


def utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column(
        "user_balances",
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "balance_holds",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("service_type", sa.String(64), nullable=False),
        sa.Column("description", sa.String(1024), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", utc_datetime(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("captured_amount", sa.BigInteger(), nullable=True),
        sa.Column("capture_transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("closed_at", utc_datetime(), nullable=True),
        sa.CheckConstraint("amount > 0", name="ck_balance_holds_amount_positive"),
        sa.CheckConstraint(
            "status IN ('active', 'captured', 'voided', 'expired')",
            name="ck_balance_holds_status_known",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_balances.user_id"],
            name="fk_balance_holds_user_id_user_balances",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_balance_holds"),
        sa.UniqueConstraint(
            "user_id", "idempotency_key", name="uq_balance_holds_user_id_idempotency_key"
        ),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index("ix_balance_holds_user_id_status", "balance_holds", ["user_id", "status"])
    op.create_index("ix_balance_holds_status_expires_at", "balance_holds", ["status", "expires_at"])


def downgrade() -> None:
    op.drop_table("balance_holds")
    op.drop_column("user_balances", "held")
