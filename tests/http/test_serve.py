"""``balance serve`` as a real process on a loopback port, talked to over TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from balance_ledger import BalanceService
from balance_ledger.outbox import signatures
from tests.receiver import receiver

START_SECONDS = 30
DELIVERY_SECONDS = 15
STOP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, an admin key) of a ``balance serve`` process over the test database."""
    with serving(database_url) as started:
        yield started


@dataclass
class Served:
    """A started ``balance serve``: its process, base URL, an admin key, and its stderr
    (read as it comes, so a chatty server never blocks on a full pipe)."""

    process: subprocess.Popen[bytes]
    base: str
    secret: str
    _lines: list[bytes] = field(default_factory=list, init=False)
    _reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in iter(self._stderr.readline, b""):
            self._lines.append(line)

    @property
    def _stderr(self) -> IO[bytes]:
        assert self.process.stderr is not None, "started with stderr=PIPE"
        return self.process.stderr

    def log(self) -> str:
        """What the server (and its workers) wrote to stderr so far."""
        return b"".join(list(self._lines)).decode(errors="replace")

    def wait_for_log(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log():
            if time.monotonic() > deadline:
                pytest.fail(f"balance serve did not log {text!r} in {seconds} s:\n{self.log()}")
            time.sleep(0.05)

    def settle(self, seconds: float = 1.0) -> None:
        """Give the reader a moment to take in the last lines (all of them, once ended)."""
        self._reader.join(timeout=seconds)

    def close(self) -> None:
        """After the process and its children ended: the pipe is at its end."""
        self._reader.join(timeout=STOP_SECONDS)
        if not self._reader.is_alive():  # else something still holds the pipe: leave it
            self._stderr.close()


@contextmanager
def serving(database_url: str, *options: str) -> Iterator[tuple[str, str]]:
    with serve_process(database_url, *options) as started:
        yield started.base, started.secret


@contextmanager
def serve_process(database_url: str, *options: str, port: int | None = None) -> Iterator[Served]:
    """``balance serve`` on ``port`` (a free one if None), answering /healthz, then stopped.

    Stopping ends it and whatever child it has left (killed if they do not end in time).
    """
    with BalanceService.from_url(database_url) as svc:
        _, secret = svc.create_api_key("serve-test", ["admin"])
    port = free_port() if port is None else port
    command = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
    server = subprocess.Popen(
        [*command, "--database-url", database_url, "serve", "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    served = Served(server, f"http://127.0.0.1:{port}", secret)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if httpx.get(f"{served.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                served.settle()
                pytest.fail(f"balance serve did not start:\n{served.log()}")
            time.sleep(0.1)
        yield served
    finally:
        stop(server)
        served.close()


def stop(server: subprocess.Popen[bytes]) -> None:
    """Terminate ``server``, kill it if it hangs, and kill any child it leaves behind."""
    children = child_processes(server.pid) if server.poll() is None else []
    server.terminate()
    try:
        server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=STOP_SECONDS)
    finally:
        for child in children:
            child.kill()


@dataclass(frozen=True)
class Child:
    """A process by pid and start time, so a recycled pid is never taken for it."""

    pid: int
    started: str

    @property
    def alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[19] == self.started

    def kill(self) -> None:
        if self.alive:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def describe(self) -> str:
        try:
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return str(self.pid)
        return f"{self.pid} ({command.decode(errors='replace').strip()})"


def child_processes(pid: int) -> list[Child]:
    """The children of ``pid`` (spawned by any of its threads), from /proc (Linux)."""
    pids = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            pids.update(int(child) for child in listing.read_text().split())
    children = []
    for child in sorted(pids):
        stat = _stat(child)
        if stat is not None:
            children.append(Child(child, stat[19]))
    return children


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command (state first), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


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
