"""/v1/webhooks and /v1/events: the outbox over HTTP, admin only, delivered for real."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from balance_ledger import DeliveryStatus, StorageError
from balance_ledger.http import create_app
from balance_ledger.outbox import signatures
from tests.dispatching import drain
from tests.http.calls import PROBLEM, charge, open_account
from tests.receiver import receiver

HOOK = "https://example.com/hooks/balance"


def test_create_answers_the_secret_once_and_the_list_never_shows_it(client):
    answer = client.post("/v1/webhooks", json={"url": HOOK, "event_types": ["hold.voided"]})

    assert answer.status_code == 201
    created = answer.json()
    assert created["secret"].startswith("whsec_")
    assert (created["url"], created["event_types"], created["removed_at"]) == (
        HOOK,
        ["hold.voided"],
        None,
    )
    listed = client.get("/v1/webhooks")
    assert listed.json() == {"webhooks": [{k: v for k, v in created.items() if k != "secret"}]}
    assert created["secret"] not in listed.text


def test_a_given_secret_is_kept_and_no_event_types_means_every_event(client):
    secret = "s3cret-of-sixteen-chars"

    created = client.post("/v1/webhooks", json={"url": HOOK, "secret": secret}).json()

    assert (created["secret"], created["event_types"]) == (secret, None)


def test_a_created_webhook_receives_signed_deliveries_from_a_dispatcher(svc, client):
    with receiver() as target:
        body = {"url": target.url, "event_types": ["balance.charged"]}
        secret = client.post("/v1/webhooks", json=body).json()["secret"]
        open_account(client, balance=1_000)
        row = charge(client, 300)

        drain(svc)

    (delivered,) = target.received
    assert (delivered.event["type"], delivered.event["transaction_id"]) == (
        "balance.charged",
        row["id"],
    )
    assert signatures.verify(secret, delivered.headers["Balance-Signature"], delivered.body)
    event_id = delivered.event["id"]
    (delivery,) = client.get(f"/v1/events/{event_id}/deliveries").json()["deliveries"]
    assert (delivery["status"], delivery["attempts"], delivery["last_error"]) == (
        "delivered",
        1,
        None,
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.com/x"}, "invalid-request"),
        ({"url": "http:///nohost"}, "invalid-request"),
        ({"url": HOOK, "event_types": ["balance.nope"]}, "invalid-request"),
        ({"url": HOOK, "event_types": []}, "invalid-request"),
        ({"url": HOOK, "secret": "short"}, "invalid-request"),
        ({"url": "http://a\x00b/"}, "invalid-request"),
        ({"url": "http://a\nb/"}, "invalid-request"),
        ({"url": "http://a b/"}, "invalid-request"),
        ({"url": 5}, "malformed-request"),
        ({"url": HOOK, "event_types": "balance.charged"}, "malformed-request"),
        ({"url": HOOK, "events": ["balance.charged"]}, "malformed-request"),
    ],
)
def test_a_bad_webhook_is_a_422_problem_and_writes_nothing(client, dump, body, code):
    before = dump()

    answer = client.post("/v1/webhooks", json=body)

    assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM)
    assert answer.json()["code"] == code
    assert dump() == before


def test_a_url_with_a_lone_surrogate_is_a_422_problem(client, dump):
    before = dump()

    # Raw JSON: the test client cannot encode a lone surrogate itself.
    answer = client.post(
        "/v1/webhooks",
        content=b'{"url": "http://\\ud800/"}',
        headers={"Content-Type": "application/json"},
    )

    assert (answer.status_code, answer.json()["code"]) == (422, "invalid-request")
    assert dump() == before


def test_a_deleted_webhook_gets_no_later_events(svc, client):
    with receiver() as target:
        hook = client.post("/v1/webhooks", json={"url": target.url}).json()
        open_account(client, balance=1_000)
        drain(svc)

        removed = client.delete(f"/v1/webhooks/{hook['id']}")
        charge(client, 300)
        drain(svc)

    assert removed.status_code == 200
    assert removed.json()["removed_at"] is not None
    assert [r.event["type"] for r in target.received] == ["balance.recharged"]


def test_deleting_again_keeps_the_first_removal(client):
    hook = client.post("/v1/webhooks", json={"url": HOOK}).json()

    first = client.delete(f"/v1/webhooks/{hook['id']}")
    again = client.delete(f"/v1/webhooks/{hook['id']}")

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["removed_at"] == first.json()["removed_at"]


def test_deleting_an_unknown_webhook_is_a_404_problem(client):
    answer = client.delete("/v1/webhooks/999999")

    assert (answer.status_code, answer.headers["content-type"]) == (404, PROBLEM)
    assert answer.json()["code"] == "webhook-not-found"


def test_events_are_paged_oldest_first_with_their_payloads(client):
    open_account(client, user_id=1, balance=1_000)
    open_account(client, user_id=2, balance=50)
    charge(client, 300, user_id=1)

    first = client.get("/v1/events", params={"user_id": 1, "limit": 1}).json()
    rest = client.get(
        "/v1/events", params={"user_id": 1, "after_id": first["next_after_id"]}
    ).json()

    events = first["events"] + rest["events"]
    assert [(e["type"], e["amount"]) for e in events] == [
        ("balance.recharged", 1_000),
        ("balance.charged", 300),
    ]
    assert events[1]["balance_after"] == 700
    assert rest["next_after_id"] == events[1]["id"]


def test_an_empty_page_hands_back_the_same_after_id_to_poll_with(client):
    page = client.get("/v1/events", params={"after_id": 12345}).json()

    assert page == {"events": [], "next_after_id": 12345}


def test_retry_revives_a_dead_delivery_which_then_arrives(svc, client):
    with receiver() as target:
        client.post("/v1/webhooks", json={"url": target.url})
        target.failures_left = 1
        open_account(client, balance=1_000)
        drain(svc, max_attempts=1)
        (event,) = client.get("/v1/events").json()["events"]
        (dead,) = client.get(f"/v1/events/{event['id']}/deliveries").json()["deliveries"]

        revived = client.post(f"/v1/events/{event['id']}:retry")
        drain(svc)

    assert (dead["status"], dead["last_error"]) == ("dead", "HTTP 500: ''")
    assert revived.json() == {"revived": 1}
    (delivery,) = svc.deliveries(event["id"])
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 1)
    assert len(target.received) == 2


OUTBOX_ROUTES = [
    ("post", "/v1/webhooks", {"url": HOOK}),
    ("get", "/v1/webhooks", None),
    ("delete", "/v1/webhooks/1", None),
    ("get", "/v1/events", None),
    ("get", "/v1/events/1/deliveries", None),
    ("post", "/v1/events/1:retry", None),
]


@pytest.mark.parametrize("scope", ["read", "charge", "recharge"])
def test_every_outbox_route_refuses_a_key_without_admin(make_client, scope):
    scoped = make_client(scope)

    answers = [scoped.request(method, path, json=body) for method, path, body in OUTBOX_ROUTES]

    assert [(a.status_code, a.json()["code"]) for a in answers] == [(403, "forbidden")] * len(
        OUTBOX_ROUTES
    )


def test_an_app_with_dispatch_interval_delivers_while_it_runs_and_stops_after(svc):
    _, secret = svc.create_api_key("dispatching", ["admin"])
    app = create_app(svc, dispatch_interval=0.05)
    with receiver() as target, TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {secret}"
        client.post("/v1/webhooks", json={"url": target.url})
        open_account(client, balance=1_000)
        deadline = time.monotonic() + 10
        while not target.received and time.monotonic() < deadline:
            time.sleep(0.02)

    assert [r.event["type"] for r in target.received] == ["balance.recharged"]
    assert "balance-dispatch" not in [thread.name for thread in threading.enumerate()]


def test_the_dispatch_thread_outlives_a_failed_pass(svc, caplog):
    dispatcher = svc.dispatcher()
    passes, failed = dispatcher.run_once, threading.Event()

    def fails_first() -> object:
        if not failed.is_set():
            failed.set()
            raise StorageError("the database went away")
        return passes()

    dispatcher.run_once = fails_first
    with receiver() as target:
        svc.add_webhook(target.url)
        svc.open_account(7)
        svc.recharge(7, 100)
        with dispatcher.in_background(0.05):
            deadline = time.monotonic() + 10
            while not target.received and time.monotonic() < deadline:
                time.sleep(0.02)

    assert "dispatching failed" in caplog.text
    assert [r.event["amount"] for r in target.received] == [100]
