"""Run a unit of work in one database transaction, retrying what the server aborted.

A unit of work is a function of a Connection. It runs inside ``BEGIN … COMMIT``;
any exception rolls the whole transaction back. Deadlocks, serialization failures
and lock timeouts are retried with jittered backoff a bounded number of times;
every other driver error becomes a typed ``StorageError`` (``raise … from``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import RetriesExhausted, SchemaMissing, StorageError
from .dialects import WRITE_OPTION, Backend, backend_of

T = TypeVar("T")

log = logging.getLogger(__name__)


def _backoff(attempt: int) -> float:
    """Full jitter, 10 ms doubling per attempt, at most 1 s: racers spread out."""
    return random.uniform(0, min(1.0, 0.01 * 2**attempt))


class Database:
    def __init__(self, engine: Engine, *, max_attempts: int = 8) -> None:
        self.engine = engine
        self.backend: Backend = backend_of(engine)
        self.max_attempts = max_attempts
        self._turn: AbstractContextManager[object] = (
            threading.Lock() if self.backend.single_connection else nullcontext()
        )

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        return self._run(work, write=True)

    def read(self, work: Callable[[Connection], T]) -> T:
        return self._run(work, write=False)

    def _run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._turn, self.engine.connect() as conn:
                    if write:
                        conn = conn.execution_options(**{WRITE_OPTION: True})
                    with conn.begin():
                        return work(conn)
            except DBAPIError as error:
                if self.backend.is_missing_table(error):
                    raise SchemaMissing(error.orig) from error
                if not self.backend.is_retryable(error):
                    raise StorageError(f"database error: {error.orig}") from error
                if attempt == self.max_attempts:
                    raise RetriesExhausted(attempt, error.orig or error) from error
                log.info("transaction aborted by the server (%s); retry %d", error.orig, attempt)
                time.sleep(_backoff(attempt))
            except SQLAlchemyError as error:  # pool timeout and the like
                raise StorageError(f"database error: {error}") from error
        raise AssertionError("unreachable")  # pragma: no cover
