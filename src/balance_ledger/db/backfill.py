"""Give ledger rows written before the hash chain existed their ``row_hash``.

An UPDATE of history: only migration 0006 (and the benchmarks, which bulk-load rows
with SQL) run it, with the append-only triggers lifted for that one transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection

from ..chain.rules import Link, following
from . import hash_chain

PAGE = 5_000


def seal_unsealed_rows(conn: Connection) -> int:
    """Chain every row without a hash onto its account's previous row; return how many.

    Pages by (user_id, id) keyset: MariaDB cannot interleave an UPDATE with an open
    streamed SELECT on one connection.
    """
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
        sealed += len(updates)
        after = (page[-1]["user_id"], page[-1]["id"])
    return sealed
