"""GET /metrics: movements by outcome, latencies, lock waits, and the reconciler's totals."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from balance_ledger import BalanceService
from balance_ledger.http import create_app
from tests.http.calls import charge, open_account


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: {(name, sorted labels): value}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def movements(samples, kind: str, outcome: str) -> float:
    return samples.get(("balance_movements_total", (("kind", kind), ("outcome", outcome))), 0)


def test_charges_are_counted_by_outcome(client):
    open_account(client, balance=100)
    charge(client, 60, key="usage-1")
    client.post(
        "/v1/accounts/1/charges",
        json={"amount": 60, "service_type": "vps"},
        headers={"Idempotency-Key": "usage-1"},
    )
    client.post("/v1/accounts/1/charges", json={"amount": 60, "service_type": "vps"})

    samples = scrape(client)

    assert movements(samples, "charge", "created") == 1
    assert movements(samples, "charge", "replayed") == 1
    assert movements(samples, "charge", "insufficient-balance") == 1
    assert movements(samples, "recharge", "created") == 1
    latency = ("balance_movement_duration_seconds_count", (("kind", "charge"),))
    assert samples[latency] == 3


def test_batch_items_are_counted_one_by_one(client):
    open_account(client, balance=100)
    items = [{"user_id": u, "amount": 10, "service_type": "api"} for u in (1, 1, 2)]

    client.post("/v1/charges:batch", json={"items": items})

    samples = scrape(client)
    assert movements(samples, "charge", "created") == 2
    assert movements(samples, "charge", "account-not-found") == 1
    assert movements(samples, "charge_batch", "created") == 1


def test_requests_are_counted_by_route_template_not_by_raw_path(client):
    open_account(client, 1)
    open_account(client, 2)
    client.get("/v1/accounts/1")
    client.get("/v1/accounts/2")
    client.get("/nowhere")

    samples = scrape(client)

    card = (("method", "GET"), ("route", "/v1/accounts/{user_id}"), ("status", "200"))
    assert samples[("balance_http_requests_total", card)] == 2
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("balance_http_requests_total", unmatched)] == 1
    assert not any("/v1/accounts/1" in dict(labels).get("route", "") for _, labels in samples)


def test_lock_waits_are_observed(client):
    open_account(client, balance=100)
    waits_before = scrape(client)[("balance_lock_wait_seconds_count", ())]

    charge(client, 10)

    assert scrape(client)[("balance_lock_wait_seconds_count", ())] == waits_before + 1


def test_discrepancies_found_and_fixed_come_from_every_recorded_run(client, svc, corrupt):
    open_account(client, 1, balance=100)
    open_account(client, 2, balance=100)
    corrupt(1, balance=0)
    corrupt(2, balance=0)
    svc.verify_and_fix_balance()  # as the nightly job in another process would
    svc.verify_and_fix_balance(user_id=1, fix=True)

    samples = scrape(client)

    kind = (("kind", "verify"),)
    assert samples[("balance_sync_discrepancies_found_total", kind)] == 3
    assert samples[("balance_sync_discrepancies_fixed_total", kind)] == 1
    assert samples[("balance_sync_runs_total", kind)] == 2
    assert samples[("balance_database_up", ())] == 1


def test_metrics_need_no_key_and_say_when_the_database_is_down():
    with BalanceService.from_url("postgresql+psycopg://nobody@127.0.0.1:1/none") as down:
        client = TestClient(create_app(down))

        samples = scrape(client)

    assert samples[("balance_database_up", ())] == 0
