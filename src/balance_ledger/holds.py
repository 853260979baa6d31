"""Holds: money reserved while usage is metered — expiry, release, and a capture's replay
and refusal under its idempotency key (the capture's charge itself goes through
movements._apply). Units of work for BalanceService (service.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from . import clock, events, idempotency, policy
from . import validation as valid
from .accounts import save_settled
from .db import queries, refusals
from .errors import (
    IdempotencyConflict,
    InvalidRequest,
)
from .models import (
    Balance,
    Hold,
    HoldStatus,
    Refusal,
    StatusChange,
    Transaction,
)

MAX_HOLD = timedelta(days=366)  # the longest a hold may reserve money


def authorize_request(amount: int, service_type: str, description: str | None) -> dict[str, Any]:
    """What identifies an authorization as asked: a remembered refusal's fingerprint."""
    return {
        "operation": "authorize",
        "amount": amount,
        "service_type": service_type,
        "description": description,
    }


def capture_request(hold_id: int, amount: int | None) -> dict[str, Any]:
    """What identifies a capture as asked (``amount`` None: all the hold)."""
    return {"operation": "capture", "hold_id": hold_id, "amount": amount}


def capture_replay(
    conn: Connection, user_id: int, hold_id: int, amount: int | None, key: str
) -> Transaction | None:
    """The row an earlier capture of the hold with ``key`` wrote, or None if there is none;
    raises the refusal it got, if it was refused (idempotency.py).

    Takes the account's lock first, so a retry racing its own first attempt waits for it.
    """
    queries.lock_balance(conn, user_id)
    existing = refusals.earlier_answer(conn, user_id, key)
    if existing is None:
        return None
    if isinstance(existing, Refusal):
        raise idempotency.replay(existing, capture_request(hold_id, amount))
    hold = queries.get_hold(conn, hold_id)
    assert hold is not None, "holds are never deleted"
    asked = hold.amount if amount is None else amount
    capture = ("hold", str(hold_id), asked)
    if (existing.reference_model, existing.reference_id, existing.amount) != capture:
        found = f"ledger row {existing.id} is not a capture of {asked} from hold {hold_id}"
        raise IdempotencyConflict(user_id, key, found)
    return dataclasses.replace(existing, replayed=True)


def release(
    conn: Connection, account: Balance, hold: Hold, status: HoldStatus
) -> tuple[Hold, StatusChange | None]:
    now = clock.now()
    queries.close_hold(conn, hold.id, {"status": status.value, "closed_at": now})
    released = dataclasses.replace(hold, status=status, closed_at=now)
    event = events.hold(events.HOLD_CLOSED[status], released, now)
    return released, hold_moved(conn, account, account.held - hold.amount, now, event, hold.id)


def hold_moved(
    conn: Connection,
    account: Balance,
    held: int,
    now: datetime,
    event: dict[str, Any],
    hold_id: int,
) -> StatusChange | None:
    """Write the account with its new ``held`` and announce the hold's event. A hold
    never moves the balance, but a grace period that ran out suspends the account at
    its next write, this one too; and a reservation may fire balance.low."""
    after = policy.settle(
        account,
        balance=account.balance,
        total_recharged=account.total_recharged,
        total_spent=account.total_spent,
        held=held,
        now=now,
    )
    return save_settled(conn, account, after, now, [event], hold_id=hold_id)


def expire_hold(
    conn: Connection, *, user_id: int, hold_id: int
) -> tuple[bool, StatusChange | None]:
    """Release one due hold, if it is still open (a capture or void may have won)."""
    account = queries.lock_balance(conn, user_id)
    hold = queries.get_hold(conn, hold_id)
    if account is None or hold is None or hold.status is not HoldStatus.ACTIVE:
        return False, None
    return True, release(conn, account, hold, HoldStatus.EXPIRED)[1]


def hold_expiry(expires_at: object, ttl: object) -> datetime | None:
    if expires_at is not None and ttl is not None:
        raise InvalidRequest("give expires_at or ttl, not both")
    if expires_at is not None:
        expiry = valid.instant(expires_at, "expires_at")
        if not clock.now() < expiry <= clock.now() + MAX_HOLD:
            raise InvalidRequest("expires_at must be in the future and at most a year away")
        return expiry
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        seconds = ttl
    else:
        raise InvalidRequest(f"ttl must be a timedelta or whole seconds, not {type(ttl).__name__}")
    if not 0 < seconds <= MAX_HOLD.total_seconds():
        raise InvalidRequest(f"ttl must be positive and at most a year, got {seconds} s")
    return clock.now() + timedelta(seconds=seconds)
