"""Races over HTTP: requests released together still write each keyed movement once.

Every racer is a thread with its own TestClient (its own event loop) over ONE app, so
the requests run at once in the app and hit the service's connection pool together
(pool_size = racers); the database, not the client, is what serialises them. Each
race checks that the pool really saw overlapping checkouts, so a race that quietly
became a queue fails instead of passing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from balance_ledger import BalanceService
from balance_ledger.http import create_app
from tests.http.calls import PROBLEM

RACERS = 16
MOST_RACERS = 24  # the retry storm: 8 charges x 3 attempts


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def charge(amount: int, key: str | None = None, user_id: int = 1) -> Request:
    headers = {"Idempotency-Key": key} if key is not None else {}
    body = {"amount": amount, "service_type": "vps"}
    return Request("POST", f"/v1/accounts/{user_id}/charges", body, headers)


class PoolPeak:
    """The most connections the engine's pool had checked out at one time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out = 0
        self.peak = 0

    def checkout(self, *_: object) -> None:
        with self._lock:
            self._out += 1
            self.peak = max(self.peak, self._out)

    def checkin(self, *_: object) -> None:
        with self._lock:
            self._out -= 1


@dataclass
class Race:
    app: FastAPI
    svc: BalanceService
    secret: str

    def __call__(self, requests: list[Request]) -> list[httpx.Response]:
        """Send each request from its own thread and client, all released at once."""
        barrier = threading.Barrier(len(requests))
        pool = PoolPeak()
        auth = {"Authorization": f"Bearer {self.secret}"}
        with ExitStack() as stack:
            # Entered before the barrier: each client's event loop is already running.
            clients = [
                stack.enter_context(
                    TestClient(self.app, raise_server_exceptions=False, headers=auth)
                )
                for _ in requests
            ]
            for client in clients:  # its first request pays for lazy set-up, not the race
                assert client.get("/healthz").status_code == 200

            def send(i: int) -> httpx.Response:
                request = requests[i]
                barrier.wait(timeout=30)
                return clients[i].request(
                    request.method, request.path, json=request.body, headers=request.headers
                )

            event.listen(self.svc.engine, "checkout", pool.checkout)
            event.listen(self.svc.engine, "checkin", pool.checkin)
            try:
                with ThreadPoolExecutor(len(requests)) as threads:
                    answers = list(threads.map(send, range(len(requests))))
            finally:
                event.remove(self.svc.engine, "checkout", pool.checkout)
                event.remove(self.svc.engine, "checkin", pool.checkin)
        # Typically every racer holds a connection at once; a queue would hold one.
        assert pool.peak >= len(requests) // 4, f"only {pool.peak} connections at once: no race"
        return answers


@pytest.fixture
def svc(database_url: str) -> Iterator[BalanceService]:
    """The conftest's service, with a connection for every racer (with the default
    pool of 5 + 10, racers would wait in Python for a connection, not in the database)."""
    with BalanceService.from_url(database_url, pool_size=MOST_RACERS, max_overflow=0) as service:
        # Connect them all now (in parallel: tens of milliseconds each on MariaDB): a
        # racer that must first open its connection would arrive after the race was over.
        held = threading.Barrier(MOST_RACERS)

        def connect(_: int) -> None:
            with service.engine.connect():
                held.wait(timeout=30)

        with ThreadPoolExecutor(MOST_RACERS) as threads:
            list(threads.map(connect, range(MOST_RACERS)))
        yield service


@pytest.fixture
def race(svc: BalanceService) -> Race:
    _, secret = svc.create_api_key("racer", ["admin"])
    return Race(create_app(svc), svc, secret)


@pytest.fixture
def admin(race: Race) -> Iterator[TestClient]:
    """One unhurried client, to set the scene and read the outcome."""
    headers = {"Authorization": f"Bearer {race.secret}"}
    with TestClient(race.app, raise_server_exceptions=False, headers=headers) as client:
        yield client


def open_account(client: TestClient, balance: int, user_id: int = 1) -> None:
    body = {"user_id": user_id, "currency": "VND", "credit_limit": 0}
    assert client.post("/v1/accounts", json=body).status_code == 201
    answer = client.post(f"/v1/accounts/{user_id}/recharges", json={"amount": balance})
    assert answer.status_code == 201, answer.text


def statuses(answers: list[httpx.Response]) -> Counter[int]:
    return Counter(answer.status_code for answer in answers)


def bodies(answers: list[httpx.Response]) -> list[str]:
    """What a failed assertion shows: every answer, a 500's included."""
    return [answer.text for answer in answers]


def ledger(client: TestClient, user_id: int = 1) -> list[dict[str, Any]]:
    """The account's rows, oldest first."""
    page = client.get(f"/v1/accounts/{user_id}/transactions", params={"limit": 500}).json()
    assert page["next_before_id"] is None
    return page["transactions"][::-1]


def charges_in(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["transaction_type"] == "charge"]


def assert_exact(svc: BalanceService, client: TestClient, user_id: int = 1) -> None:
    """The cached balance is what the ledger adds up to, and the snapshot chain holds."""
    card = client.get(f"/v1/accounts/{user_id}").json()
    totals = svc.ledger_totals(user_id)
    assert (totals.balance, totals.total_spent, totals.total_recharged) == (
        card["balance"],
        card["total_spent"],
        card["total_recharged"],
    )
    assert svc.verify_and_fix_balance(user_id).in_sync
    rows = ledger(client, user_id)
    assert all(prev["balance_after"] == row["balance_before"] for prev, row in pairwise(rows))
    assert min(row["balance_after"] for row in rows) >= -card["credit_limit"]


@pytest.mark.race
def test_racing_copies_of_one_keyed_charge_write_one_row_and_replay_it(race, admin, svc):
    open_account(admin, balance=1_000)

    answers = race([charge(300, key="usage-1")] * RACERS)

    assert statuses(answers) == {201: 1, 200: RACERS - 1}, bodies(answers)
    [first] = [a for a in answers if a.status_code == 201]
    assert "Idempotent-Replayed" not in first.headers
    replays = [a for a in answers if a.status_code == 200]
    assert all(a.headers.get("Idempotent-Replayed") == "true" for a in replays)
    assert all(a.json() == first.json() for a in answers)  # the same row, id and all
    assert charges_in(ledger(admin)) == [first.json()]
    assert admin.get("/v1/accounts/1").json()["balance"] == 700
    assert_exact(svc, admin)


@pytest.mark.race
def test_one_key_racing_with_different_amounts_writes_only_the_winners_row(race, admin, svc):
    open_account(admin, balance=1_000)
    amounts = [100 + 10 * (i % 4) for i in range(RACERS)]  # 4 bodies, 4 racers each

    answers = race([charge(amount, key="usage-1") for amount in amounts])

    assert statuses(answers) == {201: 1, 200: 3, 409: RACERS - 4}, bodies(answers)
    [first] = [a for a in answers if a.status_code == 201]
    won = first.json()["amount"]
    for amount, answer in zip(amounts, answers, strict=True):
        if amount == won:  # the winner's body again: a replay of its row
            assert answer.json() == first.json()
            assert answer is first or answer.headers["Idempotent-Replayed"] == "true"
        else:
            assert (answer.status_code, answer.headers["content-type"]) == (409, PROBLEM)
            problem = answer.json()
            assert (problem["code"], problem["idempotency_key"]) == (
                "idempotency-conflict",
                "usage-1",
            )
    assert charges_in(ledger(admin)) == [first.json()]
    assert admin.get("/v1/accounts/1").json()["balance"] == 1_000 - won
    assert_exact(svc, admin)


@pytest.mark.race
def test_racing_charges_with_their_own_keys_take_only_what_the_balance_covers(race, admin, svc):
    covered = 7  # of RACERS charges of 100
    open_account(admin, balance=covered * 100)

    answers = race([charge(100, key=f"usage-{i}") for i in range(RACERS)])

    assert statuses(answers) == {201: covered, 402: RACERS - covered}, bodies(answers)
    refusals = [a.json() for a in answers if a.status_code == 402]
    assert {problem["code"] for problem in refusals} == {"insufficient-balance"}
    written = {a.json()["id"]: a.json() for a in answers if a.status_code == 201}
    assert len(written) == covered
    charges = charges_in(ledger(admin))
    assert {row["id"]: row for row in charges} == written
    assert sorted(row["balance_after"] for row in charges) == [100 * n for n in range(covered)]
    assert admin.get("/v1/accounts/1").json()["balance"] == 0
    assert_exact(svc, admin)


@pytest.mark.race
def test_a_retry_storm_writes_each_logical_charge_once(race, admin, svc):
    logical, attempts = 8, 3
    assert logical * attempts == MOST_RACERS
    open_account(admin, balance=1_000)
    amount_of = {f"usage-{i}": 10 * (i + 1) for i in range(logical)}
    # Attempts of one charge are spread over the storm, not side by side.
    sent = [charge(amount, key) for _ in range(attempts) for key, amount in amount_of.items()]

    answers = race(sent)

    replays = logical * (attempts - 1)
    assert statuses(answers) == {201: logical, 200: replays}, bodies(answers)
    by_key: dict[str, list[httpx.Response]] = {}
    for request, answer in zip(sent, answers, strict=True):
        by_key.setdefault(request.headers["Idempotency-Key"], []).append(answer)
    rows = {}
    for key, tries in by_key.items():
        assert sorted(a.status_code for a in tries) == [200] * (attempts - 1) + [201], key
        [row] = {a.json()["id"]: a.json() for a in tries}.values()  # one row per key
        assert (row["idempotency_key"], row["amount"]) == (key, amount_of[key])
        assert all(a.json() == row for a in tries)
        assert all(
            a.headers["Idempotent-Replayed"] == "true" for a in tries if a.status_code == 200
        )
        rows[row["id"]] = row
    assert len(rows) == logical
    assert {row["id"]: row for row in charges_in(ledger(admin))} == rows
    assert admin.get("/v1/accounts/1").json()["balance"] == 1_000 - sum(amount_of.values())
    assert_exact(svc, admin)


@pytest.mark.race
def test_racing_opens_of_one_new_account_all_answer_its_card(race, admin):
    body = {"user_id": 1, "currency": "VND", "credit_limit": 0}

    answers = race([Request("POST", "/v1/accounts", body, {})] * RACERS)

    assert statuses(answers) == {201: RACERS}, bodies(answers)
    cards = [a.json() for a in answers]
    assert all(card == cards[0] for card in cards)
    assert (cards[0]["user_id"], cards[0]["balance"], cards[0]["status"]) == (1, 0, "active")
    assert admin.get("/v1/accounts/1").json() == cards[0]
    assert ledger(admin) == []
