"""Statements and balance-at over HTTP: computed from the ledger, instants with offsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.http.calls import charge, open_account


def test_a_statement_has_opening_movements_and_closing(client):
    open_account(client, balance=1_000)
    start = datetime.now(UTC)
    charge(client, 300)
    charge(client, 200)
    end = datetime.now(UTC) + timedelta(seconds=1)

    answer = client.get(
        "/v1/accounts/1/statement", params={"from": start.isoformat(), "to": end.isoformat()}
    )

    assert answer.status_code == 200
    period = answer.json()
    assert (period["opening_balance"], period["closing_balance"]) == (1_000, 500)
    assert period["totals"] == {"charge": 500}
    assert [row["amount"] for row in period["transactions"]] == [300, 200]
    assert period["currency"] == "VND"


def test_balance_at_is_the_balance_after_the_rows_written_by_then(client):
    open_account(client, balance=1_000)
    between = datetime.now(UTC)
    charge(client, 300)

    before = client.get("/v1/accounts/1/balance", params={"at": between.isoformat()})
    now = client.get("/v1/accounts/1/balance", params={"at": datetime.now(UTC).isoformat()})

    assert (before.json()["balance"], now.json()["balance"]) == (1_000, 700)
    assert before.json()["currency"] == "VND"


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/accounts/1/balance", {"at": "2030-01-01T00:00:00"}, "invalid-request"),
        ("/v1/accounts/1/balance", {"at": "yesterday"}, "malformed-request"),
        ("/v1/accounts/1/balance", {"at": "0001-01-01T00:01:00+01:00"}, "invalid-request"),
        ("/v1/accounts/1/balance", {}, "malformed-request"),
        (
            "/v1/accounts/1/statement",
            {"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
            "invalid-request",
        ),
        ("/v1/accounts/1/statement", {"from": "2030-01-02T00:00:00Z"}, "malformed-request"),
    ],
    ids=["naive", "not-a-date", "before-utc-begins", "missing", "backwards", "no-end"],
)
def test_a_bad_instant_is_422(client, path, params, code):
    open_account(client)

    answer = client.get(path, params=params)

    assert (answer.status_code, answer.json()["code"]) == (422, code)


@pytest.mark.parametrize("path", ["/v1/accounts/9/balance", "/v1/accounts/9/statement"])
def test_history_of_an_unknown_account_is_404(client, path):
    instant = "2030-01-01T00:00:00Z"
    answer = client.get(path, params={"at": instant, "from": instant, "to": instant})

    assert (answer.status_code, answer.json()["code"]) == (404, "account-not-found")
