"""Run a unit of work in one database transaction, retrying what the server aborted.

A unit of work is a function of a Connection. It runs inside ``BEGIN … COMMIT``;
any exception rolls the whole transaction back. Deadlocks, serialization failures
and lock timeouts are retried with jittered backoff a bounded number of times;
every other driver error becomes a typed ``StorageError`` (``raise … from``).

A pooled connection the server closed while it sat idle fails on the transaction's
first statement, before anything was sent that could commit: that transaction is run
again on a fresh connection. This replaces SQLAlchemy's ``pool_pre_ping``, which
spends a round trip on every checkout to find the same thing out. A connection lost
after a statement ran is never run again silently: the caller gets a StorageError.
One lost while COMMIT was in flight raises ``CommitUnknown``: the server may have
committed, and only the caller can settle it, by retrying with the same idempotency key.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import (
    CommitUnknown,
    InvalidRequest,
    NodeUnavailable,
    RetriesExhausted,
    SchemaMissing,
    StorageError,
)
from .dialects import (
    LOCK_WAIT_OPTION,
    WRITE_OPTION,
    Backend,
    autocommit,
    backend_of,
    prepare_sqlite,
)

T = TypeVar("T")
Work = Callable[[Connection], T]  # a unit of work: runs inside the transaction it is given

log = logging.getLogger(__name__)


def _one_line(cause: object) -> str:
    # Drivers put DETAIL / HINT / the SQL on further lines; an error message is one line.
    text = str(cause).split("\n[SQL:", 1)[0]
    return " ".join(text.split())


# Execution option of every transaction's connection: its _Progress.
_PROGRESS = "balance_ledger_progress"


class _Progress:
    """How far a transaction got: a statement ran (the server may have seen it), or
    COMMIT was sent (the server may have made it durable)."""

    __slots__ = ("committing", "ran")

    def __init__(self) -> None:
        self.ran = False
        self.committing = False


def _note_progress(
    _conn: object, _cursor: object, _statement: str, _params: object, context: Any, _many: bool
) -> None:
    progress = context.execution_options.get(_PROGRESS) if context is not None else None
    if progress is not None:
        progress.ran = True


def _progress(conn: Connection) -> _Progress | None:
    progress: _Progress | None = conn.get_execution_options().get(_PROGRESS)
    return progress


def ran(conn: Connection) -> None:
    """Say that a statement ran outside SQLAlchemy's execution (db/prepared.py)."""
    if (progress := _progress(conn)) is not None:
        progress.ran = True


def committing(conn: Connection) -> None:
    """Say that the next statement may commit: an autocommit write (Database.write_alone).
    A connection lost while it runs is then CommitUnknown, never run again."""
    if (progress := _progress(conn)) is not None:
        progress.committing = True


class _SessionEnded(Exception):
    """The server ended the session while an autocommit write was in flight: it
    committed or it did not, for good, and a read on another connection tells which."""


def _backoff(attempt: int) -> float:
    """Full jitter, 10 ms doubling per attempt, at most 1 s: racers spread out."""
    return random.uniform(0, min(1.0, 0.01 * 2**attempt))


class Database:
    def __init__(self, engine: Engine, *, max_attempts: int = 8) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidRequest(f"max_attempts must be an int of at least 1, got {max_attempts!r}")
        self.engine = engine
        self.backend: Backend = backend_of(engine)
        if self.backend.name == "sqlite":
            prepare_sqlite(engine)
        elif not event.contains(engine, "after_cursor_execute", _note_progress):
            event.listen(engine, "after_cursor_execute", _note_progress)
        self.max_attempts = max_attempts
        self._turn: AbstractContextManager[object] = (
            threading.Lock() if self.backend.single_connection else nullcontext()
        )
        self._lock_wait_observers: list[Callable[[float], object]] = []

    def on_lock_wait(self, observer: Callable[[float], object]) -> None:
        """Tell ``observer(seconds)`` how long each lock took to acquire (for metrics)."""
        self._lock_wait_observers.append(observer)

    def _observe_lock_wait(self, seconds: float) -> None:
        for observer in self._lock_wait_observers:
            try:
                observer(seconds)
            except Exception:
                # Metrics are not worth a failed charge.
                log.exception("lock-wait observer %r failed", observer)

    def write(self, work: Work[T]) -> T:
        """Run ``work`` in a write transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        return self._run(work, write=True)

    def read(self, work: Work[T]) -> T:
        return self._run(work, write=False)

    def write_alone(self, work: Work[T], settle: Work[T]) -> T:
        """Run ``work`` whose statements each commit on their own (autocommit): reads,
        then at most one statement that writes, announced by ``committing(conn)``.

        If the server ends the session while that write is in flight (terminated, shut
        down), ``settle`` reads what became of it on another connection and answers
        instead; any other connection lost mid-write is CommitUnknown."""
        try:
            return self._run(work, write=True, alone=True)
        except _SessionEnded:
            return self.read(settle)

    def _alone(self, work: Work[T], conn: Connection) -> T:
        """``work`` in autocommit. A connection whose session the server ended is
        invalidated here, before it goes back to the pool: the server may still be
        ending it, so the pool's reset can pass and hand it to the next caller (the
        settling read), whose statement would then meet a dead session."""
        try:
            return work(conn)
        except DBAPIError as error:
            if self.backend.ended_by_server(error) and not conn.invalidated:
                conn.invalidate(error)
            raise

    def _run(self, work: Work[T], *, write: bool, alone: bool = False) -> T:
        for attempt in range(1, self.max_attempts + 1):
            progress = _Progress()
            try:
                with self._turn, self.engine.connect() as conn:
                    options: dict[str, Any] = {WRITE_OPTION: write, _PROGRESS: progress}
                    if self._lock_wait_observers:
                        options[LOCK_WAIT_OPTION] = self._observe_lock_wait
                    conn = conn.execution_options(**options)
                    if alone:
                        with autocommit(conn):
                            return self._alone(work, conn)
                    with conn.begin():
                        result = work(conn)
                        progress.committing = True  # leaving the block sends COMMIT
                    return result
            except DBAPIError as error:
                if progress.committing and not self.backend.is_retryable(error):
                    if alone and self.backend.ended_by_server(error):
                        raise _SessionEnded from error
                    raise CommitUnknown(_one_line(error.orig)) from error
                stale = error.connection_invalidated and not progress.ran
                if stale and attempt < self.max_attempts:
                    log.info(
                        "pooled connection was closed by the server (%s); reconnecting", error.orig
                    )
                    continue
                if not self.backend.is_retryable(error) or attempt == self.max_attempts:
                    raise self._storage_error(error, attempt) from error
                log.info("transaction aborted by the server (%s); retry %d", error.orig, attempt)
                time.sleep(_backoff(attempt))
            except SQLAlchemyError as error:  # pool timeout and the like
                raise self._storage_error(error, attempt) from error
        raise AssertionError("unreachable: the last attempt returns or raises")

    def run_outside_transaction(self, work: Callable[[Engine], T]) -> T:
        """Run ``work`` that manages its own transactions (migrations), mapping errors."""
        try:
            return work(self.engine)
        except SQLAlchemyError as error:
            raise self._storage_error(error, attempt=1) from error

    def _storage_error(self, error: SQLAlchemyError, attempt: int) -> StorageError:
        """The typed error for a driver error, with a one-line message (no SQL, no DETAIL)."""
        cause = getattr(error, "orig", None) or error
        if isinstance(error, DBAPIError):
            if self.backend.is_missing_table(error):
                return SchemaMissing(_one_line(cause))
            if self.backend.is_node_unavailable(error):
                return NodeUnavailable(_one_line(cause))
            if self.backend.is_retryable(error):
                return RetriesExhausted(attempt, _one_line(cause))
            return StorageError(f"database error: {_one_line(cause)}")
        return StorageError(f"database error: {type(error).__name__}: {_one_line(cause)}")
