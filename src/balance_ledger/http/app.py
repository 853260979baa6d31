"""The HTTP service: a thin adapter that parses, calls BalanceService and answers JSON.

No SQL here: routes only call BalanceService (one call each; balance-at also reads
the currency it is in). Errors are problem documents (problems.py); every /v1 route
needs an API key with its scope (auth.py).
Routes: accounts.py (accounts and their history), movements.py (money and holds),
reconciliation.py (verify, fix, audit); operations (health, metrics) are below.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Response

from ..service import BalanceService
from . import accounts, movements, problems, reconciliation
from .auth import KeyCache
from .deps import Meter, Service
from .limits import BodySizeLimit
from .metrics import CONTENT_TYPE, Metrics, RequestMetrics

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_KEY_CACHE_SECONDS = 5.0


def create_app(
    service: BalanceService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS,
) -> FastAPI:
    """The app over ``service`` (which the caller owns and closes).

    ``key_cache_seconds``: how long an authenticated key is trusted without a database
    read, so also how long a revoked key may still work (0: check every request).
    """
    app = FastAPI(
        title="balance-ledger",
        version="1",
        description="Prepaid balances: charge, recharge, hold, refund, reconcile.",
    )
    app.state.service = service
    app.state.keys = KeyCache(service, key_cache_seconds)
    app.state.metrics = metrics = Metrics(service)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees 413s too
    problems.install(app)
    for routes in (accounts, movements, reconciliation):
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


def app_from_environment() -> FastAPI:
    """The app ``balance serve`` runs in each uvicorn worker (BALANCE_DATABASE_URL,
    BALANCE_KEY_CACHE_SECONDS)."""
    url = os.environ.get("BALANCE_DATABASE_URL", "sqlite:///balance.db")
    cache = float(os.environ.get("BALANCE_KEY_CACHE_SECONDS", DEFAULT_KEY_CACHE_SECONDS))
    return create_app(BalanceService.from_url(url), key_cache_seconds=cache)
