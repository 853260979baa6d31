"""Subscriptions to the outbox: webhooks, Redis streams and in-process callbacks.

Units of work for the facade's operators' half (operations.py); the SQL is in
db/outbox.py, delivery in dispatch.py and sinks.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from .. import clock
from .. import validation as valid
from ..db import outbox
from ..errors import InvalidRequest, WebhookNotFound
from ..models import Webhook
from . import sinks


def webhook_values(
    url: str, event_types: Iterable[str] | None, secret: str | None
) -> dict[str, Any]:
    """A new subscription's validated columns (a random secret when none is given)."""
    return {
        "url": valid.subscription_url(url),
        "event_types": valid.event_types(event_types),
        "secret": valid.webhook_secret(secret),
        "created_at": clock.now(),
    }


def subscribe_callback(conn: Connection, *, name: str, event_types: str) -> Webhook:
    """The durable subscription of callback ``name`` (url ``callback:<name>``): the one
    it has, or a new one. Refused when it has one to other event types."""
    url = sinks.callback_url(name)
    now = clock.now()
    key = outbox.lock_subscribing(conn, url, now)
    subscription = next(iter(outbox.live_subscriptions(conn, url)), None)
    if subscription is None:
        values = {"url": url, "event_types": event_types, "secret": valid.webhook_secret(None)}
        subscription = outbox.insert_webhook(conn, {**values, "created_at": now})
    elif (stored := valid.event_types(subscription.event_types)) != event_types:
        raise InvalidRequest(
            f"callback {name!r} is subscription {subscription.id}, to event types "
            f"{stored!r}, not {event_types!r}: remove it (remove_webhook) or use a new name"
        )
    outbox.unlock_subscribing(conn, key)
    return subscription


def remove(conn: Connection, *, webhook_id: int) -> Webhook:
    """Stop the subscription (again: no change); WebhookNotFound if there is none."""
    outbox.remove_webhook(conn, webhook_id, clock.now())
    webhook = outbox.get_webhook(conn, webhook_id)
    if webhook is None:
        raise WebhookNotFound(webhook_id)
    return webhook
