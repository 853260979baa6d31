"""In-process callbacks: durable subscriptions with a webhook's guarantees, served only
by the processes that registered them."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from balance_ledger import BalanceService, DeliveryStatus, Event, EventType, InvalidRequest
from tests.dispatching import NO_WAIT, drain
from tests.receiver import receiver


def ids(events: list[Event]) -> list[int]:
    return [event.id for event in events]


def test_a_callback_receives_every_event_once_in_order(svc, account_factory):
    got: list[Event] = []
    svc.add_callback("ledger-sync", got.append)
    first, second = account_factory(balance=1_000), account_factory(balance=1_000)
    for amount in range(1, 16):
        svc.charge_service(first.user_id, amount, "api")
        svc.charge_service(second.user_id, amount, "api")

    drain(svc, batch=7)

    assert ids(got) == ids(svc.events(limit=1000))  # each once, in commit order
    assert set(Counter(ids(got)).values()) == {1}
    assert got[-1].event_type is EventType.CHARGED
    assert got[-1].payload["balance_after"] == 1_000 - sum(range(1, 16))


def test_a_failing_callback_is_retried_with_its_attempts_recorded_until_it_succeeds(
    svc, account_factory
):
    failures = iter([RuntimeError("ledger sync is down"), ConnectionError("still\ndown")])
    got: list[Event] = []

    def flaky(event: Event) -> None:
        if (failure := next(failures, None)) is not None:
            raise failure
        got.append(event)

    svc.add_callback("flaky", flaky)
    account_factory(balance=100)
    dispatcher = svc.dispatcher(**NO_WAIT)

    dispatcher.run_once()
    (first,) = svc.deliveries()
    dispatcher.run_once()
    (second,) = svc.deliveries()
    dispatcher.run_once()
    (third,) = svc.deliveries()
    dispatcher.close()

    assert (first.status, first.attempts) == (DeliveryStatus.PENDING, 1)
    assert first.last_error == "RuntimeError: ledger sync is down"
    assert (second.status, second.attempts) == (DeliveryStatus.PENDING, 2)
    assert second.last_error == "ConnectionError: still down"  # on one line
    assert (third.status, third.attempts) == (DeliveryStatus.DELIVERED, 3)
    assert ids(got) == [third.event_id]


def test_a_failed_callback_waits_for_its_backoff(svc, account_factory):
    calls: list[Event] = []

    def failing(event: Event) -> None:
        calls.append(event)
        raise ValueError("no")

    svc.add_callback("failing", failing)
    account_factory(balance=100)
    dispatcher = svc.dispatcher(backoff=lambda attempts: timedelta(hours=1))
    dispatcher.run_once()
    dispatcher.run_once()
    dispatcher.close()

    (delivery,) = svc.deliveries()
    assert len(calls) == 1
    assert delivery.next_attempt_at > delivery.created_at + timedelta(minutes=59)


def test_a_callback_failing_every_attempt_dies_and_a_retry_revives_it(svc, account_factory):
    failures_left = [3]
    got: list[Event] = []

    def failing_three_times(event: Event) -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise TimeoutError("too slow")
        got.append(event)

    svc.add_callback("slow", failing_three_times)
    account_factory(balance=100)

    drain(svc, max_attempts=3)
    (dead,) = svc.deliveries()
    assert (dead.status, dead.attempts, dead.last_error) == (
        DeliveryStatus.DEAD,
        3,
        "TimeoutError: too slow",
    )

    assert svc.retry_event(dead.event_id) == 1
    drain(svc, max_attempts=3)

    (revived,) = svc.deliveries()
    assert (revived.status, revived.attempts) == (DeliveryStatus.DELIVERED, 1)
    assert ids(got) == [dead.event_id]


def test_a_dispatcher_without_the_callback_never_claims_its_deliveries(
    svc, database_url, account_factory
):
    got: list[Event] = []
    callback = svc.add_callback("ledger-sync", got.append)
    with receiver() as target, BalanceService.from_url(database_url) as elsewhere:
        svc.add_webhook(target.url)
        account = account_factory(balance=100)
        svc.charge_service(account.user_id, 30, "vps")

        drain(elsewhere, max_attempts=1)  # another host: has no callback "ledger-sync"

        assert target.event_ids() == ids(svc.events())  # the webhook's flowed
    waiting = [d for d in svc.deliveries() if d.webhook_id == callback.id]
    assert [(d.status, d.attempts) for d in waiting] == [(DeliveryStatus.PENDING, 0)] * 2
    assert got == []

    drain(svc)

    assert ids(got) == ids(svc.events())


def test_events_committed_while_no_process_has_the_callback_reach_the_next_one(
    svc, database_url, account_factory
):
    with BalanceService.from_url(database_url) as first_run:
        subscribed = first_run.add_callback("ledger-sync", lambda event: None)
    # The process is gone; events keep committing and other dispatchers fan them out.
    account = account_factory(balance=100)
    svc.charge_service(account.user_id, 30, "vps")
    drain(svc)

    got: list[Event] = []
    with BalanceService.from_url(database_url) as restarted:
        again = restarted.add_callback("ledger-sync", got.append)
        drain(restarted)

    assert again == subscribed  # the same subscription, not a new one
    assert ids(got) == ids(svc.events())


def test_registering_a_callback_again_with_other_event_types_is_refused(
    svc, database_url, account_factory
):
    subscribed = svc.add_callback("alerts", lambda event: None, event_types=["account.suspended"])
    got: list[Event] = []
    with BalanceService.from_url(database_url) as restarted:
        with pytest.raises(InvalidRequest, match=f"subscription {subscribed.id}, to event types"):
            restarted.add_callback(
                "alerts", got.append, event_types=["account.suspended", "balance.charged"]
            )
        account = account_factory(balance=10)
        svc.charge_service(account.user_id, 50, "vps", allow_overdraft=True)
        drain(restarted)  # the refused callback was not registered either

    assert svc.list_webhooks() == [subscribed]
    assert got == []


def test_a_callback_gets_only_the_event_types_it_subscribes_to(svc, account_factory):
    got: list[Event] = []
    svc.add_callback("alerts", got.append, event_types=["account.suspended"])
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 50, "vps", allow_overdraft=True)

    drain(svc)

    assert [event.event_type for event in got] == [EventType.ACCOUNT_SUSPENDED]


def test_a_removed_callback_gets_nothing_more_and_its_undelivered_deliveries_die_anywhere(
    svc, database_url, account_factory
):
    got: list[Event] = []
    removed = svc.add_callback("ledger-sync", got.append)
    account = account_factory(balance=100)
    with BalanceService.from_url(database_url) as elsewhere:
        fanning = elsewhere.dispatcher()
        fanning.fan_out()  # the recharge now waits for the callback's process
        fanning.close()
        svc.remove_webhook(removed.id)
        svc.charge_service(account.user_id, 30, "vps")

        drain(elsewhere)  # no callback there, yet the removed subscription's delivery dies

    (dead,) = svc.deliveries()
    assert (dead.status, dead.last_error) == (DeliveryStatus.DEAD, "the webhook was removed")
    drain(svc)
    assert got == []

    renewed = svc.add_callback("ledger-sync", got.append)
    svc.recharge(account.user_id, 5)
    drain(svc)

    assert renewed.id != removed.id
    assert ids(got) == ids(svc.events())[-1:]


@pytest.mark.race
def test_processes_registering_one_callback_at_once_share_one_subscription(svc, database_url):
    services = [BalanceService.from_url(database_url) for _ in range(6)]
    start = threading.Barrier(len(services))
    subscribed = []

    def register(service: BalanceService) -> None:
        start.wait()
        subscribed.append(service.add_callback("ledger-sync", lambda event: None))

    threads = [threading.Thread(target=register, args=(service,)) for service in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for service in services:
        service.close()

    assert len(subscribed) == len(services)
    assert len(svc.list_webhooks()) == 1
    assert {hook.id for hook in subscribed} == {svc.list_webhooks()[0].id}


def test_add_webhook_refuses_a_callback_url(svc):
    with pytest.raises(InvalidRequest, match="add_callback"):
        svc.add_webhook("callback:ledger-sync")
    assert svc.list_webhooks() == []


@pytest.mark.parametrize(
    ("name", "callback"),
    [
        ("", print),
        ("has space", print),
        ("-leading-dash", print),
        ("x" * 129, print),
        ("café", print),
        (7, print),
        ("ledger-sync", "not callable"),
    ],
)
def test_a_malformed_callback_is_refused(svc, name, callback):
    with pytest.raises(InvalidRequest):
        svc.add_callback(name, callback)
    assert svc.list_webhooks() == []
