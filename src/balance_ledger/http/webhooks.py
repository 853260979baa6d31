"""The event outbox over HTTP: webhooks, events, their deliveries, retrying dead ones.

Every route here needs the admin scope: events carry every account's money movements,
deliveries show where they are sent, and a webhook is a standing order to send them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..models import Delivery, Event, Scope, Webhook
from .deps import PageSize, Service, needs

router = APIRouter(prefix="/v1", dependencies=needs(Scope.ADMIN))

WebhookId = Annotated[int, Path(description="The webhook's id.")]
EventId = Annotated[int, Path(description="The event's id.")]


class NewWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(
        description="An http(s) URL (signed POSTs) or redis://host:port/db?stream=NAME (XADDs)."
    )
    event_types: list[StrictStr] | None = Field(
        default=None, description="Event types to send (docs/events.md); default: every event."
    )
    secret: StrictStr | None = Field(
        default=None, description="HMAC secret, 16 to 256 printable ASCII; default: a random one."
    )


class WebhookOut(BaseModel):
    id: int
    url: str
    event_types: list[str] | None = Field(description="None: every event.")
    created_at: datetime
    removed_at: datetime | None


class CreatedWebhook(WebhookOut):
    secret: str = Field(description="Signs every delivery; shown only in this answer.")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class EventPage(BaseModel):
    events: list[dict[str, Any]] = Field(description="Each: id, created_at and the payload.")
    next_after_id: int = Field(
        description="Pass as after_id for the next page (also to poll for new events)."
    )


class DeliveryList(BaseModel):
    deliveries: list[Delivery]  # the dataclass itself: pydantic validates and serialises it


class Revived(BaseModel):
    revived: int = Field(description="Dead deliveries given a fresh set of attempts.")


@router.post("/webhooks", status_code=201, tags=["webhooks"])
def add_webhook(body: NewWebhook, svc: Service) -> CreatedWebhook:
    """Subscribe a URL to events; the answer holds the signing secret, which no other does."""
    hook, secret = svc.add_webhook(body.url, event_types=body.event_types, secret=body.secret)
    return CreatedWebhook(**_webhook(hook).model_dump(), secret=secret)


@router.get("/webhooks", tags=["webhooks"])
def list_webhooks(svc: Service) -> WebhookList:
    """Every webhook, removed ones included, oldest first (never a secret)."""
    return WebhookList(webhooks=[_webhook(hook) for hook in svc.list_webhooks()])


@router.delete("/webhooks/{webhook_id}", tags=["webhooks"])
def remove_webhook(webhook_id: WebhookId, svc: Service) -> WebhookOut:
    """Stop delivering to the webhook; its undelivered deliveries die. Again: no change."""
    return _webhook(svc.remove_webhook(webhook_id))


@router.get("/events", tags=["events"])
def events(
    svc: Service,
    after_id: Annotated[int, Query(ge=0, description="The last event id seen.")] = 0,
    limit: Annotated[int, PageSize] = 100,
    user_id: Annotated[int | None, Query(ge=1, description="Only this account's.")] = None,
) -> EventPage:
    """Outbox events after ``after_id``, oldest first, each as its webhook delivery's body."""
    page = svc.events(after_id=after_id, limit=limit, user_id=user_id)
    return EventPage(
        events=[_event(event) for event in page],
        next_after_id=page[-1].id if page else after_id,
    )


@router.get("/events/{event_id}/deliveries", tags=["events"])
def deliveries(event_id: EventId, svc: Service) -> DeliveryList:
    """The event's deliveries, one per webhook: status, attempts, last error.

    Empty until a dispatcher has fanned the event out (or when no webhook wants it).
    """
    return DeliveryList(deliveries=svc.deliveries(event_id))


@router.post("/events/{event_id}:retry", tags=["events"])
def retry_event(event_id: EventId, svc: Service) -> Revived:
    """Give the event's dead deliveries a fresh set of attempts."""
    return Revived(revived=svc.retry_event(event_id))


def _webhook(hook: Webhook) -> WebhookOut:
    kinds = None if hook.event_types is None else sorted(hook.event_types)
    return WebhookOut(
        id=hook.id,
        url=hook.url,
        event_types=kinds,
        created_at=hook.created_at,
        removed_at=hook.removed_at,
    )


def _event(event: Event) -> dict[str, Any]:
    # The shape of `balance events tail --json`: a delivery's body plus created_at.
    return {"id": event.id, "created_at": event.created_at, **event.payload}
