"""The SQL of remembered refusals (``balance_refusals``; the rules are in idempotency.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    bindparam,
    delete,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)

from ..models import KeyScope, Refusal, Transaction
from . import queries
from .dialects import planned_each_run
from .tables import balance_refusals as refusals
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances

# The key's row in the ledger, and its refusal, under the parameters user_id and key.
_KEYS_ROW = (ledger.c.user_id == bindparam("user_id"), ledger.c.idempotency_key == bindparam("key"))
_KEYS_REFUSAL = (
    refusals.c.user_id == bindparam("user_id"),
    refusals.c.key_scope == KeyScope.LEDGER.value,
    refusals.c.idempotency_key == bindparam("key"),
)
# Whatever an idempotency key of the ledger's namespace already answered: a row or a
# refusal. One round trip when it is neither, the common case. Never both, except
# where a writer older than migration 0010 wrote a row under a refused key: then the
# row, as for a batch (money.post.post_many).
_EARLIER = union_all(
    select(literal(0).label("rank"), ledger.c.id).where(*_KEYS_ROW),
    select(literal(1).label("rank"), refusals.c.id).where(*_KEYS_REFUSAL),
).order_by("rank")


def _answered(rows: bool) -> Any:
    """The key's earlier row (if ``rows``) and refusal, and the account's chain head."""
    row_id = select(ledger.c.id).where(*_KEYS_ROW).scalar_subquery()
    return select(
        (row_id if rows else null()).label("row_id"),
        select(refusals.c.id).where(*_KEYS_REFUSAL).scalar_subquery().label("refusal_id"),
        *(  # the chain head: id, row_hash
            queries.newest_row(bindparam("user_id"), column).scalar_subquery().label(column.name)
            for column in (ledger.c.id, ledger.c.row_hash)
        ),
    )


# What a keyed movement reads under its account's lock, in one round trip.
_ANSWERED = {rows: _answered(rows) for rows in (True, False)}
_FIND = select(refusals).where(
    refusals.c.user_id == bindparam("user_id"),
    refusals.c.key_scope == bindparam("scope"),
    refusals.c.idempotency_key == bindparam("key"),
)


def earlier_answer(conn: Connection, user_id: int, key: str) -> Transaction | Refusal | None:
    """The ledger row or the refusal an earlier attempt with ``key`` left, if any.
    Run it under the account's lock: every answer for a key is written under it."""
    with planned_each_run(conn):
        found = conn.execute(_EARLIER, {"user_id": user_id, "key": key}).first()
    if found is None:
        return None
    if found.rank == 0:
        return queries.get_transaction(conn, found.id)
    return find(conn, user_id, KeyScope.LEDGER, key)


def answer_and_head(
    conn: Connection, user_id: int, key: str, *, rows: bool
) -> tuple[Transaction | Refusal | None, Row[Any] | None]:
    """``earlier_answer`` and the account's chain head (queries.chain_head), read in one
    statement under the account's lock. ``rows=False``: the key's ledger row is read
    only if a refusal was kept under it (post's ``look_up_keys``)."""
    with planned_each_run(conn):  # it reads the ledger (dialects.planned_each_run)
        found = conn.execute(_ANSWERED[rows], {"user_id": user_id, "key": key}).one()
    head = None if found.id is None else found
    if found.row_id is not None:  # a row wins over a refusal
        return queries.get_transaction(conn, found.row_id), head
    if found.refusal_id is None:
        return None, head
    if rows:
        return find(conn, user_id, KeyScope.LEDGER, key), head
    return earlier_answer(conn, user_id, key), head  # the key's row was not read yet


def find(conn: Connection, user_id: int, scope: KeyScope, key: str) -> Refusal | None:
    params = {"user_id": user_id, "scope": scope.value, "key": key}
    row = conn.execute(_FIND, params).mappings().first()
    return _refusal(row) if row else None


def find_many(
    conn: Connection, scope: KeyScope, pairs: set[tuple[int, str]]
) -> dict[tuple[int, str], Refusal]:
    """The refusals remembered under any of these (user_id, key) pairs."""
    found = queries.keyed_rows(conn, refusals, pairs, scope.value)
    return {pair: _refusal(row) for pair, row in found}


def insert_many(conn: Connection, remembered: list[Refusal]) -> None:
    """Remember refusals (their ``id`` is not written: the database gives one).

    Their accounts' rows are touched, which moves their versions (guards.py): a movement
    decided on an account before a refusal was kept under its key is not written."""
    if remembered:
        conn.execute(insert(refusals), [_columns(refusal) for refusal in remembered])
        accounts = sorted({refusal.user_id for refusal in remembered})
        touch = update(balances).where(balances.c.user_id.in_(accounts))
        conn.execute(touch.values(version=balances.c.version))


def purge(conn: Connection, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` refusals made before ``before``; how many went."""
    oldest = (
        select(refusals.c.id)
        .where(refusals.c.created_at < before)
        .order_by(refusals.c.id)
        .limit(limit)
    )
    ids = list(conn.execute(oldest).scalars())
    if not ids:
        return 0
    # Another purger may have taken some: count what this one deleted.
    return conn.execute(delete(refusals).where(refusals.c.id.in_(ids))).rowcount


def _columns(refusal: Refusal) -> dict[str, Any]:
    return {
        "user_id": refusal.user_id,
        "key_scope": refusal.key_scope.value,
        "idempotency_key": refusal.idempotency_key,
        "request": json.dumps(refusal.request, sort_keys=True),
        "code": refusal.code,
        "context": json.dumps(refusal.context, sort_keys=True),
        "created_at": refusal.created_at,
    }


def _refusal(row: Mapping[Any, Any]) -> Refusal:
    return Refusal(
        **{
            **row,
            "key_scope": KeyScope(row["key_scope"]),
            "request": json.loads(row["request"]),
            "context": json.loads(row["context"]),
        }
    )
