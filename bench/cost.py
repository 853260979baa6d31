"""What one single charge costs the client: round trips to the server and CPU time.

One thread calls ``charge_service`` ``--charges`` times (spread over ``--accounts``;
``--keys``: each with its own idempotency key, as HTTP clients send them) on a fresh
database, and prints per charge:

- statements: what the driver sent (counted at the cursor, the engine's
  ``before_cursor_execute``, which the prepared statements of db/prepared.py run too)
  plus each transaction's COMMIT; on PostgreSQL psycopg also sends a BEGIN before a
  transaction's first statement, counted too. A movement written in one autocommit
  statement (money/post.py: post_unchanged) sends neither: on PostgreSQL and MariaDB
  each statement is a round trip;
- client CPU: ``time.process_time()`` of this process over the charges, in µs (the
  database server's CPU is not in it; the server shares the machine's 2 CPUs);
- wall time per charge, in µs.

No reference run: these are the client's own costs, the regression guard of the
single-charge path (compare them between builds, as ``charges`` compares throughput).
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from typing import Any

from sqlalchemy import event

from balance_ledger import BalanceService

from .charges import SERVICE_TYPE, open_funded_accounts
from .databases import ONE_STATEMENT, bench_database, server_settings


def measure(backend: str, charges: int, accounts: int, keyed: bool) -> dict[str, float]:
    with (
        bench_database(backend) as url,
        BalanceService.from_url(url, one_statement=ONE_STATEMENT) as svc,
    ):
        open_funded_accounts(svc, accounts)
        rng, run = random.Random(7), uuid.uuid4().hex[:8]
        for _ in range(min(charges, 200)):  # warm the pool and the statement caches
            svc.charge_service(rng.randint(1, accounts), 1, SERVICE_TYPE)
        statements = commits = 0

        def sent(*_args: Any) -> None:
            nonlocal statements
            statements += 1

        def committed(conn: Any) -> None:
            nonlocal commits
            if backend != "postgresql" or not conn.connection.driver_connection.autocommit:
                commits += 2 if backend == "postgresql" else 1  # psycopg: BEGIN too

        event.listen(svc.engine, "before_cursor_execute", sent)
        event.listen(svc.engine, "commit", committed)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(charges):
            key = f"{run}-{i}" if keyed else None
            svc.charge_service(rng.randint(1, accounts), 1, SERVICE_TYPE, idempotency_key=key)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        event.remove(svc.engine, "before_cursor_execute", sent)
        event.remove(svc.engine, "commit", committed)
    return {
        "statements": (statements + commits) / charges,
        "cpu_us": cpu / charges * 1e6,
        "wall_us": wall / charges * 1e6,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cost", description=__doc__)
    parser.add_argument("--backend", default="sqlite,postgresql,mariadb", help="comma list")
    parser.add_argument("--charges", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--keys", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    print(
        f"one thread, {args.charges:,} charge_service calls spread over {args.accounts:,} "
        f"accounts, {'each with its own idempotency key' if args.keys else 'no keys'}"
    )
    print(f"{'backend':<11}{'statements':>16}{'client CPU µs':>15}{'wall µs':>10}  server")
    for backend in args.backend.split(","):
        cost = measure(backend, args.charges, args.accounts, args.keys)
        sent = f"{cost['statements']:.2f}"
        settings = ", ".join(f"{k}={v}" for k, v in server_settings(backend).items())
        print(
            f"{backend:<11}{sent:>16}{cost['cpu_us']:>15,.0f}{cost['wall_us']:>10,.0f}  {settings}"
        )
