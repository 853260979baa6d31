"""The charge route's fast path (http/fast_charge.py) answers as the FastAPI route does.

Two apps over one service, one with the fast path and one without, get the same
requests, each against its own account in the same state: every answer must be the
same (status, headers, body; ids, times and hashes aside), whether the fast path took
the request or handed it to the route.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from balance_ledger import BalanceService
from balance_ledger.http import create_app
from balance_ledger.http.fast_charge import FastCharges

VOLATILE = {"id", "user_id", "created_at", "row_hash", "request_id", "instance"}


@pytest.fixture
def apps(svc: BalanceService) -> Iterator[dict[bool, TestClient]]:
    _, secret = svc.create_api_key("both", ["charge", "read"])
    _, READ_ONLY["secret"] = svc.create_api_key("reader", ["read"])
    clients = {}
    for fast in (True, False):
        client = TestClient(create_app(svc, fast_charges=fast), raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {secret}"
        clients[fast] = client
    yield clients
    for client in clients.values():
        client.close()


def _taken(client: TestClient) -> list[str]:
    """Wrap the fast path's way on to the route: what it records are the requests it
    did not answer itself."""
    client.get("/healthz")  # the middleware stack is built on the first request
    layer: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, FastCharges):
        layer = layer.app
    handed_on: list[str] = []
    route = layer.app

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        handed_on.append(scope["path"])
        await route(scope, receive, send)

    layer.app = counted
    return handed_on


def _answer(response: Any) -> tuple[int, dict[str, str], Any]:
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("date", "x-request-id", "content-length")
    }
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: _shape(v) if k in VOLATILE else v for k, v in body.items()}
        body["detail"] = str(body.get("detail", "")).replace("account 2", "account 1")
    return response.status_code, headers, body


def _shape(value: Any) -> Any:
    """A value that differs between the two accounts, reduced to its form: the type, and
    for text where its digits and letters are (a time's format, a hash's length)."""
    return re.sub(r"[0-9a-f]", "0", value) if isinstance(value, str) else type(value).__name__


CASES: list[tuple[str, dict[str, Any]]] = [
    ("a charge", {"json": {"amount": 100, "service_type": "vps"}}),
    ("a keyed charge", {"json": {"amount": 7, "service_type": "vps"}, "key": "k-0"}),
    ("another keyed charge", {"json": {"amount": 7, "service_type": "vps"}, "key": "k-1"}),
    ("its retry", {"json": {"amount": 7, "service_type": "vps"}, "key": "k-1"}),
    ("the key's other request", {"json": {"amount": 8, "service_type": "vps"}, "key": "k-1"}),
    ("every option", {"json": {"amount": 1, "service_type": "api", "description": "d",
                               "reference_model": "m", "reference_id": 42, "currency": "VND",
                               "allow_overdraft": False}}),
    ("too much", {"json": {"amount": 10**6, "service_type": "vps"}, "key": "k-2"}),
    ("too much, again", {"json": {"amount": 10**6, "service_type": "vps"}, "key": "k-2"}),
    ("overdraft", {"json": {"amount": 2_000, "service_type": "vps", "allow_overdraft": True}}),
    ("suspended", {"json": {"amount": 1, "service_type": "vps"}}),
    ("amount 0", {"json": {"amount": 0, "service_type": "vps"}}),
    ("blank service", {"json": {"amount": 1, "service_type": "  "}}),
    ("wrong currency", {"json": {"amount": 1, "service_type": "vps", "currency": "USD"}}),
    ("amount as text", {"json": {"amount": "1", "service_type": "vps"}}),
    ("unknown field", {"json": {"amount": 1, "service_type": "vps", "extra": 1}}),
    ("not JSON", {"content": b"{amount", "headers": {"Content-Type": "application/json"}}),
    ("no body", {"content": b"", "headers": {"Content-Type": "application/json"}}),
    ("JSON null", {"content": b"null", "headers": {"Content-Type": "application/json"}}),
    ("text/plain", {"content": b'{"amount": 1, "service_type": "vps"}',
                    "headers": {"Content-Type": "text/plain"}}),
    ("a float amount", {"json": {"amount": 1.0, "service_type": "vps"}}),
    ("a huge integer", {"content": b'{"amount": 100000000000000000000, "service_type": "v"}',
                        "headers": {"Content-Type": "application/json"}}),
    ("no key", {"json": {"amount": 1, "service_type": "vps"}, "auth": None}),
    ("an unknown key", {"json": {"amount": 1, "service_type": "vps"}, "auth": "Bearer nope"}),
    ("another scheme", {"json": {"amount": 1, "service_type": "vps"}, "auth": "Basic abc"}),
    ("a long key", {"json": {"amount": 1, "service_type": "vps"}, "key": "k" * 300}),
    ("a client's request id", {"json": {"amount": 1, "service_type": "vps"},
                               "headers": {"X-Request-Id": "abc-1"}}),
    ("a key without the scope", {"json": {"amount": 1, "service_type": "vps"}, "auth": "read"}),
    ("two keys", {"json": {"amount": 1, "service_type": "vps"}, "twice": "Idempotency-Key"}),
]  # fmt: skip


READ_ONLY: dict[str, str] = {}  # the secret of a key allowed to read only


def _send(client: TestClient, user_id: int, case: dict[str, Any]) -> Any:
    headers: list[tuple[str, str]] = list(case.get("headers", {}).items())
    if "key" in case:
        headers.append(("Idempotency-Key", case["key"]))
    if "twice" in case:
        headers += [(case["twice"], "k-9"), (case["twice"], "k-10")]
    if "auth" in case:
        auth = case["auth"]
        headers.append(
            ("Authorization", f"Bearer {READ_ONLY['secret']}" if auth == "read" else auth or "")
        )
    else:
        headers.append(("Authorization", client.headers["Authorization"]))
    body = case.get("json")
    content = orjson.dumps(body) if body is not None else case["content"]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    return client.post(
        f"/v1/accounts/{user_id}/charges", headers=httpx.Headers(headers), content=content
    )


# The requests the fast path hands on to the route: it answers every other one itself.
HANDED_ON = {
    "amount as text",
    "unknown field",
    "not JSON",
    "no body",
    "JSON null",
    "text/plain",
    "a float amount",
    "a huge integer",
    "no key",
    "an unknown key",
    "another scheme",
    "a key without the scope",
    "two keys",
}


def test_the_fast_path_answers_every_request_as_the_route(
    svc: BalanceService, apps: dict[bool, TestClient]
) -> None:
    for user_id in (1, 2):
        svc.open_account(user_id)
        svc.recharge(user_id, 1_000)
    handed_on = _taken(apps[True])
    _send(apps[True], 1, {"json": {"amount": 1, "service_type": "vps"}})  # caches the key
    _send(apps[False], 2, {"json": {"amount": 1, "service_type": "vps"}})
    # A row as a charge's answer shows it is the row as the history shows it.
    for user_id, app in ((1, apps[True]), (2, apps[False])):
        answered = _send(app, user_id, {"json": {"amount": 3, "service_type": "vps"}}).json()
        history = app.get(f"/v1/accounts/{user_id}/transactions").json()["transactions"]
        assert answered == history[0]
    taken_by_route = set()
    for name, case in CASES:
        before = len(handed_on)
        fast = _send(apps[True], 1, case)
        plain = _send(apps[False], 2, case)
        assert _answer(fast) == _answer(plain), name
        if name == "a client's request id":
            assert fast.headers["X-Request-Id"] == plain.headers["X-Request-Id"] == "abc-1"
        if len(handed_on) > before:
            taken_by_route.add(name)
    assert taken_by_route == HANDED_ON
    missing = CASES[0][1]
    assert _answer(_send(apps[True], 3, missing)) == _answer(_send(apps[False], 3, missing))
    first, second = svc.get_balance(1), svc.get_balance(2)
    assert (first.balance, first.total_spent, first.status) == (
        second.balance,
        second.total_spent,
        second.status,
    )


def test_the_fast_path_is_counted_under_the_route(
    svc: BalanceService, apps: dict[bool, TestClient]
) -> None:
    svc.open_account(1)
    svc.recharge(1, 1_000)
    for _ in range(2):  # the first through the route (the key is not cached yet), then fast
        assert _send(apps[True], 1, CASES[0][1]).status_code == 201
    scrape = apps[True].get("/metrics").text
    counted = 'balance_http_requests_total{method="POST",route="/v1/accounts/{user_id}/charges",'
    assert f'{counted}status="201"}} 2.0' in scrape
    assert 'route="unmatched"' not in scrape


def test_a_body_sent_in_chunks_past_the_limit_is_413_either_way(svc: BalanceService) -> None:
    """No Content-Length to refuse it by: the limit stops it while it is read, in the
    fast path or in the route (where FastAPI made any error reading a body a 400)."""
    svc.open_account(1)
    _, secret = svc.create_api_key("chunks", ["charge"])
    for fast in (True, False):
        app = create_app(svc, fast_charges=fast, max_body_bytes=100)
        with TestClient(app, raise_server_exceptions=False) as client:
            client.headers["Authorization"] = f"Bearer {secret}"
            for _ in range(2):  # the first caches the key: the second may go the fast way
                answer = client.post(
                    "/v1/accounts/1/charges",
                    content=iter([b'{"amount": 1, "service_type": "', b"v" * 200, b'"}']),
                    headers={"Content-Type": "application/json"},
                )
                assert (answer.status_code, answer.json()["code"]) == (413, "body-too-large")
