"""Over HTTP, a refusal is its idempotency key's answer: the same problem, replayed.

The documented protocol for a client (retry timeouts and 5xx with the same key, stop
at any 4xx) is safe only if a 4xx is final. These tests pin that down on every backend.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.http.calls import PROBLEM, open_account

CHARGE = {"amount": 500, "service_type": "vps"}


def test_a_refused_charge_is_replayed_with_the_same_problem(client: TestClient):
    open_account(client, 7)
    key = {"Idempotency-Key": "K1"}
    first = client.post("/v1/accounts/7/charges", json=CHARGE, headers=key)
    assert first.status_code == 402
    assert "Idempotent-Replayed" not in first.headers
    assert client.post("/v1/accounts/7/recharges", json={"amount": 1_000}).status_code == 201
    again = client.post("/v1/accounts/7/charges", json=CHARGE, headers=key)
    assert again.status_code == 402
    assert again.headers["content-type"] == PROBLEM
    assert again.headers["Idempotent-Replayed"] == "true"
    volatile = {"request_id"}  # each answer's own
    same = {k: v for k, v in first.json().items() if k not in volatile}
    assert {k: v for k, v in again.json().items() if k not in volatile} == same
    assert (same["code"], same["available"], same["amount"]) == ("insufficient-balance", 0, 500)
    history = client.get("/v1/accounts/7/transactions").json()
    assert [row["transaction_type"] for row in history["transactions"]] == ["recharge"]


def test_another_request_under_a_refused_key_is_409(client: TestClient):
    open_account(client, 7)
    key = {"Idempotency-Key": "K1"}
    assert client.post("/v1/accounts/7/charges", json=CHARGE, headers=key).status_code == 402
    other = client.post("/v1/accounts/7/charges", json={**CHARGE, "amount": 400}, headers=key)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency-conflict"


def test_a_batch_item_replays_its_refusal(client: TestClient):
    open_account(client, 7)
    item = {"user_id": 7, **CHARGE, "idempotency_key": "K1"}
    first = client.post("/v1/charges:batch", json={"items": [item]}).json()["results"][0]
    assert (first["status"], first["replayed"]) == (402, False)
    assert client.post("/v1/accounts/7/recharges", json={"amount": 1_000}).status_code == 201
    again = client.post("/v1/charges:batch", json={"items": [item]}).json()["results"][0]
    assert (again["status"], again["replayed"]) == (402, True)
    assert again["problem"]["detail"] == first["problem"]["detail"]
    # The key's answer is the same whichever route asks.
    single = client.post("/v1/accounts/7/charges", json=CHARGE, headers={"Idempotency-Key": "K1"})
    assert single.status_code == 402
    assert single.headers["Idempotent-Replayed"] == "true"


def test_a_refused_hold_is_replayed(client: TestClient):
    open_account(client, 7)
    key = {"Idempotency-Key": "H1"}
    first = client.post("/v1/accounts/7/holds", json=CHARGE, headers=key)
    assert first.status_code == 402
    client.post("/v1/accounts/7/recharges", json={"amount": 1_000})
    again = client.post("/v1/accounts/7/holds", json=CHARGE, headers=key)
    assert again.status_code == 402
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/v1/accounts/7").json()["held"] == 0


def test_an_all_or_nothing_batch_replays_its_refused_item(client: TestClient):
    open_account(client, 7)
    open_account(client, 8, balance=1_000)
    items = [
        {"user_id": 8, **CHARGE, "idempotency_key": "A"},
        {"user_id": 7, **CHARGE, "idempotency_key": "B"},
    ]
    body = {"mode": "all_or_nothing", "items": items}
    first = client.post("/v1/charges:batch", json=body)
    assert (first.status_code, first.json()["batch_item"]) == (402, 1)
    client.post("/v1/accounts/7/recharges", json={"amount": 1_000})
    again = client.post("/v1/charges:batch", json=body)
    assert (again.status_code, again.json()["batch_item"]) == (402, 1)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["detail"] == first.json()["detail"]
    assert client.get("/v1/accounts/8").json()["balance"] == 1_000, "nothing charged"
