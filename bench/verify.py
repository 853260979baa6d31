"""Reconciliation throughput: full verify, incremental verify, rebuild and verify-chain.

Builds ``--users`` accounts with ``--rows`` ledger rows in all (one recharge, then
charges of 1 per account) with set-based SQL, then times each mode and prints rows/s
and the client's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import text

from balance_ledger import BalanceService, SyncReport
from balance_ledger.db.backfill import seal_unsealed_rows
from balance_ledger.db.guards import install_append_only, remove_append_only

from .databases import fresh_database

FUNDS = 10**12

# One column "n" holding 1..count: each backend's cheapest series generator.
NUMBERS = {
    "postgresql": "SELECT generate_series(1, {count}) AS n",
    "mariadb": "SELECT seq AS n FROM seq_1_to_{count}",
    "sqlite": (
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
        "SELECT n FROM s"
    ),
}


def _numbers(backend: str, count: int) -> str:
    return NUMBERS[backend].format(count=int(count))


def populate(svc: BalanceService, backend: str, users: int, rows_per_user: int) -> None:
    """Accounts 1..users, each with one recharge of FUNDS and rows_per_user - 1 charges of 1."""
    now = datetime.now(UTC).replace(tzinfo=None)
    charges = rows_per_user - 1
    with svc.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_balances (user_id, currency, balance, total_recharged, "
                "total_spent, credit_limit, status, created_at, updated_at) "
                f"SELECT u.n, 'VND', {FUNDS - charges}, {FUNDS}, {charges}, 0, 'active', "
                ":now, :now "
                f"FROM ({_numbers(backend, users)}) u"
            ),
            {"now": now},
        )
        # Row k of account u: k = 1 is the recharge, k > 1 the (k-1)th charge of 1.
        conn.execute(
            text(
                "INSERT INTO user_balance_transactions (user_id, transaction_type, amount, "
                "balance_before, balance_after, service_type, created_at) "
                "SELECT u.n, CASE WHEN k.n = 1 THEN 'recharge' ELSE 'charge' END, "
                f"CASE WHEN k.n = 1 THEN {FUNDS} ELSE 1 END, "
                f"CASE WHEN k.n = 1 THEN 0 ELSE {FUNDS} - (k.n - 2) END, "
                f"{FUNDS} - (k.n - 1), 'bench', :now "
                f"FROM ({_numbers(backend, users)}) u "
                f"CROSS JOIN ({_numbers(backend, rows_per_user)}) k "
                "ORDER BY u.n, k.n"
            ),
            {"now": now},
        )
    if backend == "postgresql":
        with svc.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))


def add_one_charge_each(svc: BalanceService, backend: str, users: int, rows_per_user: int) -> None:
    """One more charge of 1 per account, cache updated to match (set-based)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    before = FUNDS - (rows_per_user - 1)
    with svc.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_balance_transactions (user_id, transaction_type, amount, "
                "balance_before, balance_after, service_type, created_at) "
                f"SELECT u.n, 'charge', 1, {before}, {before - 1}, 'bench', :now "
                f"FROM ({_numbers(backend, users)}) u"
            ),
            {"now": now},
        )
        conn.execute(
            text("UPDATE user_balances SET balance = balance - 1, total_spent = total_spent + 1")
        )


def seal_rows(svc: BalanceService) -> int:
    """Hash the bulk-loaded rows, as migration 0006 does for a ledger older than the chain."""
    with svc.engine.begin() as conn:
        remove_append_only(conn)
        sealed = seal_unsealed_rows(conn)
        install_append_only(conn)
    return sealed


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, rows: int, accounts: int, run: Callable[[], str]) -> None:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(
        f"{label:<38}{rows:>11,}{seconds:>9.2f}{rows / seconds:>12,.0f}"
        f"{accounts / seconds:>12,.0f}{peak_rss_mib():>10.0f}   {result}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench verify", description=__doc__)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=5_000_000, help="ledger rows in all")
    args = parser.parse_args(argv)
    rows_per_user = max(2, args.rows // args.users)
    total = args.users * rows_per_user
    print(
        f"{args.backend}: {args.users:,} accounts × {rows_per_user} rows = {total:,} ledger rows; "
        f"chunks of 1,000 accounts; {os.cpu_count()} CPUs, server on the same machine"
    )
    url = fresh_database(args.backend)
    with BalanceService.from_url(url) as svc:
        started = time.perf_counter()
        populate(svc, args.backend, args.users, rows_per_user)
        print(f"populated in {time.perf_counter() - started:.1f} s")
        timed(
            "seal rows (migration 0006 backfill)", total, args.users, lambda: f"{seal_rows(svc):,}"
        )
        verify = svc.verify_and_fix_balance
        print(
            f"{'run':<38}{'rows read':>11}{'seconds':>9}{'rows/s':>12}{'accounts/s':>12}"
            f"{'peak MiB':>10}"
        )

        def summary(report: SyncReport) -> str:
            return f"checked {report.checked:,}, in sync: {report.in_sync}"

        n = args.users
        timed("verify --full (first: checkpoints)", total, n, lambda: summary(verify(full=True)))
        add_one_charge_each(svc, args.backend, args.users, rows_per_user)
        timed("seal the new rows", total + n, n, lambda: f"{seal_rows(svc):,} sealed")
        timed("verify (incremental, 1 new row each)", n, n, lambda: summary(verify()))
        timed("verify --full", total + n, n, lambda: summary(verify(full=True)))
        timed("rebuild", total + n, n, lambda: f"changed {svc.rebuild_all_balances().changed:,}")
        timed("verify-chain", total + n, n, lambda: f"intact: {svc.verify_chain().intact}")
