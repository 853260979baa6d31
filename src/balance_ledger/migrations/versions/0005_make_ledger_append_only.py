"""Triggers reject UPDATE and DELETE of ledger rows, on every backend.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

from balance_ledger.db.guards import install_append_only, remove_append_only

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    install_append_only(op.get_bind())


def downgrade() -> None:
    bind = op.get_bind()
    remove_append_only(bind)
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS balance_ledger_append_only()")
