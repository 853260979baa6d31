"""The rules of one answer per idempotency key (idempotency.py), without a database."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from balance_ledger import errors
from balance_ledger.errors import (
    AccountNotFound,
    BalanceError,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    StorageError,
    refusal_class,
)
from balance_ledger.idempotency import remembered, replay
from balance_ledger.models import KeyScope

NOW = datetime(2026, 12, 4, tzinfo=UTC)
REQUEST = {"transaction_type": "charge", "amount": 80, "currency": None}

REFUSALS = [
    errors.InsufficientBalance(7, 80, 50),
    errors.AccountSuspended(7, -5, 0),
    errors.CurrencyMismatch(7, "VND", "USD"),
    errors.RefundExceedsCharge(12, 50, 40),
    errors.HoldNotActive(3, "voided"),
]


def keep(error: BalanceError, key: str | None = "k"):
    return remembered(error, user_id=7, scope=KeyScope.LEDGER, key=key, request=REQUEST, now=NOW)


def test_every_refusal_class_is_listed_here():
    def subclasses(kind: type[BalanceError]) -> set[type[BalanceError]]:
        return {s for d in kind.__subclasses__() for s in (d, *subclasses(d))}

    assert {k for k in subclasses(BalanceError) if k.refusal} == {type(e) for e in REFUSALS}


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: type(e).__name__)
def test_a_refusal_survives_json_and_replays_as_itself(error: BalanceError):
    refusal = keep(error)
    assert refusal is not None
    stored = replace(
        refusal,
        context=json.loads(json.dumps(refusal.context)),
        request=json.loads(json.dumps(refusal.request)),
    )
    again = replay(stored, REQUEST)
    assert type(again) is type(error)
    assert (str(again), again.context(), again.replayed) == (str(error), error.context(), True)
    assert error.replayed is False
    assert refusal_class(error.code) is type(error)


@pytest.mark.parametrize(
    "error",
    [AccountNotFound(7), InvalidAmount(0, "not positive"), StorageError("down")],
    ids=lambda e: type(e).__name__,
)
def test_what_is_not_a_refusal_is_not_remembered(error: BalanceError):
    assert keep(error) is None


def test_nothing_is_remembered_without_a_key_or_for_a_replay():
    assert keep(InsufficientBalance(7, 80, 50), key=None) is None
    replayed = InsufficientBalance(7, 80, 50)
    replayed.replayed = True
    assert keep(replayed) is None


def test_another_request_under_the_key_is_a_conflict_naming_the_differences():
    refusal = keep(InsufficientBalance(7, 80, 50))
    assert refusal is not None
    conflict = replay(refusal, {**REQUEST, "amount": 60, "currency": "VND"})
    assert isinstance(conflict, IdempotencyConflict)
    assert (conflict.user_id, conflict.idempotency_key) == (7, "k")
    assert "amount 80 != 60" in str(conflict)
    assert "currency None != 'VND'" in str(conflict)
    assert "insufficient-balance" in str(conflict)


def test_an_unknown_code_is_a_lookup_error():
    with pytest.raises(LookupError):
        refusal_class("account-not-found")
