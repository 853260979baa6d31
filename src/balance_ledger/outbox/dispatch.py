"""Delivering the outbox to its subscriptions: at least once, in order per account, signed.

A dispatcher pass has three steps, each its own short transaction (no transaction is
open while a receiver is being called):

1. **Fan out**: lock the oldest events not yet fanned out (``SKIP LOCKED``, so several
   dispatchers share the work), write one delivery per subscribed webhook, flag them.
2. **Claim**: take due deliveries that are the oldest unfinished one of their
   (webhook, account), count an attempt and hold a lease. A dispatcher killed
   mid-delivery loses nothing: when its lease runs out the delivery is claimed again.
   Only deliveries this process can make are claimed: a ``callback:<name>``
   subscription's wait for a process that registered that name.
3. **Deliver and settle**: hand the event to the subscription's sink (sinks.py: an HTTP
   POST, a Redis XADD or a callback); success settles it as delivered, a failure
   schedules the next attempt with exponential backoff, and after ``max_attempts`` the
   delivery is dead (``BalanceService.retry_event`` revives).

A receiver may see an event twice (a dispatcher killed after delivering and before the
settle); the event id (``Balance-Event-Id``, the stream entry's ``id``) lets it drop the
repeat.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import Connection

from .. import clock
from ..db import outbox
from ..db.transactions import Database
from ..errors import SchemaMissing, StorageError
from ..models import Delivery, DeliveryStatus, Event
from .sinks import Callback, Sinks

log = logging.getLogger(__name__)

Backoff = Callable[[int], timedelta]


def exponential_backoff(attempts: int) -> timedelta:
    """After the n-th failed attempt: about 2^n seconds (jittered), at most an hour."""
    return timedelta(seconds=min(3600, 2**attempts) * random.uniform(0.8, 1.2))


@dataclass(frozen=True, slots=True)
class DispatchReport:
    fanned_out: int = 0  # events whose deliveries were written
    delivered: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0  # deliveries that ran out of attempts

    @property
    def idle(self) -> bool:
        return self == DispatchReport()

    def __add__(self, other: DispatchReport) -> DispatchReport:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return DispatchReport(*(mine + theirs for mine, theirs in pairs))


class Dispatcher:
    """Delivers pending events; run ``run_once`` in a loop (``run``) on any number of hosts."""

    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 10,
        lease: timedelta = timedelta(seconds=60),
        timeout: float = 10.0,
        batch: int = 100,
        backoff: Backoff = exponential_backoff,
        client: httpx.Client | None = None,
        callbacks: Mapping[str, Callback] | None = None,
    ) -> None:
        """``callbacks``: this process's callbacks by name (``BalanceService.add_callback``)."""
        self.db = db
        self.max_attempts = max_attempts
        self.lease = lease
        self.batch = batch
        self.backoff = backoff
        self.sinks = Sinks(timeout=timeout, client=client, callbacks=callbacks)

    def close(self) -> None:
        """Close the HTTP client and every Redis client."""
        self.sinks.close()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Dispatch until ``stop`` is set, pausing ``interval`` seconds when idle.

        The one dispatch loop (``balance dispatch``, ``balance serve --dispatch``). A pass
        that fails because the database is unreachable or busy is logged and tried again
        after ``interval``: an outage must not end dispatching for the rest of the
        process's life. Anything else (no schema, a bug) is raised: waiting cures nothing.
        """
        while not stop.is_set():
            try:
                idle = self.run_once().idle
            except SchemaMissing:
                raise
            except StorageError:
                log.exception("dispatching failed; trying again in %s s", interval)
                idle = True
            if idle:
                stop.wait(interval)

    @contextmanager
    def in_background(self, interval: float) -> Iterator[None]:
        """Run ``run`` in a background thread until the block ends, then close.

        Leaving waits for the delivery in flight to settle (at most the HTTP timeout);
        a process killed instead loses nothing: its leases run out.
        """
        stop = threading.Event()
        # A daemon: a process exiting without its shutdown (a forced exit) must not hang
        # on it; the delivery it had in flight is claimed again when its lease runs out.
        thread = threading.Thread(
            target=self.run, args=(stop, interval), name="balance-dispatch", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.close()

    def drain(self, on_pass: Callable[[DispatchReport], object] | None = None) -> DispatchReport:
        """Pass after pass until nothing is due (the scheduler's job); the passes' sum.
        ``on_pass`` is told each pass's report as it ends (so a failure later in the
        drain does not hide what was delivered)."""
        total = DispatchReport()
        while not (report := self.run_once()).idle:
            if on_pass is not None:
                on_pass(report)
            total += report
        return total

    def run_once(self) -> DispatchReport:
        fanned = self.fan_out()
        claimed = self.db.write(self._claim)
        if not claimed:
            return DispatchReport(fanned_out=fanned)
        events, targets = self.db.read(
            lambda conn: (
                outbox.events_by_id(conn, [d.event_id for d in claimed]),
                outbox.webhook_targets(conn, [d.webhook_id for d in claimed]),
            )
        )
        outcomes = [
            self._deliver(delivery, events[delivery.event_id], targets.get(delivery.webhook_id))
            for delivery in claimed
        ]
        return DispatchReport(
            fanned_out=fanned,
            delivered=outcomes.count(DeliveryStatus.DELIVERED),
            failed=outcomes.count(DeliveryStatus.PENDING),
            dead=outcomes.count(DeliveryStatus.DEAD),
        )

    def _claim(self, conn: Connection) -> list[Delivery]:
        # A removed subscription's deliveries stay claimable by anyone: they only die.
        unserved = [
            hook.id
            for hook in outbox.list_webhooks(conn)
            if hook.removed_at is None and not self.sinks.serves(hook.url)
        ]
        now = clock.now()
        return outbox.claim_deliveries(conn, now, now + self.lease, self.batch, skip=unserved)

    def fan_out(self) -> int:
        """Write the deliveries of the oldest events not yet fanned out; return how many."""

        def work(conn: Connection) -> int:
            pending = outbox.lock_unfanned_events(conn, self.batch)
            if not pending:
                return 0
            hooks = [w for w in outbox.list_webhooks(conn) if w.removed_at is None]
            now = clock.now()
            rows = [
                {
                    "event_id": event.id,
                    "webhook_id": hook.id,
                    "user_id": event.user_id,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for event in pending
                for hook in hooks
                if hook.wants(event.event_type.value)
            ]
            outbox.insert_deliveries(conn, rows)
            outbox.mark_fanned_out(conn, [event.id for event in pending])
            return len(pending)

        return self.db.write(work)

    def _deliver(
        self, delivery: Delivery, event: Event, target: tuple[str, str] | None
    ) -> DeliveryStatus:
        attempts = delivery.attempts + 1  # claiming counted this one
        error = "the webhook was removed" if target is None else self.sinks.deliver(event, *target)
        now = clock.now()
        if error is None:
            values = {"status": DeliveryStatus.DELIVERED.value, "delivered_at": now}
        elif target is None or attempts >= self.max_attempts:
            values = {"status": DeliveryStatus.DEAD.value, "last_error": error}
            log.warning("event %s to webhook %s is dead: %s", event.id, delivery.webhook_id, error)
        else:
            values = {
                "status": DeliveryStatus.PENDING.value,
                "last_error": error,
                "next_attempt_at": now + self.backoff(attempts),
            }
        self.db.write(
            lambda conn: outbox.settle_delivery(conn, delivery.id, {**values, "lease_until": None})
        )
        return DeliveryStatus(str(values["status"]))
