"""The Redis Streams sink against a real local Redis: each event XADDed once, signed.

Skipped when redis-py or the server at 127.0.0.1:6379 is missing, unless
``BALANCE_TEST_REQUIRE`` names ``redis`` (or ``all``): then that fails, as it must in CI.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import pytest

from balance_ledger import DeliveryStatus, InvalidRequest
from balance_ledger.outbox import signatures
from balance_ledger.outbox.sinks import REDIS_CLIENT_NAME, REDIS_MISSING
from tests.conftest import _required
from tests.dispatching import NO_WAIT, drain

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture(scope="session")
def redis_py() -> ModuleType:
    try:
        return importlib.import_module("redis")
    except ImportError as error:
        _unavailable(f"redis-py is not installed ({error})")
        raise


@pytest.fixture(scope="session")
def redis_server(redis_py: ModuleType) -> Iterator[Any]:
    """A client of the local Redis (bytes in and out)."""
    client = redis_py.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2, socket_timeout=5
    )
    try:
        client.ping()
    except redis_py.RedisError as error:
        client.close()
        _unavailable(f"redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {error}")
    yield client
    client.close()


def _unavailable(reason: str) -> None:
    if _required("redis"):
        pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
    pytest.skip(reason)


@pytest.fixture
def stream(redis_server: Any) -> Iterator[str]:
    """A stream name no other test uses, deleted afterwards."""
    name = f"balance-ledger-test:{uuid.uuid4().hex}"
    yield name
    redis_server.delete(name)


def stream_url(stream: str, *, port: int = REDIS_PORT, db: int = 0, **params: object) -> str:
    return f"redis://{REDIS_HOST}:{port}/{db}?{urlencode({'stream': stream, **params})}"


def entries(redis_server: Any, stream: str) -> list[dict[str, bytes]]:
    return [
        {key.decode(): value for key, value in fields.items()}
        for _, fields in redis_server.xrange(stream)
    ]


def stream_ids(redis_server: Any, stream: str) -> list[int]:
    return [int(entry["id"]) for entry in entries(redis_server, stream)]


def test_each_event_lands_in_the_stream_once_with_a_signature_that_verifies(
    svc, account_factory, redis_server, stream
):
    _, secret = svc.add_webhook(stream_url(stream))
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 300, "vps")

    drain(svc)

    events = svc.events()
    added = entries(redis_server, stream)
    assert [int(entry["id"]) for entry in added] == [event.id for event in events]
    for entry, event in zip(added, events, strict=True):
        assert entry["type"].decode() == event.event_type.value
        assert json.loads(entry["payload"]) == {"id": event.id, **event.payload}
        assert signatures.verify(secret, entry["signature"].decode(), entry["payload"])
    assert not signatures.verify(secret, added[1]["signature"].decode(), added[0]["payload"])
    assert {(d.status, d.attempts) for d in svc.deliveries()} == {(DeliveryStatus.DELIVERED, 1)}


def test_an_unreachable_redis_is_a_failed_attempt_with_its_error(svc, account_factory, redis_py):
    with socket.create_server((REDIS_HOST, 0)) as probe:
        closed_port = probe.getsockname()[1]  # nothing listens there once it is closed
    svc.add_webhook(stream_url("never-written", port=closed_port))
    account_factory(balance=100)

    dispatcher = svc.dispatcher(**NO_WAIT)
    report = dispatcher.run_once()
    dispatcher.close()

    (delivery,) = svc.deliveries()
    assert report.failed == 1
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert delivery.last_error.startswith("ConnectionError: ")
    assert str(closed_port) in delivery.last_error


class Outage:
    """A port in front of the local Redis that hangs up on every connection while down."""

    def __init__(self) -> None:
        self.up = False
        self.listener = socket.create_server((REDIS_HOST, 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            if not self.up:
                client.close()
                continue
            server = socket.create_connection((REDIS_HOST, REDIS_PORT))
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def test_an_event_is_delivered_once_redis_is_back(svc, account_factory, redis_server, stream):
    outage = Outage()
    try:
        svc.add_webhook(stream_url(stream, port=outage.port))
        account_factory(balance=100)
        dispatcher = svc.dispatcher(**NO_WAIT)
        dispatcher.run_once()
        (failed,) = svc.deliveries()

        outage.up = True
        dispatcher.run_once()
        dispatcher.close()
    finally:
        outage.close()

    assert (failed.status, failed.attempts) == (DeliveryStatus.PENDING, 1)
    assert failed.last_error.startswith("ConnectionError: ")
    (delivered,) = svc.deliveries()
    assert (delivered.status, delivered.attempts) == (DeliveryStatus.DELIVERED, 2)
    assert stream_ids(redis_server, stream) == [delivered.event_id]


@pytest.mark.race
def test_two_dispatchers_racing_on_one_stream_add_each_event_once(
    svc, account_factory, redis_server, stream
):
    svc.add_webhook(stream_url(stream))
    accounts = [account_factory(balance=100) for _ in range(10)]
    for account in accounts:
        for _ in range(4):
            svc.charge_service(account.user_id, 1, "api")
    stop = threading.Event()
    dispatchers = [svc.dispatcher(batch=5, **NO_WAIT) for _ in range(2)]
    threads = [threading.Thread(target=d.run, args=(stop, 0.02)) for d in dispatchers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while redis_server.xlen(stream) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # would a duplicate still arrive?
    stop.set()
    for thread, dispatcher in zip(threads, dispatchers, strict=True):
        thread.join()
        dispatcher.close()

    added = entries(redis_server, stream)
    counts = Counter(int(entry["id"]) for entry in added)
    assert len(counts) == 50
    assert set(counts.values()) == {1}
    for account in accounts:
        mine = [
            int(entry["id"])
            for entry in added
            if json.loads(entry["payload"])["user_id"] == account.user_id
        ]
        assert mine == sorted(mine)


def test_maxlen_trims_the_stream(svc, account_factory, redis_server, stream):
    svc.add_webhook(stream_url(stream, maxlen=10))
    account = account_factory(balance=1_000)
    svc.charge_many([{"user_id": account.user_id, "amount": 1, "service_type": "api"}] * 250)

    drain(svc)

    assert redis_server.xinfo_stream(stream)["entries-added"] == len(svc.events(limit=1000))
    assert redis_server.xlen(stream) < 250  # approximate (~): whole nodes are trimmed


def test_a_dispatcher_keeps_one_redis_client_per_server_and_close_closes_them(
    svc, account_factory, redis_py, redis_server, stream
):
    urls = [stream_url(stream), stream_url(f"{stream}:2"), stream_url(stream, db=1)]
    for url in urls:
        svc.add_webhook(url)
    account_factory(balance=100)

    def connected() -> int:
        return sum(c["name"] == REDIS_CLIENT_NAME for c in redis_server.client_list())

    before = connected()
    dispatcher = svc.dispatcher(**NO_WAIT)
    try:
        dispatcher.run_once()
        during = connected()
    finally:
        dispatcher.close()
        redis_server.delete(f"{stream}:2")
        with redis_py.Redis(host=REDIS_HOST, port=REDIS_PORT, db=1) as db1:
            db1.delete(stream)
    deadline = time.monotonic() + 5
    while connected() > before and time.monotonic() < deadline:
        time.sleep(0.02)

    assert {d.status for d in svc.deliveries()} == {DeliveryStatus.DELIVERED}
    assert during - before == 2  # three streams, on two servers' URLs (db 0 and db 1)
    assert connected() == before


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?stream=a&stream=b",
        "redis://127.0.0.1:6379/0?stream=",
        "redis://127.0.0.1:6379/0?stream=a&maxlen=0",
        "redis://127.0.0.1:6379/0?stream=a&maxlen=ten",
        "redis://127.0.0.1:6379/zero?stream=a",
        "redis://127.0.0.1:6379/0?stream=a&ssl_cert_reqs=none",
        "redis:///0?stream=a",
        "redis://127.0.0.1:99999/0?stream=a",
        "redis://127.0.0.1:6379/0?stream=a#b",
    ],
)
def test_a_malformed_redis_url_is_refused(svc, url):
    with pytest.raises(InvalidRequest):
        svc.add_webhook(url)
    assert svc.list_webhooks() == []


def test_a_redis_or_rediss_url_naming_a_stream_is_accepted(svc, redis_py):
    urls = [
        "redis://127.0.0.1:6379?stream=ledger",
        "rediss://ledger:s3cret@cache.example:6380/2?stream=balance%20events&maxlen=100000",
    ]
    for url in urls:
        svc.add_webhook(url)

    assert [hook.url for hook in svc.list_webhooks()] == urls


def test_without_redis_py_a_redis_url_is_refused_when_added(svc, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails

    with pytest.raises(InvalidRequest, match=r"pip install 'balance-ledger\[redis\]'"):
        svc.add_webhook(stream_url("never-written"))
    assert svc.list_webhooks() == []


def test_a_dispatcher_without_redis_py_records_a_failed_attempt_saying_so(
    svc, account_factory, redis_py, monkeypatch
):
    svc.add_webhook(stream_url("never-written"))  # added where redis-py is installed
    account_factory(balance=100)
    monkeypatch.setitem(sys.modules, "redis", None)  # the dispatcher's host lacks it

    drain(svc, max_attempts=2)

    (dead,) = svc.deliveries()
    assert (dead.status, dead.attempts, dead.last_error) == (
        DeliveryStatus.DEAD,
        2,
        REDIS_MISSING,
    )
