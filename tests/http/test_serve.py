"""``balance serve`` as a real process on a loopback port, talked to over TCP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from balance_ledger import BalanceService, signatures
from tests.receiver import receiver

START_SECONDS = 30
DELIVERY_SECONDS = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, an admin key) of a ``balance serve`` process over the test database."""
    with serving(database_url) as started:
        yield started


@contextmanager
def serving(database_url: str, *options: str) -> Iterator[tuple[str, str]]:
    with BalanceService.from_url(database_url) as svc:
        _, secret = svc.create_api_key("serve-test", ["admin"])
    port = free_port()
    command = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
    server = subprocess.Popen(
        [*command, "--database-url", database_url, "serve", "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"balance serve did not start: {server.stderr.read().decode()}")
            time.sleep(0.1)
        yield base, secret
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()


def test_balance_serve_answers_over_tcp(served):
    base, secret = served
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert http.post("/v1/accounts", json={"user_id": 1}).status_code == 201
        assert http.post("/v1/accounts/1/recharges", json={"amount": 100}).status_code == 201
        charged = http.post("/v1/accounts/1/charges", json={"amount": 30, "service_type": "vps"})
        assert charged.json()["balance_after"] == 70
        assert http.get("/readyz").status_code == 200
        assert http.get("/openapi.json").json()["info"]["title"] == "balance-ledger"


def test_every_worker_reports_the_counts_of_all_workers(database_url):
    with serving(database_url, "--workers", "2") as (base, secret):
        auth = {"Authorization": f"Bearer {secret}"}
        httpx.post(f"{base}/v1/accounts", json={"user_id": 1}, headers=auth)
        httpx.post(f"{base}/v1/accounts/1/recharges", json={"amount": 100}, headers=auth)
        for _ in range(20):  # a connection each, so both workers take some
            body = {"amount": 1, "service_type": "api"}
            answer = httpx.post(f"{base}/v1/accounts/1/charges", json=body, headers=auth)
            assert answer.status_code == 201

        scrapes = [httpx.get(f"{base}/metrics").text for _ in range(10)]

    created = 'balance_movements_total{kind="charge",outcome="created"} 20.0'
    assert all(created in scrape for scrape in scrapes)


def test_serve_with_dispatch_delivers_a_charge_made_over_http(database_url):
    dispatching = ("--dispatch", "--dispatch-interval", "0.1")
    with receiver() as target, serving(database_url, *dispatching) as (base, secret):
        auth = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=auth) as http:
            hook = {"url": target.url, "event_types": ["balance.charged"]}
            signing = http.post("/v1/webhooks", json=hook).json()["secret"]
            http.post("/v1/accounts", json={"user_id": 1})
            http.post("/v1/accounts/1/recharges", json={"amount": 100})
            usage = {"amount": 30, "service_type": "vps"}
            charged = http.post("/v1/accounts/1/charges", json=usage)
        deadline = time.monotonic() + DELIVERY_SECONDS
        while not target.received and time.monotonic() < deadline:
            time.sleep(0.05)

    (delivered,) = target.received
    assert delivered.event["transaction_id"] == charged.json()["id"]
    assert signatures.verify(signing, delivered.headers["Balance-Signature"], delivered.body)


def test_serve_without_dispatch_delivers_nothing_whatever_the_environment(
    database_url, monkeypatch
):
    monkeypatch.setenv("BALANCE_DISPATCH_INTERVAL", "0.1")  # the flag decides, not this
    with receiver() as target, serving(database_url) as (base, secret):
        auth = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=auth) as http:
            assert http.post("/v1/webhooks", json={"url": target.url}).status_code == 201
            assert http.post("/v1/accounts", json={"user_id": 1}).status_code == 201
            assert http.post("/v1/accounts/1/recharges", json={"amount": 100}).status_code == 201
        time.sleep(1.5)  # a dispatcher polling every 0.1 s would have delivered by now

    assert target.received == []
