"""Create the balance cache (user_balances) and the append-only ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
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
        "user_balances",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("currency", sa.String(3), server_default="VND", nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_recharged", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_spent", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credit_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(16), server_default="active", nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("updated_at", utc_datetime(), nullable=False),
        sa.CheckConstraint("credit_limit >= 0", name="ck_user_balances_credit_limit_not_negative"),
        sa.CheckConstraint(
            "status IN ('active', 'suspended')", name="ck_user_balances_status_known"
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_balances"),
        **MARIADB_TABLE,
    )
    op.create_table(
        "user_balance_transactions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("transaction_type", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_before", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("service_type", sa.String(64), nullable=True),
        sa.Column("description", sa.String(1024), nullable=True),
        sa.Column("reference_model", sa.String(128), nullable=True),
        sa.Column("reference_id", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_user_balance_transactions_amount_positive"),
        sa.CheckConstraint(
            "transaction_type IN ('recharge', 'charge', 'refund', 'adjustment')",
            name="ck_user_balance_transactions_type_known",
        ),
        sa.CheckConstraint(
            "(transaction_type = 'recharge' AND balance_after = balance_before + amount)"
            " OR (transaction_type = 'charge' AND balance_after = balance_before - amount)"
            " OR transaction_type IN ('refund', 'adjustment')",
            name="ck_user_balance_transactions_snapshot_arithmetic",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_balances.user_id"],
            name="fk_user_balance_transactions_user_id_user_balances",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_user_balance_transactions"),
        sa.UniqueConstraint(
            "user_id",
            "idempotency_key",
            name="uq_user_balance_transactions_user_id_idempotency_key",
        ),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_index(
        "ix_user_balance_transactions_user_id_id",
        "user_balance_transactions",
        ["user_id", "id"],
    )
    op.create_index(
        "ix_user_balance_transactions_reference_model_reference_id",
        "user_balance_transactions",
        ["reference_model", "reference_id"],
    )


def downgrade() -> None:
    op.drop_table("user_balance_transactions")
    op.drop_table("user_balances")
