"""Charges per second through BalanceService, next to the database's own reference.

single:    each client calls ``charge_service``, one transaction per charge.
batch:     each client calls ``charge_many`` with ``--batch-size`` items.
coalesced: each client calls ``ChargeCoalescer.charge`` (one charge per call); the
           coalescer merges them into transactions of up to ``--batch-size`` charges.
           Its reference is the single one: the same calls, without the coalescer.
hot:    every charge goes to ONE account (the row lock serialises the clients).
spread: charges go to random accounts among ``--accounts``.

The reference (bench/reference.py) writes the same rows with raw SQL on the same
database right after: pgbench on PostgreSQL, Python loops over the bare drivers on
MariaDB and SQLite. ``ours/ref`` is our charges/s over the reference's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, text

from balance_ledger import BalanceService, ChargeCoalescer, Transaction
from balance_ledger.db.tables import user_balances

from . import reference
from .databases import ONE_STATEMENT, bench_database, server_settings
from .measure import Figures, Workload, drive
from .verify import seal_rows

FUNDS = 10**15  # no charge is ever refused: we measure the accepted path
SERVICE_TYPE = "bench"
MODES = ("single", "batch", "coalesced")


def open_funded_accounts(svc: BalanceService, count: int) -> None:
    """Accounts 1..count, each holding FUNDS after one sealed recharge row.

    Set-based (a recharge per account through the service takes 20 s for 10,000): the
    same rows ``svc.recharge`` writes, hashed by the backfill that migration 0006 uses.
    """
    now = datetime.now(UTC)
    rows = [
        {
            "user_id": user_id,
            "currency": "VND",
            "balance": FUNDS,
            "total_recharged": FUNDS,
            "total_spent": 0,
            "credit_limit": 0,
            "status": "active",
            "created_at": now,
            "updated_at": now,
        }
        for user_id in range(1, count + 1)
    ]
    with svc.engine.begin() as conn:
        conn.execute(insert(user_balances), rows)
        conn.execute(
            text(
                "INSERT INTO user_balance_transactions (user_id, transaction_type, amount, "
                "balance_before, balance_after, created_at) "
                "SELECT user_id, 'recharge', balance, 0, balance, created_at FROM user_balances"
            )
        )
    seal_rows(svc)


def settle(url: str, backend: str, *, analyze: bool = False) -> None:
    """PostgreSQL: fresh statistics if asked, and a CHECKPOINT, so that neither side of a
    comparison starts with the other's dirty pages to write (or autovacuum due)."""
    if backend != "postgresql":
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if analyze:
                conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def ours(svc: BalanceService, work: Workload) -> Figures:
    """Threads sharing one BalanceService, each charging for ``work.seconds``."""
    if work.mode == "coalesced":
        with ChargeCoalescer(svc, max_batch=work.batch_size) as coalescer:
            return drive(work.clients, work.seconds, _clients(svc, work, coalescer))
    return drive(work.clients, work.seconds, _clients(svc, work, None))


def _clients(
    svc: BalanceService, work: Workload, coalescer: ChargeCoalescer | None
) -> Callable[[int], Callable[[], int]]:
    run = uuid.uuid4().hex[:8]  # keys unique across runs on the same database

    def client(n: int) -> Callable[[], int]:
        rng = random.Random(n)
        numbers = itertools.count()

        def account() -> int:
            return 1 if work.workload == "hot" else rng.randint(1, work.accounts)

        def key() -> str | None:
            return f"{run}-{n}-{next(numbers)}" if work.keyed else None

        def single() -> int:
            svc.charge_service(account(), 1, SERVICE_TYPE, idempotency_key=key())
            return 1

        def batch() -> int:
            items = [
                {
                    "user_id": account(),
                    "amount": 1,
                    "service_type": SERVICE_TYPE,
                    "idempotency_key": key(),
                }
                for _ in range(work.batch_size)
            ]
            results = svc.charge_many(items)
            refused = [r for r in results if not isinstance(r, Transaction)]
            if refused:  # never with FUNDS: a refusal would measure the wrong path
                raise refused[0]
            return len(results)

        def coalesced() -> int:
            assert coalescer is not None
            coalescer.charge(account(), 1, SERVICE_TYPE, idempotency_key=key())
            return 1

        return {"single": single, "batch": batch, "coalesced": coalesced}[work.mode]

    return client


@dataclass(frozen=True)
class Measurement:
    backend: str
    work: Workload
    ours: Figures
    reference: Figures | None

    @property
    def ratio(self) -> float | None:
        """Our charges/s over the reference's."""
        if self.reference is None or not self.reference.charges_per_s:
            return None
        return self.ours.charges_per_s / self.reference.charges_per_s


def measure(backend: str, work: Workload, *, with_reference: bool = True) -> Measurement:
    """Ours, then the reference on the same fresh database (whose rows lack row_hash, which
    our path would have to walk back over: so never the other way round)."""
    with bench_database(backend) as url:
        with BalanceService.from_url(
            url, pool_size=work.clients, max_overflow=0, one_statement=ONE_STATEMENT
        ) as svc:
            open_funded_accounts(svc, 1 if work.workload == "hot" else work.accounts)
            settle(url, backend, analyze=True)
            mine = ours(svc, work)
        theirs = None
        if with_reference:
            settle(url, backend)
            theirs = reference.run(backend, url, work)
    return Measurement(backend, work, mine, theirs)


def describe_backend(backend: str) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in server_settings(backend).items())
    return f"{backend} ({settings})\n    reference: {reference.describe(backend)}"


HEADER = (
    f"{'backend':<11}{'workload':<9}{'mode':<7}{'clients':>7}{'charges':>10}{'charges/s':>11}"
    f"{'p50 ms':>8}{'p99 ms':>8}{'avg ms':>8}{'CPU %':>7}"
    f"{'ref/s':>10}{'ref avg':>9}{'ref CPU':>8}{'ours/ref':>9}"
)


def row(m: Measurement) -> str:
    w, o, r = m.work, m.ours, m.reference
    line = (
        f"{m.backend:<11}{w.workload:<9}{w.mode:<7}{w.clients:>7}{o.charges:>10,}"
        f"{o.charges_per_s:>11,.0f}{o.p50_ms or 0:>8.2f}{o.p99_ms or 0:>8.2f}{o.avg_ms:>8.2f}"
        f"{o.client_cpu:>7.0f}"
    )
    if r is None or m.ratio is None:
        return line
    return line + f"{r.charges_per_s:>10,.0f}{r.avg_ms:>9.2f}{r.client_cpu:>8.0f}{m.ratio:>9.2f}"


def add_matrix_arguments(parser: argparse.ArgumentParser, *, seconds: float) -> None:
    """The options ``charges`` and ``report`` share (comma lists run every combination)."""
    parser.add_argument("--backend", default="sqlite,postgresql,mariadb", help="comma list")
    parser.add_argument("--workload", default="hot,spread", help="hot, spread or both")
    parser.add_argument(
        "--mode", default="single,batch", help="comma list of single, batch, coalesced"
    )
    parser.add_argument("--clients", default="1,8,32", help="comma list of thread counts")
    parser.add_argument("--seconds", type=float, default=seconds, help="per side")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100, help="items per charge_many")
    parser.add_argument(
        "--keys",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="give every charge its own idempotency key (as HTTP clients do); the "
        "reference writes no key",
    )
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the raw-SQL reference (pgbench on PostgreSQL)",
    )


def matrix(args: argparse.Namespace) -> list[tuple[str, Workload]]:
    """Every (backend, workload) of the options, backend-major as they print."""
    modes = args.mode.split(",")
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"--mode: unknown {', '.join(sorted(unknown))}; use {', '.join(MODES)}")
    if (
        "spread" in args.workload.split(",")
        and "batch" in modes
        and args.accounts < args.batch_size
    ):
        raise SystemExit("spread batches need --accounts >= --batch-size")
    return [
        (
            backend,
            Workload(
                workload, mode, clients, args.seconds, args.accounts, args.batch_size, args.keys
            ),
        )
        for backend in args.backend.split(",")
        for workload in args.workload.split(",")
        for mode in modes
        for clients in map(int, args.clients.split(","))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench charges", description=__doc__)
    add_matrix_arguments(parser, seconds=10)
    args = parser.parse_args(argv)
    runs = matrix(args)
    print(
        f"{args.seconds:g} s per configuration; spread over {args.accounts:,} accounts; "
        f"batch = charge_many of {args.batch_size} items; {os.cpu_count()} CPUs; clients are "
        "threads sharing one BalanceService (pool_size = clients) on the same machine as the "
        "server. Latencies are per transaction (per charge_many call in batch mode); CPU % is "
        "the client process's, of one CPU."
        + (" Every charge has its own idempotency key." if args.keys else "")
    )
    if args.reference:
        print(
            "The reference leaves row_hash NULL; ours also reads the chain head and computes "
            "the SHA-256 link."
        )
    for backend in dict.fromkeys(backend for backend, _ in runs):
        print(describe_backend(backend))
    print(HEADER)
    for backend, work in runs:
        print(row(measure(backend, work, with_reference=args.reference)), flush=True)
