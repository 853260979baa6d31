"""The account policy as pure functions (policy.py): status, grace, hysteresis, alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from balance_ledger import AccountPolicy, AccountStatus, Balance, EventType
from balance_ledger import policy as rules

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEFAULT = AccountPolicy()


def account(
    balance: int = 0,
    *,
    credit_limit: int = 0,
    held: int = 0,
    status: AccountStatus = AccountStatus.ACTIVE,
    policy: AccountPolicy = DEFAULT,
    suspend_at: datetime | None = None,
    low: bool = False,
    depleted: bool = False,
) -> Balance:
    return Balance(
        user_id=1,
        currency="USD",
        balance=balance,
        total_recharged=0,
        total_spent=0,
        credit_limit=credit_limit,
        status=status,
        created_at=NOW,
        updated_at=NOW,
        held=held,
        policy=policy,
        low_balance_alerted=low,
        depleted_alerted=depleted,
        suspend_at=suspend_at,
    )


def moved(before: Balance, balance: int, *, held: int | None = None, now: datetime = NOW):
    return rules.settle(
        before,
        balance=balance,
        total_recharged=0,
        total_spent=0,
        held=before.held if held is None else held,
        now=now,
    )


@pytest.mark.parametrize(
    ("balance", "credit_limit", "status"),
    [
        (0, 0, AccountStatus.ACTIVE),
        (-1, 0, AccountStatus.SUSPENDED),
        (-50, 50, AccountStatus.ACTIVE),
        (-51, 50, AccountStatus.SUSPENDED),
        (10, 0, AccountStatus.ACTIVE),
    ],
)
def test_the_default_policy_suspends_below_the_credit_limit(balance, credit_limit, status):
    assert moved(account(credit_limit=credit_limit), balance).status is status


@pytest.mark.parametrize(("balance", "status"), [(-100, "active"), (-101, "suspended")])
def test_the_default_policy_reactivates_at_the_credit_limit(balance, status):
    suspended = account(-500, credit_limit=100, status=AccountStatus.SUSPENDED)
    assert moved(suspended, balance).status == status


def test_a_grace_amount_lowers_the_suspension_line():
    grace = AccountPolicy(grace_amount=30)
    assert moved(account(credit_limit=100, policy=grace), -130).status is AccountStatus.ACTIVE
    assert moved(account(credit_limit=100, policy=grace), -131).status is AccountStatus.SUSPENDED


def test_a_grace_period_delays_suspension_and_records_when_it_ends():
    waiting = moved(account(policy=AccountPolicy(grace_period=timedelta(hours=1))), -1)
    assert waiting.status is AccountStatus.ACTIVE
    assert waiting.suspend_at == NOW + timedelta(hours=1)


def test_a_grace_period_keeps_its_deadline_across_later_writes():
    waiting = moved(account(policy=AccountPolicy(grace_period=timedelta(hours=1))), -1)
    later = moved(waiting, -5, now=NOW + timedelta(minutes=30))
    assert later.suspend_at == NOW + timedelta(hours=1)


def test_an_ended_grace_period_suspends_at_the_next_settle():
    waiting = moved(account(policy=AccountPolicy(grace_period=timedelta(hours=1))), -1)
    ended = rules.resettled(waiting, NOW + timedelta(hours=1))
    assert ended.status is AccountStatus.SUSPENDED
    assert ended.suspend_at is None


def test_recovering_above_the_line_cancels_the_grace_period():
    waiting = moved(account(policy=AccountPolicy(grace_period=timedelta(hours=1))), -1)
    recovered = moved(waiting, 0)
    assert (recovered.status, recovered.suspend_at) == (AccountStatus.ACTIVE, None)


@pytest.mark.parametrize(
    ("balance", "status"),
    [(-1, AccountStatus.SUSPENDED), (499, AccountStatus.SUSPENDED), (500, AccountStatus.ACTIVE)],
)
def test_a_suspended_account_reactivates_only_at_the_reactivation_threshold(balance, status):
    suspended = account(
        -100, status=AccountStatus.SUSPENDED, policy=AccountPolicy(reactivation_threshold=500)
    )
    assert moved(suspended, balance).status is status


def test_between_the_lines_an_active_account_stays_active():
    active = account(100, policy=AccountPolicy(reactivation_threshold=500))
    assert moved(active, 0).status is AccountStatus.ACTIVE


def test_balance_low_fires_on_crossing_below_the_threshold_only():
    watched = account(1_000, policy=AccountPolicy(low_balance_threshold=500))
    crossed = moved(watched, 499)
    deeper = moved(crossed, 100)
    assert rules.alerts_fired(watched, crossed) == [EventType.BALANCE_LOW]
    assert rules.alerts_fired(crossed, deeper) == []


def test_balance_low_rearms_at_the_threshold_and_fires_again():
    below = account(100, policy=AccountPolicy(low_balance_threshold=500), low=True)
    back = moved(below, 500)
    again = moved(back, 499)
    assert not back.low_balance_alerted
    assert rules.alerts_fired(back, again) == [EventType.BALANCE_LOW]


def test_held_money_counts_against_the_threshold():
    watched = account(1_000, policy=AccountPolicy(low_balance_threshold=500))
    reserved = moved(watched, 1_000, held=600)
    assert rules.alerts_fired(watched, reserved) == [EventType.BALANCE_LOW]


def test_balance_depleted_fires_when_available_reaches_zero():
    funded = account(100, credit_limit=50)
    drained = moved(funded, -50)
    assert rules.alerts_fired(funded, drained) == [EventType.BALANCE_DEPLETED]


def test_falling_past_both_fires_low_then_depleted():
    watched = account(1_000, policy=AccountPolicy(low_balance_threshold=500))
    assert rules.alerts_fired(watched, moved(watched, 0)) == [
        EventType.BALANCE_LOW,
        EventType.BALANCE_DEPLETED,
    ]


def test_no_threshold_means_no_low_alert():
    assert rules.alerts_fired(account(1_000), moved(account(1_000), 1)) == []


@pytest.mark.parametrize(
    ("stored", "balance", "suspend_at", "expected"),
    [
        ("active", 600, None, "active"),
        ("suspended", 600, None, "active"),  # at the reactivation threshold
        ("suspended", 50, None, "suspended"),  # between the lines: stays
        ("active", 50, None, "active"),  # between the lines: stays
        ("active", -101, None, "suspended"),  # below the line, no grace running
        ("active", -101, NOW, "active"),  # below the line, grace running
        (None, 50, None, "active"),  # a missing row
    ],
)
def test_the_verifier_expects_the_status_the_rule_allows(stored, balance, suspend_at, expected):
    policy = AccountPolicy(reactivation_threshold=600, grace_period=timedelta(hours=1))
    found = rules.expected_status(
        stored, balance, credit_limit=100, policy=policy, suspend_at=suspend_at
    )
    assert found == expected
