"""Each account's policy (low-balance threshold, suspension grace and reactivation
threshold) and its monitors' memory (alert flags, when a grace period ends).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from balance_ledger.db.backfill import account_pages

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "low_balance_threshold",
    "grace_amount",
    "grace_period_seconds",
    "reactivation_threshold",
    "low_balance_alerted",
    "depleted_alerted",
    "suspend_at",
)
CHECKS = {
    "ck_user_balances_grace_amount_not_negative": "grace_amount >= 0",
    "ck_user_balances_grace_period_not_negative": "grace_period_seconds >= 0",
}


def utc_datetime() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("user_balances", sa.Column("low_balance_threshold", sa.BigInteger()))
    op.add_column(
        "user_balances",
        sa.Column("grace_amount", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("user_balances", sa.Column("grace_period_seconds", sa.BigInteger()))
    op.add_column("user_balances", sa.Column("reactivation_threshold", sa.BigInteger()))
    for flag in ("low_balance_alerted", "depleted_alerted"):
        op.add_column(
            "user_balances",
            sa.Column(flag, sa.Boolean(), server_default=sa.false(), nullable=False),
        )
    op.add_column("user_balances", sa.Column("suspend_at", utc_datetime()))
    op.create_index("ix_user_balances_suspend_at", "user_balances", ["suspend_at"])
    # An account already at or below zero available has been depleted: no alert for it
    # until it recovers and falls again.
    # Page by page: on a Galera cluster one UPDATE of every account is one write set.
    bind = op.get_bind()
    for first, last in account_pages(bind):
        bind.execute(
            sa.text(
                "UPDATE user_balances SET depleted_alerted = "
                "CASE WHEN balance + credit_limit - held <= 0 THEN 1 = 1 ELSE 1 = 0 END "
                "WHERE user_id BETWEEN :first AND :last"
            ),
            {"first": first, "last": last},
        )
    # SQLite cannot add a CHECK constraint to an existing table; validation.py refuses
    # the same values before any write there.
    if op.get_bind().dialect.name != "sqlite":
        for name, condition in CHECKS.items():
            op.create_check_constraint(name, "user_balances", condition)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for name in CHECKS:
            op.drop_constraint(name, "user_balances", type_="check")
    op.drop_index("ix_user_balances_suspend_at", "user_balances")
    for column in reversed(COLUMNS):
        op.drop_column("user_balances", column)
