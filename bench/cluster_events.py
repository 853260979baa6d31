"""What happens to writes on a 3-node Galera cluster when something other than charging
happens: a node is lost (``python -m bench cluster --node-loss``), or a rebuild runs
(``--rebuild``). Needs ``tests/cluster/galera.sh`` (run as root: it kills and restarts
node 3).

- **node loss**: three services x ``--threads`` threads charge (keyed, spread over
  ``--accounts``) for ``--seconds``; a third of the way in, node 3 is killed (SIGKILL,
  as a lost machine). Printed per setup (cross-node: service i on node i; affinity:
  every service given all the nodes): charges/s before and after the loss, the longest
  time with no charge acknowledged by anyone after it (the stall), what the failed
  calls raised, and how long node 3 then takes to rejoin (IST).
- **rebuild**: six threads charge every account from all three nodes while
  ``rebuild_all_balances`` runs on node 1, once per cap on the accounts one rebuild
  chunk locks (galera.LOCKED_ACCOUNTS, 100; the larger caps show what it is for).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from balance_ledger import BalanceService
from balance_ledger.db import galera

from .cluster import cluster_database

SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "cluster" / "galera.sh"
SERVICES = 3


class Load:
    """Charging threads over ``services`` until stopped: each acknowledged charge's
    time, and the type of each failure."""

    def __init__(self, services: list[BalanceService], threads: int, accounts: int) -> None:
        self.done: list[float] = []
        self.failed: Counter[str] = Counter()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        tag = uuid.uuid4().hex[:8]
        self._threads = [
            threading.Thread(target=self._client, args=(services[n % len(services)], n, tag))
            for n in range(len(services) * threads)
        ]
        self._accounts = accounts

    def _client(self, svc: BalanceService, n: int, tag: str) -> None:
        rng = random.Random(n)
        count = 0
        while not self._stop.is_set():
            count += 1
            key = f"{tag}-{n}-{count}"
            try:
                svc.charge_service(rng.randint(1, self._accounts), 1, "bench", idempotency_key=key)
            except Exception as error:  # counted: what a caller of a lost node sees
                with self._guard:
                    self.failed[type(error).__name__] += 1
                time.sleep(0.01)  # a caller's pause before its next call
                continue
            now = time.monotonic()
            with self._guard:
                self.done.append(now)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _galera(*args: str) -> float:
    """Run the cluster script; its wall time in seconds."""
    started = time.monotonic()
    subprocess.run(["bash", str(SCRIPT), *args], check=True, capture_output=True)
    return time.monotonic() - started


def node_loss(args: argparse.Namespace) -> None:
    print(
        f"node loss: {SERVICES} services x {args.threads} threads, keyed charges spread over "
        f"{args.accounts} accounts for {args.seconds:g} s; node 3 killed at "
        f"{args.seconds / 3:.1f} s"
    )
    print(f"{'setup':<12}{'before/s':>9}{'after/s':>9}{'stall s':>9}{'rejoin s':>10}  failed calls")
    setups: dict[str, Callable[[list[str]], list[BalanceService]]] = {
        "cross-node": lambda urls: [BalanceService.from_url(urls[i]) for i in range(SERVICES)],
        "affinity": lambda urls: [BalanceService.from_nodes(urls) for _ in range(SERVICES)],
    }
    nodes = args.nodes.split(",")
    for name, make in setups.items():
        with cluster_database(nodes, args.accounts) as urls:
            services = make(urls)
            with Load(services, args.threads, args.accounts) as load:
                time.sleep(args.seconds / 3)
                killed = time.monotonic()
                _galera("kill", "3")
                time.sleep(args.seconds * 2 / 3)
                ended = time.monotonic()
            rejoin = _galera("rejoin", "3")
            for svc in services:
                svc.close()
        before = [t for t in load.done if t < killed]
        after = [t for t in load.done if killed <= t < ended]
        marks = [killed, *after, ended]
        stall = max(b - a for a, b in itertools.pairwise(marks))
        span = before[-1] - before[0] if len(before) > 1 else 1.0
        failed = ", ".join(f"{k} {v}" for k, v in load.failed.most_common()) or "none"
        print(
            f"{name:<12}{len(before) / span:>9.0f}{len(after) / (ended - killed):>9.0f}"
            f"{stall:>9.2f}{rejoin:>10.1f}  {failed}",
            flush=True,
        )


class Counted(logging.Filter):
    """What the thread that made it logged: transactions run again (db/transactions.py)
    and chunks done account by account after they were refused (reconcile/runner.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.retries = self.one_by_one = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() == self.thread:
            message = str(record.msg)
            self.retries += "retry" in message
            self.one_by_one += "one by one" in message
        return True


def rebuild(args: argparse.Namespace) -> None:
    print(
        f"rebuild on node 1 of {args.accounts} accounts while 6 threads charge them from "
        "all 3 nodes, per cap on the accounts one rebuild chunk locks"
    )
    print(
        f"{'cap':>6}{'seconds':>9}{'charges/s meanwhile':>21}{'retries':>9}"
        f"{'chunks done one by one':>24}"
    )
    nodes = args.nodes.split(",")
    kept = galera.LOCKED_ACCOUNTS
    loggers = [
        logging.getLogger(f"balance_ledger.{name}")
        for name in ("db.transactions", "reconcile.runner")  # a filter sees its own records
    ]
    for logger in loggers:
        logger.setLevel(logging.INFO)  # retries are logged at INFO
    try:
        for cap in (1_000, 250, kept):
            galera.LOCKED_ACCOUNTS = cap
            with cluster_database(nodes, args.accounts) as urls:
                services = [BalanceService.from_url(urls[i]) for i in range(SERVICES)]
                operator = BalanceService.from_url(urls[0])
                counted = Counted()
                with Load(services, 2, args.accounts) as load:
                    time.sleep(1)
                    for logger in loggers:
                        logger.addFilter(counted)
                    started = time.monotonic()
                    report = operator.rebuild_all_balances()
                    seconds = time.monotonic() - started
                    for logger in loggers:
                        logger.removeFilter(counted)
                for svc in [*services, operator]:
                    svc.close()
            if report.errors:
                raise SystemExit(f"the rebuild found errors: {report.errors}")
            during = [t for t in load.done if started <= t < started + seconds]
            print(
                f"{cap:>6}{seconds:>9.1f}{len(during) / seconds:>21.0f}{counted.retries:>9}"
                f"{counted.one_by_one:>24}",
                flush=True,
            )
    finally:
        galera.LOCKED_ACCOUNTS = kept
