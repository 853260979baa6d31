"""Refusals kept under their idempotency keys, so every attempt with a key gets one answer.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | None = "0009"
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
    op.create_table(
        "balance_refusals",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("key_scope", sa.String(8), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_balance_refusals"),
        sa.UniqueConstraint(
            "user_id",
            "key_scope",
            "idempotency_key",
            name="uq_balance_refusals_user_id_key_scope_idempotency_key",
        ),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index("ix_balance_refusals_created_at", "balance_refusals", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_balance_refusals_created_at", "balance_refusals")
    op.drop_table("balance_refusals")
