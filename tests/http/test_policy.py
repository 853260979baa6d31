"""An account's policy over HTTP: set at opening, replaced by PUT …/policy (admin)."""

from __future__ import annotations

import pytest

from balance_ledger import AccountPolicy, AccountStatus, EventType
from tests.http.calls import PROBLEM, charge, open_account

RULES = {
    "low_balance_threshold": 500,
    "grace_amount": 100,
    "grace_period_seconds": 3600,
    "reactivation_threshold": 0,
}


def test_an_account_opens_with_a_policy_and_its_card_shows_it(client):
    answer = client.post("/v1/accounts", json={"user_id": 1, "policy": RULES})

    assert answer.status_code == 201
    assert answer.json()["policy"] == RULES
    assert client.get("/v1/accounts/1").json()["policy"] == RULES


def test_a_policy_replaced_over_http_applies_at_once(client, svc):
    open_account(client, 1, balance=1_000)
    charge(client, 700)

    answer = client.put("/v1/accounts/1/policy", json={"low_balance_threshold": 500})

    assert answer.status_code == 200
    assert answer.json()["policy"]["low_balance_threshold"] == 500
    assert svc.get_balance(1).policy == AccountPolicy(low_balance_threshold=500)
    assert svc.events()[-1].event_type is EventType.BALANCE_LOW


def test_a_policy_that_reactivates_answers_the_new_status(client, svc):
    open_account(client, 1, balance=100)
    svc.charge_service(1, 150, "vps", allow_overdraft=True)

    answer = client.put("/v1/accounts/1/policy", json={"grace_amount": 50})

    assert answer.json()["status"] == "active"
    assert svc.get_balance(1).status is AccountStatus.ACTIVE


@pytest.mark.parametrize(
    "body",
    [
        {"grace_amount": -1},
        {"low_balance_threshold": 0},
        {"reactivation_threshold": -1},
        {"grace_period_seconds": -1},
        {"grace_period_seconds": 10**12},
        {"grace_amount": "100"},
        {"surprise": 1},
    ],
)
def test_a_malformed_policy_is_422_and_changes_nothing(client, svc, dump, body):
    open_account(client, 1)
    before = dump()

    answer = client.put("/v1/accounts/1/policy", json=body)

    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert dump() == before


def test_a_policy_for_an_unknown_account_is_404(client):
    assert client.put("/v1/accounts/9/policy", json={}).status_code == 404


def test_only_an_admin_sets_a_policy(make_client, client):
    open_account(client, 1)

    for scope in ("read", "charge", "recharge"):
        answer = make_client(scope).put("/v1/accounts/1/policy", json={})
        assert answer.status_code == 403
