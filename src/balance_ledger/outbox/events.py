"""The event outbox: what happened, written in the same transaction as the happening.

Every money movement, hold transition and account status change appends a row to
``balance_events`` inside the transaction that makes it. So an event exists if and
only if what it announces committed: a refused or rolled-back charge leaves none, and
nothing that committed can be missing one. Readers (``BalanceService.events``, the
CLI's ``balance events tail``) page through them by id.

Event payloads are plain JSON: integer minor units with the account's currency, ISO
8601 instants. This module builds the rows; it runs no SQL itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

from .. import policy
from ..models import (
    AccountStatus,
    Balance,
    EventType,
    Hold,
    HoldStatus,
    StatusChange,
    Transaction,
    TransactionType,
)


class Finding(Protocol):
    """What the reconciler found out of step with the ledger (reconcile.Discrepancy is
    one): named here by its shape, so the outbox does not depend on the reconciler."""

    @property
    def user_id(self) -> int: ...

    @property
    def difference(self) -> int: ...

    def changed_columns(self) -> list[tuple[str, object, object]]: ...


MOVED = {
    TransactionType.CHARGE: EventType.CHARGED,
    TransactionType.RECHARGE: EventType.RECHARGED,
    TransactionType.REFUND: EventType.REFUNDED,
    TransactionType.ADJUSTMENT: EventType.ADJUSTED,
}
HOLD_CLOSED = {
    HoldStatus.CAPTURED: EventType.HOLD_CAPTURED,
    HoldStatus.VOIDED: EventType.HOLD_VOIDED,
    HoldStatus.EXPIRED: EventType.HOLD_EXPIRED,
}


def movement(row: Transaction, currency: str) -> dict[str, Any]:
    """The event of a ledger row just written."""
    payload = {
        "transaction_id": row.id,
        "user_id": row.user_id,
        "currency": currency,
        "amount": row.amount,
        "balance_before": row.balance_before,
        "balance_after": row.balance_after,
        "service_type": row.service_type,
        "description": row.description,
        "reference_model": row.reference_model,
        "reference_id": row.reference_id,
        "idempotency_key": row.idempotency_key,
        "related_transaction_id": row.related_transaction_id,
        "actor": row.actor,
    }
    return _row(MOVED[row.transaction_type], row.user_id, payload, row.created_at)


def status_change(change: StatusChange, at: datetime) -> dict[str, Any]:
    """The event of an account suspended or reactivated by a movement."""
    suspended = change.new_status is AccountStatus.SUSPENDED
    kind = EventType.ACCOUNT_SUSPENDED if suspended else EventType.ACCOUNT_REACTIVATED
    payload = {
        "user_id": change.user_id,
        "old_status": change.old_status.value,
        "new_status": change.new_status.value,
        "balance": change.balance,
        "transaction_id": change.transaction_id,
    }
    return _row(kind, change.user_id, payload, at)


def alerts(
    before: Balance,
    after: Balance,
    at: datetime,
    *,
    transaction_id: int | None = None,
    hold_id: int | None = None,
) -> list[dict[str, Any]]:
    """The balance.low / balance.depleted events a change fired (policy.py), naming the
    ledger row or hold that caused it (neither: a policy change)."""
    payload = {
        "user_id": after.user_id,
        "currency": after.currency,
        "available": after.available,
        "balance": after.balance,
        "held": after.held,
        "credit_limit": after.credit_limit,
        "low_balance_threshold": after.policy.low_balance_threshold,
        "transaction_id": transaction_id,
        "hold_id": hold_id,
    }
    return [_row(kind, after.user_id, payload, at) for kind in policy.alerts_fired(before, after)]


def account_changes(
    before: Balance, after: Balance, change: StatusChange | None, at: datetime, **cause: int | None
) -> list[dict[str, Any]]:
    """The events of an account settled anew: its status change, then the alerts fired."""
    rows = [] if change is None else [status_change(change, at)]
    return rows + alerts(before, after, at, **cause)


def sync_discrepancy(run_id: int, found: Finding, at: datetime) -> dict[str, Any]:
    """A verify or rebuild run found an account's cache out of step with its ledger."""
    return _row(EventType.SYNC_DISCREPANCY_FOUND, found.user_id, _sync(run_id, found), at)


def sync_fixed(run_id: int, found: Finding, at: datetime) -> dict[str, Any]:
    """The run rewrote those cache columns, in this event's transaction."""
    return _row(EventType.SYNC_FIXED, found.user_id, _sync(run_id, found), at)


def _sync(run_id: int, found: Finding) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "user_id": found.user_id,
        "difference": found.difference,
        "changes": [
            {"column": column, "stored": old, "actual": new}
            for column, old, new in found.changed_columns()
        ],
    }


def hold(kind: EventType, held: Hold, at: datetime) -> dict[str, Any]:
    """The event of a hold authorized, captured, voided or expired."""
    payload = {
        "hold_id": held.id,
        "user_id": held.user_id,
        "amount": held.amount,
        "service_type": held.service_type,
        "status": held.status.value,
        "expires_at": _instant(held.expires_at),
        "captured_amount": held.captured_amount,
        "capture_transaction_id": held.capture_transaction_id,
    }
    return _row(kind, held.user_id, payload, at)


def _row(
    kind: EventType, user_id: int | None, payload: dict[str, Any], at: datetime
) -> dict[str, Any]:
    body = {"type": kind.value, "occurred_at": _instant(at), **payload}
    return {
        "event_type": kind.value,
        "user_id": user_id,
        "payload": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "created_at": at,
    }


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
