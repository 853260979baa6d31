"""``balance serve``: the HTTP service under uvicorn."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from .app import app


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    key_cache_seconds: Annotated[
        float,
        typer.Option(
            help="Trust an authenticated API key this long without a database read; "
            "a revoked key may work this long (0: check every request).",
            min=0,
            max=300,
        ),
    ] = 5.0,
    dispatch: Annotated[
        bool,
        typer.Option(
            "--dispatch",
            help="Also deliver events to the webhooks, from a thread of each worker "
            "(as `balance dispatch` does; any number may run).",
        ),
    ] = False,
    dispatch_interval: Annotated[
        float, typer.Option(help="Seconds between idle polls with --dispatch.", min=0.05)
    ] = 1.0,
    group_commit: Annotated[
        bool,
        typer.Option(
            help="Concurrent single charges share one transaction (ChargeCoalescer); each "
            "still gets its own answer. A charge waits at most for the batch being written.",
        ),
    ] = True,
    group_commit_writers: Annotated[
        int | None,
        typer.Option(
            help="Batches each worker writes at once with group commit (default 2; 1 on "
            "SQLite, which writes one transaction at a time).",
            min=1,
            max=16,
        ),
    ] = None,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Log a line per request to stderr (uvicorn's access log; off by default: "
            "it cost about a tenth of a worker's CPU per charge, and the metrics and the "
            "request ids already say what was answered).",
        ),
    ] = False,
    shutdown_timeout: Annotated[
        int,
        typer.Option(
            help="On SIGTERM (or a dead supervisor), let requests in flight finish this "
            "long, then cancel them.",
            min=0,
            max=3600,
        ),
    ] = 10,
) -> None:
    """Serve the JSON API (docs at /docs, schema at /openapi.json) until interrupted.

    SIGTERM drains the requests in flight (up to --shutdown-timeout) and exits 0.
    """
    import uvicorn  # only here: every other command starts without the web stack

    from ..http.app import (
        DISPATCH_INTERVAL_ENV,
        GROUP_COMMIT_ENV,
        GROUP_COMMIT_WRITERS_ENV,
        WORKER_ENV,
    )
    from ..http.supervision import SUPERVISOR_PID_ENV, exit_zero_on_sigterm

    exit_zero_on_sigterm()  # and bounded: even with a request stuck in the database
    # Each worker ends with this process (http/supervision.py; not if it is this process).
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())

    # The workers build their own service from the environment (one pool per process).
    target = ctx.find_root().obj
    os.environ["BALANCE_DATABASE_URL"] = target.url
    if target.replica_url is None:  # the options decide, not a variable left behind
        os.environ.pop("BALANCE_REPLICA_URL", None)
    else:
        os.environ["BALANCE_REPLICA_URL"] = target.replica_url
    os.environ["BALANCE_MAX_REPLICA_LAG"] = str(target.max_replica_lag)
    os.environ["BALANCE_OTHER_NODES"] = " ".join(target.other_nodes)
    os.environ["BALANCE_KEY_CACHE_SECONDS"] = str(key_cache_seconds)
    if dispatch:
        os.environ[DISPATCH_INTERVAL_ENV] = str(dispatch_interval)
    else:  # the flag decides, not a variable left in the environment
        os.environ.pop(DISPATCH_INTERVAL_ENV, None)
    os.environ[GROUP_COMMIT_ENV] = "1" if group_commit else "0"
    if group_commit_writers is None:  # the option decides, not a variable left behind
        os.environ.pop(GROUP_COMMIT_WRITERS_ENV, None)
    else:
        os.environ[GROUP_COMMIT_WRITERS_ENV] = str(group_commit_writers)
    os.environ[WORKER_ENV] = "1"
    with _shared_metrics(workers):
        uvicorn.run(
            "balance_ledger.http.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=False,
            access_log=access_log,
            timeout_graceful_shutdown=shutdown_timeout,
        )


@contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """Let every worker's /metrics add up all workers' counts (a fresh directory per run)."""
    from ..http.metrics import MULTIPROCESS_ENV

    if workers == 1 or os.environ.get(MULTIPROCESS_ENV):
        yield  # one process, or the operator chose the directory
        return
    with tempfile.TemporaryDirectory(prefix="balance-metrics-") as directory:
        os.environ[MULTIPROCESS_ENV] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_ENV]
