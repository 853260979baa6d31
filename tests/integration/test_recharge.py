"""recharge and reactivation: the seed's scenario 6."""

from __future__ import annotations

import logging

import pytest

from balance_ledger import AccountStatus, BalanceService, StatusChange, TransactionType


def test_recharge_updates_balance_and_total_recharged(svc: BalanceService, account_factory):
    account = account_factory()

    tx = svc.recharge(account.user_id, 250_000, description="bank transfer", reference_id="pay-9")

    assert tx.transaction_type is TransactionType.RECHARGE
    assert (tx.balance_before, tx.balance_after, tx.reference_id) == (0, 250_000, "pay-9")
    after = svc.get_balance(account.user_id)
    assert (after.balance, after.total_recharged, after.total_spent) == (250_000, 250_000, 0)


def test_recharge_that_covers_the_debt_reactivates(svc: BalanceService, account_factory):
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 40, "vps", allow_overdraft=True)

    svc.recharge(account.user_id, 29)
    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED
    svc.recharge(account.user_id, 1)
    assert svc.get_balance(account.user_id).status is AccountStatus.ACTIVE


def test_status_callbacks_run_after_commit(svc: BalanceService, account_factory):
    account = account_factory(balance=10)
    seen: list[tuple[StatusChange, AccountStatus]] = []

    def record(change: StatusChange) -> None:
        # Read through another pooled connection: only committed data is visible.
        seen.append((change, svc.get_balance(change.user_id).status))

    svc.on_suspend(record)
    svc.on_reactivate(record)

    charge = svc.charge_service(account.user_id, 15, "vps", allow_overdraft=True)
    svc.charge_service(account.user_id, 1, "vps", allow_overdraft=True)  # already suspended
    recharge = svc.recharge(account.user_id, 100)

    assert seen == [
        (
            StatusChange(
                account.user_id, AccountStatus.ACTIVE, AccountStatus.SUSPENDED, -5, charge.id
            ),
            AccountStatus.SUSPENDED,
        ),
        (
            StatusChange(
                account.user_id, AccountStatus.SUSPENDED, AccountStatus.ACTIVE, 94, recharge.id
            ),
            AccountStatus.ACTIVE,
        ),
    ]


def test_failing_callback_never_undoes_the_charge(svc, account_factory, caplog):
    account = account_factory(balance=10)

    @svc.on_suspend
    def explode(change: StatusChange) -> None:
        raise RuntimeError("pager is down")

    with caplog.at_level(logging.ERROR):
        tx = svc.charge_service(account.user_id, 15, "vps", allow_overdraft=True)

    assert svc.get_transactions(account.user_id)[0] == tx
    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED
    assert "pager is down" in caplog.text


@pytest.mark.parametrize("reference_id", [7, "7"])
def test_reference_id_is_stored_as_text(svc: BalanceService, account_factory, reference_id):
    account = account_factory()
    assert svc.recharge(account.user_id, 1, reference_id=reference_id).reference_id == "7"
