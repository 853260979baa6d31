"""Charges over HTTP: ``balance serve`` on a loopback port, next to raw SQL.

The load generator posts one charge per request to ``/v1/accounts/{id}/charges`` (hot:
one account; spread: random among ``--accounts``) over keep-alive connections:
``--driver wrk`` (the default; Debian's ``wrk``, C) with ``--concurrency`` connections
from 2 threads, every charge with its own Idempotency-Key; or ``--driver httpx``, a
Python thread per connection, no keys. Prints requests/s, p50/p99 latency and the load
generator's CPU per concurrency, then the database's own reference in the same run
(bench/reference.py: the same charges as raw SQL from ``--reference-clients`` threads)
and each figure's ratio to it. The generator shares the machine (and its 2 CPUs) with
the server and the database, so the figures are a floor for a real deployment.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from balance_ledger import BalanceService

from . import reference, wrk
from .charges import SERVICE_TYPE, open_funded_accounts, settle
from .databases import bench_database, server_settings
from .measure import Figures, Workload, drive


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(url: str, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
    options = ["--port", str(port), *_serve_options(args)]
    server = subprocess.Popen(
        [*command, "--database-url", url, "serve", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("balance serve did not become ready in 60 s")


def _serve_options(args: argparse.Namespace) -> list[str]:
    options = ["--workers", str(args.workers)]
    if not args.group_commit:
        options.append("--no-group-commit")
    if args.group_commit_writers is not None:
        options += ["--group-commit-writers", str(args.group_commit_writers)]
    return options


def _client(
    base: str, key: str, workload: str, accounts: int
) -> Callable[[int], Callable[[], int]]:
    def client(n: int) -> Callable[[], int]:
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        rng = random.Random(n)

        def charge() -> int:
            user = 1 if workload == "hot" else rng.randint(1, accounts)
            answer = http.post(
                f"/v1/accounts/{user}/charges", json={"amount": 1, "service_type": SERVICE_TYPE}
            )
            if answer.status_code != 201:
                raise RuntimeError(f"{answer.status_code}: {answer.text}")
            return 1

        return charge

    return client


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench http", description=__doc__)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--workload", default="spread", choices=["hot", "spread"])
    parser.add_argument("--concurrency", default="1,16,64", help="comma list of clients")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="balance serve --workers")
    parser.add_argument("--driver", default="wrk", choices=["wrk", "httpx"])
    parser.add_argument(
        "--reference-clients", type=int, default=8, help="threads of the raw-SQL reference"
    )
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--group-commit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="balance serve's group commit of concurrent charges (--no-group-commit: off)",
    )
    parser.add_argument(
        "--group-commit-writers", type=int, help="balance serve --group-commit-writers"
    )
    args = parser.parse_args(argv)
    if args.driver == "wrk" and not wrk.installed():
        raise SystemExit("wrk is not installed: apt-get install wrk (or --driver httpx)")
    settings = ", ".join(f"{k}={v}" for k, v in server_settings(args.backend).items())
    print(
        f"{args.backend} ({settings}); {args.workload} over {args.accounts:,} accounts; "
        f"balance serve {' '.join(_serve_options(args))}; {args.seconds:g} s per concurrency; "
        f"load: {args.driver}; {os.cpu_count()} CPUs shared by load generator, server and database"
    )
    print(
        f"{'clients':>8}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'gen CPU %':>11}"
        f"{'ours/ref':>10}"
    )
    with bench_database(args.backend) as url:
        with BalanceService.from_url(url) as svc:
            open_funded_accounts(svc, 1 if args.workload == "hot" else args.accounts)
            _, key = svc.create_api_key("bench", ["charge"])
        settle(url, args.backend, analyze=True)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _serve(url, port, args)
        measured: list[tuple[int, Figures]] = []
        try:
            for clients in map(int, args.concurrency.split(",")):
                if args.driver == "wrk":
                    figures = wrk.run(
                        base,
                        key,
                        workload=args.workload,
                        accounts=args.accounts,
                        service_type=SERVICE_TYPE,
                        connections=clients,
                        threads=min(2, clients),
                        seconds=args.seconds,
                    )
                else:
                    make = _client(base, key, args.workload, args.accounts)
                    figures = drive(clients, args.seconds, make)
                measured.append((clients, figures))
        finally:
            server.terminate()
            server.wait(timeout=30)
        theirs = None
        if args.reference:  # after ours: its rows have no row_hash for ours to chain onto
            settle(url, args.backend)
            work = Workload(
                args.workload, "single", args.reference_clients, args.seconds, args.accounts, 1
            )
            theirs = reference.run(args.backend, url, work)
    for clients, f in measured:
        ratio = f"{f.charges_per_s / theirs.charges_per_s:>10.2f}" if theirs else f"{'':>10}"
        print(
            f"{clients:>8}{f.charges:>10,}{f.charges_per_s:>9,.0f}{f.p50_ms or 0:>9.2f}"
            f"{f.p99_ms or 0:>9.2f}{f.client_cpu:>11.0f}{ratio}"
        )
    if theirs:
        print(
            f"reference: {reference.describe(args.backend)}; {args.reference_clients} clients: "
            f"{theirs.charges_per_s:,.0f} charges/s, average {theirs.avg_ms:.2f} ms"
        )
