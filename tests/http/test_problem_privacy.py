"""Problem documents say what the client can act on, nothing of the server's internals.

A 5xx problem's ``detail`` is a fixed sentence per code: no host, port, SQL or driver
text, whatever the StorageError's message held (the library and the CLI keep that
message; the HTTP client never sees it). Every answer carries a request id, in the
``X-Request-Id`` header and in every problem's ``request_id``, and the server's log line
under that id holds the driver text.

The failures: each StorageError (and an unexpected exception) raised by a route; every
session of a real server killed mid-request; a port where nothing listens; and, opt-in
as in tests/faults/test_server_loss.py, a PostgreSQL restart under ``balance serve``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from balance_ledger import BalanceService, apikeys
from balance_ledger.errors import CommitUnknown, RetriesExhausted, SchemaMissing, StorageError
from balance_ledger.http import create_app, problems
from tests.conftest import SERVER_URLS, _required
from tests.databases import recreate_database
from tests.faults.conftest import FaultDatabase
from tests.faults.ledger import new_user_ids
from tests.faults.sabotage import OneShot, kill_all_sessions
from tests.faults.test_server_loss import postgresql_stopped
from tests.http.test_serve import START_SECONDS, free_port

LOGGER = "balance_ledger.http"
PRIVACY_DATABASE = f"balance_ledger_privacy_{os.getpid()}"
FRESH_ID = re.compile(r"[0-9a-f]{32}")
CHARGE = {"amount": 1, "service_type": "vps"}
# What a driver error looks like: host and port, the server's FATAL, the SQL, the driver.
DRIVER_TEXT = (
    '(psycopg.OperationalError) connection to server at "127.0.0.1", port 5432 failed: '
    "FATAL:  terminating connection due to administrator command "
    "[SQL: SELECT balance FROM user_balances WHERE user_id = %(user_id)s] "
    "(also seen as pymysql.err.OperationalError, sqlite3.OperationalError)"
)
# None of this may reach a client.
INTERNALS = re.compile(
    r"127\.0\.0\.1|localhost|5432|3306|fatal|select|\[sql|psycopg|pymysql|mysql|sqlite|"
    r"operationalerror|errno|terminating|traceback",
    re.IGNORECASE,
)
# Words of the drivers' and servers' messages for a lost or refused connection.
DRIVER_MARKERS = re.compile(
    r"terminating connection|server closed the connection|connection to server at|"
    r"consuming input failed|Lost connection|server has gone away|Can't connect|"
    r"\(20\d\d,|connection refused|shutting down|starting up|connection failed",
    re.IGNORECASE,
)


def assert_clean(response: httpx.Response, *also_secret: str) -> dict[str, Any]:
    """A problem document with its request id and nothing of the internals; its body."""
    assert response.headers["content-type"].startswith(problems.MEDIA_TYPE)
    body = response.json()
    assert body["status"] == response.status_code
    assert body["code"]
    request_id = response.headers["x-request-id"]
    assert body["request_id"] == request_id
    shown = json.dumps({k: v for k, v in body.items() if k != "request_id"})
    shown += " " + " ".join(
        f"{name}: {value}"
        for name, value in response.headers.items()
        if name not in ("x-request-id", "content-length")
    )
    leaked = INTERNALS.search(shown)
    assert leaked is None, f"{leaked[0]!r} shown: {shown}"
    for secret in also_secret:
        assert secret not in shown, f"{secret!r} shown: {shown}"
    if response.status_code >= 500:
        code = body["code"]
        assert body["detail"] == problems.SERVER_DETAIL[code]
        assert set(body) <= {"type", "title", "status", "code", "detail", "request_id", "attempts"}
        if code in problems.RETRY_AFTER:
            assert int(response.headers["retry-after"]) >= 1
        else:
            assert "retry-after" not in response.headers
    return body


def logged(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    """The ``balance_ledger.http`` log lines naming ``request_id``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER and f"request {request_id} " in record.getMessage()
    ]


# -- errors raised by a route, on SQLite: the document of each 5xx code --------------------


@pytest.fixture(scope="module")
def local_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalanceService]:
    path = tmp_path_factory.mktemp("privacy") / "ledger.db"
    with BalanceService.from_url(f"sqlite:///{path}") as svc:
        svc.create_schema()
        yield svc


def raising(svc: BalanceService, error: BaseException) -> TestClient:
    """A client of the app whose ``GET /raise`` raises ``error``."""
    app = create_app(svc)

    @app.get("/raise")
    def raise_it() -> None:
        raise error

    return TestClient(app, raise_server_exceptions=False)


STORAGE_ERRORS = [
    pytest.param(StorageError(f"database error: {DRIVER_TEXT}"), "storage-error", id="storage"),
    pytest.param(SchemaMissing(DRIVER_TEXT), "schema-missing", id="schema-missing"),
    pytest.param(RetriesExhausted(8, DRIVER_TEXT), "retries-exhausted", id="retries"),
    pytest.param(CommitUnknown(DRIVER_TEXT), "commit-unknown", id="commit-unknown"),
]


@pytest.mark.parametrize(("error", "code"), STORAGE_ERRORS)
def test_a_storage_error_is_a_generic_503_and_its_driver_text_is_logged(
    local_service, caplog, error, code
):
    caplog.set_level(logging.ERROR, logger=LOGGER)

    client = raising(local_service, error)
    fresh = client.get("/raise")
    named = client.get("/raise", headers={"X-Request-Id": "support-case-17"})

    for answer in (fresh, named):
        assert answer.status_code == 503
        body = assert_clean(answer)
        assert body["code"] == code
        assert ("retry-after" in answer.headers) == (code != "schema-missing")
        assert body.get("attempts") == (8 if isinstance(error, RetriesExhausted) else None)
        (line,) = logged(caplog, body["request_id"])
        assert f"answered 503 {code}: {type(error).__name__}: {error}" in line
        assert DRIVER_TEXT in line
    assert FRESH_ID.fullmatch(fresh.json()["request_id"])
    assert named.json()["request_id"] == "support-case-17"


def test_an_unexpected_error_is_a_500_whose_traceback_is_only_in_the_log(local_service, caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER)

    client = raising(local_service, RuntimeError(DRIVER_TEXT))
    answer = client.get("/raise", headers={"X-Request-Id": "r-500"})

    assert answer.status_code == 500
    assert assert_clean(answer)["code"] == "internal-error"
    assert answer.headers["x-request-id"] == "r-500"
    (record,) = [r for r in caplog.records if "request r-500 " in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)  # the traceback is logged
    assert DRIVER_TEXT in record.getMessage()


def test_a_document_built_outside_a_request_is_generic_too():
    status, body = problems.document(StorageError(f"database error: {DRIVER_TEXT}"))

    assert status == 503
    assert body["detail"] == problems.SERVER_DETAIL["storage-error"]
    assert body["request_id"] is None
    assert "127.0.0.1" not in json.dumps(body)


# -- the request id, and the 4xx problems that carry it ------------------------------------


@pytest.fixture(scope="module")
def local_client(local_service: BalanceService) -> Iterator[TestClient]:
    """An admin's client of the app over the SQLite service; account 1 holds 100."""
    _, secret = local_service.create_api_key("privacy", ["admin"])
    local_service.open_account(1)
    local_service.recharge(1, 100)
    with TestClient(create_app(local_service), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {secret}"
        yield client


@pytest.mark.parametrize("sent", ["req-1", "a.b:c_D-9", "x" * 64, "0"])
def test_a_well_formed_client_request_id_is_echoed(local_client, sent):
    answer = local_client.get("/v1/accounts/1", headers={"X-Request-Id": sent})

    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == sent


@pytest.mark.parametrize("sent", ["", "has space", "x" * 65, "semi;colon", "slash/y", "é"])
def test_a_malformed_client_request_id_is_replaced_by_a_fresh_one(local_client, sent):
    answer = local_client.get("/v1/accounts/404", headers={"X-Request-Id": sent.encode()})

    assert answer.status_code == 404
    fresh = answer.headers["x-request-id"]
    assert FRESH_ID.fullmatch(fresh)
    assert assert_clean(answer)["request_id"] == fresh


def test_every_answer_has_its_own_fresh_request_id(local_client):
    ids = [local_client.get("/healthz").headers["x-request-id"] for _ in range(5)]
    ids.append(local_client.get("/metrics").headers["x-request-id"])

    assert all(FRESH_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_every_4xx_problem_carries_the_request_id_and_keeps_its_detail(local_client):
    no_key = {"Authorization": ""}
    answers = {
        "unauthorized": local_client.get("/v1/accounts/1", headers=no_key),
        "not-found": local_client.get("/no/such/route"),
        "method-not-allowed": local_client.delete("/healthz"),
        "malformed-request": local_client.post("/v1/accounts", json={"user_id": "one"}),
        "body-too-large": local_client.post("/v1/accounts", content=b"{" * 70_000),
        "account-not-found": local_client.get("/v1/accounts/404"),
        "insufficient-balance": local_client.post(
            "/v1/accounts/1/charges", json={"amount": 1_000, "service_type": "vps"}
        ),
    }

    for code, answer in answers.items():
        assert 400 <= answer.status_code < 500, (code, answer.text)
        assert assert_clean(answer)["code"] == code
    # A refusal is about the caller's own data: its message and context stay.
    refused = answers["insufficient-balance"].json()
    assert refused["detail"] == (
        "account 1 cannot be charged 1000: only 100 is available (balance plus credit limit)"
    )
    assert (refused["available"], refused["amount"]) == (100, 1_000)


def test_a_batch_items_problem_carries_the_request_id(local_client):
    items = [{"user_id": 1, "amount": 1_000, "service_type": "vps"}]

    answer = local_client.post(
        "/v1/charges:batch",
        json={"mode": "independent", "items": items},
        headers={"X-Request-Id": "b1"},
    )

    (result,) = answer.json()["results"]
    assert result["problem"]["code"] == "insufficient-balance"
    assert result["problem"]["request_id"] == "b1" == answer.headers["x-request-id"]


# -- real servers: every session killed mid-request, or nothing listening ------------------


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def server_database(request: pytest.FixtureRequest) -> Iterator[FaultDatabase]:
    """A migrated database of its own (its sessions get killed), dropped at the end."""
    backend, server = request.param, SERVER_URLS[request.param]
    try:
        url = recreate_database(server, PRIVACY_DATABASE)
    except Exception as error:
        reason = f"{backend} server not reachable at {server}: {error}"
        if _required(backend):
            pytest.fail(f"{reason} (required by BALANCE_TEST_REQUIRE)")
        pytest.skip(reason)
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    database = FaultDatabase(backend, url, server, PRIVACY_DATABASE)
    yield database
    admin = database.admin_engine()
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {PRIVACY_DATABASE}{force}"))
    finally:
        admin.dispose()


def test_sessions_killed_mid_request_answer_clean_5xx_and_log_the_driver_text(
    server_database, caplog
):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    db, shot = server_database, OneShot()
    admin = db.admin_engine()

    def kill_after_statement(*_: object) -> None:  # armed: the request's transaction dies
        if shot.take():
            kill_all_sessions(admin, db.backend, db.name)

    # The locked path: a charge in one statement has no statement after it to die on.
    with BalanceService.from_url(db.url, one_statement=False) as svc:
        _, secret = svc.create_api_key("privacy-kill", ["admin"])
        (uid,) = new_user_ids(1)
        svc.open_account(uid)
        svc.recharge(uid, 10_000)
        event.listen(svc.engine, "after_cursor_execute", kill_after_statement)
        client = TestClient(create_app(svc), raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {secret}"
        requests = [
            lambda: client.get(f"/v1/accounts/{uid}"),
            lambda: client.post(f"/v1/accounts/{uid}/charges", json=CHARGE),
            lambda: client.post(
                f"/v1/accounts/{uid}/charges", json=CHARGE, headers={"Idempotency-Key": "k1"}
            ),
            lambda: client.get(f"/v1/accounts/{uid}/transactions", headers={"X-Request-Id": "k4"}),
            lambda: client.get("/readyz"),
        ]

        for send in requests:
            assert client.get(f"/v1/accounts/{uid}").status_code == 200  # pool, key cache warm
            shot.arm()
            answer = send()

            assert shot.fired.is_set()
            assert answer.status_code == 503, answer.text
            assert_logged_with_driver_text(caplog, assert_clean(answer))
    admin.dispose()


def assert_logged_with_driver_text(caplog: pytest.LogCaptureFixture, body: dict[str, Any]) -> str:
    """The one log line of the problem's request: its code, the class, the driver's text."""
    (line,) = logged(caplog, body["request_id"])
    match = re.search(rf"answered {body['status']} {body['code']}: (\w+): (.+)", line)
    assert match, line
    assert match[1] in ("StorageError", "SchemaMissing", "RetriesExhausted", "CommitUnknown")
    assert DRIVER_MARKERS.search(match[2]), line
    return line


NOBODY_LISTENS = {  # a URL with a free port, and what its driver says about it
    "postgresql": (
        "postgresql+psycopg://postgres@127.0.0.1:{}/ledger",
        'connection to server at "127.0.0.1", port {} failed: Connection refused',
    ),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:{}/ledger", "Can't connect to MySQL server"),
}


@pytest.mark.parametrize("backend", NOBODY_LISTENS)
def test_a_server_nobody_listens_on_answers_clean_503s(caplog, backend):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    port = free_port()
    url, driver_says = (template.format(port) for template in NOBODY_LISTENS[backend])
    with (
        BalanceService.from_url(url) as svc,
        TestClient(create_app(svc), raise_server_exceptions=False) as client,
    ):
        client.headers["Authorization"] = f"Bearer {apikeys.new_secret()}"  # well-formed
        answers = [
            client.get("/readyz"),
            client.get("/v1/accounts/1"),
            client.post("/v1/accounts/1/charges", json=CHARGE),
            client.get("/v1/accounts/1", headers={"X-Request-Id": "nobody-home"}),
        ]

    assert answers[-1].headers["x-request-id"] == "nobody-home"
    for answer in answers:
        assert answer.status_code == 503, answer.text
        body = assert_clean(answer, str(port))
        assert body["code"] == "storage-error"
        assert driver_says in assert_logged_with_driver_text(caplog, body)


# -- `balance serve`: its stderr is the log; a real PostgreSQL restart (opt-in) ------------

LOAD_THREADS = 4
PROGRESS = 20  # successful answers before the restart, and again after it
LOAD_SECONDS = 90


class RequestLoad:
    """Threads reading and charging over HTTP until stopped; every answer is kept."""

    def __init__(self, base: str, secret: str, user_id: int) -> None:
        self.answers: list[httpx.Response] = []  # list.append is atomic
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._requests = [
            ("GET", f"/v1/accounts/{user_id}", None),
            ("POST", f"/v1/accounts/{user_id}/charges", CHARGE),
            ("GET", "/readyz", None),
        ]
        auth = {"Authorization": f"Bearer {secret}"}
        self._threads = [
            threading.Thread(target=self._send, args=(n, base, auth)) for n in range(LOAD_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, thread: int, base: str, auth: dict[str, str]) -> None:
        with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                method, path, body = self._requests[i % len(self._requests)]
                # Half the requests name their own id, half get a fresh one.
                headers = {"X-Request-Id": f"load-{thread}-{i}"} if i % 2 else {}
                try:
                    self.answers.append(http.request(method, path, json=body, headers=headers))
                except Exception as error:
                    self.errors.append(error)
                    return
                time.sleep(0.005)

    def wait_for_failure(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while not any(answer.status_code >= 500 for answer in list(self.answers)):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, "no request failed while PostgreSQL was down"
            time.sleep(0.01)

    def wait_for_successes(self, count: int) -> None:
        def successes() -> int:
            return sum(answer.status_code < 400 for answer in list(self.answers))

        target, deadline = successes() + count, time.monotonic() + LOAD_SECONDS
        while successes() < target:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, [a.status_code for a in self.answers[-20:]]
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@contextmanager
def serving_logged(database_url: str, log_path: Path) -> Iterator[str]:
    """The base URL of a ``balance serve`` process whose stderr goes to ``log_path``
    (a file: a pipe nobody reads would block the server once full)."""
    port = free_port()
    command = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
    command += ["--database-url", database_url, "serve", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + START_SECONDS
            while True:
                with suppress(httpx.TransportError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"balance serve did not start: {log_path.read_text()}")
                time.sleep(0.1)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_balance_serve_logs_the_cause_of_a_503_to_its_stderr(tmp_path):
    """The process's log, not just caplog: the CLI's quiet root logger must not eat it."""
    port = free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/ledger"
    log_path = tmp_path / "serve.log"

    with serving_logged(url, log_path) as base:
        answer = httpx.get(f"{base}/readyz", headers={"X-Request-Id": "serve-503"})

    assert answer.status_code == 503
    assert assert_clean(answer, str(port))["request_id"] == "serve-503"
    (line,) = [line for line in log_path.read_text().splitlines() if "request serve-503 " in line]
    assert "answered 503 storage-error: StorageError: database error: " in line
    assert f'connection to server at "127.0.0.1", port {port} failed' in line


@pytest.mark.parametrize("server_database", ["postgresql"], indirect=True)
def test_a_postgresql_restart_under_balance_serve_answers_clean_5xx(server_database, tmp_path):
    if os.environ.get("BALANCE_TEST_MAY_RESTART_SERVER") != "1":
        pytest.skip(
            "restarts the PostgreSQL server, cutting off everyone else using it; "
            "set BALANCE_TEST_MAY_RESTART_SERVER=1 to run it"
        )
    db = server_database
    with BalanceService.from_url(db.url) as svc:
        _, secret = svc.create_api_key("privacy-restart", ["admin"])
        (user_id,) = new_user_ids(1)
        svc.open_account(user_id)
        svc.recharge(user_id, 10**9)
    log_path = tmp_path / "serve.log"

    with serving_logged(db.url, log_path) as base:
        load = RequestLoad(base, secret, user_id)
        try:
            load.wait_for_successes(PROGRESS)
            # Down until a request has failed: a restart quicker than every request in
            # flight (the pool reconnects a stale connection itself) proves nothing.
            with postgresql_stopped(db.url):
                load.wait_for_failure()
            load.wait_for_successes(PROGRESS)  # the same process serves again
        finally:
            load.stop()
    log = log_path.read_text().splitlines()

    failed = [answer for answer in load.answers if answer.status_code >= 500]
    assert failed, "no request failed while PostgreSQL restarted"
    lines = []
    for answer in failed:
        body = assert_clean(answer)
        (line,) = [line for line in log if f"request {body['request_id']} " in line]
        assert f"answered {body['status']} {body['code']}: " in line
        assert DRIVER_MARKERS.search(line), line
        lines.append(line)
    # What the defect showed clients is now only in the log.
    assert any('"127.0.0.1", port 5432' in line for line in lines), lines
