"""Charges per second on a 3-node MariaDB Galera cluster, beside a standalone MariaDB
measured in the same run.

Needs the cluster of ``tests/cluster/galera.sh start`` (127.0.0.1:3307-3309; ``--nodes``
names others) and the standalone server (``BALANCE_BENCH_MARIADB_URL``, default
127.0.0.1:3306). Three services, as three application servers, each with ``--threads``
threads, take keyed charges of 1 for ``--seconds``, on one account (hot) or spread over
``--accounts``:

- **standalone**: the three services on the standalone server;
- **cross-node**: service i on node i, every node writing every account;
- **affinity**: each service given all the nodes (``BalanceService.from_nodes``): an
  account's writes go to its home node.

Printed per configuration: charges/s, p50 and p99 of a charge in ms, how many gave up
with ``RetriesExhausted`` (certification conflicts retried ``max_attempts`` times; the
caller would retry them with their keys), charges/s over the standalone's, and the CPU
per charge of this process (the client) and of the setup's servers together (on the
cluster, the node that commits and the two that apply its write set; from /proc, so the
servers run on this machine; their CPU counts from just before the clients connect).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, make_url
from tests.databases import recreate_database

from balance_ledger import BalanceService, RetriesExhausted

from .charges import SERVICE_TYPE, open_funded_accounts
from .databases import bench_database, server_settings
from .measure import Figures, drive

NODES = ",".join(f"mysql+pymysql://root@127.0.0.1:{port}/" for port in (3307, 3308, 3309))
DATABASE = "balance_ledger_bench_cluster"
SERVICES = 3


@dataclass(frozen=True)
class Result:
    setup: str
    figures: Figures
    exhausted: int
    server_cpu: float = 0.0  # seconds of CPU every mariadbd process used during the run


def server_pids(urls: list[str]) -> list[int]:
    """The process ids of the servers at ``urls`` (each says where its pid file is; they
    run on this machine)."""
    pids = []
    for url in urls:
        engine = create_engine(url)
        with engine.connect() as conn:
            pid_file = conn.exec_driver_sql("SELECT @@pid_file").scalar()
        engine.dispose()
        pids.append(int(Path(str(pid_file)).read_text().split()[0]))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by the processes ``pids`` (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def cluster_database(nodes: list[str], accounts: int) -> Iterator[list[str]]:
    """A fresh, migrated database on the cluster with funded accounts; its URL per node."""
    first = recreate_database(nodes[0], DATABASE)
    with BalanceService.from_url(first) as svc:
        svc.create_schema()
        open_funded_accounts(svc, accounts)
    urls = [make_url(n).set(database=DATABASE).render_as_string(hide_password=False) for n in nodes]
    deadline = time.monotonic() + 60
    for url in urls:  # every node has the schema and the accounts before the clock starts
        engine = create_engine(url)
        while "user_balances" not in inspect(engine).get_table_names():
            if time.monotonic() > deadline:
                raise SystemExit(f"the schema did not reach {url}")
            time.sleep(0.2)
        engine.dispose()
    yield urls


def run(services: list[BalanceService], args: argparse.Namespace, servers: list[int]) -> Result:
    """``--threads`` threads per service, each charging with its own keys."""
    exhausted = [0]
    guard = threading.Lock()
    tag = uuid.uuid4().hex[:8]

    def client(n: int) -> Callable[[], int]:
        svc = services[n % len(services)]
        rng, numbers = random.Random(n), itertools.count()

        def charge() -> int:
            user_id = 1 if args.workload == "hot" else rng.randint(1, args.accounts)
            key = f"{tag}-{n}-{next(numbers)}"
            try:
                svc.charge_service(user_id, 1, SERVICE_TYPE, idempotency_key=key)
            except RetriesExhausted:
                with guard:
                    exhausted[0] += 1
                return 0
            return 1

        return charge

    before = cpu_seconds(servers)
    figures = drive(len(services) * args.threads, args.seconds, client)
    return Result("", figures, exhausted[0], cpu_seconds(servers) - before)


def measure(args: argparse.Namespace) -> list[Result]:
    nodes = args.nodes.split(",")
    results = []
    with bench_database("mariadb") as url:
        with BalanceService.from_url(url) as svc:
            open_funded_accounts(svc, args.accounts)
        services = [BalanceService.from_url(url) for _ in range(SERVICES)]
        results.append(_named("standalone", run(services, args, server_pids([url]))))
        _close(services)
    with cluster_database(nodes, args.accounts) as urls:
        services = [BalanceService.from_url(urls[i % len(urls)]) for i in range(SERVICES)]
        results.append(_named("cross-node", run(services, args, server_pids(urls))))
        _close(services)
    with cluster_database(nodes, args.accounts) as urls:
        services = [BalanceService.from_nodes(urls) for _ in range(SERVICES)]
        results.append(_named("affinity", run(services, args, server_pids(urls))))
        _close(services)
    return results


def _named(setup: str, result: Result) -> Result:
    return Result(setup, result.figures, result.exhausted, result.server_cpu)


def _close(services: list[BalanceService]) -> None:
    for svc in services:
        svc.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    parser.add_argument("--nodes", default=NODES, help="comma list of the nodes' server URLs")
    parser.add_argument("--workload", default="hot,spread", help="hot, spread or both")
    parser.add_argument("--threads", type=int, default=4, help="per service (3 services)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument(
        "--node-loss",
        action="store_true",
        help="instead: kill node 3 mid-load and measure the write stall (cluster_events.py)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="instead: time a rebuild under load from every node (cluster_events.py)",
    )
    args = parser.parse_args(argv)
    if args.node_loss or args.rebuild:
        from . import cluster_events

        if args.node_loss:
            cluster_events.node_loss(args)
        if args.rebuild:
            cluster_events.rebuild(args)
        return
    settings = ", ".join(f"{k}={v}" for k, v in server_settings("mariadb").items())
    print(
        f"{SERVICES} services x {args.threads} threads, keyed charges of 1 for "
        f"{args.seconds:g} s each; 2 CPUs shared by the client and every server.\n"
        f"standalone: {settings}\ncluster: {args.nodes} (MariaDB Galera, one machine)"
    )
    print(
        f"{'workload':<9}{'setup':<12}{'charges':>9}{'charges/s':>11}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'gave up':>9}{'/standalone':>13}{'client µs':>11}{'servers µs':>12}"
    )
    for workload in args.workload.split(","):
        args.workload = workload
        results = measure(args)
        base = results[0].figures.charges_per_s
        for r in results:
            f = r.figures
            print(
                f"{workload:<9}{r.setup:<12}{f.charges:>9,}{f.charges_per_s:>11,.0f}"
                f"{f.p50_ms or 0:>8.2f}{f.p99_ms or 0:>8.2f}{r.exhausted:>9,}"
                f"{f.charges_per_s / base:>13.2f}"
                f"{1e6 * f.client_cpu / 100 / f.charges_per_s:>11,.0f}"
                f"{1e6 * r.server_cpu / f.charges:>12,.0f}",
                flush=True,
            )
