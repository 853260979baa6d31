"""What a caller asks: ``Charge``, and ``Movement``, any validated request for one ledger row.

``Charge`` is the one declaration of a charge's fields, ``Recharge`` of a recharge's:
BalanceService.charge takes a Charge, ``charge_service``, ``recharge`` and
ChargeCoalescer.charge build them from their arguments (``ChargeOptions``,
``RechargeOptions``: checked against them by the type checker), a batch item is a Charge,
and the HTTP service derives its request bodies from them (http/bodies.py), so a new
field is declared here and nowhere else but the CLI's options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypedDict

from .. import validation as valid
from ..errors import BalanceError, InvalidAmount, InvalidRequest
from ..models import Transaction, TransactionType


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass(frozen=True, slots=True)
class _Posting:
    """The fields every request to post a movement has."""

    user_id: int = field(metadata=_doc("The account's id."))
    amount: int = field(metadata=_doc("Minor units (cents; VND has none), positive."))
    _: KW_ONLY
    description: str | None = None
    reference_model: str | None = None
    reference_id: str | int | None = None
    idempotency_key: str | None = field(
        default=None, metadata=_doc("Retrying with the same key returns the first answer.")
    )
    currency: str | None = field(default=None, metadata=_doc("Asserts the account's."))

    def _movement(
        self, kind: TransactionType, service_type: str | None, allow_overdraft: object = False
    ) -> Movement:
        return movement(
            kind,
            self.user_id,
            self.amount,
            service_type=service_type,
            description=self.description,
            reference_model=self.reference_model,
            reference_id=self.reference_id,
            idempotency_key=self.idempotency_key,
            currency=self.currency,
            allow_overdraft=allow_overdraft,
        )


@dataclass(frozen=True, slots=True)
class Recharge(_Posting):
    """Credit ``amount`` (minor units) to account ``user_id``."""

    def movement(self) -> Movement:
        """The validated movement; raises InvalidRequest or InvalidAmount."""
        return self._movement(TransactionType.RECHARGE, service_type=None)


@dataclass(frozen=True, slots=True)
class Charge(_Posting):
    """Debit ``amount`` (minor units) from account ``user_id`` for ``service_type``."""

    service_type: str = field(metadata=_doc("What is charged: vps, bandwidth, api…"))
    _: KW_ONLY
    allow_overdraft: bool = field(
        default=False,
        metadata=_doc("Record usage already delivered even past the credit limit."),
    )

    def movement(self) -> Movement:
        """The validated movement; raises InvalidRequest or InvalidAmount."""
        service_type = valid.text("service_type", self.service_type, required=True)
        return self._movement(TransactionType.CHARGE, service_type, self.allow_overdraft)


class RechargeOptions(TypedDict, total=False):
    """``Recharge``'s optional fields, as keyword arguments (``recharge``'s)."""

    description: str | None
    reference_model: str | None
    reference_id: str | int | None
    idempotency_key: str | None
    currency: str | None


class ChargeOptions(RechargeOptions, total=False):
    """``Charge``'s optional fields, as keyword arguments (``charge_service``'s)."""

    allow_overdraft: bool


def charge_item(item: object) -> Movement | BalanceError:
    """One batch item (a Charge, or a mapping of its fields), validated; a malformed one
    becomes its error."""
    try:
        if isinstance(item, Charge):
            return item.movement()
        if not isinstance(item, Mapping):
            return InvalidRequest(f"a batch item is a mapping of charge arguments, not {item!r}")
        try:
            return Charge(**item).movement()
        except TypeError as error:  # unknown or missing argument names
            return InvalidRequest(f"bad batch item {dict(item)!r}: {error}")
    except BalanceError as error:
        return error


# The columns that identify a request: a replay must match them all.
_REQUEST_FIELDS = (
    "transaction_type",
    "amount",
    "service_type",
    "description",
    "reference_model",
    "reference_id",
    "related_transaction_id",
    "actor",
)


@dataclass(frozen=True, slots=True)
class Movement:
    """A validated request to append one ledger row."""

    user_id: int
    transaction_type: TransactionType
    amount: int | None  # None only for a refund of whatever is left of its charge
    service_type: str | None
    description: str | None
    reference_model: str | None
    reference_id: str | None
    idempotency_key: str | None
    currency: str | None
    allow_overdraft: bool = False
    related_transaction_id: int | None = None
    actor: str | None = None
    direction: int = +1  # an adjustment's sign; every other type's is in EFFECTS

    def request(self) -> dict[str, Any]:
        """What identifies the request as asked: a remembered refusal's fingerprint."""
        return {
            **{name: getattr(self, name) for name in _REQUEST_FIELDS},
            "transaction_type": self.transaction_type.value,
            "direction": self.direction,
            "currency": self.currency,
            "allow_overdraft": self.allow_overdraft,
        }

    def differences(self, existing: Transaction) -> list[str]:
        """How ``existing`` (the row written under this request's key) differs from it."""
        names = [f for f in _REQUEST_FIELDS if not (f == "amount" and self.amount is None)]
        found = [
            f"{name} {getattr(existing, name)!r} != {getattr(self, name)!r}"
            for name in names
            if getattr(existing, name) != getattr(self, name)
        ]
        if self.transaction_type is TransactionType.ADJUSTMENT:
            existing_direction = 1 if existing.balance_after > existing.balance_before else -1
            if existing_direction != self.direction:
                found.append("the adjustment's sign differs")
        return found


def movement(
    transaction_type: TransactionType,
    user_id: object,
    amount: object,
    *,
    service_type: str | None,
    description: object,
    reference_model: object,
    reference_id: object,
    idempotency_key: object,
    currency: object,
    allow_overdraft: object = False,
    related_transaction_id: int | None = None,
    actor: str | None = None,
    direction: int = +1,
) -> Movement:
    """A Movement of validated fields; raises InvalidRequest or InvalidAmount."""
    if not isinstance(allow_overdraft, bool):
        raise InvalidRequest("allow_overdraft must be a bool")
    whatever_is_left = amount is None and transaction_type is TransactionType.REFUND
    return Movement(
        user_id=valid.user_id(user_id),
        transaction_type=transaction_type,
        amount=None if whatever_is_left else valid.amount(amount),
        service_type=service_type,
        description=valid.text("description", description),
        reference_model=valid.text("reference_model", reference_model),
        reference_id=valid.reference_id(reference_id),
        idempotency_key=valid.idempotency_key(idempotency_key),
        currency=None if currency is None else valid.currency(currency),
        allow_overdraft=allow_overdraft,
        related_transaction_id=related_transaction_id,
        actor=actor,
        direction=direction,
    )


def refund(charge: Transaction, amount: object, reason: object, key: object) -> Movement:
    """A refund of ``amount`` of ``charge`` (None: whatever is left of it), naming it."""
    return movement(
        TransactionType.REFUND,
        charge.user_id,
        amount,
        service_type=charge.service_type,
        description=reason,
        reference_model=charge.reference_model,
        reference_id=charge.reference_id,
        idempotency_key=key,
        currency=None,
        related_transaction_id=charge.id,
    )


def adjustment(
    user_id: object, delta: object, reason: object, actor: object, key: object
) -> Movement:
    """An administrator's correction of ``delta`` (signed), with who and why."""
    if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0:
        raise InvalidAmount(delta, "an adjustment is a non-zero int; its sign is the direction")
    return movement(
        TransactionType.ADJUSTMENT,
        user_id,
        abs(delta),
        service_type=None,
        description=valid.text("description", reason, required=True),
        reference_model=None,
        reference_id=None,
        idempotency_key=key,
        currency=None,
        actor=valid.text("actor", actor, required=True),
        direction=1 if delta > 0 else -1,
    )
