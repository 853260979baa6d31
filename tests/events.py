"""Reading the outbox in tests: the events of some types, or just their types."""

from __future__ import annotations

from balance_ledger import BalanceService, Event, EventType


def events_of(svc: BalanceService, *types: EventType, user_id: int | None = None) -> list[Event]:
    """The outbox's events (the first 1,000) of ``types``, or of every type; oldest first."""
    every = svc.events(limit=1_000, user_id=user_id)
    return [event for event in every if not types or event.event_type in types]


def kinds(svc: BalanceService, **page: int) -> list[EventType]:
    """The types of one page of events (``svc.events(**page)``), in order."""
    return [event.event_type for event in svc.events(**page)]
