"""Prometheus metrics of the HTTP service (``GET /metrics``).

What this process did is counted here: money movements by kind and outcome, their
latency, HTTP requests by route, and how long account locks took to get (the core's
``on_lock_wait``). What the reconciler found is read from its audit table at each
scrape (``BalanceService.sync_totals``), so the nightly job's runs on another host
are counted too.

With several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``balance serve
--workers N`` does) and every worker's counts are added up at each scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BalanceError, StorageError
from ..service import BalanceService
from .problems import status_of

P = ParamSpec("P")
T = TypeVar("T")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a charge is a few milliseconds; a queue behind a hot account's lock is longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """One app's metrics; ``render()`` is the scrape."""

    def __init__(self, service: BalanceService) -> None:
        self.registry = CollectorRegistry()
        multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        # In multiprocess mode the values live in files that MultiProcessCollector
        # reads; registering them here as well would count this worker twice.
        own = None if multiprocess else self.registry
        self.movements = Counter(
            "balance_movements",
            "Money movements asked for, by kind and outcome (created, replayed, or the "
            "problem code that refused it).",
            ["kind", "outcome"],
            registry=own,
        )
        self.movement_seconds = Histogram(
            "balance_movement_duration_seconds",
            "Time to write (or refuse) a movement, database transaction included.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.requests = Counter(
            "balance_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.request_seconds = Histogram(
            "balance_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.lock_wait = Histogram(
            "balance_lock_wait_seconds",
            "Time to acquire account locks (SQLite: the database's write lock).",
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        if multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(_SyncTotals(service))
        service.on_lock_wait(self.lock_wait.observe)

    def movement(self, kind: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)``, counted by its outcome and timed."""
        with self._counted(kind):
            result = call(*args, **kwargs)
        self.record(kind, result)
        return result

    async def awaited(
        self, kind: str, call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``movement`` of a coroutine function: ``await call(*args, **kwargs)``."""
        with self._counted(kind):
            result = await call(*args, **kwargs)
        self.record(kind, result)
        return result

    @contextmanager
    def _counted(self, kind: str) -> Iterator[None]:
        """Time the call; count a typed error it raises (its result is the caller's)."""
        started = time.perf_counter()
        try:
            yield
        except BalanceError as error:
            self.record(kind, error)
            raise
        finally:
            self.movement_seconds.labels(kind).observe(time.perf_counter() - started)

    def record(self, kind: str, outcome: object) -> None:
        """Count one outcome: a typed error's problem code, else created or replayed."""
        if isinstance(outcome, BalanceError):
            label = status_of(outcome)[1]
        else:
            label = "replayed" if getattr(outcome, "replayed", False) else "created"
        self.movements.labels(kind, label).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SyncTotals(Collector):
    """The reconciler's audit table as counters, read at scrape time."""

    def __init__(self, service: BalanceService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("balance_database_up", "1 when the database answered the scrape.")
        try:
            totals = self.service.sync_totals()
        except StorageError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        found = CounterMetricFamily(
            "balance_sync_discrepancies_found",
            "Accounts whose cache disagreed with the ledger, summed over recorded runs.",
            labels=["kind"],
        )
        fixed = CounterMetricFamily(
            "balance_sync_discrepancies_fixed",
            "Accounts whose cache was rewritten from the ledger, summed over recorded runs.",
            labels=["kind"],
        )
        errors = CounterMetricFamily(
            "balance_sync_ledger_errors",
            "Accounts whose ledger itself was in doubt, summed over recorded runs.",
            labels=["kind"],
        )
        runs = CounterMetricFamily("balance_sync_runs", "Recorded runs.", labels=["kind"])
        last = GaugeMetricFamily(
            "balance_sync_last_finished_timestamp_seconds",
            "When the newest run of the kind finished (alert when it gets old).",
            labels=["kind"],
        )
        for total in totals:
            found.add_metric([total.kind], total.discrepancies)
            fixed.add_metric([total.kind], total.fixed)
            errors.add_metric([total.kind], total.errors)
            runs.add_metric([total.kind], total.runs)
            if total.last_finished_at is not None:
                last.add_metric([total.kind], total.last_finished_at.timestamp())
        yield from (found, fixed, errors, runs, last)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The template, never the raw path: ids in labels would grow without bound.
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            elapsed = time.perf_counter() - started
            self.metrics.request_seconds.labels(method, template).observe(elapsed)
