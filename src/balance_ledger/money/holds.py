"""Holds: money reserved while usage is metered. authorize → capture | void (| expire).

Units of work for BalanceService (service.py), each run under the account's lock. A
capture's charge goes through post.post like every charge; the funds check of an
authorization is the charges' (rules.check_funds).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from .. import clock, idempotency, policy
from .. import validation as valid
from ..db import outbox, queries, refusals
from ..db.dialects import Backend
from ..errors import (
    AccountNotFound,
    BalanceError,
    HoldNotActive,
    IdempotencyConflict,
    InvalidAmount,
    InvalidRequest,
)
from ..models import (
    Balance,
    EventType,
    Hold,
    HoldStatus,
    KeyScope,
    Refusal,
    StatusChange,
    Transaction,
    TransactionType,
)
from ..outbox import events
from .accounts import save_settled
from .post import Posted, post, remembered
from .requests import Movement
from .rules import Refused, check_funds

MAX_HOLD = timedelta(days=366)  # the longest a hold may reserve money


def authorize(
    conn: Connection,
    *,
    user_id: int,
    amount: int,
    service_type: str,
    description: str | None,
    key: str | None,
    expiry: datetime | None,
) -> tuple[Hold | Refused, StatusChange | None]:
    """Reserve ``amount`` of the account: refused like a charge (rules.check_funds)."""
    account = queries.lock_balance(conn, user_id)
    if account is None:
        raise AccountNotFound(user_id)
    now = clock.now()
    request = authorize_request(amount, service_type, description)
    if key is not None and (existing := queries.find_hold_by_key(conn, user_id, key)):
        asked = (amount, service_type, description)
        if (existing.amount, existing.service_type, existing.description) != asked:
            raise IdempotencyConflict(user_id, key, f"hold {existing.id} differs")
        return dataclasses.replace(existing, replayed=True), None
    if key is not None and (refused := refusals.find(conn, user_id, KeyScope.HOLD, key)):
        raise idempotency.replay(refused, request)
    try:
        check_funds(account, amount)
    except BalanceError as error:
        return remembered(conn, error, user_id, KeyScope.HOLD, key, request, now), None
    held = valid.in_bigint_range(account.held + amount, "held", amount=amount)
    hold = queries.insert_hold(
        conn,
        {
            "user_id": user_id,
            "amount": amount,
            "service_type": service_type,
            "description": description,
            "status": HoldStatus.ACTIVE.value,
            "expires_at": expiry,
            "idempotency_key": key,
            "captured_amount": None,
            "capture_transaction_id": None,
            "created_at": now,
            "closed_at": None,
        },
    )
    event = events.hold(EventType.HOLD_AUTHORIZED, hold, now)
    return hold, hold_moved(conn, account, held, now, event, hold.id)


def capture(
    conn: Connection,
    backend: Backend,
    *,
    user_id: int,
    hold_id: int,
    amount: int | None,
    key: str | None,
) -> Posted:
    """Charge ``amount`` of the hold (None: all of it) through post, release the rest."""
    if key is not None and (replay := capture_replay(conn, user_id, hold_id, amount, key)):
        return replay, None
    try:
        account, hold = _lock_active_hold(conn, user_id, hold_id, capturing=True)
    except HoldNotActive as refused:
        request = capture_request(hold_id, amount)
        return remembered(conn, refused, user_id, KeyScope.LEDGER, key, request, clock.now()), None
    charged = hold.amount if amount is None else amount
    if charged > hold.amount:
        raise InvalidAmount(charged, f"hold {hold_id} reserved only {hold.amount}")
    now = clock.now()
    queries.set_held(conn, user_id, account.held - hold.amount, now)
    movement = Movement(
        user_id=user_id,
        transaction_type=TransactionType.CHARGE,
        amount=charged,
        service_type=hold.service_type,
        description=hold.description,
        reference_model="hold",
        reference_id=str(hold_id),
        idempotency_key=key,
        currency=None,
        # Reserved money for usage already delivered: always recorded.
        allow_overdraft=True,
    )
    transaction, change = post(conn, backend, movement)
    if isinstance(transaction, Refused):  # never: reserved money is always captured
        return transaction, change
    closed: dict[str, Any] = {
        "status": HoldStatus.CAPTURED,
        "captured_amount": charged,
        "capture_transaction_id": transaction.id,
        "closed_at": now,
    }
    queries.close_hold(conn, hold_id, {**closed, "status": HoldStatus.CAPTURED.value})
    captured = dataclasses.replace(hold, **closed)
    outbox.append_event(conn, events.hold(EventType.HOLD_CAPTURED, captured, now))
    return transaction, change


def void(conn: Connection, *, user_id: int, hold_id: int) -> tuple[Hold, StatusChange | None]:
    """Release an active hold without charging anything."""
    account, hold = _lock_active_hold(conn, user_id, hold_id, capturing=False)
    return release(conn, account, hold, HoldStatus.VOIDED)


def _lock_active_hold(
    conn: Connection, user_id: int, hold_id: int, *, capturing: bool
) -> tuple[Balance, Hold]:
    """Lock the hold's account, then re-read the hold: only one closer can see it open."""
    account = queries.lock_balance(conn, user_id)
    hold = queries.get_hold(conn, hold_id)
    assert account is not None, "an account with holds is never deleted"
    assert hold is not None, "holds are never deleted"
    if hold.status is not HoldStatus.ACTIVE:
        raise HoldNotActive(hold_id, hold.status.value)
    if capturing and hold.expires_at is not None and hold.expires_at <= clock.now():
        raise HoldNotActive(hold_id, "expired")
    return account, hold


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
