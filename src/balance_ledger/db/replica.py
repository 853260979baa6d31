"""A PostgreSQL streaming replica for the heavy reads: verify-chain, the discrepancy
report, statements and history pages (facade.py: Facade._heavy_read). Every write,
every lock and every fix stays on the primary.

When a heavy read starts (a long one, such as verify-chain, is checked once, at its
start) the replica is asked how far behind it is:

- **caught up** (0 s): it has replayed the primary's WAL up to where the primary had
  inserted it a moment before (``pg_current_wal_insert_lsn()`` on the primary,
  ``pg_last_wal_replay_lsn()`` on the replica), so the read sees every write committed
  before it began;
- else **behind** by the time, on the primary's clock, since the last transaction it
  replayed was committed there (``pg_last_xact_replay_timestamp()``; an upper bound: a
  primary idle for a minute before its last commit reads as a minute behind);
- **not used** when it is behind by more than the bound (with a bound of 0: whenever
  it is not caught up), unreachable, not a standby (``pg_is_in_recovery()``), or a
  standby of another cluster (``system_identifier``): the read goes to the primary,
  and the status says why.

The answer is kept for RECHECK_SECONDS (taken from before it was asked), so that a
burst of heavy reads (history pages over HTTP) does not cost two more round trips each;
one thread asks while the others wait for its answer. A replica found usable stays so
while its lag plus the answer's age (how much further behind it can have fallen since)
is within the bound, and that sum is the lag it reports: a kept "caught up" no longer
promises every write committed before the read, only those older than its age. With a
bound of 0 a usable answer is never kept. An answer that sends reads to the primary is
kept (the primary is never wrong), and so is a replica that failed a read midway.
``last_read`` tells the calling thread where its last heavy read went (the CLI prints
it, HTTP answers carry it as a header).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy import text

from ..errors import InvalidRequest, StorageError
from ..models import Serialisable
from .transactions import Database

T = TypeVar("T")

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0  # how long an answer about the replica is kept

_PRIMARY_POSITION = text(
    "SELECT pg_current_wal_insert_lsn()::text AS position, clock_timestamp() AS now,"
    " (SELECT system_identifier FROM pg_control_system()) AS system"
)
_REPLICA_POSITION = text(
    "SELECT pg_is_in_recovery() AS standby,"
    " (SELECT system_identifier FROM pg_control_system()) AS system,"
    " coalesce(pg_last_wal_replay_lsn() >= CAST(:position AS pg_lsn), false) AS caught_up,"
    " extract(epoch FROM CAST(:now AS timestamptz) - pg_last_xact_replay_timestamp())"
    " AS behind"
)


@dataclass(frozen=True, slots=True)
class ReplicaStatus(Serialisable):
    """Where the heavy reads go now, and why."""

    url: str  # the replica's, without its password
    used: bool  # True: heavy reads go to the replica
    lag_seconds: float | None  # how far behind it is (0: caught up); None: not known
    max_lag_seconds: float
    reason: str  # "caught up", "3.2 s behind", or why the primary answers instead

    def describe(self) -> str:
        """One line for an operator: where the read went."""
        where = "the replica" if self.used else "the primary"
        return f"read from {where} ({self.url}): {self.reason}"


class Replica:
    """A streaming replica of the primary ``Database``, used while within ``max_lag``."""

    def __init__(self, replica: Database, primary: Database, *, max_lag: float) -> None:
        if replica.backend.name != "postgresql" or primary.backend.name != "postgresql":
            raise InvalidRequest("a read replica is a PostgreSQL streaming replica of PostgreSQL")
        self._replica, self._primary, self._max_lag = replica, primary, max_lag
        self._url = replica.engine.url.render_as_string(hide_password=True)
        self._kept: tuple[float, ReplicaStatus] | None = None  # (when asked, the answer)
        self._guard = threading.Lock()  # over _kept
        self._asking = threading.Lock()  # one thread asks at a time; the others wait for it
        self._last = threading.local()

    def status(self) -> ReplicaStatus:
        """How far behind the replica is now, and whether heavy reads go to it (asked
        now, and kept for the reads that follow)."""
        with self._asking:
            return self._asked()

    def last_read(self) -> ReplicaStatus | None:
        """Where the calling thread's last heavy read went (None: it made none)."""
        found: ReplicaStatus | None = getattr(self._last, "status", None)
        return found

    def close(self) -> None:
        self._replica.engine.dispose()

    def read(self, operation: Callable[[Database], T]) -> T:
        """``operation`` on the replica if it is usable now, else on the primary; on the
        primary again if the replica fails it midway (a typed StorageError)."""
        status = self._recent()
        self._last.status = status
        if not status.used:
            log.warning("heavy read on the primary: %s", status.describe())
            return operation(self._primary)
        try:
            return operation(self._replica)
        except StorageError as error:
            log.warning("heavy read failed on the replica (%s); reading the primary", error)
            failed = self._status(False, None, f"failed midway: {error}")
            self._keep(time.monotonic(), failed)  # the next reads go to the primary too
            self._last.status = failed
            return operation(self._primary)

    def _recent(self) -> ReplicaStatus:
        """The kept answer while it still holds (module doc), else a new one: asked by
        one thread while the others wait for its answer."""
        found = self._still_holds()
        if found is None:
            with self._asking:
                found = self._still_holds() or self._asked()
        return found

    def _still_holds(self) -> ReplicaStatus | None:
        with self._guard:
            kept = self._kept
        if kept is None or (age := time.monotonic() - kept[0]) >= RECHECK_SECONDS:
            return None
        found = kept[1]
        if not found.used:
            return found  # the primary answers meanwhile: never wrong
        if self._max_lag == 0 or found.lag_seconds is None:
            return None  # usable only while caught up: asked every time
        lag = found.lag_seconds + age  # it cannot have fallen further behind than that
        if lag > self._max_lag:
            return None
        reason = f"at most {lag:.1f} s behind (asked {age:.1f} s ago)"
        return replace(found, lag_seconds=lag, reason=reason)

    def _asked(self) -> ReplicaStatus:
        asked_at = time.monotonic()  # before asking: the answer is at least this old
        found = self._ask()
        self._keep(asked_at, found)
        return found

    def _keep(self, at: float, found: ReplicaStatus) -> None:
        with self._guard:
            if self._kept is None or self._kept[0] <= at:  # never an older answer
                self._kept = (at, found)

    def _ask(self) -> ReplicaStatus:
        primary = self._primary.read(lambda conn: conn.execute(_PRIMARY_POSITION).one())
        asked = {"position": primary.position, "now": primary.now}
        try:
            found = self._replica.read(lambda conn: conn.execute(_REPLICA_POSITION, asked).one())
        except StorageError as error:  # refused, lost, shut down: the primary answers
            return self._status(False, None, f"unreachable: {error}")
        if not found.standby:
            return self._status(False, None, "not a standby (pg_is_in_recovery() is false)")
        if found.system != primary.system:
            return self._status(False, None, "a standby of another cluster, not of this primary")
        if found.caught_up:
            return self._status(True, 0.0, "caught up")
        if found.behind is None:
            return self._status(False, None, "it has replayed no transaction yet")
        behind = max(float(found.behind), 0.0)
        if self._max_lag == 0 or behind > self._max_lag:
            reason = f"{behind:.1f} s behind, past the bound of {self._max_lag:g} s"
            return self._status(False, behind, reason)
        return self._status(True, behind, f"{behind:.1f} s behind")

    def _status(self, used: bool, lag: float | None, reason: str) -> ReplicaStatus:
        return ReplicaStatus(self._url, used, lag, self._max_lag, reason)
