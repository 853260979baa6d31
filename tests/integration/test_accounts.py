"""open_account, get_balance, get_transactions."""

from __future__ import annotations

import pytest

from balance_ledger import AccountExists, AccountNotFound, AccountStatus, BalanceService


def test_open_account_starts_empty_and_active(svc: BalanceService):
    opened = svc.open_account(7, currency="usd", credit_limit=500)

    assert (opened.user_id, opened.currency, opened.credit_limit) == (7, "USD", 500)
    assert (opened.balance, opened.total_recharged, opened.total_spent) == (0, 0, 0)
    assert opened.status is AccountStatus.ACTIVE
    assert opened.available == 500
    assert svc.get_balance(7) == opened


def test_open_account_defaults_to_vnd_without_credit(svc: BalanceService):
    opened = svc.open_account(8)
    assert (opened.currency, opened.credit_limit) == ("VND", 0)


def test_opening_an_account_again_with_same_settings_returns_it(svc: BalanceService):
    first = svc.open_account(9, currency="EUR")
    svc.recharge(9, 10)
    assert svc.open_account(9, currency="EUR").balance == 10
    assert svc.get_balance(9).created_at == first.created_at


def test_opening_an_account_again_with_other_settings_raises(svc: BalanceService):
    svc.open_account(9, currency="EUR")
    with pytest.raises(AccountExists, match="already exists with currency EUR"):
        svc.open_account(9, currency="USD")


def test_get_balance_of_unknown_account_raises(svc: BalanceService):
    with pytest.raises(AccountNotFound):
        svc.get_balance(12345)


def test_get_transactions_of_unknown_account_raises(svc: BalanceService):
    with pytest.raises(AccountNotFound):
        svc.get_transactions(12345)


def test_transactions_come_newest_first_in_keyset_pages(svc: BalanceService, account_factory):
    account = account_factory()
    written = [svc.recharge(account.user_id, n) for n in range(1, 8)]

    pages, before_id = [], None
    while page := svc.get_transactions(account.user_id, limit=3, before_id=before_id):
        pages.append(page)
        before_id = page[-1].id

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [tx for page in pages for tx in page] == written[::-1]


def test_transactions_are_per_account(svc: BalanceService, account_factory):
    alice, bob = account_factory(balance=5), account_factory(balance=6)
    assert [tx.amount for tx in svc.get_transactions(alice.user_id)] == [5]
    assert [tx.amount for tx in svc.get_transactions(bob.user_id)] == [6]


def test_ledger_totals_recompute_the_cache_from_the_ledger(svc, account_factory):
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 300, "vps")
    totals = svc.ledger_totals(account.user_id)
    assert (totals.balance, totals.total_recharged, totals.total_spent, totals.row_count) == (
        700,
        1_000,
        300,
        2,
    )
