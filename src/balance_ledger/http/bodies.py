"""What the HTTP service reads and writes: request bodies and the JSON of core values.

Bodies are strict (no coercion of "5" to 5, no unknown fields): money is an integer
and a typo in a field name is an error, not a silently ignored option. Values the
core validates anyway (positive amounts, text widths) are checked there, once.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..models import AccountPolicy, Balance, Hold, Transaction
from ..validation import MAX_GRACE_PERIOD

MAX_BATCH_ITEMS = 1_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Policy(_Body):
    """An account's alert threshold and suspension rule (docs/events.md)."""

    low_balance_threshold: StrictInt | None = Field(
        default=None, description="balance.low fires once when available falls below this."
    )
    grace_amount: StrictInt = Field(
        default=0, description="How far below -credit_limit the balance may go unsuspended."
    )
    grace_period_seconds: StrictInt | None = Field(
        default=None,
        ge=0,
        le=int(MAX_GRACE_PERIOD.total_seconds()),
        description="How long it may stay below that line before suspension.",
    )
    reactivation_threshold: StrictInt | None = Field(
        default=None, description="A suspended account is active again at this balance."
    )

    def rules(self) -> AccountPolicy:
        return AccountPolicy.from_columns(self.model_dump())


class OpenAccount(_Body):
    user_id: StrictInt
    currency: StrictStr = "VND"
    credit_limit: StrictInt = 0
    policy: Policy | None = Field(default=None, description="Default: the service's.")


class Recharge(_Body):
    amount: StrictInt = Field(description="Minor units (cents; VND has none), positive.")
    description: StrictStr | None = None
    reference_model: StrictStr | None = None
    reference_id: StrictStr | StrictInt | None = None
    currency: StrictStr | None = Field(default=None, description="Asserts the account's.")


class Charge(Recharge):
    service_type: StrictStr = Field(description="What is charged: vps, bandwidth, api…")
    allow_overdraft: StrictBool = False


class BatchCharge(Charge):
    user_id: StrictInt
    idempotency_key: StrictStr | None = None


class ChargeBatch(_Body):
    mode: Literal["independent", "all_or_nothing"] = Field(
        default="independent",
        description="independent: each item succeeds or fails alone; all_or_nothing: the "
        "first refused item refuses the batch and nothing is charged (a refused item with "
        "an idempotency_key keeps its refusal as the key's answer).",
    )
    items: list[BatchCharge] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class Refund(_Body):
    amount: StrictInt | None = Field(default=None, description="Default: all not yet refunded.")
    reason: StrictStr | None = None


class Adjustment(_Body):
    delta: StrictInt = Field(description="Signed minor units: + credits, - debits.")
    reason: StrictStr


class Authorize(_Body):
    amount: StrictInt = Field(description="Minor units to reserve, positive.")
    service_type: StrictStr
    description: StrictStr | None = None
    ttl_seconds: StrictInt | None = Field(default=None, description="Release after this long.")
    expires_at: datetime | None = Field(default=None, description="Or: release at this instant.")


class Capture(_Body):
    amount: StrictInt | None = Field(default=None, description="Default: all of the hold.")


class Reconcile(_Body):
    user_id: StrictInt | None = Field(default=None, description="Default: every account.")
    fix: StrictBool = Field(default=False, description="Rewrite the cache where it disagrees.")
    full: StrictBool = Field(default=False, description="Re-read every row, not only new ones.")


class TransactionPage(BaseModel):
    transactions: list[dict[str, Any]]
    next_before_id: int | None = Field(description="Pass as before_id for the next page.")


def posted(row: Transaction, response: Response) -> dict[str, Any]:
    """201 for a new row; 200 and ``Idempotent-Replayed: true`` for a retry's replay."""
    return replayable(row.replayed, response, transaction(row))


def replayable(replayed: bool, response: Response, body: dict[str, Any]) -> dict[str, Any]:
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return body


def transaction(row: Transaction) -> dict[str, Any]:
    """The ledger row's columns (``replayed`` is said by the status and a header)."""
    return _without_replayed(row)


def hold(reserved: Hold) -> dict[str, Any]:
    return _without_replayed(reserved)


def _without_replayed(value: Transaction | Hold) -> dict[str, Any]:
    columns = dataclasses.asdict(value)
    del columns["replayed"]
    return columns  # FastAPI encodes the enums and the datetimes


def balance(card: Balance) -> dict[str, Any]:
    return {
        "user_id": card.user_id,
        "currency": card.currency,
        "balance": card.balance,
        "total_recharged": card.total_recharged,
        "total_spent": card.total_spent,
        "credit_limit": card.credit_limit,
        "held": card.held,
        "available": card.available,
        "status": card.status.value,
        "policy": card.policy.columns(),
        "suspend_at": None if card.suspend_at is None else card.suspend_at.isoformat(),
        "updated_at": card.updated_at.isoformat(),
    }
