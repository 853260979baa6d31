"""``balance verify-sync``, ``discrepancies``, ``sync-runs`` and ``scheduler``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
)

from ..jobs.scheduler import (
    DEFAULT_ANCHOR_CRON,
    DEFAULT_DISPATCH_SECONDS,
    DEFAULT_EXPIRE_HOLDS_CRON,
    DEFAULT_PURGE_REFUSALS_CRON,
    DEFAULT_REBUILD_CRON,
    DEFAULT_SUSPEND_OVERDUE_CRON,
    DEFAULT_TIMEZONE,
    DEFAULT_VERIFY_CRON,
    build_scheduler,
)
from ..reconcile import Progress as ProgressCallback
from ..service import BalanceService
from . import format as fmt
from .app import Json, _service, app, console, heavy_reader

EXIT_OUT_OF_SYNC = 1


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[ProgressCallback | None]:
    """A progress bar on a terminal; nothing in --json mode or when piped."""
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command("verify-sync")
def verify_sync(
    ctx: typer.Context,
    fix: Annotated[bool, typer.Option("--fix", help="Rewrite what disagrees (audited).")] = False,
    user_id: Annotated[int | None, typer.Option(help="Verify this account only.")] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Recompute every account's cache from the ledger.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --rebuild: show the changes, write nothing.")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Re-read every ledger row, not only new ones.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Verify the balance cache against the ledger; exit 1 if anything is left out of sync."""
    if dry_run and not rebuild:
        raise typer.BadParameter("--dry-run goes with --rebuild", param_hint="--dry-run")
    if rebuild and (fix or user_id is not None or full):
        raise typer.BadParameter("--rebuild rebuilds every account; drop --fix/--user-id/--full")
    svc = _service(ctx)
    if rebuild:
        _rebuild(svc, dry_run=dry_run, as_json=as_json)
        return
    with _progress(not as_json, "verifying") as progress:
        report = svc.verify_and_fix_balance(user_id, fix=fix, full=full, progress=progress)
    if as_json:
        console.print_json(report.to_json())
    else:
        console.print(fmt.sync_summary(report))
        fixed = [d.discrepancy for d in report.details if d.status == "fixed" and d.discrepancy]
        if fixed:
            console.print(fmt.discrepancy_table(fixed, "Fixed"))
        if report.discrepancies:
            console.print(fmt.discrepancy_table(report.discrepancies, "Discrepancies found"))
        if report.errors:
            console.print(fmt.errors_table(report.errors))
        console.print(f"[dim]audit: balance sync-runs (run {report.run_id})[/]")
    if not report.in_sync:
        raise typer.Exit(EXIT_OUT_OF_SYNC)


def _rebuild(svc: BalanceService, *, dry_run: bool, as_json: bool) -> None:
    with _progress(not as_json, "rebuilding") as progress:
        report = svc.rebuild_all_balances(dry_run=dry_run, progress=progress)
    if as_json:
        console.print_json(report.to_json())
    else:
        verb = "Would change" if dry_run else "Changed"
        console.print(f"Checked: {report.checked:,} users\n{verb}: {report.changed:,} users")
        if report.changes:
            title = "Dry run: nothing was written" if dry_run else f"Rebuilt (run {report.run_id})"
            console.print(fmt.changes_table(report.changes, title))
        if report.errors:
            console.print(fmt.errors_table(report.errors))
    if report.errors:
        raise typer.Exit(EXIT_OUT_OF_SYNC)


@app.command()
def discrepancies(
    ctx: typer.Context,
    as_json: Json = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """List accounts whose cache disagrees with the ledger, largest first (writes nothing)."""
    found = heavy_reader(ctx).get_balance_discrepancies()
    if as_json:
        console.print_json(fmt.to_json(found))
    elif as_csv:
        fmt.write_csv(sys.stdout, [d.to_dict() for d in found])
    elif found:
        console.print(fmt.discrepancy_table(found, "Discrepancies"))
    else:
        console.print("no discrepancies: every cache row matches the ledger")
    if found:
        raise typer.Exit(EXIT_OUT_OF_SYNC)


@app.command("sync-runs")
def sync_runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many runs (1-1000).")] = 20,
    as_json: Json = False,
) -> None:
    """Show the audit trail of verify / fix / rebuild runs."""
    runs = _service(ctx).sync_runs(limit)
    if as_json:
        console.print_json(fmt.to_json(runs))
    else:
        console.print(fmt.runs_table(runs))


@app.command()
def scheduler(
    ctx: typer.Context,
    verify_cron: Annotated[
        str, typer.Option(envvar="BALANCE_VERIFY_CRON", help="When to run verify-sync --fix.")
    ] = DEFAULT_VERIFY_CRON,
    rebuild_cron: Annotated[
        str, typer.Option(envvar="BALANCE_REBUILD_CRON", help="When to run --rebuild.")
    ] = DEFAULT_REBUILD_CRON,
    expire_holds_cron: Annotated[
        str,
        typer.Option(envvar="BALANCE_EXPIRE_HOLDS_CRON", help="When to release expired holds."),
    ] = DEFAULT_EXPIRE_HOLDS_CRON,
    suspend_overdue_cron: Annotated[
        str,
        typer.Option(
            envvar="BALANCE_SUSPEND_OVERDUE_CRON",
            help="When to suspend the accounts whose grace period ended.",
        ),
    ] = DEFAULT_SUSPEND_OVERDUE_CRON,
    purge_refusals_cron: Annotated[
        str,
        typer.Option(
            envvar="BALANCE_PURGE_REFUSALS_CRON",
            help="When to forget refusals older than 24 h (their keys are free again).",
        ),
    ] = DEFAULT_PURGE_REFUSALS_CRON,
    anchor_cron: Annotated[
        str,
        typer.Option(envvar="BALANCE_ANCHOR_CRON", help="When to anchor the chains' digest."),
    ] = DEFAULT_ANCHOR_CRON,
    dispatch_every: Annotated[
        float,
        typer.Option(
            envvar="BALANCE_DISPATCH_EVERY",
            help="Seconds between deliveries of pending events to the webhooks (0: off).",
            min=0,
        ),
    ] = DEFAULT_DISPATCH_SECONDS,
    timezone: Annotated[
        str, typer.Option(envvar="BALANCE_SCHEDULER_TIMEZONE", help="IANA time zone of the crons.")
    ] = DEFAULT_TIMEZONE,
) -> None:
    """Run verify+fix nightly, rebuild monthly, hold expiry, grace periods' end, the purge
    of old refusals, the chain digest and event delivery until stopped."""

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runner = build_scheduler(
        _service(ctx),
        verify_cron=verify_cron,
        rebuild_cron=rebuild_cron,
        expire_holds_cron=expire_holds_cron,
        suspend_overdue_cron=suspend_overdue_cron,
        purge_refusals_cron=purge_refusals_cron,
        anchor_cron=anchor_cron,
        dispatch_seconds=dispatch_every,
        timezone=timezone,
    )
    for job in runner.get_jobs():
        console.print(escape(f"{job.name}: {job.trigger} ({timezone})"))
    try:
        runner.start()
    except KeyboardInterrupt:
        runner.shutdown(wait=False)
        raise typer.Exit(130) from None
