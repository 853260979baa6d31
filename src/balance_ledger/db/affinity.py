"""Node affinity on a multi-primary cluster (MariaDB Galera): every write of an account
goes to one node, its home, so that two nodes never write the same balance row at once
(on Galera that is a certification conflict, run again, and under a hot account's load
sometimes RetriesExhausted; with one writer per account there are none).

An account's home is chosen by rendezvous hashing of its user_id over the nodes' names:
every process given the same nodes picks the same home, and a node that leaves moves
only its own accounts, to their next preference. A node that fails a write before its
commit was sent (unreachable, lost, ``NodeUnavailable``) is skipped for a while and the
write runs on the account's next node; a write whose commit may have happened
(``CommitUnknown``) is never sent again: the caller decides, with its idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import CommitUnknown, RetriesExhausted, SchemaMissing, StorageError
from .transactions import Database

T = TypeVar("T")
log = logging.getLogger(__name__)

RESTING_SECONDS = 5.0  # how long a node that failed is passed over


class Nodes:
    """The nodes of one cluster, each a Database, and each account's home among them."""

    def __init__(self, databases: list[Database], *, resting: float = RESTING_SECONDS) -> None:
        self._databases = databases
        self._names = [db.engine.url.render_as_string(hide_password=True) for db in databases]
        self._resting = resting
        self._failed_at: dict[int, float] = {}
        self._guard = threading.Lock()

    @property
    def databases(self) -> list[Database]:
        return list(self._databases)

    def preference(self, user_id: int) -> list[int]:
        """The nodes (indexes) in the order an account's writes try them: home first."""

        def weight(node: int) -> bytes:
            return hashlib.blake2b(
                f"{self._names[node]}|{user_id}".encode(), digest_size=8
            ).digest()

        return sorted(range(len(self._databases)), key=weight, reverse=True)

    def home(self, user_id: int) -> Database:
        return self._databases[self.preference(user_id)[0]]

    def by_home(self, user_ids: list[int]) -> list[list[int]]:
        """The positions of ``user_ids`` in one list per home node, in order: a batch
        split so that each part is written by its accounts' own node."""
        parts: dict[int, list[int]] = {}
        for position, user_id in enumerate(user_ids):
            parts.setdefault(self.preference(user_id)[0], []).append(position)
        return list(parts.values())

    def write(self, user_id: int, operation: Callable[[Database], T]) -> T:
        """``operation`` on the account's home node, or on its next one while the home
        fails before committing."""
        order = self.preference(user_id)
        now = time.monotonic()
        with self._guard:
            resting = {n for n, at in self._failed_at.items() if now - at < self._resting}
        tried = [n for n in order if n not in resting] + [n for n in order if n in resting]
        last: StorageError | None = None
        for node in tried:
            try:
                result = operation(self._databases[node])
            except (CommitUnknown, RetriesExhausted, SchemaMissing):
                raise  # may have committed; or another node would answer the same
            except StorageError as error:  # nothing committed: unreachable, lost, 1047
                log.warning("node %s failed (%s); trying the next", self._names[node], error)
                with self._guard:
                    self._failed_at[node] = time.monotonic()
                last = error
                continue
            with self._guard:
                self._failed_at.pop(node, None)
            return result
        assert last is not None
        raise last

    def close(self) -> None:
        for db in self._databases:
            db.engine.dispose()
