"""Delivering the outbox to webhooks: at least once, in order per account, signed.

A dispatcher pass has three steps, each its own short transaction (no transaction is
open while a receiver is being called):

1. **Fan out**: lock the oldest events not yet fanned out (``SKIP LOCKED``, so several
   dispatchers share the work), write one delivery per subscribed webhook, flag them.
2. **Claim**: take due deliveries that are the oldest unfinished one of their
   (webhook, account), count an attempt and hold a lease. A dispatcher killed
   mid-delivery loses nothing: when its lease runs out the delivery is claimed again.
3. **Deliver and settle**: POST the event, signed (signatures.py); 2xx settles it as
   delivered, anything else schedules the next attempt with exponential backoff, and
   after ``max_attempts`` the delivery is dead (``BalanceService.retry_event`` revives).

A receiver may see an event twice (a dispatcher killed after the POST and before the
settle); the ``Balance-Event-Id`` header lets it drop the repeat.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Connection

from . import signatures
from .db import queries
from .db.transactions import Database
from .errors import shown
from .models import Delivery, DeliveryStatus, Event

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
    ) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.lease = lease
        self.batch = batch
        self.backoff = backoff
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Dispatch until ``stop`` is set, pausing ``interval`` seconds when idle."""
        while not stop.is_set():
            if self.run_once().idle:
                stop.wait(interval)

    def run_once(self) -> DispatchReport:
        fanned = self.fan_out()
        now = _now()
        claimed = self.db.write(
            lambda conn: queries.claim_deliveries(conn, now, now + self.lease, self.batch)
        )
        if not claimed:
            return DispatchReport(fanned_out=fanned)
        events, targets = self.db.read(
            lambda conn: (
                queries.events_by_id(conn, [d.event_id for d in claimed]),
                queries.webhook_targets(conn, [d.webhook_id for d in claimed]),
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

    def fan_out(self) -> int:
        """Write the deliveries of the oldest events not yet fanned out; return how many."""

        def work(conn: Connection) -> int:
            pending = queries.lock_unfanned_events(conn, self.batch)
            if not pending:
                return 0
            hooks = [w for w in queries.list_webhooks(conn) if w.removed_at is None]
            now = _now()
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
            queries.insert_deliveries(conn, rows)
            queries.mark_fanned_out(conn, [event.id for event in pending])
            return len(pending)

        return self.db.write(work)

    def _deliver(
        self, delivery: Delivery, event: Event, target: tuple[str, str] | None
    ) -> DeliveryStatus:
        attempts = delivery.attempts + 1  # claiming counted this one
        error = "the webhook was removed" if target is None else self._post(event, *target)
        now = _now()
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
            lambda conn: queries.settle_delivery(conn, delivery.id, {**values, "lease_until": None})
        )
        return DeliveryStatus(values["status"])

    def _post(self, event: Event, url: str, secret: str) -> str | None:
        """POST the event; None when the receiver took it (2xx), else what went wrong."""
        body = json.dumps({"id": event.id, **event.payload}, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "Balance-Event-Id": str(event.id),
            "Balance-Event-Type": event.event_type.value,
            signatures.HEADER: signatures.sign(secret, body, int(time.time())),
        }
        try:
            answer = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as failure:
            return f"{type(failure).__name__}: {failure}"[:1024]
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code}: {shown(answer.text[:200])}"[:1024]


def _now() -> datetime:
    return datetime.now(UTC)
