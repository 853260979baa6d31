"""Reconciliation throughput: full verify, incremental verify, rebuild and verify-chain.

Builds ``--users`` accounts with ``--rows`` ledger rows in all (one recharge, then
charges of 1 per account), then times each mode and prints rows/s and the client's
peak RSS during each step.

Two ways to build the ledger:

* PostgreSQL (default): rows sealed in Python with ``chain.seal`` (in ``--workers``
  processes) and written with COPY (bench/sealed.py), fast enough for 10M rows;
* ``--backfill``, and always on MariaDB and SQLite: set-based SQL writes the rows
  unsealed, then the migration-0006 backfill seals them row by row (~20,000 rows/s).

The one new charge per account before the incremental verify is written the same way.
On PostgreSQL the database is VACUUM ANALYZEd (untimed) after each build step, so no
step reads dead tuples or races autovacuum.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from balance_ledger import BalanceService, SyncReport
from balance_ledger.db.backfill import seal_unsealed_rows
from balance_ledger.db.guards import install_append_only, remove_append_only

from . import sealed
from .databases import bench_database

DATABASE = "balance_ledger_bench_verify"  # not the charges benchmark's balance_ledger_bench

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


def populate(svc: BalanceService, backend: str, users: int, rows_per_user: int) -> int:
    """Accounts 1..users, each with one recharge of FUNDS and rows_per_user - 1 charges of 1,
    written unsealed (row_hash NULL); the ledger rows written."""
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
    return users * rows_per_user


def settle(svc: BalanceService, backend: str) -> None:
    """PostgreSQL: VACUUM ANALYZE, so that no timed step reads dead tuples (the backfill
    rewrites every row), lacks statistics, or races autovacuum; printed, not timed."""
    if backend != "postgresql":
        return
    started = time.perf_counter()
    with svc.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    print(f"  (VACUUM ANALYZE, untimed: {time.perf_counter() - started:.1f} s)", flush=True)


def add_one_charge_each(svc: BalanceService, backend: str, users: int, rows_per_user: int) -> int:
    """One more charge of 1 per account, unsealed, cache updated to match (set-based)."""
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
    return users


def load_sealed(svc: BalanceService, users: int, rows_per_user: int, workers: int) -> int:
    """PostgreSQL: ``populate``'s accounts and rows, sealed in Python and written with COPY."""
    now = datetime.now(UTC)
    return sealed.load(
        svc, users=users, rows_per_user=rows_per_user, funds=FUNDS, created_at=now, workers=workers
    )


def add_sealed_charges(svc: BalanceService, users: int, workers: int) -> int:
    """PostgreSQL: ``add_one_charge_each``, each row sealed onto its account's head, by COPY."""
    return sealed.add_one_charge_each(
        svc, users=users, created_at=datetime.now(UTC), workers=workers
    )


def seal_rows(svc: BalanceService) -> int:
    """Hash the bulk-loaded rows, as migration 0006 does for a ledger older than the chain."""
    with svc.engine.begin() as conn:
        remove_append_only(conn)
        sealed = seal_unsealed_rows(conn)
        install_append_only(conn)
    return sealed


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement (Linux: VmHWM); False where it cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The peak RSS since the last reset (Linux), else over the process's whole life."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, rows: int, accounts: int, run: Callable[[], str]) -> None:
    reset_peak_rss()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(
        f"{label:<44}{rows:>11,}{seconds:>9.2f}{rows / seconds:>12,.0f}"
        f"{accounts / seconds:>12,.0f}{peak_rss_mib():>10.0f}   {result}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench verify", description=__doc__)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=5_000_000, help="ledger rows in all")
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="PostgreSQL: build with set-based SQL + the migration-0006 backfill instead of "
        "sealed COPY (MariaDB and SQLite always do)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes hashing rows for COPY (default: one per CPU)",
    )
    parser.add_argument(
        "--database", default=DATABASE, help=f"database on the server (default {DATABASE})"
    )
    args = parser.parse_args(argv)
    rows_per_user = max(2, args.rows // args.users)
    total = args.users * rows_per_user
    n = args.users
    copy = args.backend == "postgresql" and not args.backfill
    print(
        f"{args.backend}: {n:,} accounts × {rows_per_user} rows = {total:,} ledger rows; "
        f"chunks of 1,000 accounts; {os.cpu_count()} CPUs, server on the same machine"
    )
    if copy:
        print(
            f"build: rows sealed in Python (chain.seal, {args.workers} worker processes), "
            "written with COPY; no backfill"
        )
    else:
        print("build: set-based SQL writes rows unsealed; the migration-0006 backfill seals them")
    peak = "peak MiB" if reset_peak_rss() else "peak MiB*"
    print(
        "peak MiB: this process's peak RSS during the step"
        + (" (the hashing workers' not included)" if copy else "")
    )
    with bench_database(args.backend, args.database) as url, BalanceService.from_url(url) as svc:
        print(
            f"{'step':<44}{'rows':>11}{'seconds':>9}{'rows/s':>12}{'accounts/s':>12}{peak:>10}",
            flush=True,
        )
        if copy:
            timed(
                f"load sealed rows (COPY, {args.workers} hashing procs)",
                total,
                n,
                lambda: f"{load_sealed(svc, n, rows_per_user, args.workers):,} written",
            )
        else:
            timed(
                "populate (set-based SQL, unsealed)",
                total,
                n,
                lambda: f"{populate(svc, args.backend, n, rows_per_user):,} written",
            )
            timed("seal rows (migration 0006 backfill)", total, n, lambda: f"{seal_rows(svc):,}")
        settle(svc, args.backend)
        verify = svc.verify_and_fix_balance

        def summary(report: SyncReport) -> str:
            return f"checked {report.checked:,}, in sync: {report.in_sync}"

        timed("verify --full (first: checkpoints)", total, n, lambda: summary(verify(full=True)))
        if copy:
            timed(
                "add one charge each (sealed, COPY)",
                n,
                n,
                lambda: f"{add_sealed_charges(svc, n, args.workers):,} written",
            )
        else:
            timed(
                "add one charge each (set-based, unsealed)",
                n,
                n,
                lambda: f"{add_one_charge_each(svc, args.backend, n, rows_per_user):,} written",
            )
            timed("seal the new rows (0006 backfill)", total + n, n, lambda: f"{seal_rows(svc):,}")
        settle(svc, args.backend)
        timed("verify (incremental, 1 new row each)", n, n, lambda: summary(verify()))
        timed("verify --full", total + n, n, lambda: summary(verify(full=True)))
        timed("rebuild", total + n, n, lambda: f"changed {svc.rebuild_all_balances().changed:,}")
        timed("verify-chain", total + n, n, lambda: f"intact: {svc.verify_chain().intact}")
    if peak.endswith("*"):
        print("* peak RSS over the whole run so far: this system cannot reset it per step")
