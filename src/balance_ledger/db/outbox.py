"""The SQL of the event outbox, its subscriptions (webhooks, sinks) and their deliveries
(outbox/events.py builds the rows, outbox/dispatch.py delivers them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    false,
    insert,
    or_,
    select,
    update,
)

from ..models import (
    Delivery,
    DeliveryStatus,
    Event,
    EventType,
    Webhook,
)
from .dialects import Backend
from .queries import insert_one
from .tables import balance_event_deliveries as deliveries
from .tables import balance_events as events
from .tables import balance_job_locks as job_locks
from .tables import balance_webhooks as webhooks


def append_event(conn: Connection, row: dict[str, Any]) -> None:
    """Append one outbox row inside the caller's transaction."""
    conn.execute(_INSERT_EVENT, row)


def append_events(conn: Connection, backend: Backend, rows: list[dict[str, Any]]) -> None:
    """Append outbox rows, in order (a batch's: by COPY on PostgreSQL)."""
    if len(rows) == 1:
        append_event(conn, rows[0])
    else:
        backend.insert_rows(conn, events, rows)


_INSERT_EVENT = insert(events)


def _event(row: Mapping[Any, Any]) -> Event:
    return Event(
        id=row["id"],
        event_type=EventType(row["event_type"]),
        user_id=row["user_id"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
    )


def events_page(
    conn: Connection, *, after_id: int, limit: int, user_id: int | None = None
) -> list[Event]:
    """Events with ids above ``after_id``, oldest first (optionally one account's)."""
    stmt = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    if user_id is not None:
        stmt = stmt.where(events.c.user_id == user_id)
    return [_event(row) for row in conn.execute(stmt).mappings()]


def events_by_id(conn: Connection, ids: list[int]) -> dict[int, Event]:
    stmt = select(events).where(events.c.id.in_(ids))
    return {row["id"]: _event(row) for row in conn.execute(stmt).mappings()}


def lock_unfanned_events(conn: Connection, limit: int) -> list[Event]:
    """The oldest events not yet fanned out, locked; rows another dispatcher holds are
    skipped (SKIP LOCKED; SQLite's one writer needs no skipping)."""
    stmt = (
        select(events)
        .where(events.c.fanned_out == false())
        .order_by(events.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [_event(row) for row in conn.execute(stmt).mappings()]


def mark_fanned_out(conn: Connection, event_ids: list[int]) -> None:
    conn.execute(update(events).where(events.c.id.in_(event_ids)).values(fanned_out=True))


# -- webhooks and deliveries (outbox/dispatch.py) --------------------------------------------------


def _webhook(row: Mapping[Any, Any]) -> Webhook:
    kinds = row["event_types"]
    return Webhook(
        id=row["id"],
        url=row["url"],
        event_types=None if kinds == "*" else frozenset(kinds.split(",")),
        created_at=row["created_at"],
        removed_at=row["removed_at"],
    )


def insert_webhook(conn: Connection, values: dict[str, Any]) -> Webhook:
    return _webhook({**values, "id": insert_one(conn, webhooks, values), "removed_at": None})


def list_webhooks(conn: Connection) -> list[Webhook]:
    stmt = select(webhooks).order_by(webhooks.c.id)
    return [_webhook(row) for row in conn.execute(stmt).mappings()]


def get_webhook(conn: Connection, webhook_id: int) -> Webhook | None:
    row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).mappings().first()
    return _webhook(row) if row else None


def remove_webhook(conn: Connection, webhook_id: int, now: datetime) -> None:
    stmt = update(webhooks).where(webhooks.c.id == webhook_id, webhooks.c.removed_at.is_(None))
    conn.execute(stmt.values(removed_at=now))


def live_subscriptions(conn: Connection, url: str) -> list[Webhook]:
    """The subscriptions of ``url`` not removed, oldest first."""
    stmt = (
        select(webhooks)
        .where(webhooks.c.url == url, webhooks.c.removed_at.is_(None))
        .order_by(webhooks.c.id)
    )
    return [_webhook(row) for row in conn.execute(stmt).mappings()]


def lock_subscribing(conn: Connection, url: str, now: datetime) -> str:
    """Make the other transactions subscribing ``url`` wait until this one ends; the key
    to pass to ``unlock_subscribing`` before committing.

    Two processes registering one callback at once must not both find no row and both
    insert one. A key row of balance_job_locks, inserted now and deleted in the same
    transaction, is the mutex: a second insert of the key waits on the unique index
    until the first transaction ends, then finds nothing there. (SQLite's writers take
    turns anyway.) Hashed: a lock name is at most 64 characters.
    """
    key = "balance_ledger:subscribe:" + hashlib.sha256(url.encode()).hexdigest()[:32]
    conn.execute(insert(job_locks).values(name=key, holder="subscribe", expires_at=now))
    return key


def unlock_subscribing(conn: Connection, key: str) -> None:
    conn.execute(delete(job_locks).where(job_locks.c.name == key))


def webhook_targets(conn: Connection, ids: list[int]) -> dict[int, tuple[str, str]]:
    """(url, secret) of each webhook not removed: what a delivery needs."""
    stmt = select(webhooks.c.id, webhooks.c.url, webhooks.c.secret).where(
        webhooks.c.id.in_(ids), webhooks.c.removed_at.is_(None)
    )
    return {row.id: (row.url, row.secret) for row in conn.execute(stmt)}


def insert_deliveries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(deliveries), rows)


def _delivery(row: Mapping[Any, Any]) -> Delivery:
    return Delivery(**{**row, "status": DeliveryStatus(row["status"])})


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Due for an attempt: pending and due, or claimed by a dispatcher whose lease ran out."""
    return or_(
        and_(
            deliveries.c.status == DeliveryStatus.PENDING.value,
            deliveries.c.next_attempt_at <= now,
        ),
        and_(
            deliveries.c.status == DeliveryStatus.DELIVERING.value,
            deliveries.c.lease_until < now,
        ),
    )


def claim_deliveries(
    conn: Connection, now: datetime, lease_until: datetime, limit: int, *, skip: list[int]
) -> list[Delivery]:
    """Claim due deliveries, each the oldest unfinished one of its (webhook, account),
    and behind no event of its account still waiting to be fanned out, leaving those of
    the webhooks in ``skip`` (the ones this dispatcher cannot deliver to) alone.

    Two statements on purpose: the head test reads other deliveries, and a locking read
    with SKIP LOCKED could skip a locked earlier delivery and take a later one first.
    The lock then takes the heads still claimable; rows another dispatcher holds are
    skipped. Each claimed delivery counts an attempt and holds a lease.
    """
    earlier = deliveries.alias("earlier")
    unfinished = (DeliveryStatus.PENDING.value, DeliveryStatus.DELIVERING.value)
    head = ~(
        select(earlier.c.id)
        .where(
            earlier.c.webhook_id == deliveries.c.webhook_id,
            earlier.c.user_id == deliveries.c.user_id,
            earlier.c.event_id < deliveries.c.event_id,
            earlier.c.status.in_(unfinished),
        )
        .exists()
    )
    # An earlier event of the account whose deliveries another dispatcher's fan-out has
    # not committed yet must go first too: it will be this one's predecessor.
    unfanned = ~(
        select(events.c.id)
        .where(
            events.c.user_id == deliveries.c.user_id,
            events.c.id < deliveries.c.event_id,
            events.c.fanned_out == false(),
        )
        .exists()
    )
    candidates = (
        select(deliveries.c.id)
        .where(_claimable(now), head, unfanned, deliveries.c.webhook_id.not_in(skip))
        .order_by(deliveries.c.event_id)
        .limit(limit)
    )
    ids = list(conn.execute(candidates).scalars())
    if not ids:
        return []
    locked = (
        select(deliveries)
        .where(deliveries.c.id.in_(ids), _claimable(now))
        .order_by(deliveries.c.event_id)
        .with_for_update(skip_locked=True)
    )
    claimed = [_delivery(row) for row in conn.execute(locked).mappings()]
    if claimed:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_([d.id for d in claimed]))
            .values(
                status=DeliveryStatus.DELIVERING.value,
                attempts=deliveries.c.attempts + 1,
                lease_until=lease_until,
            )
        )
    return claimed


def settle_delivery(conn: Connection, delivery_id: int, values: dict[str, Any]) -> None:
    """Record an attempt's outcome, unless another dispatcher took the delivery over."""
    conn.execute(
        update(deliveries)
        .where(
            deliveries.c.id == delivery_id,
            deliveries.c.status == DeliveryStatus.DELIVERING.value,
        )
        .values(**values)
    )


def deliveries_of(conn: Connection, event_id: int | None = None) -> list[Delivery]:
    stmt = select(deliveries).order_by(deliveries.c.id)
    if event_id is not None:
        stmt = stmt.where(deliveries.c.event_id == event_id)
    return [_delivery(row) for row in conn.execute(stmt).mappings()]


def revive_dead_deliveries(conn: Connection, event_id: int, now: datetime) -> int:
    """Dead deliveries of an event back to pending, with their attempts from 0."""
    stmt = (
        update(deliveries)
        .where(
            deliveries.c.event_id == event_id,
            deliveries.c.status == DeliveryStatus.DEAD.value,
        )
        .values(
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
        )
    )
    return conn.execute(stmt).rowcount
