"""The HTTP service: a thin adapter that parses, calls BalanceService and answers JSON.

No SQL here: routes only call BalanceService (one call each; balance-at also reads
the currency it is in). Errors are problem documents (problems.py); every /v1 route
needs an API key with its scope (auth.py).
Routes: accounts.py (accounts and their history), movements.py (money and holds),
reconciliation.py (verify, fix, audit), webhooks.py (the event outbox and its webhooks);
operations (health, metrics) are below. With ``dispatch_interval`` the app also
delivers events to the webhooks from a background thread while it serves.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool

from ..coalescer import ChargeCoalescer
from ..errors import InvalidRequest
from ..models import Transaction
from ..money.requests import Charge
from ..service import BalanceService
from . import accounts, movements, problems, reconciliation, webhooks
from .auth import KeyCache
from .deps import Meter, Service
from .fast_charge import FastCharges
from .limits import BodySizeLimit
from .metrics import CONTENT_TYPE, Metrics, RequestMetrics
from .request_ids import RequestIds
from .supervision import watch_supervisor

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_KEY_CACHE_SECONDS = 5.0
DISPATCH_INTERVAL_ENV = "BALANCE_DISPATCH_INTERVAL"
GROUP_COMMIT_ENV = "BALANCE_GROUP_COMMIT"
# Set by `balance serve` for its workers: the process does nothing but serve.
WORKER_ENV = "BALANCE_SERVE_WORKER"
GROUP_COMMIT_DRAIN_SECONDS = 5.0  # at shutdown, the most the queued charges are waited for
GROUP_COMMIT_WRITERS_ENV = "BALANCE_GROUP_COMMIT_WRITERS"
# Batches written at once by each worker's group commit. One writer spends most of its
# time waiting for its batch's statements, one after another. Measured with `python -m
# bench http --concurrency 32 --group-commit-writers 1|2` on PostgreSQL, alternating:
# spread 1,475 and 1,171 req/s with one writer, 1,544 and 1,558 with two (0.20-0.25x
# against 0.25-0.26x the reference); hot 1,529 and 1,798 with one, 1,240 and 1,658 with
# two (0.88-1.12x against 0.85-1.06x: a hot account's batches take turns on its lock).
GROUP_COMMIT_WRITERS = 2


def create_app(
    service: BalanceService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS,
    dispatch_interval: float | None = None,
    group_commit: bool = False,
    group_commit_writers: int | None = None,
    fast_charges: bool = True,
    owns_service: bool = False,
) -> FastAPI:
    """The app over ``service`` (which the caller owns and closes; with
    ``owns_service``, the app closes it at shutdown).

    ``key_cache_seconds``: how long an authenticated key is trusted without a database
    read, so also how long a revoked key may still work (0: check every request).
    ``dispatch_interval``: run a Dispatcher from startup to shutdown, polling this many
    seconds apart when idle (None: no dispatching here). ``group_commit``: from startup
    to shutdown, single charges (``POST …/charges``) go through a ChargeCoalescer, so
    concurrent ones share a transaction; each still gets its own answer.
    ``group_commit_writers``: how many batches are written at once (default
    GROUP_COMMIT_WRITERS; 1 on SQLite, which writes one transaction at a time anyway).
    ``fast_charges``: answer the requests to charge that the route would plainly accept
    without FastAPI's routing (fast_charge.py); the same answers, for less CPU.
    """
    app = FastAPI(
        title="balance-ledger",
        version="1",
        description="Prepaid balances: charge, recharge, hold, refund, reconcile.",
        lifespan=_lifespan(
            service,
            dispatch_interval,
            _writers(service, group_commit, group_commit_writers),
            owns_service,
        ),
    )
    app.state.service = service
    app.state.charge = _on_a_thread(service)  # the coalescer's, while the app runs with it
    app.state.keys = KeyCache(service, key_cache_seconds)
    app.state.metrics = metrics = Metrics(service)
    if fast_charges:
        app.add_middleware(FastCharges, api=app)  # innermost: every middleware still applies
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees 413s too
    app.add_middleware(RequestIds)  # outside even that: every answer has its X-Request-Id
    problems.install(app)
    for routes in (accounts, movements, reconciliation, webhooks):
        app.include_router(routes.router)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up (no database check)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz(svc: Service) -> dict[str, str]:
        """The database answers (503 problem otherwise)."""
        svc.ping()
        return {"status": "ready"}

    # No key, like the probes: a scrape must work while the database (and with it every
    # key check) is down, which is when balance_database_up 0 matters. It holds counts by
    # kind, outcome and route template, never an account id or an amount.
    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}}},
    )
    def scrape(meter: Meter) -> Response:
        """Prometheus text format: movements by outcome, latencies, lock waits, sync totals."""
        return Response(meter.render(), media_type=CONTENT_TYPE)

    return app


def _writers(service: BalanceService, group_commit: bool, writers: int | None) -> int:
    """How many group commit writers the app runs (0: no group commit)."""
    if not group_commit:
        return 0
    if writers is not None:
        return writers
    return 1 if service.writes_one_at_a_time else GROUP_COMMIT_WRITERS


def _lifespan(
    service: BalanceService, dispatch_interval: float | None, writers: int, owned: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as running:
            if owned:
                running.callback(service.close)  # last, once nothing else writes
            if dispatch_interval is not None:
                running.enter_context(service.dispatcher().in_background(dispatch_interval))
            if writers:
                coalescer = ChargeCoalescer(service, writers=writers)
                # At shutdown, first: what is queued is written (bounded: the database
                # may be what hangs), after new charges go straight to the service.
                running.callback(coalescer.close, GROUP_COMMIT_DRAIN_SECONDS)
                running.callback(setattr, app.state, "charge", _on_a_thread(service))
                app.state.charge = coalescer.submit_async
            yield

    return lifespan


def _on_a_thread(service: BalanceService) -> Callable[[Charge], Awaitable[Transaction]]:
    """``service.charge`` awaited on a worker thread (it blocks on the database)."""

    async def charge(request: Charge) -> Transaction:
        return await run_in_threadpool(service.charge, request)

    return charge


def app_from_environment() -> FastAPI:
    """The app ``balance serve`` runs in each uvicorn worker (BALANCE_DATABASE_URL,
    BALANCE_REPLICA_URL and BALANCE_MAX_REPLICA_LAG or BALANCE_OTHER_NODES,
    BALANCE_KEY_CACHE_SECONDS,
    BALANCE_DISPATCH_INTERVAL: set by --dispatch, BALANCE_GROUP_COMMIT: 0 with
    --no-group-commit, BALANCE_GROUP_COMMIT_WRITERS; BALANCE_SERVE_WORKER: 1 when
    started by `balance serve`, which then tunes the process's cycle collector)."""
    url = os.environ.get("BALANCE_DATABASE_URL", "sqlite:///balance.db")
    cache = float(os.environ.get("BALANCE_KEY_CACHE_SECONDS", DEFAULT_KEY_CACHE_SECONDS))
    interval = os.environ.get(DISPATCH_INTERVAL_ENV)
    watch_supervisor()  # a worker of `balance serve --workers N` ends with its supervisor
    replica = os.environ.get("BALANCE_REPLICA_URL") or None
    max_lag = _seconds(os.environ.get("BALANCE_MAX_REPLICA_LAG", "10"), "BALANCE_MAX_REPLICA_LAG")
    nodes = os.environ.get("BALANCE_OTHER_NODES", "").split()
    writers = _count(os.environ.get(GROUP_COMMIT_WRITERS_ENV))
    app = create_app(
        BalanceService.from_url(
            url, replica_url=replica, max_replica_lag=max_lag, other_nodes=nodes
        ),
        key_cache_seconds=cache,
        dispatch_interval=None if interval is None else float(interval),
        group_commit=os.environ.get(GROUP_COMMIT_ENV, "1") == "1",
        group_commit_writers=writers,
        owns_service=True,
    )
    if os.environ.get(WORKER_ENV) == "1":
        _spare_the_collector()  # a process of its own: not a test's, nor an embedder's
    return app


def _count(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit():
        raise InvalidRequest(f"{GROUP_COMMIT_WRITERS_ENV} must be a whole number, got {value!r}")
    return int(value)


def _seconds(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds, got {value!r}") from None


def _spare_the_collector() -> None:
    """Fewer, shorter pauses of Python's cycle collector in a serving worker.

    Every request allocates thousands of objects, so the collector ran its young
    generation hundreds of times a second and, now and then, a full pass over the
    whole heap: the pauses were the slowest 1 % of answers (p99 59 → 19 ms, spread
    charges at 32 connections). What exists once the app is built (modules, the app,
    the service) lives as long as the process and is left out of every pass.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
