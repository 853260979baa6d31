"""Batches, refunds, adjustments and holds over HTTP: each one service call, retries safe."""

from __future__ import annotations

import pytest

from tests.http.calls import PROBLEM, charge, open_account

KEY = {"Idempotency-Key": "k-1"}


def item(user_id, amount, **extra):
    return {"user_id": user_id, "amount": amount, "service_type": "api", **extra}


def test_a_batch_answers_each_items_outcome_in_order(client, svc):
    open_account(client, 1, balance=100)
    open_account(client, 2, balance=5)

    answer = client.post(
        "/v1/charges:batch", json={"items": [item(1, 30), item(2, 50), item(9, 1), item(1, 20)]}
    )

    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [201, 402, 404, 201]
    assert results[1]["problem"]["code"] == "insufficient-balance"
    assert results[2]["problem"]["code"] == "account-not-found"
    assert [r["transaction"]["balance_after"] for r in (results[0], results[3])] == [70, 50]
    assert svc.get_balance(1).balance == 50


def test_a_batch_retried_with_item_keys_replays_each_item(client, svc):
    open_account(client, 1, balance=100)
    batch = {"items": [item(1, 30, idempotency_key="a"), item(1, 20, idempotency_key="b")]}

    first = client.post("/v1/charges:batch", json=batch).json()["results"]
    again = client.post("/v1/charges:batch", json=batch).json()["results"]

    assert [r["status"] for r in again] == [200, 200]
    assert [r["transaction"] for r in again] == [r["transaction"] for r in first]
    assert svc.get_balance(1).balance == 50


def test_an_all_or_nothing_batch_refused_writes_nothing(client, dump):
    open_account(client, 1, balance=100)
    before = dump()

    answer = client.post(
        "/v1/charges:batch",
        json={"mode": "all_or_nothing", "items": [item(1, 30), item(1, 500)]},
    )

    assert (answer.status_code, answer.headers["content-type"]) == (402, PROBLEM)
    assert (answer.json()["code"], answer.json()["batch_item"]) == ("insufficient-balance", 1)
    assert dump() == before


@pytest.mark.parametrize(
    "body",
    [{"items": []}, {"items": [item(1, 1)] * 1_001}, {"mode": "some", "items": [item(1, 1)]}],
    ids=["empty", "too-many", "unknown-mode"],
)
def test_a_malformed_batch_is_422(make_client, body):
    client = make_client("admin", max_body_bytes=1 << 20)

    answer = client.post("/v1/charges:batch", json=body)

    assert (answer.status_code, answer.json()["code"]) == (422, "malformed-request")


def test_refund_gives_back_part_of_a_charge_and_a_retry_replays(client, svc):
    open_account(client, balance=1_000)
    charged = charge(client, 300)

    first = client.post(
        f"/v1/transactions/{charged['id']}:refund", json={"amount": 100}, headers=KEY
    )
    again = client.post(
        f"/v1/transactions/{charged['id']}:refund", json={"amount": 100}, headers=KEY
    )

    assert (first.status_code, again.status_code) == (201, 200)
    refund = first.json()
    assert (refund["transaction_type"], refund["related_transaction_id"]) == (
        "refund",
        charged["id"],
    )
    assert again.json() == refund
    assert svc.get_balance(1).balance == 800


def test_refund_without_a_body_gives_back_the_rest(client, svc):
    open_account(client, balance=1_000)
    charged = charge(client, 300)

    answer = client.post(f"/v1/transactions/{charged['id']}:refund")

    assert (answer.status_code, answer.json()["amount"]) == (201, 300)
    assert svc.get_balance(1).balance == 1_000


@pytest.mark.parametrize(
    ("amount", "status", "code"),
    [(301, 409, "refund-exceeds-charge"), (0, 422, "invalid-amount")],
)
def test_refund_refusals_write_nothing(client, dump, amount, status, code):
    open_account(client, balance=1_000)
    charged = charge(client, 300)
    before = dump()

    answer = client.post(f"/v1/transactions/{charged['id']}:refund", json={"amount": amount})

    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert dump() == before


def test_refund_of_an_unknown_row_is_404(client):
    answer = client.post("/v1/transactions/999:refund")

    assert (answer.status_code, answer.json()["code"]) == (404, "transaction-not-found")


def test_adjustment_records_the_api_key_as_its_actor(client, svc):
    open_account(client, balance=1_000)

    answer = client.post(
        "/v1/accounts/1/adjustments", json={"delta": -250, "reason": "chargeback"}, headers=KEY
    )

    assert answer.status_code == 201
    row = answer.json()
    assert (row["transaction_type"], row["balance_after"]) == ("adjustment", 750)
    (key,) = svc.list_api_keys()
    assert row["actor"] == f"apikey:{key.id}:test-0"
    assert row["description"] == "chargeback"


def test_an_adjustment_of_zero_is_422_and_writes_nothing(client, dump):
    open_account(client, balance=1_000)
    before = dump()

    answer = client.post("/v1/accounts/1/adjustments", json={"delta": 0, "reason": "none"})

    assert (answer.status_code, answer.json()["code"]) == (422, "invalid-amount")
    assert dump() == before


def test_a_hold_reserves_money_and_its_capture_charges_it(client, svc):
    open_account(client, balance=1_000)

    held = client.post("/v1/accounts/1/holds", json={"amount": 400, "service_type": "vps"})
    assert (held.status_code, held.json()["status"]) == (201, "active")
    assert client.get("/v1/accounts/1").json()["available"] == 600
    hold_id = held.json()["id"]

    captured = client.post(f"/v1/holds/{hold_id}:capture", json={"amount": 250})

    assert (captured.status_code, captured.json()["amount"]) == (201, 250)
    assert client.get(f"/v1/holds/{hold_id}").json()["status"] == "captured"
    card = client.get("/v1/accounts/1").json()
    assert (card["balance"], card["held"], card["available"]) == (750, 0, 750)


def test_hold_and_capture_retried_with_their_keys_replay(client, svc):
    open_account(client, balance=1_000)
    body = {"amount": 400, "service_type": "vps", "ttl_seconds": 3600}

    held = client.post("/v1/accounts/1/holds", json=body, headers=KEY)
    held_again = client.post("/v1/accounts/1/holds", json=body, headers=KEY)
    hold_id = held.json()["id"]
    capture = {"Idempotency-Key": "capture-1"}
    captured = client.post(f"/v1/holds/{hold_id}:capture", headers=capture)
    captured_again = client.post(f"/v1/holds/{hold_id}:capture", headers=capture)

    assert [a.status_code for a in (held, held_again, captured, captured_again)] == [
        201,
        200,
        201,
        200,
    ]
    assert held_again.headers["Idempotent-Replayed"] == "true"
    assert held_again.json() == held.json()
    assert captured_again.json() == captured.json()
    assert svc.get_balance(1).balance == 600


def test_void_releases_a_hold_and_a_second_void_says_it_is_closed(client):
    open_account(client, balance=1_000)
    hold_id = client.post("/v1/accounts/1/holds", json={"amount": 400, "service_type": "vps"})
    hold_id = hold_id.json()["id"]

    voided = client.post(f"/v1/holds/{hold_id}:void")
    again = client.post(f"/v1/holds/{hold_id}:void")

    assert (voided.status_code, voided.json()["status"]) == (200, "voided")
    assert (again.status_code, again.json()["code"], again.json()["hold_status"]) == (
        409,
        "hold-not-active",
        "voided",
    )
    assert client.get("/v1/accounts/1").json()["available"] == 1_000


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": 5_000, "service_type": "vps"}, 402, "insufficient-balance"),
        ({"amount": 5, "service_type": "vps", "ttl_seconds": 0}, 422, "invalid-request"),
        (
            {"amount": 5, "service_type": "vps", "expires_at": "2020-01-01T00:00:00Z"},
            422,
            "invalid-request",
        ),
        ({"amount": 5}, 422, "malformed-request"),
    ],
)
def test_hold_refusals_write_nothing(client, dump, body, status, code):
    open_account(client, balance=1_000)
    before = dump()

    answer = client.post("/v1/accounts/1/holds", json=body)

    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert dump() == before


@pytest.mark.parametrize("action", ["capture", "void"])
def test_an_unknown_hold_is_404(client, action):
    answer = client.post(f"/v1/holds/999:{action}")

    assert (answer.status_code, answer.json()["code"]) == (404, "hold-not-found")
