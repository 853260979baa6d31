"""Group commit over HTTP: with ``group_commit`` (``balance serve``'s default) single
charges go through a ChargeCoalescer, and every answer is what the charge alone gets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from balance_ledger import BalanceService, ChargeCoalescer, InvalidRequest
from balance_ledger.http import app as http_app
from tests.http.calls import PROBLEM, open_account
from tests.http.conftest import MakeClient

CHARGES = 16


def post_charge(client: TestClient, amount: int, key: str | None) -> tuple[int, bool, str]:
    answer = client.post(
        "/v1/accounts/1/charges",
        json={"amount": amount, "service_type": "api"},
        headers={"Idempotency-Key": key} if key else {},
    )
    replayed = answer.headers.get("Idempotent-Replayed") == "true"
    return answer.status_code, replayed, answer.headers["content-type"]


def test_concurrent_charges_share_transactions_and_each_gets_its_own_answer(
    svc: BalanceService, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
):
    batches: list[int] = []
    charge_many, charge_alone = svc.charge_many, svc.charge
    sent, first_written = threading.Semaphore(0), threading.Event()

    def lone(request):  # the first charge is written alone: hold it until the rest queue
        batches.append(1)
        if not first_written.is_set():
            for _ in range(CHARGES - 1):
                assert sent.acquire(timeout=30)
            time.sleep(0.3)  # sent is not yet queued: let them reach the coalescer
            first_written.set()
        return charge_alone(request)

    def many(items, **options):
        items = list(items)
        batches.append(len(items))
        return charge_many(items, **options)

    monkeypatch.setattr(svc, "charge", lone)
    monkeypatch.setattr(svc, "charge_many", many)
    # One writer: the batches it makes while the first charge is held are what is checked.
    with make_client("admin", group_commit=True, group_commit_writers=1) as client:
        open_account(client, balance=10 * 100)

        def charge(n: int) -> tuple[int, bool, str]:
            if n:
                sent.release()
            return post_charge(client, 100, f"usage-{n}")

        with ThreadPoolExecutor(CHARGES) as threads:
            answers = list(threads.map(charge, range(CHARGES)))
        with ThreadPoolExecutor(CHARGES) as threads:  # every retry gets the first answer
            retries = list(threads.map(charge, range(CHARGES)))
        card = client.get("/v1/accounts/1").json()

    assert Counter(status for status, _, _ in answers) == {201: 10, 402: 6}
    assert all(replayed is False for _, replayed, _ in answers)
    assert [status for status, _, _ in retries] == [200 if s == 201 else s for s, _, _ in answers]
    assert all(replayed for _, replayed, _ in retries)
    assert {kind for status, _, kind in answers if status == 402} == {PROBLEM}
    assert (card["balance"], card["total_spent"]) == (0, 1_000)
    assert max(batches) > 1, f"no two charges shared a transaction: {batches}"
    assert sum(batches) == 2 * CHARGES


def test_a_charge_through_group_commit_answers_as_alone(make_client: MakeClient):
    with make_client("admin", group_commit=True) as client:
        assert isinstance(client.app.state.charge.__self__, ChargeCoalescer)
        open_account(client, balance=500)
        assert post_charge(client, 300, "k-1")[:2] == (201, False)
        assert post_charge(client, 300, "k-1")[:2] == (200, True)  # a replay
        assert post_charge(client, 301, "k-1")[0] == 409  # the key's other request
        assert post_charge(client, 300, "k-2")[:2] == (402, False)  # 200 left
        assert post_charge(client, 300, "k-2")[:2] == (402, True)  # the refusal, again
        body = {"amount": "300", "service_type": "api"}
        assert client.post("/v1/accounts/1/charges", json=body).status_code == 422
        assert client.get("/v1/accounts/1").json()["balance"] == 200
    after_shutdown = getattr(client.app.state.charge, "__self__", None)
    assert not isinstance(after_shutdown, ChargeCoalescer)  # straight to the service


@pytest.mark.parametrize(("flag", "coalesced"), [("1", True), ("0", False), (None, True)])
def test_balance_serve_workers_group_commit_unless_told_not_to(
    database_url: str, monkeypatch: pytest.MonkeyPatch, flag: str | None, coalesced: bool
):
    monkeypatch.setenv("BALANCE_DATABASE_URL", database_url)
    if flag is None:
        monkeypatch.delenv(http_app.GROUP_COMMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(http_app.GROUP_COMMIT_ENV, flag)
    app = http_app.app_from_environment()
    try:
        with TestClient(app):
            charge = app.state.charge
            assert isinstance(getattr(charge, "__self__", None), ChargeCoalescer) is coalesced
    finally:
        app.state.service.close()


@pytest.mark.parametrize("told", [None, "1", "3"])
def test_balance_serve_workers_write_batches_at_once(
    database_url: str, backend: str, monkeypatch: pytest.MonkeyPatch, told: str | None
):
    """Two writers by default (one on SQLite, which writes one transaction at a time),
    or as many as told (BALANCE_GROUP_COMMIT_WRITERS: --group-commit-writers)."""
    monkeypatch.setenv("BALANCE_DATABASE_URL", database_url)
    monkeypatch.delenv(http_app.GROUP_COMMIT_ENV, raising=False)
    if told is None:
        monkeypatch.delenv(http_app.GROUP_COMMIT_WRITERS_ENV, raising=False)
        expected = 1 if backend == "sqlite" else http_app.GROUP_COMMIT_WRITERS
    else:
        monkeypatch.setenv(http_app.GROUP_COMMIT_WRITERS_ENV, told)
        expected = int(told)
    app = http_app.app_from_environment()
    with TestClient(app):
        coalescer = app.state.charge.__self__
        assert len(coalescer._writers) == expected


def test_a_group_commit_writers_setting_that_is_no_count_is_refused(database_url, monkeypatch):
    monkeypatch.setenv("BALANCE_DATABASE_URL", database_url)
    monkeypatch.setenv(http_app.GROUP_COMMIT_WRITERS_ENV, "two")
    with pytest.raises(InvalidRequest, match="BALANCE_GROUP_COMMIT_WRITERS"):
        http_app.app_from_environment()
