"""The SQL of the hash chain: walking and backfilling rows, checking hashes set-based,
the daily digests and their anchors (chain/rules.py and chain/anchors.py hold the rules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    RowMapping,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from .dialects import Backend
from .queries import CHAIN_COLUMNS, insert_one
from .tables import balance_chain_anchors as anchors
from .tables import balance_chain_digests as digests
from .tables import user_balance_transactions as ledger


def chain_rows_page(conn: Connection, *, after: tuple[int, int], limit: int) -> list[RowMapping]:
    """The next ``limit`` ledger rows in (user_id, id) order after ``after``.

    Spelled so that every backend seeks the (user_id, id) index: the bare OR makes
    PostgreSQL sort the rest of the ledger, and a row value makes MariaDB scan the
    index from its start, on every page.
    """
    user, row_id = after
    stmt = (
        select(*CHAIN_COLUMNS)
        .where(ledger.c.user_id >= user, or_(ledger.c.user_id > user, ledger.c.id > row_id))
        .order_by(ledger.c.user_id, ledger.c.id)
        .limit(limit)
    )
    return list(conn.execute(stmt).mappings())


def backfill_row_hashes(conn: Connection, hashes: list[tuple[int, str]]) -> None:
    """The one UPDATE of ledger rows: sealing rows from before the chain (db/backfill.py)."""
    if hashes:
        stmt = (
            update(ledger)
            .where(ledger.c.id == bindparam("row_id"))
            .values(row_hash=bindparam("hash"))
        )
        conn.execute(stmt, [{"row_id": i, "hash": h} for i, h in hashes])


def ledger_accounts(
    conn: Connection, *, after: int, limit: int, user_id: int | None
) -> list[Row[Any]]:
    """(user_id, rows) of the next ``limit`` accounts with ledger rows after ``after``."""
    stmt = select(ledger.c.user_id, func.count().label("rows")).where(ledger.c.user_id > after)
    if user_id is not None:
        stmt = stmt.where(ledger.c.user_id == user_id)
    stmt = stmt.group_by(ledger.c.user_id).order_by(ledger.c.user_id).limit(limit)
    return list(conn.execute(stmt))


def hash_suspects(conn: Connection, backend: Backend, low: int, high: int) -> list[int] | None:
    """Accounts low..high with a row whose hash the server computes differently from the
    stored one, checked set-based in the database; None where it cannot (SQLite)."""
    by_account = {"partition_by": ledger.c.user_id, "order_by": ledger.c.id}
    rows = (
        select(
            *CHAIN_COLUMNS,
            func.lag(ledger.c.id).over(**by_account).label("previous_id"),  # type: ignore[arg-type]
            func.lag(ledger.c.row_hash).over(**by_account).label("previous_hash"),  # type: ignore[arg-type]
        )
        .where(ledger.c.user_id.between(low, high))
        .subquery("rows")
    )
    computed = backend.row_hash_sql(rows, rows.c.previous_id, rows.c.previous_hash)
    if computed is None:
        return None
    stmt = (
        select(rows.c.user_id)
        .where(or_(rows.c.row_hash.is_(None), rows.c.row_hash != computed))
        .group_by(rows.c.user_id)
        .order_by(rows.c.user_id)
    )
    return list(conn.execute(stmt).scalars())


def chain_rows_of_accounts(conn: Connection, low: int, high: int) -> Iterator[RowMapping]:
    """Every ledger row of accounts low..high in (user_id, id) order, streamed."""
    stmt = (
        select(*CHAIN_COLUMNS)
        .where(ledger.c.user_id.between(low, high))
        .order_by(ledger.c.user_id, ledger.c.id)
        .execution_options(yield_per=5_000)
    )
    yield from conn.execute(stmt).mappings()


def unanchored_heads(conn: Connection) -> list[Row[Any]]:
    """(user_id, id, row_hash) of each account head newer than its last anchor."""
    newest = (
        select(ledger.c.user_id, func.max(ledger.c.id).label("id"))
        .group_by(ledger.c.user_id)
        .subquery("newest")
    )
    anchored = (
        select(anchors.c.user_id, func.max(anchors.c.transaction_id).label("id"))
        .group_by(anchors.c.user_id)
        .subquery("anchored")
    )
    stmt = (
        select(ledger.c.user_id, ledger.c.id, ledger.c.row_hash)
        .select_from(
            newest.join(ledger, ledger.c.id == newest.c.id).outerjoin(
                anchored, anchored.c.user_id == newest.c.user_id
            )
        )
        .where(or_(anchored.c.id.is_(None), anchored.c.id < newest.c.id))
        .order_by(ledger.c.user_id)
    )
    return list(conn.execute(stmt))


def latest_digest(conn: Connection) -> RowMapping | None:
    return conn.execute(select(digests).order_by(digests.c.id.desc()).limit(1)).mappings().first()


def insert_digest(
    conn: Connection, values: dict[str, Any], heads: list[tuple[int, int, str]]
) -> int:
    digest_id = insert_one(conn, digests, values)
    conn.execute(
        insert(anchors),
        [
            {"digest_id": digest_id, "user_id": u, "transaction_id": t, "row_hash": h}
            for u, t, h in heads
        ],
    )
    return digest_id


def digests_with_anchors(conn: Connection) -> list[tuple[RowMapping, list[Row[Any]]]]:
    """Every digest, oldest first, with the (user, row, hash) triples it anchored."""
    found: list[tuple[RowMapping, list[Row[Any]]]] = [
        (digest, []) for digest in conn.execute(select(digests).order_by(digests.c.id)).mappings()
    ]
    by_id: dict[int, list[Row[Any]]] = {digest["id"]: rows for digest, rows in found}
    stmt = select(anchors).order_by(anchors.c.digest_id, anchors.c.user_id)
    for row in conn.execute(stmt):
        by_id.setdefault(row.digest_id, []).append(row)
    return found


def broken_anchors(conn: Connection, user_id: int | None) -> list[Row[Any]]:
    """Anchors whose row is gone, moved to another account, or hashes differently now."""
    stmt = (
        select(
            anchors.c.digest_id,
            anchors.c.user_id,
            anchors.c.transaction_id,
            anchors.c.row_hash.label("anchored_hash"),
            ledger.c.user_id.label("row_user_id"),
            ledger.c.row_hash.label("row_hash"),
        )
        .select_from(anchors.outerjoin(ledger, ledger.c.id == anchors.c.transaction_id))
        .where(
            or_(
                ledger.c.id.is_(None),
                ledger.c.user_id != anchors.c.user_id,
                ledger.c.row_hash.is_(None),
                ledger.c.row_hash != anchors.c.row_hash,
            )
        )
        .order_by(anchors.c.user_id, anchors.c.transaction_id)
    )
    if user_id is not None:
        stmt = stmt.where(anchors.c.user_id == user_id)
    return list(conn.execute(stmt))


def count_anchors(conn: Connection, user_id: int | None) -> int:
    stmt = select(func.count()).select_from(anchors)
    if user_id is not None:
        stmt = stmt.where(anchors.c.user_id == user_id)
    return int(conn.execute(stmt).scalar_one())
