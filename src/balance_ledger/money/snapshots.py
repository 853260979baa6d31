"""The accounts this process wrote last, as it left them: what ``post_unchanged``
(post.py) decides the next movement on, without reading the account again.

A snapshot is only a guess: the write that follows checks the account's version, so a
snapshot another writer made stale costs one statement that writes nothing, never a
wrong row. One lock per stripe of accounts makes this process's movements of one
account take turns, so its threads do not outguess each other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..chain.rules import Link
from ..models import Balance


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An account as it was at one version of its balance row, with its chain head."""

    account: Balance
    version: int
    head: Link | None  # None before the account's first row


class Snapshots:
    """At most ``size`` snapshots (the oldest goes first), and ``stripes`` locks."""

    def __init__(self, *, size: int = 50_000, stripes: int = 256) -> None:
        self._size = size
        self._known: dict[int, Snapshot] = {}
        self._guard = threading.Lock()  # of _known
        self._turns = [threading.Lock() for _ in range(stripes)]

    def turn(self, user_id: int) -> threading.Lock:
        """The lock this process's movements of ``user_id`` take turns on."""
        return self._turns[user_id % len(self._turns)]

    def get(self, user_id: int) -> Snapshot | None:
        return self._known.get(user_id)

    def keep(self, user_id: int, snapshot: Snapshot) -> None:
        with self._guard:
            known = self._known
            known.pop(user_id, None)  # to the end: the newest
            known[user_id] = snapshot
            if len(known) > self._size:
                del known[next(iter(known))]

    def forget(self, user_id: int) -> None:
        with self._guard:
            self._known.pop(user_id, None)
