"""Give ledger rows written before the hash chain existed their ``row_hash``.

An UPDATE of history: only migration 0006 (and the benchmarks, which bulk-load rows
with SQL) run it, with the append-only triggers lifted for that one transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection

from ..chain import GENESIS, seal
from . import queries

PAGE = 5_000


def seal_unsealed_rows(conn: Connection) -> int:
    """Chain every row without a hash onto its account's previous row; return how many.

    Pages by (user_id, id) keyset: MariaDB cannot interleave an UPDATE with an open
    streamed SELECT on one connection.
    """
    heads: dict[int, str] = {}
    after = (0, 0)
    sealed = 0
    while page := queries.chain_rows_page(conn, after=after, limit=PAGE, user_id=None):
        updates = []
        for row in page:
            hash_ = row["row_hash"] or seal(heads.get(row["user_id"], GENESIS), row)
            if row["row_hash"] is None:
                updates.append((row["id"], hash_))
            heads[row["user_id"]] = hash_
        queries.backfill_row_hashes(conn, updates)
        sealed += len(updates)
        after = (page[-1]["user_id"], page[-1]["id"])
    return sealed
