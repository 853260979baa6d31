"""Backfills of the migrations, page by page: each page is committed on its own where
a migration is not one transaction anyway (Backend.commits_backfill_pages: MariaDB).

``seal_unsealed_rows`` gives ledger rows written before the hash chain existed their
``row_hash``. An UPDATE of history: only migration 0006 (and the benchmarks, which
bulk-load rows with SQL) run it, with the append-only triggers lifted meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import Connection

from ..chain.rules import Link, following
from . import hash_chain
from .dialects import backend_of

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
        backend.end_backfill_page(conn)
        sealed += len(updates)
        after = (page[-1]["user_id"], page[-1]["id"])
    return sealed


def account_pages(conn: Connection, size: int | None = None) -> Iterator[tuple[int, int]]:
    """(first, last) user_id of each page of ``size`` balance rows, in order, each
    committed once the caller's loop body has run (Backend.end_backfill_page). By
    default pages of PAGE where they commit, else one page of every account."""
    backend = backend_of(conn.engine)
    user_id = sa.column("user_id", sa.BigInteger)
    accounts = sa.table("user_balances", user_id)  # as every schema version has it
    if size is None and not backend.commits_backfill_pages:
        bounds = sa.select(sa.func.min(user_id), sa.func.max(user_id)).select_from(accounts)
        first, last = conn.execute(bounds).one()
        if first is not None:
            yield first, last
        return
    first_page = sa.select(user_id).select_from(accounts).order_by(user_id).limit(size or PAGE)
    page = first_page
    while ids := list(conn.execute(page).scalars()):
        yield ids[0], ids[-1]
        backend.end_backfill_page(conn)
        page = first_page.where(user_id > ids[-1])
