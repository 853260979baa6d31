"""The schema: the balance cache and the append-only ledger.

The migrations in ``balance_ledger/migrations`` must produce exactly this; a test
compares the two on every backend. Invariants that must hold whatever code writes
the rows are CHECK constraints, so the database refuses them too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.schema import SchemaItem
from sqlalchemy.types import TypeDecorator, TypeEngine


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC instant with microseconds on every backend; always aware when read.

    PostgreSQL stores ``timestamptz``; MariaDB and SQLite have no time zones, so
    the value is stored as naive UTC and given its zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC instant is required")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; everywhere else it is a BIGINT.
RowId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# utf8mb4_nopad_bin: idempotency keys and references compare byte for byte, as on the
# other backends (MariaDB's default collation would make 'Key' equal 'key', and its
# PAD SPACE collations, utf8mb4_bin included, make 'key ' equal 'key').
_MARIADB_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}


def _table(name: str, *items: SchemaItem) -> Table:
    """A table of the ledger, with the options every table has on MariaDB."""
    return Table(name, metadata, *items, **_MARIADB_TABLE)


def _numbered(name: str, *items: SchemaItem) -> Table:
    """A table whose rows are numbered by ``id``, and a number is never used twice
    (AUTOINCREMENT on SQLite, whose rowids otherwise reuse a deleted maximum)."""
    numbered = Column("id", RowId, primary_key=True, autoincrement=True)
    return Table(name, metadata, numbered, *items, sqlite_autoincrement=True, **_MARIADB_TABLE)


user_balances = _table(
    "user_balances",
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("currency", String(3), nullable=False, server_default="VND"),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("total_recharged", BigInteger, nullable=False, server_default="0"),
    Column("total_spent", BigInteger, nullable=False, server_default="0"),
    Column("credit_limit", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The sum of the account's active holds (migration 0004).
    Column("held", BigInteger, nullable=False, server_default="0"),
    # The account's policy (models.AccountPolicy) and its monitors' memory (0009).
    Column("low_balance_threshold", BigInteger),
    Column("grace_amount", BigInteger, nullable=False, server_default="0"),
    Column("grace_period_seconds", BigInteger),
    Column("reactivation_threshold", BigInteger),
    Column("low_balance_alerted", Boolean, nullable=False, server_default=false()),
    Column("depleted_alerted", Boolean, nullable=False, server_default=false()),
    Column("suspend_at", UtcDateTime),
    # Bumped by every UPDATE of the row, by a trigger (guards.py, migration 0011): a
    # movement decided on version N is written only while the row is still at N
    # (money/post.py: post_unchanged).
    Column("version", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("credit_limit >= 0", name="credit_limit_not_negative"),
    CheckConstraint("status IN ('active', 'suspended')", name="status_known"),
    CheckConstraint("grace_amount >= 0", name="grace_amount_not_negative"),
    CheckConstraint("grace_period_seconds >= 0", name="grace_period_not_negative"),
    # The sweep's search for grace periods that ran out (policy.py).
    Index(None, "suspend_at"),
)

user_balance_transactions = _numbered(
    "user_balance_transactions",
    Column(
        "user_id",
        BigInteger,
        ForeignKey("user_balances.user_id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("transaction_type", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_before", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("service_type", String(64)),
    Column("description", String(1024)),
    Column("reference_model", String(128)),
    Column("reference_id", String(128)),
    Column("idempotency_key", String(255)),
    Column("created_at", UtcDateTime, nullable=False),
    # A refund's charge; an adjustment's author (migration 0003).
    Column("related_transaction_id", BigInteger),
    Column("actor", String(128)),
    # SHA-256 over the previous row's hash and this row's fields (chain/rules.py; 0006).
    Column("row_hash", String(64)),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "transaction_type IN ('recharge', 'charge', 'refund', 'adjustment')",
        name="type_known",
    ),
    # The snapshot arithmetic of the two movements whose sign is fixed.
    CheckConstraint(
        "(transaction_type = 'recharge' AND balance_after = balance_before + amount)"
        " OR (transaction_type = 'charge' AND balance_after = balance_before - amount)"
        " OR transaction_type IN ('refund', 'adjustment')",
        name="snapshot_arithmetic",
    ),
    # Also the index of the idempotency lookup.
    UniqueConstraint("user_id", "idempotency_key"),
    # History (newest first, keyset) and the verifier's per-user chain walk.
    Index(None, "user_id", "id"),
    Index(None, "reference_model", "reference_id"),
    Index(None, "related_transaction_id"),
)

# Money reserved for usage that is metered while it runs: authorize → capture | void.
balance_holds = _numbered(
    "balance_holds",
    Column("user_id", BigInteger, ForeignKey("user_balances.user_id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("service_type", String(64), nullable=False),
    Column("description", String(1024)),
    Column("status", String(16), nullable=False),  # active | captured | voided | expired
    Column("expires_at", UtcDateTime),
    Column("idempotency_key", String(255)),
    Column("captured_amount", BigInteger),
    Column("capture_transaction_id", BigInteger),
    Column("created_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("status IN ('active', 'captured', 'voided', 'expired')", name="status_known"),
    UniqueConstraint("user_id", "idempotency_key"),
    Index(None, "user_id", "status"),
    Index(None, "status", "expires_at"),
)

# -- tamper evidence ------------------------------------------------------------------

# A daily digest of every account head that moved since the one before; each digest
# seals its predecessor, and UNIQUE(previous_digest) keeps the digests one line.
balance_chain_digests = _numbered(
    "balance_chain_digests",
    Column("created_at", UtcDateTime, nullable=False),
    Column("accounts", BigInteger, nullable=False),
    Column("previous_digest", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    UniqueConstraint("previous_digest"),
)

# The heads a digest anchored: row ``transaction_id`` of the account had ``row_hash``.
balance_chain_anchors = _table(
    "balance_chain_anchors",
    Column(
        "digest_id",
        BigInteger,
        ForeignKey("balance_chain_digests.id", ondelete="RESTRICT"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("transaction_id", BigInteger, nullable=False),
    Column("row_hash", String(64), nullable=False),
    Index(None, "user_id", "transaction_id"),
)

# -- reconciliation ----------------------------------------------------------------

# One row per verify / fix / rebuild run: the audit trail of layer 3.
balance_sync_runs = _numbered(
    "balance_sync_runs",
    Column("kind", String(16), nullable=False),  # verify | rebuild
    Column("fix", Boolean, nullable=False),
    Column("full_scan", Boolean, nullable=False),
    Column("user_id", BigInteger),  # set when one account was verified
    # The schedule slot a scheduler ran it for; unique, so two schedulers on two hosts
    # that fire for the same slot record (and run) it once.
    Column("scheduled_for", UtcDateTime),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("checked", BigInteger, nullable=False, server_default="0"),
    Column("synced", BigInteger, nullable=False, server_default="0"),
    Column("fixed", BigInteger, nullable=False, server_default="0"),
    Column("discrepancies", BigInteger, nullable=False, server_default="0"),
    Column("errors", BigInteger, nullable=False, server_default="0"),
    Column(
        "outcome", String(16), nullable=False
    ),  # running | in_sync | fixed | out_of_sync | failed
    Column("message", String(1024)),
    UniqueConstraint("kind", "scheduled_for"),
    Index(None, "started_at"),
)

# One row per cache column a fix or rebuild rewrote.
balance_sync_fixes = _numbered(
    "balance_sync_fixes",
    Column("run_id", BigInteger, ForeignKey("balance_sync_runs.id"), nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("column_name", String(32), nullable=False),
    Column("old_value", String(32), nullable=False),
    Column("new_value", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "user_id"),
)

# Per account: the ledger verified so far (up to last_transaction_id) and its sums,
# so an incremental verify reads only the rows added since.
balance_sync_checkpoints = _table(
    "balance_sync_checkpoints",
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_transaction_id", BigInteger, nullable=False),
    Column("last_balance_after", BigInteger, nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("total_recharged", BigInteger, nullable=False),
    Column("total_spent", BigInteger, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("verified_at", UtcDateTime, nullable=False),
)

# Leases for scheduled jobs on SQLite, which has no advisory locks.
balance_job_locks = _table(
    "balance_job_locks",
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

# -- API keys (the HTTP service) ----------------------------------------------------

# One row per key: only its SHA-256 is stored (apikeys.py says why that hash), so a
# copy of this table lets nobody call the API. Revoking sets revoked_at; rows are kept.
balance_api_keys = _numbered(
    "balance_api_keys",
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False),  # hex SHA-256 of the whole key
    Column("prefix", String(16), nullable=False),  # shown in lists to tell keys apart
    Column("scopes", String(64), nullable=False),  # comma-joined, e.g. "read,charge"
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    # Also the index of authentication's lookup by hash.
    UniqueConstraint("key_hash"),
)

# The outbox: one row per event, written in the transaction of the movement or status
# change it announces, so an event exists iff what it announces committed (outbox/events.py).
balance_events = _numbered(
    "balance_events",
    Column("event_type", String(64), nullable=False),
    Column("user_id", BigInteger),  # None for events of no one account
    Column("payload", Text, nullable=False),  # JSON
    Column("created_at", UtcDateTime, nullable=False),
    # False until the dispatcher has made the event's deliveries (outbox/dispatch.py). A flag,
    # not a cursor: ids commit out of order, and a cursor would step over a late one.
    Column("fanned_out", Boolean, nullable=False, server_default=false()),
    Index(None, "user_id", "id"),  # an account's events in order
    Index(None, "fanned_out", "id"),
)

balance_webhooks = _numbered(
    "balance_webhooks",
    Column("url", String(2048), nullable=False),
    # The HMAC key: kept as given, since signing needs it (unlike an API key's hash).
    Column("secret", String(256), nullable=False),
    Column("event_types", String(1024), nullable=False),  # comma-joined, or "*"
    Column("created_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
)

# One row per (event, webhook): its delivery's state, attempts and schedule.
balance_event_deliveries = _numbered(
    "balance_event_deliveries",
    Column("event_id", BigInteger, nullable=False),
    Column("webhook_id", BigInteger, nullable=False),
    Column("user_id", BigInteger),  # the event's: deliveries of one account go in order
    Column("status", String(16), nullable=False),  # pending, delivering, delivered, dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime),  # while delivering: after it, another may retry
    Column("last_error", String(1024)),
    Column("delivered_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("event_id", "webhook_id"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "webhook_id", "user_id", "event_id"),
)

# -- idempotency ----------------------------------------------------------------------

# A refused request's answer, kept under its idempotency key (idempotency.py): every
# later attempt with the key replays it instead of being decided again. ``key_scope``
# is the key's namespace: ``ledger`` (movements and captures, whose rows carry their
# key) or ``hold`` (authorizations). Purged after the retention (purge_refusals).
balance_refusals = _numbered(
    "balance_refusals",
    Column("user_id", BigInteger, nullable=False),
    Column("key_scope", String(8), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("request", Text, nullable=False),  # the request's fingerprint, as JSON
    Column("code", String(64), nullable=False),  # the error's class (errors.py)
    Column("context", Text, nullable=False),  # the error's arguments, as JSON
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("user_id", "key_scope", "idempotency_key"),
    Index(None, "created_at"),
)
