"""Delivering the outbox to a real local webhook receiver: at least once, in order, signed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from balance_ledger import (
    BalanceService,
    DeliveryStatus,
    InvalidRequest,
    SchemaMissing,
    WebhookNotFound,
)
from balance_ledger.outbox import signatures
from tests.dispatching import NO_WAIT, drain
from tests.receiver import Receiver, receiver


@pytest.fixture
def hook(svc: BalanceService) -> Iterator[tuple[Receiver, str]]:
    """A receiver subscribed to every event, and its secret."""
    with receiver() as target:
        _, secret = svc.add_webhook(target.url)
        yield target, secret


def test_an_event_is_delivered_signed_with_the_webhooks_secret(svc, hook, account_factory):
    target, secret = hook
    account = account_factory(balance=1_000)
    tx = svc.charge_service(account.user_id, 300, "vps")

    drain(svc)

    recharged, charged = target.received
    assert charged.event["type"] == "balance.charged"
    assert charged.event["transaction_id"] == tx.id
    assert charged.headers["Balance-Event-Type"] == "balance.charged"
    assert int(charged.headers["Balance-Event-Id"]) == charged.event["id"]
    assert signatures.verify(secret, charged.headers["Balance-Signature"], charged.body)
    assert not signatures.verify(secret, charged.headers["Balance-Signature"], recharged.body)
    delivered = svc.deliveries()
    assert [d.status for d in delivered] == [DeliveryStatus.DELIVERED] * 2
    assert [d.attempts for d in delivered] == [1, 1]


def test_a_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt(
    svc, hook, account_factory
):
    target, _ = hook
    target.failures_left = 3
    account_factory(balance=1_000)

    drain(svc)

    assert len(target.received) == 4
    (delivery,) = svc.deliveries()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 4)
    assert delivery.last_error == "HTTP 500: ''"


def test_a_delivery_dies_after_its_attempts_and_a_retry_revives_it(svc, hook, account_factory):
    target, _ = hook
    target.failures_left = 3
    account_factory(balance=1_000)

    drain(svc, max_attempts=3)
    (dead,) = svc.deliveries()
    assert (dead.status, dead.attempts) == (DeliveryStatus.DEAD, 3)

    assert svc.retry_event(dead.event_id) == 1
    drain(svc, max_attempts=3)

    (revived,) = svc.deliveries()
    assert (revived.status, revived.attempts) == (DeliveryStatus.DELIVERED, 1)
    assert len(target.received) == 4


def test_a_failing_event_holds_back_the_later_events_of_its_account_only(
    svc, hook, account_factory
):
    target, _ = hook
    first = account_factory(balance=10)  # event 1 fails once
    target.failures_left = 1
    dispatcher = svc.dispatcher(backoff=lambda attempts: timedelta(hours=1))
    dispatcher.run_once()  # the recharge of `first` fails: retried in an hour
    second = account_factory(balance=20)
    svc.charge_service(first.user_id, 1, "api")

    dispatcher.run_once()
    dispatcher.close()

    delivered = [r.event for r in target.received[1:]]
    assert [(e["type"], e["user_id"]) for e in delivered] == [("balance.recharged", second.user_id)]


def test_an_account_s_events_arrive_in_order(svc, hook, account_factory):
    target, _ = hook
    account = account_factory(balance=1_000)
    for amount in range(1, 30):
        svc.charge_service(account.user_id, amount, "api")

    drain(svc, batch=7)

    ids = target.event_ids()
    assert ids == sorted(ids)
    assert len(ids) == 30


def test_a_dispatcher_killed_mid_delivery_loses_nothing(svc, hook, account_factory):
    target, _ = hook
    account_factory(balance=1_000)

    class Killed(BaseException):
        pass

    killed = svc.dispatcher(lease=timedelta(seconds=0.5), **NO_WAIT)
    killed.sinks.deliver = lambda *args: (_ for _ in ()).throw(Killed())  # dies before settling
    with pytest.raises(Killed):
        killed.run_once()
    (claimed,) = svc.deliveries()
    assert claimed.status is DeliveryStatus.DELIVERING

    drain(svc)  # within the lease: nothing to do
    assert target.received == []
    time.sleep(0.6)
    drain(svc)

    (delivery,) = svc.deliveries()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)
    assert len(target.received) == 1


@pytest.mark.race
def test_two_dispatchers_deliver_each_event_once(svc, hook, account_factory):
    target, _ = hook
    accounts = [account_factory(balance=100) for _ in range(10)]
    for account in accounts:
        for _ in range(4):
            svc.charge_service(account.user_id, 1, "api")
    stop = threading.Event()
    dispatchers = [svc.dispatcher(batch=5, **NO_WAIT) for _ in range(2)]
    threads = [threading.Thread(target=d.run, args=(stop, 0.02)) for d in dispatchers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(target.received) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # would a duplicate still arrive?
    stop.set()
    for thread, dispatcher in zip(threads, dispatchers, strict=True):
        thread.join()
        dispatcher.close()

    counts = Counter(target.event_ids())
    assert len(counts) == 50
    assert set(counts.values()) == {1}
    for account in accounts:
        mine = [r.event["id"] for r in target.received if r.event["user_id"] == account.user_id]
        assert mine == sorted(mine)


def test_a_webhook_gets_only_the_events_it_subscribes_to(svc, account_factory):
    with receiver() as target:
        svc.add_webhook(target.url, event_types=["account.suspended"])
        account = account_factory(balance=10)
        svc.charge_service(account.user_id, 50, "vps", allow_overdraft=True)

        drain(svc)

    assert [r.event["type"] for r in target.received] == ["account.suspended"]


def test_a_removed_webhook_gets_nothing_more(svc, hook, account_factory):
    target, _ = hook
    (webhook,) = svc.list_webhooks()
    account_factory(balance=10)
    drain(svc)

    removed = svc.remove_webhook(webhook.id)
    svc.recharge(1, 5)
    drain(svc)

    assert removed.removed_at is not None
    assert len(target.received) == 1
    with pytest.raises(WebhookNotFound):
        svc.remove_webhook(999)


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://example.com/x"},
        {"url": "http:///nohost"},
        {"url": "https://example.com", "event_types": ["balance.nope"]},
        {"url": "https://example.com", "event_types": []},
        {"url": "https://example.com", "secret": "short"},
    ],
)
def test_a_malformed_webhook_is_refused(svc, options):
    rest = {k: v for k, v in options.items() if k != "url"}
    with pytest.raises(InvalidRequest):
        svc.add_webhook(options["url"], **rest)
    assert svc.list_webhooks() == []


@pytest.mark.parametrize("error", [SchemaMissing("no tables"), ValueError("a bug")])
def test_the_dispatch_loop_ends_on_what_waiting_cannot_cure(svc, error):
    dispatcher = svc.dispatcher()

    def fails() -> object:
        raise error

    dispatcher.run_once = fails
    try:
        with pytest.raises(type(error)):
            dispatcher.run(threading.Event(), 0.01)
    finally:
        dispatcher.close()


def test_a_drain_tells_each_pass_and_returns_their_sum(svc, hook, account_factory):
    for amount in (100, 200):
        account_factory(balance=amount)
    told = []
    dispatcher = svc.dispatcher(**NO_WAIT)
    try:
        total = dispatcher.drain(on_pass=told.append)
    finally:
        dispatcher.close()

    assert told
    assert total.delivered == sum(report.delivered for report in told) == 2
    assert dispatcher.run_once().idle
