"""The tamper-evident hash chain: row_hash on every ledger row, and the daily digests.

Existing rows are sealed in id order per account, with the append-only triggers
lifted for that one step (stop writers while this runs; on MariaDB, whose DDL is not
transactional, a failed run leaves the column added: restore from backup).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from balance_ledger.db.backfill import seal_unsealed_rows
from balance_ledger.db.guards import ANCHOR_TABLES, install_append_only, remove_append_only

revision: str = "0006"
down_revision: str | None = "0005"
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
    bind = op.get_bind()
    op.add_column("user_balance_transactions", sa.Column("row_hash", sa.String(64)))
    remove_append_only(bind)
    seal_unsealed_rows(bind)
    install_append_only(bind)
    op.create_table(
        "balance_chain_digests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("accounts", sa.BigInteger(), nullable=False),
        sa.Column("previous_digest", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_balance_chain_digests"),
        sa.UniqueConstraint("previous_digest", name="uq_balance_chain_digests_previous_digest"),
        sqlite_autoincrement=True,
        **MARIADB_TABLE,
    )
    op.create_table(
        "balance_chain_anchors",
        sa.Column("digest_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["balance_chain_digests.id"],
            name="fk_balance_chain_anchors_digest_id_balance_chain_digests",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("digest_id", "user_id", name="pk_balance_chain_anchors"),
        **MARIADB_TABLE,
    )
    op.create_index(
        "ix_balance_chain_anchors_user_id_transaction_id",
        "balance_chain_anchors",
        ["user_id", "transaction_id"],
    )
    install_append_only(bind, ANCHOR_TABLES)


def downgrade() -> None:
    bind = op.get_bind()
    remove_append_only(bind, ANCHOR_TABLES)
    op.drop_table("balance_chain_anchors")
    op.drop_table("balance_chain_digests")
    op.drop_column("user_balance_transactions", "row_hash")
