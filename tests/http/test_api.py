"""The HTTP service: each route is its service call, each error a problem document."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import event

from tests.http.calls import PROBLEM, charge, open_account


def test_health_needs_no_key_and_ready_checks_the_database(client):
    del client.headers["Authorization"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_open_account_returns_its_balance_card(client):
    answer = client.post("/v1/accounts", json={"user_id": 7, "currency": "USD"})

    assert answer.status_code == 201
    card = answer.json()
    assert (card["user_id"], card["currency"], card["balance"], card["status"]) == (
        7,
        "USD",
        0,
        "active",
    )


def test_charge_creates_a_row_and_moves_the_balance(client):
    open_account(client, balance=1_000)

    answer = client.post("/v1/accounts/1/charges", json={"amount": 300, "service_type": "vps"})

    assert answer.status_code == 201
    assert (answer.json()["balance_before"], answer.json()["balance_after"]) == (1_000, 700)
    assert client.get("/v1/accounts/1").json()["balance"] == 700


def test_a_retry_with_the_same_key_answers_200_with_the_first_row(client):
    open_account(client, balance=1_000)
    body, headers = {"amount": 300, "service_type": "vps"}, {"Idempotency-Key": "usage-1"}

    first = client.post("/v1/accounts/1/charges", json=body, headers=headers)
    again = client.post("/v1/accounts/1/charges", json=body, headers=headers)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert client.get("/v1/accounts/1").json()["balance"] == 700


def test_the_same_key_with_another_body_is_409(client):
    open_account(client, balance=1_000)
    headers = {"Idempotency-Key": "usage-1"}
    client.post(
        "/v1/accounts/1/charges", json={"amount": 3, "service_type": "vps"}, headers=headers
    )

    answer = client.post(
        "/v1/accounts/1/charges", json={"amount": 4, "service_type": "vps"}, headers=headers
    )

    assert answer.status_code == 409
    assert answer.json()["code"] == "idempotency-conflict"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/v1/accounts/1/charges",
            {"amount": 5_000, "service_type": "vps"},
            402,
            "insufficient-balance",
        ),
        ("/v1/accounts/9/charges", {"amount": 5, "service_type": "vps"}, 404, "account-not-found"),
        ("/v1/accounts/1/charges", {"amount": 0, "service_type": "vps"}, 422, "invalid-amount"),
        ("/v1/accounts/1/charges", {"amount": 2**70, "service_type": "vps"}, 422, "invalid-amount"),
        (
            "/v1/accounts/1/charges",
            {"amount": 1.5, "service_type": "vps"},
            422,
            "malformed-request",
        ),
        (
            "/v1/accounts/1/charges",
            {"amount": "5", "service_type": "vps"},
            422,
            "malformed-request",
        ),
        ("/v1/accounts/1/charges", {"amount": 5}, 422, "malformed-request"),
        (
            "/v1/accounts/1/charges",
            {"amount": 5, "service_type": "x", "extra": 1},
            422,
            "malformed-request",
        ),
        ("/v1/accounts/1/recharges", {"amount": 5, "currency": "EUR"}, 409, "currency-mismatch"),
        ("/v1/accounts/0/recharges", {"amount": 5}, 422, "invalid-request"),
    ],
)
def test_refusals_are_problem_documents_and_write_nothing(client, dump, path, body, status, code):
    open_account(client, balance=1_000)
    before = dump()

    answer = client.post(path, json=body)

    assert (answer.status_code, answer.headers["content-type"]) == (status, PROBLEM)
    problem = answer.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["type"] == f"urn:balance-ledger:problem:{code}"
    assert "Traceback" not in answer.text
    assert dump() == before


def test_insufficient_balance_says_what_is_available(client):
    open_account(client, balance=1_000)

    problem = client.post("/v1/accounts/1/charges", json={"amount": 5_000, "service_type": "vps"})

    assert (problem.json()["user_id"], problem.json()["available"]) == (1, 1_000)


def test_a_body_that_is_not_json_is_422(client):
    open_account(client)
    answer = client.post(
        "/v1/accounts/1/charges", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (answer.status_code, answer.json()["code"]) == (422, "malformed-request")


def test_a_body_over_the_limit_is_413(make_client):
    client = make_client("admin", max_body_bytes=1_000)
    open_account(client)

    answer = client.post(
        "/v1/accounts/1/charges",
        json={"amount": 5, "service_type": "vps", "description": "x" * 2_000},
    )

    assert (answer.status_code, answer.json()["code"]) == (413, "body-too-large")


def test_transactions_page_newest_first_with_a_cursor(client):
    open_account(client, balance=1_000)
    for amount in (1, 2, 3):
        client.post("/v1/accounts/1/charges", json={"amount": amount, "service_type": "vps"})

    first = client.get("/v1/accounts/1/transactions", params={"limit": 2}).json()
    rest = client.get(
        "/v1/accounts/1/transactions", params={"limit": 2, "before_id": first["next_before_id"]}
    ).json()

    assert [t["amount"] for t in first["transactions"]] == [3, 2]
    assert [t["amount"] for t in rest["transactions"]] == [1, 1_000]
    assert rest["next_before_id"] is not None or len(rest["transactions"]) < 2


def test_an_unknown_route_is_a_404_problem(client):
    answer = client.get("/v1/nothing")
    assert (answer.status_code, answer.headers["content-type"]) == (404, PROBLEM)


# -- authentication and scopes ---------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer nope", "Basic abc", "bl_x"])
def test_a_missing_or_unknown_key_is_401(client, authorization):
    if authorization is None:
        del client.headers["Authorization"]
    else:
        client.headers["Authorization"] = authorization

    answer = client.get("/v1/accounts/1")

    assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized")
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_revoked_key_is_401(svc, client):
    key, secret = svc.create_api_key("soon-revoked", ["read"])
    svc.revoke_api_key(key.id)
    client.headers["Authorization"] = f"Bearer {secret}"

    assert client.get("/v1/accounts/1").status_code == 401


def test_a_key_revoked_after_use_works_until_its_cache_entry_expires(svc, make_client):
    client = make_client("read", key_cache_seconds=0.5)
    assert client.get("/v1/sync-runs").status_code == 200
    svc.revoke_api_key(client.key_id)

    assert client.get("/v1/sync-runs").status_code == 200  # trusted for 0.5 s more
    time.sleep(0.6)
    assert client.get("/v1/sync-runs").status_code == 401


def test_without_the_cache_a_revoked_key_is_refused_at_once(svc, make_client):
    client = make_client("read", key_cache_seconds=0)
    assert client.get("/v1/sync-runs").status_code == 200
    svc.revoke_api_key(client.key_id)

    assert client.get("/v1/sync-runs").status_code == 401


def test_a_cached_key_is_read_from_the_database_once(svc, make_client):
    client = make_client("read")
    reads = []
    count = lambda *args: reads.append(args[2]) if "balance_api_keys" in args[2] else None  # noqa: E731
    event.listen(svc.engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            assert client.get("/v1/sync-runs").status_code == 200
    finally:
        event.remove(svc.engine, "before_cursor_execute", count)

    assert len(reads) == 1


INSTANT = "2030-01-01T00:00:00Z"
# (method, path, body, the scope it needs; admin may do everything). {hold}, {charge} and
# {webhook} are an active hold, a charge and a webhook the test makes first.
ROUTES = {
    "open": ("post", "/v1/accounts", {"user_id": 2}, "admin"),
    "card": ("get", "/v1/accounts/1", None, "read"),
    "policy": ("put", "/v1/accounts/1/policy", {}, "admin"),
    "history": ("get", "/v1/accounts/1/transactions", None, "read"),
    "statement": ("get", f"/v1/accounts/1/statement?from={INSTANT}&to={INSTANT}", None, "read"),
    "balance-at": ("get", f"/v1/accounts/1/balance?at={INSTANT}", None, "read"),
    "recharge": ("post", "/v1/accounts/1/recharges", {"amount": 5}, "recharge"),
    "charge": ("post", "/v1/accounts/1/charges", {"amount": 5, "service_type": "vps"}, "charge"),
    "batch": (
        "post",
        "/v1/charges:batch",
        {"items": [{"user_id": 1, "amount": 5, "service_type": "vps"}]},
        "charge",
    ),
    "refund": ("post", "/v1/transactions/{charge}:refund", {"amount": 1}, "recharge"),
    "adjust": ("post", "/v1/accounts/1/adjustments", {"delta": 5, "reason": "why"}, "admin"),
    "hold": ("post", "/v1/accounts/1/holds", {"amount": 5, "service_type": "vps"}, "charge"),
    "get-hold": ("get", "/v1/holds/{hold}", None, "read"),
    "capture": ("post", "/v1/holds/{hold}:capture", None, "charge"),
    "void": ("post", "/v1/holds/{hold}:void", None, "charge"),
    "discrepancies": ("get", "/v1/discrepancies", None, "admin"),
    "reconcile": ("post", "/v1/reconciliations", {}, "admin"),
    "sync-runs": ("get", "/v1/sync-runs", None, "read"),
    "sync-fixes": ("get", "/v1/sync-runs/1/fixes", None, "read"),
    "add-webhook": ("post", "/v1/webhooks", {"url": "https://example.com/hook"}, "admin"),
    "webhooks": ("get", "/v1/webhooks", None, "admin"),
    "remove-webhook": ("delete", "/v1/webhooks/{webhook}", None, "admin"),
    "events": ("get", "/v1/events?user_id=1", None, "admin"),
    "deliveries": ("get", "/v1/events/1/deliveries", None, "admin"),
    "retry-event": ("post", "/v1/events/1:retry", None, "admin"),
}


@pytest.mark.parametrize("scope", ["read", "charge", "recharge", "admin"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_each_route_needs_its_scope(make_client, client, scope, route):
    open_account(client, balance=1_000)
    method, path, body, needs = ROUTES[route]
    if "{hold}" in path:
        held = client.post("/v1/accounts/1/holds", json={"amount": 5, "service_type": "vps"})
        path = path.format(hold=held.json()["id"])
    if "{charge}" in path:
        path = path.format(charge=charge(client, 5)["id"])
    if "{webhook}" in path:
        added = client.post("/v1/webhooks", json={"url": "https://example.com/hook"})
        path = path.format(webhook=added.json()["id"])
    scoped = make_client(scope)

    answer = scoped.request(method, path, json=body)

    allowed = scope in (needs, "admin")
    assert answer.status_code < 400 if allowed else answer.status_code == 403, answer.text


def test_the_scope_matrix_covers_every_route(client):
    """A new route must be added to ROUTES, so its scope is tested."""
    schema = client.get("/openapi.json").json()
    served = {
        (method, path)
        for path, operations in schema["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    }
    listed = {(method, path.split("?")[0]) for method, path, _, _ in ROUTES.values()}
    assert {(m, shape(p)) for m, p in served} == {(m, shape(p)) for m, p in listed}


def shape(path: str) -> str:
    """The path with each parameter, named or filled in, as {}."""
    return re.sub(r"\{[^}]*\}|(?<=/)\d+(?=/|:|$)", "{}", path)
