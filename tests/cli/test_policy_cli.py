"""``balance account open --…`` / ``balance account policy`` / ``balance suspend-overdue``."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from balance_ledger import AccountPolicy, AccountStatus, BalanceService, EventType


def test_account_open_takes_a_policy(balance, svc: BalanceService):
    code, out, _ = balance(
        "account", "open", "7", "--currency", "USD", "--low-balance-threshold", "5000",
        "--grace-amount", "100", "--grace-period", "3600", "--reactivation-threshold", "0",
    )  # fmt: skip

    assert code == 0
    assert "Low-balance alert below" in out
    assert "50.00 USD" in out
    assert svc.get_balance(7).policy == AccountPolicy(
        low_balance_threshold=5000,
        grace_amount=100,
        grace_period=timedelta(hours=1),
        reactivation_threshold=0,
    )


def test_account_policy_changes_only_the_options_given(balance, svc: BalanceService):
    svc.open_account(7, policy=AccountPolicy(grace_amount=100))

    code, out, _ = balance("account", "policy", "7", "--low-balance-threshold", "500", "--json")

    assert code == 0
    assert json.loads(out)["policy"] == {
        "low_balance_threshold": 500,
        "grace_amount": 100,
        "grace_period": None,
        "reactivation_threshold": None,
    }


def test_account_policy_reset_starts_from_the_default(balance, svc: BalanceService):
    svc.open_account(7, policy=AccountPolicy(grace_amount=100, low_balance_threshold=9))

    assert balance("account", "policy", "7", "--reset", "--grace-amount", "5")[0] == 0

    assert svc.get_balance(7).policy == AccountPolicy(grace_amount=5)


def test_account_policy_refuses_a_threshold_below_the_suspension_line(balance):
    balance("account", "open", "7")

    code, _, err = balance("account", "policy", "7", "--reactivation-threshold", "-1")

    assert code == 2
    assert "reactivation_threshold" in err


def test_suspend_overdue_suspends_an_account_whose_grace_ended(balance, svc: BalanceService):
    svc.open_account(7, policy=AccountPolicy(grace_period=timedelta(seconds=1)))
    svc.charge_service(7, 100, "vps", allow_overdraft=True)
    time.sleep(1.1)

    code, out, _ = balance("suspend-overdue")

    assert (code, out.strip()) == (0, "suspended 1 accounts")
    assert svc.get_balance(7).status is AccountStatus.SUSPENDED
    assert EventType.ACCOUNT_SUSPENDED in [e.event_type for e in svc.events()]
