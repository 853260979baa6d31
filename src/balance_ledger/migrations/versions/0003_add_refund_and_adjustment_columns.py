"""Refunds name the charge they refund; adjustments name who made them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("user_balance_transactions", sa.Column("related_transaction_id", sa.BigInteger()))
    op.add_column("user_balance_transactions", sa.Column("actor", sa.String(128)))
    op.create_index(
        "ix_user_balance_transactions_related_transaction_id",
        "user_balance_transactions",
        ["related_transaction_id"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_user_balance_transactions_related_transaction_id", "user_balance_transactions"
    )
    op.drop_column("user_balance_transactions", "actor")
    op.drop_column("user_balance_transactions", "related_transaction_id")
