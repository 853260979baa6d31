"""A version on every balance row, bumped by a trigger on each UPDATE of the row.

A single movement is decided on the account as it was at one version and written by
one statement only while the row is still at it (money/post.py: post_unchanged).
Existing rows start at 0. Writers older than this migration keep working: the trigger
bumps the version of every row they update too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from balance_ledger.db.guards import install_versioning, remove_versioning

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "user_balances",
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    install_versioning(op.get_bind())


def downgrade() -> None:
    remove_versioning(op.get_bind())
    op.drop_column("user_balances", "version")
