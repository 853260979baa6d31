"""charge_service: the seed's scenarios 1, 2, 5 and the suspension rules."""

from __future__ import annotations

import pytest

from balance_ledger import (
    AccountNotFound,
    AccountStatus,
    AccountSuspended,
    BalanceService,
    CurrencyMismatch,
    InsufficientBalance,
    TransactionType,
)


def test_charge_writes_ledger_row_and_updates_cache_together(svc: BalanceService, account_factory):
    account = account_factory(balance=100_000)

    tx = svc.charge_service(
        account.user_id,
        30_000,
        "vps",
        description="VPS usage: 60 min",
        reference_model="VpsUsage",
        reference_id=42,
    )

    assert tx.transaction_type is TransactionType.CHARGE
    assert (tx.amount, tx.service_type, tx.reference_model, tx.reference_id) == (
        30_000,
        "vps",
        "VpsUsage",
        "42",
    )
    assert svc.get_transactions(account.user_id)[0] == tx
    after = svc.get_balance(account.user_id)
    assert (after.balance, after.total_spent, after.total_recharged) == (70_000, 30_000, 100_000)


def test_charge_records_balance_before_and_after(svc: BalanceService, account_factory):
    account = account_factory(balance=500)

    first = svc.charge_service(account.user_id, 120, "bandwidth")
    second = svc.charge_service(account.user_id, 80, "bandwidth")

    assert (first.balance_before, first.balance_after) == (500, 380)
    assert (second.balance_before, second.balance_after) == (380, 300)


def test_insufficient_balance_is_refused_and_leaves_nothing(svc, account_factory, dump):
    account = account_factory(balance=100)
    before = dump()

    with pytest.raises(InsufficientBalance) as refused:
        svc.charge_service(account.user_id, 101, "vps")

    assert (refused.value.user_id, refused.value.amount, refused.value.available) == (
        account.user_id,
        101,
        100,
    )
    assert "only 100 is available" in str(refused.value)
    assert dump() == before


def test_charge_may_use_the_credit_limit_but_not_beyond(svc: BalanceService, account_factory):
    account = account_factory(balance=100, credit_limit=50)

    tx = svc.charge_service(account.user_id, 150, "vps")

    assert tx.balance_after == -50
    assert svc.get_balance(account.user_id).status is AccountStatus.ACTIVE
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 1, "vps")


def test_charging_an_unknown_account_raises_account_not_found(svc: BalanceService):
    with pytest.raises(AccountNotFound, match="account 404 does not exist"):
        svc.charge_service(404, 1, "vps")


def test_overdraft_charge_records_delivered_usage_and_suspends(svc, account_factory):
    account = account_factory(balance=100)

    tx = svc.charge_service(account.user_id, 130, "vps", allow_overdraft=True)

    assert tx.balance_after == -30
    after = svc.get_balance(account.user_id)
    assert (after.balance, after.status) == (-30, AccountStatus.SUSPENDED)


def test_suspended_account_refuses_plain_charges(svc, account_factory, dump):
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 20, "vps", allow_overdraft=True)
    before = dump()

    with pytest.raises(AccountSuspended, match="suspended"):
        svc.charge_service(account.user_id, 1, "vps")

    assert dump() == before


def test_suspended_account_still_records_overdraft_usage(svc, account_factory):
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 20, "vps", allow_overdraft=True)

    tx = svc.charge_service(account.user_id, 5, "vps", allow_overdraft=True)

    assert (tx.balance_before, tx.balance_after) == (-10, -15)


def test_charge_in_another_currency_raises_currency_mismatch(svc, account_factory, dump):
    account = account_factory(balance=1_000, currency="USD")
    before = dump()

    with pytest.raises(CurrencyMismatch, match="holds USD, but the request is in EUR"):
        svc.charge_service(account.user_id, 10, "vps", currency="EUR")

    assert dump() == before
    assert svc.charge_service(account.user_id, 10, "vps", currency="usd").balance_after == 990


def test_charge_requires_a_service_type(svc: BalanceService, account_factory):
    account = account_factory(balance=10)
    with pytest.raises(Exception, match="service_type must not be empty"):
        svc.charge_service(account.user_id, 1, " ")
