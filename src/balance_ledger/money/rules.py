"""The rules of a money movement as pure functions: no SQL, no clock, no I/O.

``decide`` holds every rule of a movement (currency, idempotent replay, suspension,
funds, the new figures); ``check_funds`` is the one funds check, of charges and of holds;
``moved`` is an account's figures after a movement, settled by its policy (policy.py).
The caller (post.py, holds.py) holds the account's lock and writes what they decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import idempotency, policy
from .. import validation as valid
from ..errors import (
    AccountNotFound,
    AccountSuspended,
    BalanceError,
    CurrencyMismatch,
    IdempotencyConflict,
    InsufficientBalance,
)
from ..models import EFFECTS, AccountStatus, Balance, Effect, Refusal, Transaction, TransactionType
from .requests import Movement


@dataclass(frozen=True, slots=True)
class Refused:
    """What a unit of work returns instead of raising a refusal it remembered under the
    request's key (post.remembered): the facade raises ``error`` after the COMMIT that
    keeps it (raising inside would roll the remembering back)."""

    error: BalanceError


@dataclass(frozen=True, slots=True)
class Decision:
    """What a movement does to an account: replay an earlier row, or append one."""

    replay: Transaction | None = None
    after: Balance | None = None
    row: dict[str, Any] | None = None  # the ledger row's columns but id


def decide(
    account: Balance | None,
    movement: Movement,
    existing: Transaction | Refusal | None,
    now: datetime,
) -> Decision:
    """Every rule of a movement, in one pure function: the caller holds the lock.

    ``existing`` is what an earlier attempt with the movement's idempotency key left, if
    any: its row, or its refusal (idempotency.py), which is the answer again.
    """
    if account is None:
        raise AccountNotFound(movement.user_id)
    if isinstance(existing, Refusal):
        raise idempotency.replay(existing, movement.request())
    # Currency first: a request in the wrong currency is wrong, retried or not.
    if movement.currency is not None and movement.currency != account.currency:
        raise CurrencyMismatch(account.user_id, account.currency, movement.currency)
    if existing is not None:
        differences = movement.differences(existing)
        if differences:
            key = movement.idempotency_key or ""
            raise IdempotencyConflict(movement.user_id, key, "; ".join(differences))
        return Decision(replay=existing)
    assert movement.amount is not None, "a refund's amount is settled before it is decided"
    if movement.transaction_type is TransactionType.CHARGE and not movement.allow_overdraft:
        check_funds(account, movement.amount)
    after = moved(account, movement, now)  # every check passes before anything is written
    row = {
        "user_id": movement.user_id,
        "transaction_type": movement.transaction_type.value,
        "amount": movement.amount,
        "balance_before": account.balance,
        "balance_after": after.balance,
        "service_type": movement.service_type,
        "description": movement.description,
        "reference_model": movement.reference_model,
        "reference_id": movement.reference_id,
        "idempotency_key": movement.idempotency_key,
        "created_at": now,
        "related_transaction_id": movement.related_transaction_id,
        "actor": movement.actor,
    }
    return Decision(after=after, row=row)


def check_funds(account: Balance, amount: int) -> None:
    """May ``amount`` be charged or held? Not on a suspended account, and not more than
    ``available`` (balance + credit limit - held: held money is not available)."""
    if account.status is AccountStatus.SUSPENDED:
        raise AccountSuspended(account.user_id, account.balance, account.credit_limit)
    if amount > account.available:
        raise InsufficientBalance(account.user_id, amount, account.available)


def moved(account: Balance, movement: Movement, now: datetime) -> Balance:
    """The account after the movement, settled by its policy (policy.py); InvalidAmount
    if a figure would overflow BIGINT."""
    no_totals = Effect(balance=movement.direction, total_recharged=0, total_spent=0)
    effect = EFFECTS.get(movement.transaction_type, no_totals)  # ADJUSTMENT: its own sign
    amount = movement.amount
    assert amount is not None, "a refund's amount is settled before it moves money"
    balance = account.balance + effect.balance * amount
    recharged = account.total_recharged + effect.total_recharged * amount
    spent = account.total_spent + effect.total_spent * amount
    return policy.settle(
        account,
        balance=valid.in_bigint_range(balance, "balance", amount=amount),
        total_recharged=valid.in_bigint_range(recharged, "total_recharged", amount=amount),
        total_spent=valid.in_bigint_range(spent, "total_spent", amount=amount),
        held=account.held,
        now=now,
    )
