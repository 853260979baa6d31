"""Check the ledger's hash chain and anchor its heads in daily digests (see rules.py)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from sqlalchemy import Connection, Row

from .. import clock
from ..db import hash_chain
from ..db.dialects import Backend
from ..db.transactions import Database
from ..errors import JobBusy
from .rules import GENESIS, ChainBreak, ChainDigest, ChainReport, ChainWalk, digest_of

log = logging.getLogger(__name__)

ACCOUNTS_PER_CHUNK = 1_000


def chain_breaks(conn: Connection, backend: Backend, low: int, high: int) -> dict[int, ChainBreak]:
    """The first row of each account low..high whose hash does not verify.

    The server recomputes every row's hash set-based where it can; only the accounts
    it suspects (every account, on SQLite) are walked row by row here, which decides.
    """
    suspects = hash_chain.hash_suspects(conn, backend, low, high)
    ranges = [(low, high)] if suspects is None else [(user, user) for user in suspects]
    walk = ChainWalk()
    for first, last in ranges:
        for row in hash_chain.chain_rows_of_accounts(conn, first, last):
            walk.feed(row)
    return walk.breaks


def verify_chain(db: Database, user_id: int | None = None) -> ChainReport:
    """Check every chain (or one account's), then the anchors and the digests."""
    report = ChainReport()
    breaks: dict[int, ChainBreak] = {}
    after = 0
    while chunk := db.read(
        partial(hash_chain.ledger_accounts, after=after, limit=ACCOUNTS_PER_CHUNK, user_id=user_id)
    ):
        low, high = chunk[0].user_id, chunk[-1].user_id
        breaks.update(db.read(partial(chain_breaks, backend=db.backend, low=low, high=high)))
        report.accounts += len(chunk)
        report.rows += sum(row.rows for row in chunk)
        after = high
    report.breaks.extend(breaks.values())
    report.anchors = db.read(partial(hash_chain.count_anchors, user_id=user_id))
    for anchor in db.read(partial(hash_chain.broken_anchors, user_id=user_id)):
        if anchor.user_id not in breaks:  # one break per account: the earliest
            report.breaks.append(_anchor_break(anchor))
    # Always, even for one account: its anchors prove nothing unless the digests hold.
    report.digests, broken_digest = db.read(_check_digests)
    if broken_digest is not None:
        report.breaks.append(broken_digest)
    report.breaks.sort(key=lambda b: (b.user_id or 0, b.transaction_id or 0))
    for found in report.breaks:
        log.error("%s", found.message)
    return report


def _anchor_break(anchor: Row[Any]) -> ChainBreak:
    user, row = anchor.user_id, anchor.transaction_id
    where = f"account {user}: row {row}, anchored by digest {anchor.digest_id},"
    if anchor.row_user_id is None:
        why = "is gone (history was truncated or deleted)"
    elif anchor.row_user_id != user:
        why = f"now belongs to account {anchor.row_user_id}"
    else:
        why = "hashes differently now (history up to it was rewritten)"
    return ChainBreak(user, row, f"{where} {why}")


def _check_digests(conn: Connection) -> tuple[int, ChainBreak | None]:
    """Each digest must seal its predecessor and exactly the anchors stored under it."""
    previous = GENESIS
    checked = 0
    for digest, rows in hash_chain.digests_with_anchors(conn):
        checked += 1
        heads = [(r.user_id, r.transaction_id, r.row_hash) for r in rows]
        if digest["previous_digest"] != previous or digest["digest"] != digest_of(previous, heads):
            message = (
                f"chain digest {digest['id']} does not verify: the digests or their anchors "
                "were altered, deleted or inserted"
            )
            return checked, ChainBreak(None, None, message)
        previous = digest["digest"]
    return checked, None


def anchor_chains(db: Database) -> ChainDigest | None:
    """Record the head of every account that moved since the last digest; None if none did.

    Raises JobBusy when another runner is anchoring right now.
    """

    def work(conn: Connection) -> ChainDigest | None:
        heads = [
            (row.user_id, row.id, row.row_hash)
            for row in hash_chain.unanchored_heads(conn)
            if row.row_hash is not None  # an unsealed head is verify_chain's to report
        ]
        if not heads:
            return None
        latest = hash_chain.latest_digest(conn)
        previous = latest["digest"] if latest else GENESIS
        values: dict[str, Any] = {
            "created_at": clock.now(),
            "accounts": len(heads),
            "previous_digest": previous,
            "digest": digest_of(previous, heads),
        }
        digest_id = hash_chain.insert_digest(conn, values, heads)
        return ChainDigest(id=digest_id, **values)

    # UNIQUE(previous_digest) would refuse a second racer anyway; the lock spares it.
    with db.backend.job_lock(db.engine, "anchor-chains") as held:
        if not held:
            raise JobBusy("anchor-chains")
        digest = db.write(work)
    if digest is not None:
        log.info("chain digest %d: %d heads, %s", digest.id, digest.accounts, digest.digest)
    return digest
