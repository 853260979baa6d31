"""balance.low and balance.depleted: each fires once per crossing, in the movement's
transaction, and re-arms only when ``available`` is back above its line."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from balance_ledger import (
    AccountPolicy,
    AccountStatus,
    BalanceService,
    EventType,
    InsufficientBalance,
)
from tests.events import events_of

LOW = AccountPolicy(low_balance_threshold=500)
ALERTS = (EventType.BALANCE_LOW, EventType.BALANCE_DEPLETED)


def test_balance_low_fires_once_across_a_storm_of_small_charges(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    rows = [svc.charge_service(account.user_id, 9, "api") for _ in range(100)]

    (low,) = events_of(svc, *ALERTS)

    crossing = next(tx for tx in rows if tx.balance_after < 500)
    assert low.event_type is EventType.BALANCE_LOW
    assert low.payload["transaction_id"] == crossing.id
    assert (low.payload["available"], low.payload["low_balance_threshold"]) == (496, 500)


def test_balance_low_fires_once_across_racing_charges(svc, account_factory, backend):
    account = account_factory(balance=10_000, policy=AccountPolicy(low_balance_threshold=5_000))
    start = threading.Barrier(8)

    def storm(_: int) -> None:
        start.wait()
        for _ in range(25):
            svc.charge_service(account.user_id, 40, "api")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(storm, range(8)))

    assert svc.get_balance(account.user_id).balance == 2_000
    assert [e.event_type for e in events_of(svc, *ALERTS)] == [EventType.BALANCE_LOW]


def test_balance_low_rearms_only_above_the_threshold(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    svc.charge_service(account.user_id, 600, "vps")  # 400: fires
    svc.recharge(account.user_id, 50)  # 450: still below, stays quiet
    svc.charge_service(account.user_id, 50, "vps")
    svc.recharge(account.user_id, 100)  # 500: re-armed
    svc.charge_service(account.user_id, 1, "vps")  # 499: fires again

    assert [e.payload["available"] for e in events_of(svc, *ALERTS)] == [400, 499]


def test_a_batch_fires_balance_low_once_at_the_crossing_item(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    items = [{"user_id": account.user_id, "amount": 100, "service_type": "api"}] * 8

    written = svc.charge_many(items)

    (low,) = events_of(svc, *ALERTS)
    assert low.payload["transaction_id"] == written[5].id  # 1,000 - 6 * 100 = 400


def test_balance_depleted_fires_when_available_reaches_zero(svc, account_factory):
    account = account_factory(balance=300, credit_limit=200, currency="USD")
    charge = svc.charge_service(account.user_id, 500, "vps")

    (depleted,) = events_of(svc, *ALERTS)

    assert depleted.event_type is EventType.BALANCE_DEPLETED
    assert depleted.payload == {
        "type": "balance.depleted",
        "occurred_at": depleted.payload["occurred_at"],
        "user_id": account.user_id,
        "currency": "USD",
        "available": 0,
        "balance": -200,
        "held": 0,
        "credit_limit": 200,
        "low_balance_threshold": None,
        "transaction_id": charge.id,
        "hold_id": None,
    }


def test_falling_past_the_threshold_to_zero_fires_low_then_depleted(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    charge = svc.charge_service(account.user_id, 1_000, "vps")

    events = svc.events(after_id=svc.events()[0].id)

    assert [e.event_type for e in events] == [
        EventType.CHARGED,
        EventType.BALANCE_LOW,
        EventType.BALANCE_DEPLETED,
    ]
    assert {e.payload["transaction_id"] for e in events} == {charge.id}


def test_a_hold_that_reserves_below_the_threshold_fires_balance_low(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    hold = svc.authorize(account.user_id, 600, "vps")
    svc.void(hold.id)  # 1,000 available again: re-armed
    again = svc.authorize(account.user_id, 700, "vps")

    assert [(e.payload["hold_id"], e.payload["available"]) for e in events_of(svc, *ALERTS)] == [
        (hold.id, 400),
        (again.id, 300),
    ]


def test_capturing_a_hold_fires_nothing_new_when_its_reservation_already_did(svc, account_factory):
    account = account_factory(balance=1_000, policy=LOW)
    hold = svc.authorize(account.user_id, 600, "vps")
    svc.capture(hold.id, 550)  # held 600 → charged 550: available 400 → 450

    assert [e.payload["hold_id"] for e in events_of(svc, *ALERTS)] == [hold.id]


def test_a_refused_charge_fires_nothing(svc, account_factory):
    account = account_factory(balance=600, policy=LOW)

    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 700, "vps")

    assert events_of(svc, *ALERTS) == []


def test_a_new_empty_account_is_not_announced_as_depleted(svc, account_factory):
    account = account_factory(policy=LOW)

    svc.recharge(account.user_id, 100)  # still below 500: nothing crossed

    assert events_of(svc, *ALERTS) == []
    assert svc.get_balance(account.user_id).low_balance_alerted


def test_a_threshold_set_above_the_available_balance_fires_at_once(svc, account_factory):
    account = account_factory(balance=300)

    updated = svc.set_account_policy(account.user_id, LOW)

    (low,) = events_of(svc, *ALERTS)
    assert (low.payload["transaction_id"], low.payload["hold_id"]) == (None, None)
    assert updated.policy == LOW
    assert updated.low_balance_alerted


def test_the_services_default_policy_applies_to_new_accounts(database_url):
    with BalanceService.from_url(database_url, account_policy=LOW) as svc:
        opened = svc.open_account(1)
        svc.recharge(1, 1_000)
        svc.charge_service(1, 600, "vps")

        assert opened.policy == LOW
        assert [e.event_type for e in events_of(svc, *ALERTS)] == [EventType.BALANCE_LOW]


def test_an_account_opened_with_its_own_policy_keeps_it(svc):
    own = AccountPolicy(low_balance_threshold=10_000, grace_amount=50)

    opened = svc.open_account(5, currency="USD", policy=own)

    assert svc.get_balance(5).policy == own == opened.policy
    assert opened.status is AccountStatus.ACTIVE
