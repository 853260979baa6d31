"""Backfills of the migrations, page by page: each page is committed on its own where
a migration is not one transaction anyway (Backend.end_backfill_piece: MariaDB).

``seal_unsealed_rows`` gives ledger rows written before the hash chain existed their
``row_hash``. An UPDATE of history: only migration 0006 (and the benchmarks, which
bulk-load rows with SQL) run it, with the append-only triggers lifted meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, select

from ..chain.rules import Link, following
from . import hash_chain
from .dialects import backend_of
from .tables import user_balances as balances

PAGE = 5_000


def seal_unsealed_rows(conn: Connection) -> int:
    """Chain every row without a hash onto its account's previous row; return how many.

    Pages by (user_id, id) keyset: MariaDB cannot interleave an UPDATE with an open
    streamed SELECT on one connection.
    """
    backend = backend_of(conn.engine)
    user: int | None = None
    head: Link | None = None
    after = (0, 0)
    sealed = 0
    while page := hash_chain.chain_rows_page(conn, after=after, limit=PAGE):
        updates = []
        for row in page:
            if row["user_id"] != user:
                user, head = row["user_id"], None
            head = following(head, row)  # the same rule the writers use for such rows
            if row["row_hash"] is None:
                updates.append((head.id, head.hash))
        hash_chain.backfill_row_hashes(conn, updates)
        backend.end_backfill_piece(conn)
        sealed += len(updates)
        after = (page[-1]["user_id"], page[-1]["id"])
    return sealed


def account_pages(conn: Connection, size: int = PAGE) -> Iterator[tuple[int, int]]:
    """(first, last) user_id of each page of ``size`` balance rows, in order, each page
    committed (Backend.end_backfill_piece) once the caller's loop body has run."""
    backend = backend_of(conn.engine)
    after: int | None = None
    while True:
        stmt = select(balances.c.user_id).order_by(balances.c.user_id).limit(size)
        if after is not None:
            stmt = stmt.where(balances.c.user_id > after)
        ids = list(conn.execute(stmt).scalars())
        if not ids:
            return
        yield ids[0], ids[-1]
        backend.end_backfill_piece(conn)
        after = ids[-1]
