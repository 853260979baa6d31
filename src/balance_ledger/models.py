"""The values balance-ledger hands back: immutable snapshots of database rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class Serialisable:
    """A dataclass report that turns into plain dicts and JSON (for logs, CLI, HTTP)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class TransactionType(StrEnum):
    RECHARGE = "recharge"
    CHARGE = "charge"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class Effect:
    """How one unit of a movement's amount moves the balance and the two totals."""

    balance: int
    total_recharged: int
    total_spent: int


# The one definition of each movement's sign; the verifier's SQL is generated from it
# (db/queries.py). An ADJUSTMENT moves only the balance, in the direction its
# balance_before → balance_after says.
EFFECTS: dict[TransactionType, Effect] = {
    TransactionType.RECHARGE: Effect(balance=+1, total_recharged=+1, total_spent=0),
    TransactionType.CHARGE: Effect(balance=-1, total_recharged=0, total_spent=+1),
    TransactionType.REFUND: Effect(balance=+1, total_recharged=0, total_spent=-1),
}


class HoldStatus(StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """An account's alert threshold and suspension rule (columns of ``user_balances``).

    The defaults are the seed's behaviour: no low-balance alert; suspended as soon as
    the balance is below ``-credit_limit``, active again at or above it. policy.py
    applies it.
    """

    # balance.low fires once when ``available`` falls below this; None: never.
    low_balance_threshold: int | None = None
    # How far below ``-credit_limit`` the balance may go before suspension.
    grace_amount: int = 0
    # How long the balance may stay below that line before suspension; None: no wait.
    grace_period: timedelta | None = None
    # The balance at or above which a suspended account is active again; None: the
    # suspension line itself (-(credit_limit + grace_amount)).
    reactivation_threshold: int | None = None

    def columns(self) -> dict[str, int | None]:
        """The policy as stored in ``user_balances`` and shown over HTTP (whole seconds)."""
        period = self.grace_period
        return {
            "low_balance_threshold": self.low_balance_threshold,
            "grace_amount": self.grace_amount,
            "grace_period_seconds": None if period is None else int(period.total_seconds()),
            "reactivation_threshold": self.reactivation_threshold,
        }

    @classmethod
    def from_columns(cls, values: Mapping[Any, Any]) -> AccountPolicy:
        """The policy of a row (or a request body) that has the ``columns()`` names."""
        seconds = values["grace_period_seconds"]
        return cls(
            low_balance_threshold=values["low_balance_threshold"],
            grace_amount=values["grace_amount"],
            grace_period=None if seconds is None else timedelta(seconds=seconds),
            reactivation_threshold=values["reactivation_threshold"],
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """One account's cached balance row (``user_balances``)."""

    user_id: int
    currency: str
    balance: int
    total_recharged: int
    total_spent: int
    credit_limit: int
    status: AccountStatus
    created_at: datetime
    updated_at: datetime
    held: int = 0  # reserved by active holds
    policy: AccountPolicy = AccountPolicy()
    # The monitors' memory (policy.py): an alert fired and not re-armed yet, and the
    # instant a running grace period ends in suspension.
    low_balance_alerted: bool = False
    depleted_alerted: bool = False
    suspend_at: datetime | None = None

    @property
    def available(self) -> int:
        """What a charge or a new hold may still take: balance + credit limit - held."""
        return self.balance + self.credit_limit - self.held


@dataclass(frozen=True, slots=True)
class Transaction:
    """One ledger row (``user_balance_transactions``); never changes once written."""

    id: int
    user_id: int
    transaction_type: TransactionType
    amount: int
    balance_before: int
    balance_after: int
    service_type: str | None
    description: str | None
    reference_model: str | None
    reference_id: str | None
    idempotency_key: str | None
    created_at: datetime
    related_transaction_id: int | None = None  # the charge a refund gives back
    actor: str | None = None  # who made an adjustment
    row_hash: str | None = None  # the tamper-evident chain's seal (chain/rules.py)
    # Not a column: True when this call wrote nothing and returned the row an earlier
    # call with the same idempotency key wrote (HTTP answers such a retry 200, not 201).
    replayed: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Hold:
    """Money reserved for usage being metered; captured or voided exactly once."""

    id: int
    user_id: int
    amount: int
    service_type: str
    description: str | None
    status: HoldStatus
    expires_at: datetime | None
    idempotency_key: str | None
    captured_amount: int | None
    capture_transaction_id: int | None
    created_at: datetime
    closed_at: datetime | None
    # Not a column: True when authorize returned the hold its idempotency key made before.
    replayed: bool = field(default=False, compare=False)


class KeyScope(StrEnum):
    """The namespace of an idempotency key: ledger rows (movements, captures) or holds."""

    LEDGER = "ledger"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request remembered under its idempotency key (``balance_refusals``):
    every later attempt with the key is answered with the same error (idempotency.py)."""

    id: int
    user_id: int
    key_scope: KeyScope
    idempotency_key: str
    request: dict[str, Any]  # what identifies the request (its fingerprint)
    code: str  # the refusal's error class (errors.py)
    context: dict[str, Any]  # the error's arguments
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """An account's figures recomputed from its ledger rows alone (the source of truth)."""

    user_id: int
    balance: int
    total_recharged: int
    total_spent: int
    row_count: int


@dataclass(frozen=True, slots=True)
class Statement:
    """An account's movements in [start, end), between the balances that frame them."""

    user_id: int
    currency: str
    start: datetime
    end: datetime
    opening_balance: int  # from the ledger, just before ``start``
    closing_balance: int  # opening + every movement in the period
    transactions: list[Transaction]
    totals: dict[str, int]  # sum of amounts per transaction type in the period


class Scope(StrEnum):
    """What an API key may do; ``admin`` implies every other scope."""

    READ = "read"
    CHARGE = "charge"
    RECHARGE = "recharge"
    ADMIN = "admin"


def scope_names(scopes: Iterable[Scope]) -> list[str]:
    """``scopes`` in the order Scope lists them: read, charge, recharge, admin."""
    granted = set(scopes)
    return [scope.value for scope in Scope if scope in granted]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record (``balance_api_keys``): never the key itself, nor its hash.

    ``prefix`` is the first characters of the key after ``bl_``, so an operator can
    tell keys apart in a list; the rest of the key is shown once, when it is created.
    """

    id: int
    name: str
    scopes: frozenset[Scope]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None  # None while the key is active

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        """True when the key holds ``scope`` or ``admin`` (which implies every scope)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes


@dataclass(frozen=True, slots=True)
class StatusChange:
    """Passed to ``on_suspend`` / ``on_reactivate`` callbacks after the commit."""

    user_id: int
    old_status: AccountStatus
    new_status: AccountStatus
    balance: int
    transaction_id: int | None  # the row that crossed; None: a grace period or policy


class EventType(StrEnum):
    """What an outbox event announces (``balance_events.event_type``)."""

    CHARGED = "balance.charged"
    RECHARGED = "balance.recharged"
    REFUNDED = "balance.refunded"
    ADJUSTED = "balance.adjusted"
    HOLD_AUTHORIZED = "hold.authorized"
    HOLD_CAPTURED = "hold.captured"
    HOLD_VOIDED = "hold.voided"
    HOLD_EXPIRED = "hold.expired"
    ACCOUNT_SUSPENDED = "account.suspended"
    ACCOUNT_REACTIVATED = "account.reactivated"
    BALANCE_LOW = "balance.low"
    BALANCE_DEPLETED = "balance.depleted"
    SYNC_DISCREPANCY_FOUND = "sync.discrepancy_found"
    SYNC_FIXED = "sync.fixed"


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the outbox: written in the transaction of what it announces."""

    id: int
    event_type: EventType
    user_id: int | None
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Webhook:
    """A URL that receives the events it subscribes to, signed with its secret."""

    id: int
    url: str
    event_types: frozenset[str] | None  # None: every event
    created_at: datetime
    removed_at: datetime | None

    def wants(self, event_type: str) -> bool:
        return self.event_types is None or event_type in self.event_types


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERING = "delivering"  # claimed by a dispatcher until its lease ends
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # gave up after max attempts: ``balance events retry`` revives it


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event's delivery to one webhook."""

    id: int
    event_id: int
    webhook_id: int
    user_id: int | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
