"""The suspension policy: a grace amount, a grace period, a reactivation threshold.

Without one, an account is suspended below ``-credit_limit`` and active again at or
above it (tests/integration/test_charge.py and test_recharge.py cover that rule).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from balance_ledger import (
    AccountExists,
    AccountNotFound,
    AccountPolicy,
    AccountStatus,
    AccountSuspended,
    BalanceService,
    EventType,
    InvalidRequest,
)
from tests.events import events_of

HOUR = timedelta(hours=1)
STATUS_EVENTS = (EventType.ACCOUNT_SUSPENDED, EventType.ACCOUNT_REACTIVATED)


def overdraw(svc: BalanceService, user_id: int, amount: int):
    return svc.charge_service(user_id, amount, "vps", allow_overdraft=True)


def test_a_grace_amount_keeps_an_overdrawn_account_active_within_it(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(grace_amount=50))

    overdraw(svc, account.user_id, 150)

    assert svc.get_balance(account.user_id).status is AccountStatus.ACTIVE
    assert events_of(svc, *STATUS_EVENTS) == []


def test_below_the_grace_amount_the_account_is_suspended(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(grace_amount=50))

    charge = overdraw(svc, account.user_id, 151)

    (suspended,) = events_of(svc, *STATUS_EVENTS)
    assert suspended.payload["transaction_id"] == charge.id
    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED


def test_a_grace_period_delays_suspension_until_it_ends(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(grace_period=HOUR))
    charge = overdraw(svc, account.user_id, 300)

    waiting = svc.get_balance(account.user_id)

    assert waiting.status is AccountStatus.ACTIVE
    assert waiting.suspend_at == charge.created_at + HOUR
    assert svc.suspend_overdue(now=charge.created_at + HOUR - timedelta(seconds=1)) == 0
    assert events_of(svc, *STATUS_EVENTS) == []


def test_the_sweep_suspends_an_account_whose_grace_period_ended(svc, account_factory):
    told = []
    svc.on_suspend(told.append)
    account = account_factory(balance=100, policy=AccountPolicy(grace_period=HOUR))
    charge = overdraw(svc, account.user_id, 300)

    assert svc.suspend_overdue(now=charge.created_at + HOUR) == 1

    (suspended,) = events_of(svc, *STATUS_EVENTS)
    assert (suspended.payload["transaction_id"], suspended.payload["balance"]) == (None, -200)
    after = svc.get_balance(account.user_id)
    assert (after.status, after.suspend_at) == (AccountStatus.SUSPENDED, None)
    assert [change.user_id for change in told] == [account.user_id]


def test_a_recharge_during_the_grace_period_cancels_it(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(grace_period=HOUR))
    overdraw(svc, account.user_id, 300)
    svc.recharge(account.user_id, 200)

    assert svc.get_balance(account.user_id).suspend_at is None
    assert svc.suspend_overdue(now=datetime.now(UTC) + 2 * HOUR) == 0
    assert events_of(svc, *STATUS_EVENTS) == []


def test_a_charge_after_the_grace_period_ended_suspends_without_the_sweep(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(grace_period=timedelta(0)))

    overdraw(svc, account.user_id, 300)

    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED


def test_a_suspended_account_stays_suspended_below_the_reactivation_threshold(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(reactivation_threshold=500))
    overdraw(svc, account.user_id, 300)  # -200: suspended
    svc.recharge(account.user_id, 600)  # 400: not yet

    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED
    with pytest.raises(AccountSuspended):
        svc.charge_service(account.user_id, 10, "vps")


def test_reaching_the_reactivation_threshold_reactivates(svc, account_factory):
    account = account_factory(balance=100, policy=AccountPolicy(reactivation_threshold=500))
    overdraw(svc, account.user_id, 300)
    back = svc.recharge(account.user_id, 700)  # 500

    _suspended, reactivated = events_of(svc, *STATUS_EVENTS)
    assert reactivated.event_type is EventType.ACCOUNT_REACTIVATED
    assert reactivated.payload["transaction_id"] == back.id
    assert svc.get_balance(account.user_id).status is AccountStatus.ACTIVE


def test_the_verifier_accepts_a_status_the_policy_allows(svc, account_factory):
    held_back = account_factory(balance=100, policy=AccountPolicy(reactivation_threshold=500))
    overdraw(svc, held_back.user_id, 300)
    svc.recharge(held_back.user_id, 600)  # suspended at 400: between the lines
    in_grace = account_factory(balance=100, policy=AccountPolicy(grace_period=HOUR))
    overdraw(svc, in_grace.user_id, 300)  # active at -200 while the grace period runs

    report = svc.verify_and_fix_balance(full=True)

    assert report.in_sync
    assert report.checked == 2


def test_the_verifier_suspends_an_active_account_below_the_line_with_no_grace(
    svc, account_factory, corrupt
):
    account = account_factory(balance=100)
    overdraw(svc, account.user_id, 300)
    corrupt(account.user_id, status="active")

    report = svc.verify_and_fix_balance(fix=True, full=True)

    assert report.fixed == 1
    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED


def test_a_new_policy_applies_at_once(svc, account_factory):
    told = []
    svc.on_reactivate(told.append)
    account = account_factory(balance=100)
    overdraw(svc, account.user_id, 150)  # -50: suspended

    updated = svc.set_account_policy(account.user_id, AccountPolicy(grace_amount=100))

    assert updated.status is AccountStatus.ACTIVE
    assert [e.event_type for e in events_of(svc, *STATUS_EVENTS)] == list(STATUS_EVENTS)
    assert [change.transaction_id for change in told] == [None]


@pytest.mark.parametrize(
    "policy",
    [
        AccountPolicy(grace_amount=-1),
        AccountPolicy(low_balance_threshold=0),
        AccountPolicy(reactivation_threshold=-101),  # below the line: would flap
        AccountPolicy(grace_period=timedelta(seconds=-1)),
        AccountPolicy(grace_period=timedelta(milliseconds=1500)),
        AccountPolicy(grace_period=timedelta(days=400)),
        AccountPolicy(grace_amount=True),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_policy_is_refused_and_changes_nothing(svc, account_factory, dump, policy):
    account = account_factory(balance=100, credit_limit=100)
    before = dump()

    with pytest.raises(InvalidRequest):
        svc.set_account_policy(account.user_id, policy)
    with pytest.raises(InvalidRequest):
        svc.open_account(99, policy=policy, credit_limit=100)

    assert dump() == before


def test_a_policy_for_an_unknown_account_is_refused(svc):
    with pytest.raises(AccountNotFound):
        svc.set_account_policy(404, AccountPolicy())


def test_opening_an_account_again_with_another_policy_is_refused(svc):
    svc.open_account(1, policy=AccountPolicy(grace_amount=10))

    with pytest.raises(AccountExists):
        svc.open_account(1, policy=AccountPolicy(grace_amount=20))
    assert svc.open_account(1).policy == AccountPolicy(grace_amount=10)
