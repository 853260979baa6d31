"""Charges per second through ``BalanceService.charge_service``, each its own transaction.

hot:    every client charges ONE account (the row lock serialises them).
spread: clients charge random accounts among ``--accounts``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import insert

from balance_ledger import BalanceService
from balance_ledger.db.tables import user_balances

from .databases import fresh_database

FUNDS = 10**15  # no charge is ever refused: we measure the accepted path


def open_funded_accounts(svc: BalanceService, count: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "user_id": user_id,
            "currency": "VND",
            "balance": 0,
            "total_recharged": 0,
            "total_spent": 0,
            "credit_limit": 0,
            "status": "active",
            "created_at": now,
            "updated_at": now,
        }
        for user_id in range(1, count + 1)
    ]
    with svc.engine.begin() as conn:  # set-up only: bulk-open the accounts
        conn.execute(insert(user_balances), rows)
    for user_id in range(1, count + 1):
        svc.recharge(user_id, FUNDS)


def run(backend: str, workload: str, clients: int, seconds: float, accounts: int) -> dict:
    url = fresh_database(backend)
    with BalanceService.from_url(url, pool_size=clients, max_overflow=0) as svc:
        open_funded_accounts(svc, 1 if workload == "hot" else accounts)
        latencies: list[list[float]] = [[] for _ in range(clients)]
        barrier = threading.Barrier(clients + 1)
        deadline = 0.0

        def client(n: int) -> None:
            rng = random.Random(n)
            mine = latencies[n]
            barrier.wait()
            while (started := time.perf_counter()) < deadline:
                user_id = 1 if workload == "hot" else rng.randint(1, accounts)
                svc.charge_service(user_id, 1, "bench")
                mine.append(time.perf_counter() - started)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        cpu_before, wall_before = os.times(), time.perf_counter()
        deadline = wall_before + seconds
        barrier.wait()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall_before
        cpu_after = os.times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    merged = sorted(latency for per_client in latencies for latency in per_client)
    quantiles = statistics.quantiles(merged, n=100)
    return {
        "backend": backend,
        "workload": workload,
        "clients": clients,
        "charges": len(merged),
        "charges/s": len(merged) / wall,
        "p50 ms": quantiles[49] * 1000,
        "p99 ms": quantiles[98] * 1000,
        "client CPU %": 100 * cpu / wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench charges", description=__doc__)
    parser.add_argument("--backend", default="sqlite,postgresql,mariadb")
    parser.add_argument("--workload", default="hot,spread")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(
        f"charge_service, one transaction per charge; {args.seconds:g} s per configuration; "
        f"spread over {args.accounts:,} accounts; {os.cpu_count()} CPUs; clients are threads "
        "sharing one BalanceService (pool_size = clients) on the same machine as the server"
    )
    header = f"{'backend':<11}{'workload':<9}{'clients':>8}{'charges':>9}{'charges/s':>11}"
    print(header + f"{'p50 ms':>9}{'p99 ms':>9}{'client CPU %':>14}")
    for backend in args.backend.split(","):
        for workload in args.workload.split(","):
            for clients in map(int, args.clients.split(",")):
                r = run(backend, workload, clients, args.seconds, args.accounts)
                print(
                    f"{backend:<11}{workload:<9}{clients:>8}{r['charges']:>9,}"
                    f"{r['charges/s']:>11,.0f}{r['p50 ms']:>9.2f}{r['p99 ms']:>9.2f}"
                    f"{r['client CPU %']:>14.0f}",
                    flush=True,
                )
