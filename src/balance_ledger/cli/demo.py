"""``balance demo``: the core's guarantees, shown on a fresh SQLite file.

Opens accounts, charges, retries idempotently, is refused, then runs a real charge
storm (threads, each with its own connection) on one account and checks the outcome
against the ledger; finally corrupts a few cache rows and lets verify-sync find and
fix them. Returns False if any guarantee did not hold.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..db.drills import overwrite_cache
from ..errors import BalanceError, InsufficientBalance
from ..models import StatusChange
from ..service import BalanceService
from . import format
from .format import money, transaction_line

STORM_ACCOUNT, OVERDRAFT_ACCOUNT = 1, 2
STORM_FUNDS, STORM_AMOUNT = 100_000, 1_000  # VND: enough for exactly 100 charges


def run_demo(console: Console, *, path: str, threads: int, charges_per_thread: int) -> bool:
    db_file = Path(path)
    for stale in (db_file, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    console.rule(f"balance-ledger demo on a fresh SQLite file: {db_file}")
    with BalanceService.from_url(f"sqlite:///{db_file}", pool_size=threads) as svc:
        svc.create_schema()
        _basics(console, svc)
        storm_ok = _storm(console, svc, threads=threads, charges_per_thread=charges_per_thread)
        _suspension(console, svc)
        sync_ok = _drift(console, svc)
    url = f"sqlite:///{db_file}"
    console.print(f"\nInspect it: balance --database-url {url} history {STORM_ACCOUNT}")
    console.print(f"            balance --database-url {url} sync-runs")
    return storm_ok and sync_ok


def _basics(console: Console, svc: BalanceService) -> None:
    console.print("\n[bold]1. Open, recharge, charge[/]")
    svc.open_account(STORM_ACCOUNT, currency="VND")
    console.print(" ", transaction_line(svc.recharge(STORM_ACCOUNT, STORM_FUNDS + 3_000), "VND"))
    first = svc.charge_service(STORM_ACCOUNT, 3_000, "vps", idempotency_key="vps-usage-0001")
    console.print(" ", transaction_line(first, "VND"))

    console.print("\n[bold]2. A retried charge with the same idempotency key[/]")
    retry = svc.charge_service(STORM_ACCOUNT, 3_000, "vps", idempotency_key="vps-usage-0001")
    console.print(f"  returned row #{retry.id} again; charged once: {retry == first}")

    console.print("\n[bold]3. A charge the balance cannot cover is refused, and writes nothing[/]")
    try:
        svc.charge_service(STORM_ACCOUNT, 10**9, "vps")
    except BalanceError as refused:
        console.print(f"  {type(refused).__name__}: {refused}")


def _storm(console: Console, svc: BalanceService, *, threads: int, charges_per_thread: int) -> bool:
    attempts = threads * charges_per_thread
    console.print(
        f"\n[bold]4. Charge storm:[/] {threads} threads × {charges_per_thread} charges of "
        f"{money(STORM_AMOUNT, 'VND')} race on account {STORM_ACCOUNT} "
        f"holding {money(svc.get_balance(STORM_ACCOUNT).balance, 'VND')}"
    )
    before = svc.get_balance(STORM_ACCOUNT)
    barrier = threading.Barrier(threads)

    def racer(_: int) -> int:
        barrier.wait()
        charged = 0
        for _ in range(charges_per_thread):
            try:
                svc.charge_service(STORM_ACCOUNT, STORM_AMOUNT, "api-call")
                charged += 1
            except InsufficientBalance:
                pass
        return charged

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        charged = sum(pool.map(racer, range(threads)))
    elapsed = time.perf_counter() - started

    after = svc.get_balance(STORM_ACCOUNT)
    ledger = svc.ledger_totals(STORM_ACCOUNT)
    checks = {
        "never overdrawn (balance ≥ -credit limit)": after.balance >= -after.credit_limit,
        "every affordable charge went through": charged
        == min(attempts, before.available // STORM_AMOUNT),
        "charged × amount = new spending": charged * STORM_AMOUNT
        == after.total_spent - before.total_spent,
        "ledger sum = cached balance": ledger.balance == after.balance,
        "ledger totals = cached totals": (ledger.total_recharged, ledger.total_spent)
        == (after.total_recharged, after.total_spent),
    }
    table = Table(show_header=False)
    table.add_row("attempted", f"{attempts:,}")
    table.add_row("charged", f"{charged:,}")
    table.add_row("declined (InsufficientBalance)", f"{attempts - charged:,}")
    table.add_row(
        "balance before → after", f"{money(before.balance, 'VND')} → {money(after.balance, 'VND')}"
    )
    table.add_row("ledger rows", f"{ledger.row_count:,}")
    table.add_row("elapsed", f"{elapsed:.2f} s ({attempts / elapsed:,.0f} attempts/s)")
    console.print(table)
    for check, held in checks.items():
        console.print(f"  {'[green]✔[/]' if held else '[bold red]✘[/]'} {check}")
    return all(checks.values())


def _suspension(console: Console, svc: BalanceService) -> None:
    console.print("\n[bold]5. Delivered usage past the limit suspends; a recharge reactivates[/]")
    svc.on_suspend(lambda c: _announce(console, c))
    svc.on_reactivate(lambda c: _announce(console, c))
    svc.open_account(OVERDRAFT_ACCOUNT, currency="USD", credit_limit=500)
    svc.recharge(OVERDRAFT_ACCOUNT, 1_000)
    tx = svc.charge_service(OVERDRAFT_ACCOUNT, 2_000, "bandwidth", allow_overdraft=True)
    console.print(" ", transaction_line(tx, "USD"))
    console.print(" ", transaction_line(svc.recharge(OVERDRAFT_ACCOUNT, 600), "USD"))


def _drift(console: Console, svc: BalanceService) -> bool:
    console.print(
        "\n[bold]6. Drift: three cache rows are corrupted behind the ledger's back; "
        "verify-sync finds and fixes them[/]"
    )
    for user_id in range(3, 8):
        svc.open_account(user_id)
        svc.recharge(user_id, 50_000 * user_id)
        svc.charge_service(user_id, 7_000, "vps")
    # What a bad manual edit or a buggy script would do: write the cache directly.
    corruptions: dict[int, dict[str, Any]] = {
        3: {"balance": 999_999},
        5: {"total_spent": 0},
        7: {"status": "suspended"},
    }
    for user_id, values in corruptions.items():
        overwrite_cache(svc.engine, user_id, **values)

    found = svc.verify_and_fix_balance()
    console.print(format.sync_summary(found))
    console.print(format.discrepancy_table(found.discrepancies, "Discrepancies found"))
    fixed = svc.verify_and_fix_balance(fix=True)
    console.print(
        f"  verify-sync --fix: fixed {fixed.fixed} accounts (audited in run {fixed.run_id})"
    )
    after = svc.verify_and_fix_balance(full=True)
    checks = {
        "verify found exactly the corrupted accounts": {d.user_id for d in found.discrepancies}
        == set(corruptions),
        "fix repaired them all": fixed.fixed == len(corruptions),
        "a full verify finds everything in sync": after.in_sync,
    }
    for check, held in checks.items():
        console.print(f"  {'[green]✔[/]' if held else '[bold red]✘[/]'} {check}")
    return all(checks.values())


def _announce(console: Console, change: StatusChange) -> None:
    console.print(
        f"  callback after commit: account {change.user_id} {change.old_status} → "
        f"{change.new_status}"
    )
