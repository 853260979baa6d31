"""The event outbox (one row per movement or status change, in its transaction), the
webhooks that subscribe to it and the state of each delivery.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MARIADB_TABLE = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}


def utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def row_id() -> sa.Column:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "balance_events",
        row_id(),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("fanned_out", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_balance_events"),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index("ix_balance_events_user_id_id", "balance_events", ["user_id", "id"])
    op.create_index("ix_balance_events_fanned_out_id", "balance_events", ["fanned_out", "id"])
    op.create_table(
        "balance_webhooks",
        row_id(),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("event_types", sa.String(1024), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("removed_at", utc_datetime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_balance_webhooks"),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_table(
        "balance_event_deliveries",
        row_id(),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("webhook_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", utc_datetime(), nullable=False),
        sa.Column("lease_until", utc_datetime(), nullable=True),
        sa.Column("last_error", sa.String(1024), nullable=True),
        sa.Column("delivered_at", utc_datetime(), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_balance_event_deliveries"),
        sa.UniqueConstraint(
            "event_id", "webhook_id", name="uq_balance_event_deliveries_event_id_webhook_id"
        ),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index(
        "ix_balance_event_deliveries_status_next_attempt_at",
        "balance_event_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_balance_event_deliveries_webhook_id_user_id_event_id",
        "balance_event_deliveries",
        ["webhook_id", "user_id", "event_id"],
    )


def downgrade() -> None:
    op.drop_table("balance_event_deliveries")
    op.drop_table("balance_webhooks")
    op.drop_table("balance_events")
