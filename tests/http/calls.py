"""Calls the HTTP tests share."""

from __future__ import annotations

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def open_account(client: TestClient, user_id: int = 1, balance: int = 0) -> None:
    assert client.post("/v1/accounts", json={"user_id": user_id}).status_code == 201
    if balance:
        answer = client.post(f"/v1/accounts/{user_id}/recharges", json={"amount": balance})
        assert answer.status_code == 201


def charge(client: TestClient, amount: int, user_id: int = 1, key: str | None = None) -> dict:
    """A charge that must succeed; its ledger row."""
    answer = client.post(
        f"/v1/accounts/{user_id}/charges",
        json={"amount": amount, "service_type": "vps"},
        headers={"Idempotency-Key": key} if key else {},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]
