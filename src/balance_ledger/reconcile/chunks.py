"""A run's chunks of accounts, and their scans run ahead of the one being judged."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from ..db import sync_audit
from ..db.transactions import Database

R = TypeVar("R")

# Chunks scanned at once, each on its own connection, ahead of the one being judged.
SCANNERS = 2
_CHUNKS_PER_READ = 16


def chunks_of_accounts(db: Database, size: int) -> Iterator[list[int]]:
    """The account ids of each chunk, read with keyset pagination: the ids of several
    chunks per read (a read per chunk kept the scanners waiting)."""
    after = 0
    while ids := db.read(
        partial(sync_audit.next_user_ids, after=after, limit=size * _CHUNKS_PER_READ)
    ):
        for start in range(0, len(ids), size):
            yield ids[start : start + size]
        after = ids[-1]


def scanned_ahead(
    chunks: Iterator[list[int]], scan: Callable[[list[int]], R], scanners: int
) -> Iterator[R]:
    """Each chunk's scan, in order, with the next ``scanners`` chunks scanned meanwhile,
    each on its own connection: the scan is the server's work, which one connection
    would leave to one of its cores while the caller judges and writes."""
    pool = ThreadPoolExecutor(scanners, thread_name_prefix="balance-verify-scan")
    try:
        pending: deque[Future[R]] = deque()
        for ids in chunks:
            pending.append(pool.submit(scan, ids))
            if len(pending) > scanners:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a run that stops (an error, the caller gone) starts no further scan
        pool.shutdown(wait=True, cancel_futures=True)
