"""The event outbox: an event row exists iff what it announces committed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from balance_ledger import EventType, InsufficientBalance, InvalidRequest, StorageError
from tests.events import kinds
from tests.integration.test_atomicity import rewrite_statement


def test_a_charge_writes_its_event_with_the_row(svc, account_factory):
    account = account_factory(balance=1_000, currency="USD")

    tx = svc.charge_service(account.user_id, 300, "vps", reference_id=77, idempotency_key="vps-77")

    recharged, charged = svc.events()
    assert (recharged.event_type, charged.event_type) == (EventType.RECHARGED, EventType.CHARGED)
    assert charged.user_id == account.user_id
    assert charged.payload == {
        "type": "balance.charged",
        "occurred_at": tx.created_at.isoformat(),
        "transaction_id": tx.id,
        "user_id": account.user_id,
        "currency": "USD",
        "amount": 300,
        "balance_before": 1_000,
        "balance_after": 700,
        "service_type": "vps",
        "description": None,
        "reference_model": None,
        "reference_id": "77",
        "idempotency_key": "vps-77",
        "related_transaction_id": None,
        "actor": None,
    }
    assert charged.created_at == tx.created_at


def test_a_refused_charge_leaves_no_event(svc, account_factory):
    account = account_factory(balance=100)

    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 300, "vps")

    assert kinds(svc) == [EventType.RECHARGED]


def test_a_failed_event_insert_rolls_back_the_movement(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    before = dump()

    with (
        rewrite_statement(svc, "INSERT INTO balance_events", "INSERT INTO no_such_table"),
        pytest.raises(StorageError),
    ):
        svc.charge_service(account.user_id, 300, "vps")

    assert dump() == before


def test_a_replay_announces_nothing_more(svc, account_factory):
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 300, "vps", idempotency_key="k")

    svc.charge_service(account.user_id, 300, "vps", idempotency_key="k")

    assert kinds(svc) == [EventType.RECHARGED, EventType.CHARGED]


def test_suspension_and_reactivation_follow_the_rows_that_caused_them(svc, account_factory):
    account = account_factory(balance=100)
    overdraft = svc.charge_service(account.user_id, 300, "vps", allow_overdraft=True)
    back = svc.recharge(account.user_id, 500)

    events = svc.events()

    assert [e.event_type for e in events] == [
        EventType.RECHARGED,
        EventType.CHARGED,
        EventType.ACCOUNT_SUSPENDED,
        EventType.BALANCE_DEPLETED,
        EventType.RECHARGED,
        EventType.ACCOUNT_REACTIVATED,
    ]
    suspended, reactivated = events[2].payload, events[5].payload
    assert (suspended["transaction_id"], suspended["balance"]) == (overdraft.id, -200)
    assert (reactivated["transaction_id"], reactivated["new_status"]) == (back.id, "active")


def test_a_batch_announces_each_written_item_in_order(svc, account_factory):
    first = account_factory(balance=100)
    second = account_factory(balance=100)
    items = [
        {"user_id": first.user_id, "amount": 30, "service_type": "api"},
        {"user_id": second.user_id, "amount": 500, "service_type": "api"},  # refused
        {"user_id": second.user_id, "amount": 150, "service_type": "api", "allow_overdraft": True},
        {"user_id": first.user_id, "amount": 20, "service_type": "api"},
    ]

    written = svc.charge_many(items)

    after_setup = svc.events()[1].id
    events = svc.events(after_id=after_setup)
    assert [(e.event_type, e.user_id) for e in events] == [
        (EventType.CHARGED, first.user_id),
        (EventType.CHARGED, second.user_id),
        (EventType.ACCOUNT_SUSPENDED, second.user_id),
        (EventType.BALANCE_DEPLETED, second.user_id),
        (EventType.CHARGED, first.user_id),
    ]
    charged = [e.payload["transaction_id"] for e in events if e.event_type is EventType.CHARGED]
    assert charged == [written[0].id, written[2].id, written[3].id]


def test_a_holds_life_is_announced(svc, account_factory):
    account = account_factory(balance=1_000)
    captured = svc.authorize(account.user_id, 300, "vps")
    charge = svc.capture(captured.id, 200)
    voided = svc.authorize(account.user_id, 100, "vps")
    svc.void(voided.id)
    expiring = svc.authorize(account.user_id, 50, "vps", ttl=1)
    svc.expire_holds(now=datetime.now(UTC) + timedelta(seconds=5))

    events = svc.events(after_id=svc.events()[0].id)

    assert [e.event_type for e in events] == [
        EventType.HOLD_AUTHORIZED,
        EventType.CHARGED,
        EventType.HOLD_CAPTURED,
        EventType.HOLD_AUTHORIZED,
        EventType.HOLD_VOIDED,
        EventType.HOLD_AUTHORIZED,
        EventType.HOLD_EXPIRED,
    ]
    captured_event = events[2].payload
    assert (captured_event["hold_id"], captured_event["captured_amount"]) == (captured.id, 200)
    assert captured_event["capture_transaction_id"] == charge.id
    assert events[6].payload["hold_id"] == expiring.id


def test_events_page_by_id_and_by_account(svc, account_factory):
    first = account_factory(balance=10)
    second = account_factory(balance=20)
    svc.charge_service(first.user_id, 1, "api")

    everything = svc.events()
    page = svc.events(after_id=everything[0].id, limit=1)
    mine = svc.events(user_id=first.user_id)

    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert page == everything[1:2]
    assert [e.payload["amount"] for e in mine] == [10, 1]
    assert all(e.user_id == first.user_id for e in mine)
    assert second.user_id not in {e.user_id for e in mine}


@pytest.mark.parametrize(
    "page", [{"after_id": -1}, {"after_id": True}, {"limit": 0}, {"user_id": 0}]
)
def test_a_malformed_page_is_refused(svc, page):
    with pytest.raises(InvalidRequest):
        svc.events(**page)
