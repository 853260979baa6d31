"""Tamper evidence: every ledger row seals its own fields and its predecessor's seal.

``row_hash = SHA-256(previous row_hash of the same account ‖ canonical encoding of the
row)``, written with the row inside the movement's transaction; the account's row lock
already orders an account's rows, so its chain is a straight line in id order.

Editing, deleting or inserting a row in the middle of an account's history, even with
the append-only triggers dropped, breaks the chain at that row or the one after it.
Someone who can write the ledger could recompute every later hash too; the daily
digest (``anchor_chains``) defeats that for everything older than its last run: it
records each account's head (row id and hash) in append-only anchor rows, chained
digest to digest, so a recomputed or truncated history no longer matches what was
anchored. Publish the digest hash elsewhere (a log, a ticket) to make it stick.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..models import Serialisable

GENESIS = "0" * 64  # the "previous hash" of an account's first row
ENCODING_VERSION = "v1"

# The sealed columns, in their canonical order. Everything but ``id`` (the database
# assigns it after the hash is computed) and ``row_hash`` itself; the chain's order
# stands in for the id.
SEALED_FIELDS = (
    "user_id",
    "transaction_type",
    "amount",
    "balance_before",
    "balance_after",
    "service_type",
    "description",
    "reference_model",
    "reference_id",
    "idempotency_key",
    "created_at",
    "related_transaction_id",
    "actor",
)


_sealed_values = operator.itemgetter(*SEALED_FIELDS)
_CREATED_AT = SEALED_FIELDS.index("created_at")
# ", " between elements: byte for byte what PostgreSQL's json_build_array(...)::text and
# MariaDB's JSON_ARRAY(...) print for these values, so the database can check rows too.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ":")).encode


def canonical(row: Mapping[Any, Any]) -> bytes:
    """The row's sealed fields as a UTF-8 JSON array in one fixed order.

    The timestamp is UTC with microseconds, which every backend keeps exactly.
    """
    values = [ENCODING_VERSION, *_sealed_values(row)]
    created_at: datetime = values[_CREATED_AT + 1]
    values[_CREATED_AT + 1] = (
        created_at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    )
    return _encode(values).encode()


@dataclass(frozen=True, slots=True)
class Link:
    """An account's newest row as the next row seals it: its id and its hash."""

    id: int
    hash: str


def seal(previous: Link | None, row: Mapping[Any, Any]) -> str:
    """The row_hash of ``row`` written after ``previous`` (None: the account's first row).

    The previous row's id is sealed too, so renumbering rows breaks the chain.
    """
    link = f"{previous.id}:{previous.hash}" if previous else f"0:{GENESIS}"
    # UTF-8, not ASCII: a tampered, non-hex stored hash must be reported, not crash us.
    return hashlib.sha256(link.encode() + b"\n" + canonical(row)).hexdigest()


def following(previous: Link | None, row: Mapping[Any, Any]) -> Link:
    """The link after ``row``: its stored hash, or, for a row written without one (by
    a writer older than migration 0006), the hash the backfill gives it."""
    return Link(row["id"], row["row_hash"] or seal(previous, row))


def head_of(rows: Iterable[Mapping[Any, Any]]) -> Link | None:
    """The link after an account's rows, oldest first (starting at a sealed row or the first)."""
    previous = None
    for row in rows:
        previous = following(previous, row)
    return previous


def digest_of(previous: str, anchors: Iterable[tuple[int, int, str]]) -> str:
    """A digest's hash: the previous digest's and every (user, row id, row hash) it anchors."""
    lines = [previous, *(f"{user}:{row}:{hash_}" for user, row, hash_ in sorted(anchors))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak(Serialisable):
    """The first row of an account whose hash does not verify, and what that means.

    ``user_id`` is None when the digests themselves do not verify.
    """

    user_id: int | None
    transaction_id: int | None
    message: str


@dataclass(slots=True)
class ChainReport(Serialisable):
    """What ``verify_chain`` checked and every break it found."""

    accounts: int = 0
    rows: int = 0
    anchors: int = 0
    digests: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks


@dataclass(frozen=True, slots=True)
class ChainDigest(Serialisable):
    """One daily digest: the heads it anchored, and its hash to publish."""

    id: int
    created_at: datetime
    accounts: int
    previous_digest: str
    digest: str


class ChainWalk:
    """Checks rows fed in (user_id, id) order; remembers each account's first break.

    Each row is checked against the *stored* hash of the row before it, so one edited
    row breaks there and (when its hash was not recomputed) nowhere else. Only the
    current account's head is kept: memory does not grow with the number of accounts.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.accounts = 0
        self.breaks: dict[int, ChainBreak] = {}
        self._user: int | None = None
        self._head: Link | None = None
        self._balance_after = 0

    def feed(self, row: Mapping[Any, Any]) -> None:
        self.rows += 1
        user_id = row["user_id"]
        if user_id != self._user:
            self.accounts += 1
            self._user, self._head, self._balance_after = user_id, None, 0
        if user_id not in self.breaks and row["row_hash"] != seal(self._head, row):
            self.breaks[user_id] = ChainBreak(
                user_id, row["id"], _diagnosis(row, self._balance_after, first=not self._head)
            )
        self._head = following(self._head, row)
        self._balance_after = row["balance_after"]


def _diagnosis(row: Mapping[Any, Any], previous_after: int, *, first: bool) -> str:
    where = f"hash chain of account {row['user_id']} broken at row {row['id']}"
    if row["row_hash"] is None:
        return f"{where}: the row has no row_hash (written around the ledger's code)"
    if row["balance_before"] != previous_after:
        return (
            f"{where}: balance_before {row['balance_before']} does not follow "
            f"{'the opening 0' if first else f'the previous balance_after {previous_after}'}; "
            "a row before it was deleted or inserted out of order, or this row was altered"
        )
    return (
        f"{where}: its fields (amount, balances, type, user, reference, timestamp, text) "
        "were altered, rows before it were renumbered, or the row before it was replaced"
    )
