"""The rules of one movement (money.rules.decide), without a database: every outcome of a
charge, a recharge, a replay and a remembered refusal, as properties where arithmetic; and
the one funds check charges and holds share (money.rules.check_funds)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balance_ledger import AccountStatus, Balance, TransactionType
from balance_ledger.errors import (
    AccountNotFound,
    AccountSuspended,
    CurrencyMismatch,
    IdempotencyConflict,
    InsufficientBalance,
)
from balance_ledger.idempotency import remembered
from balance_ledger.models import KeyScope, Transaction
from balance_ledger.money.requests import Charge
from balance_ledger.money.rules import check_funds, decide

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def account(balance: int, *, credit_limit: int = 0, held: int = 0, suspended: bool = False):
    return Balance(
        user_id=1,
        currency="VND",
        balance=balance,
        total_recharged=max(balance, 0),
        total_spent=0,
        credit_limit=credit_limit,
        status=AccountStatus.SUSPENDED if suspended else AccountStatus.ACTIVE,
        created_at=NOW,
        updated_at=NOW,
        held=held,
    )


def charge(amount: int, *, key: str | None = None, overdraft: bool = False, currency=None):
    request = Charge(
        1, amount, "vps", idempotency_key=key, allow_overdraft=overdraft, currency=currency
    )
    return request.movement()


@given(
    balance=st.integers(-1_000, 1_000),
    credit_limit=st.integers(0, 500),
    held=st.integers(0, 300),
    amount=st.integers(1, 2_000),
)
def test_a_charge_passes_exactly_when_available_covers_it(balance, credit_limit, held, amount):
    before = account(balance, credit_limit=credit_limit, held=held)
    if before.balance < -before.credit_limit:
        return  # such an account is suspended; its own test below
    if amount > before.available:
        with pytest.raises(InsufficientBalance) as refused:
            decide(before, charge(amount), None, NOW)
        assert (refused.value.amount, refused.value.available) == (amount, before.available)
        return
    decision = decide(before, charge(amount), None, NOW)
    assert decision.after is not None
    assert decision.row is not None
    assert decision.after.balance == balance - amount
    assert decision.after.total_spent == amount
    assert (decision.row["balance_before"], decision.row["balance_after"]) == (
        balance,
        balance - amount,
    )


@given(amount=st.integers(1, 10_000))
def test_an_overdraft_charge_always_passes_and_suspends_past_the_limit(amount):
    decision = decide(account(100), charge(amount, overdraft=True), None, NOW)
    assert decision.after is not None
    expected = AccountStatus.SUSPENDED if 100 - amount < 0 else AccountStatus.ACTIVE
    assert decision.after.status is expected


def test_refusals_in_their_order():
    with pytest.raises(AccountNotFound):
        decide(None, charge(1), None, NOW)
    with pytest.raises(CurrencyMismatch):
        decide(account(100), charge(1, currency="USD"), None, NOW)
    with pytest.raises(AccountSuspended):
        decide(account(-5, suspended=True), charge(1), None, NOW)


def written(amount: int) -> Transaction:
    return Transaction(
        id=9,
        user_id=1,
        transaction_type=TransactionType.CHARGE,
        amount=amount,
        balance_before=100,
        balance_after=100 - amount,
        service_type="vps",
        description=None,
        reference_model=None,
        reference_id=None,
        idempotency_key="k",
        created_at=NOW,
    )


def test_an_earlier_row_is_replayed_whatever_the_account_now_allows():
    decision = decide(account(0), charge(50, key="k"), written(50), NOW)
    assert decision.replay == written(50)
    assert decision.after is None
    with pytest.raises(IdempotencyConflict, match="amount 50 != 60"):
        decide(account(0), charge(60, key="k"), written(50), NOW)


def test_an_earlier_refusal_is_the_answer_even_when_the_money_is_there_now():
    first = InsufficientBalance(1, 50, 10)
    refusal = remembered(
        first,
        user_id=1,
        scope=KeyScope.LEDGER,
        key="k",
        request=charge(50, key="k").request(),
        now=NOW,
    )
    assert refusal is not None
    with pytest.raises(InsufficientBalance) as again:
        decide(account(1_000), charge(50, key="k"), refusal, NOW)
    assert (again.value.replayed, again.value.available) == (True, 10)
    with pytest.raises(IdempotencyConflict):
        decide(account(1_000), charge(50, key="k", overdraft=True), refusal, NOW)


def test_the_funds_check_counts_the_credit_limit_and_the_held_money():
    check_funds(account(100, credit_limit=50, held=30), 120)  # available: exactly 120
    with pytest.raises(InsufficientBalance) as refused:
        check_funds(account(100, credit_limit=50, held=30), 121)
    assert refused.value.available == 120
    with pytest.raises(AccountSuspended):
        check_funds(account(1_000, suspended=True), 1)
