"""Group commit for charges: concurrent callers' charges share one transaction (opt-in).

Each ``charge_service`` is its own transaction, so a hot account is charged at most
as often as the database can lock, write and commit one row. A ``ChargeCoalescer``
queues the charges of many threads and writes each short window's worth with the
batch path of ``charge_many`` (independent mode): one lock per account, set-based
writes, one COMMIT. Every caller still blocks until its own charge is committed and
gets its own ``Transaction`` or typed error, exactly as from ``charge_service``::

    with ChargeCoalescer(svc) as coalescer:        # shared by the request threads
        row = coalescer.charge(user_id, 12, "api-call", idempotency_key=request_id)

Batches form by themselves: the charges that arrive while one batch is being written
make up the next, so a lone caller waits for nobody (its charge is written as by
``charge_service``) and a crowd gets large batches. ``window`` adds a wait for company
before each batch. Latency cost: the rest of the batch in progress, plus ``window``,
plus the charge's own batch transaction.

Failures stay each caller's own. A refusal (insufficient funds, suspended, ...) is
that item's outcome and never touches the others. When the batch's transaction fails
as a whole (a database error), it was rolled back, and its charges are run again one
by one, so a charge the database refuses cannot fail its neighbours. The exception is
``CommitUnknown``: the batch may have committed, so nothing is re-run and every caller
of the batch gets the error, to settle with a keyed retry, as for a single charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Self, Unpack

from .errors import CommitUnknown, InvalidRequest, StorageError
from .models import Transaction
from .money.post import BATCH_ACCOUNTS
from .money.requests import Charge, ChargeOptions
from .service import BalanceService

DEFAULT_WINDOW = 0.0  # seconds a batch's first charge waits for company
DEFAULT_MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class _Pending:
    """A queued charge and where its outcome goes: a thread's Future, or an event loop's
    future, settled on its loop (an async caller needs no thread-safe Future)."""

    request: Charge
    outcome: Future[Transaction] | asyncio.Future[Transaction]
    loop: asyncio.AbstractEventLoop | None = None

    def answer(self, outcome: Transaction | BaseException) -> None:
        if self.loop is None:
            _settle(self.outcome, outcome)
        else:
            # A closed loop (RuntimeError) has nobody awaiting the answer any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_settle, self.outcome, outcome)


def _settle(
    future: Future[Transaction] | asyncio.Future[Transaction],
    outcome: Transaction | BaseException,
) -> None:
    if future.cancelled():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_STOP = object()  # tells a writer thread to finish


class ChargeCoalescer:
    """Merges concurrent ``charge`` calls into one transaction per short window.

    Thread-safe; one instance is shared by every thread that charges. ``writers``
    threads each write one batch at a time: more than one helps only when the charges
    are spread over many accounts (a hot account's batches queue on its row lock).
    ``close()`` (or leaving the ``with`` block) writes what is queued, then stops.
    The service's on_suspend / on_reactivate callbacks run on a writer thread: one that
    charged through the same coalescer would wait for itself.
    """

    def __init__(
        self,
        service: BalanceService,
        *,
        window: float = DEFAULT_WINDOW,
        max_batch: int = DEFAULT_MAX_BATCH,
        writers: int = 1,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 1:
            raise InvalidRequest(f"window must be between 0 and 1 second, got {window!r}")
        if not _whole(max_batch) or not 1 <= max_batch <= BATCH_ACCOUNTS:
            # One batch, one transaction (per home node): charge_many splits a batch of
            # more accounts, and a batch that committed in part could not be re-run
            # charge by charge.
            raise InvalidRequest(f"max_batch must be 1 to {BATCH_ACCOUNTS}, got {max_batch!r}")
        if not _whole(writers) or not 1 <= writers <= 64:
            raise InvalidRequest(f"writers must be 1 to 64, got {writers!r}")
        self._service = service
        self._window = float(window)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._closing = threading.Lock()  # held while enqueuing, so none slips past close
        self._closed = False
        self._writers = [
            threading.Thread(target=self._write_batches, name=f"charge-coalescer-{n}", daemon=True)
            for n in range(writers)
        ]
        for writer in self._writers:
            writer.start()

    def charge(
        self, user_id: int, amount: int, service_type: str, **options: Unpack[ChargeOptions]
    ) -> Transaction:
        """``BalanceService.charge_service``, committed together with concurrent charges.

        Blocks until the charge's batch is committed; returns its row or raises its
        typed error. Malformed arguments are refused at once, before queueing.
        """
        return self.submit(Charge(user_id, amount, service_type, **options))

    def submit(self, request: Charge) -> Transaction:
        """``BalanceService.charge(request)``, committed together with concurrent charges."""
        future: Future[Transaction] = Future()
        self._enqueue(_Pending(request, future))
        return future.result()

    async def submit_async(self, request: Charge) -> Transaction:
        """``submit`` for an event loop: awaits the charge's batch instead of blocking a
        thread, so an async server needs no thread per waiting request. Cancelling the
        await does not take the charge back: it is written with its batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Transaction] = loop.create_future()
        self._enqueue(_Pending(request, future, loop))
        return await asyncio.shield(future)

    def _enqueue(self, pending: _Pending) -> None:
        pending.request.movement()  # refuse a malformed charge now, not from the writer
        with self._closing:
            if self._closed:
                raise InvalidRequest("the charge coalescer is closed")
            self._queue.put(pending)

    def close(self, timeout: float | None = None) -> bool:
        """Write every queued charge, then stop the writer threads (idempotent).

        ``timeout``: wait at most this many seconds (a server shutting down must not hang
        on a writer stuck in the database; the writers are daemon threads, and a batch
        cut off with its process is rolled back by the server). Returns whether every
        writer has stopped.
        """
        with self._closing:
            if not self._closed:
                self._closed = True
                for _ in self._writers:
                    self._queue.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for writer in self._writers:
            writer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(writer.is_alive() for writer in self._writers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write_batches(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._write(batch)

    def _next_batch(self) -> list[_Pending] | None:
        """The next batch: whatever waits, plus what arrives within the window; None once
        told to stop (after the batch in hand, if any, is written)."""
        first = self._queue.get()
        if first is _STOP:
            return None
        assert isinstance(first, _Pending)
        batch = [first]
        deadline = time.monotonic() + self._window
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # for the next round: this batch is written first
                break
            assert isinstance(item, _Pending)
            batch.append(item)
        return batch

    def _write(self, batch: list[_Pending]) -> None:
        # With node affinity charge_many writes each home node's accounts in a
        # transaction of their own: split here, so that each part committed or not as
        # a whole, and a part that failed is re-run charge by charge without the others.
        users = [pending.request.user_id for pending in batch]
        for part in self._service.split_by_home(users):
            self._write_part([batch[position] for position in part])

    def _write_part(self, batch: list[_Pending]) -> None:
        """One transaction's worth of charges (one home node's, with node affinity)."""
        if len(batch) == 1:
            self._write_alone(batch[0])
            return
        try:
            results = self._service.charge_many([pending.request for pending in batch])
        except CommitUnknown as error:
            for pending in batch:  # may have committed: re-running could charge twice
                pending.answer(copy.copy(error))
            return
        except StorageError:
            for pending in batch:  # rolled back as a whole: each on its own now
                self._write_alone(pending)
            return
        except BaseException as error:  # a bug: tell every caller, keep the writer alive
            for pending in batch:
                pending.answer(copy.copy(error))
            return
        for pending, result in zip(batch, results, strict=True):
            pending.answer(result)

    def _write_alone(self, pending: _Pending) -> None:
        """One charge in its own transaction: the single-movement path, fewer statements."""
        try:
            pending.answer(self._service.charge(pending.request))
        except BaseException as error:  # its typed error, or a bug: the caller gets it
            pending.answer(error)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
