"""Rendering of money, balances and ledger rows for the terminal."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TextIO

from babel.numbers import get_currency_precision
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from ..chain.rules import ChainBreak
from ..models import AccountStatus, ApiKey, Balance, Statement, Transaction, scope_names
from ..policy import reactivation_line, suspension_line
from ..reconcile import ColumnChange, Discrepancy, SyncError, SyncReport, SyncRun


def money(amount: int, currency: str) -> str:
    """Minor units as a decimal with thousands separators: 123456 USD → '1,234.56 USD'."""
    digits = get_currency_precision(currency)
    whole, fraction = divmod(abs(amount), 10**digits)
    text = f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")
    return f"{'-' if amount < 0 else ''}{text} {currency}"


def signed_money(amount: int, currency: str) -> str:
    """A movement's effect on the balance: '+1,000 VND' or '-250 VND'."""
    return ("+" if amount >= 0 else "") + money(amount, currency)


def to_json(value: Any) -> str:
    def default(obj: object) -> object:
        if isinstance(obj, datetime):
            return obj.isoformat()
        if isinstance(obj, timedelta):
            return int(obj.total_seconds())
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    if isinstance(value, list):
        value = [
            dataclasses.asdict(item)
            if dataclasses.is_dataclass(item) and not isinstance(item, type)
            else item
            for item in value
        ]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=default, ensure_ascii=False, indent=2)


def balance_card(balance: Balance) -> Panel:
    status_style = "green" if balance.status is AccountStatus.ACTIVE else "bold red"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column(justify="right")
    rows = [
        ("Balance", money(balance.balance, balance.currency)),
        ("Held", money(balance.held, balance.currency)),
        ("Available", money(balance.available, balance.currency)),
        ("Credit limit", money(balance.credit_limit, balance.currency)),
        ("Total recharged", money(balance.total_recharged, balance.currency)),
        ("Total spent", money(balance.total_spent, balance.currency)),
        ("Status", f"[{status_style}]{balance.status.value}[/]"),
        *_policy_rows(balance),
        ("Updated", balance.updated_at.isoformat(timespec="seconds")),
    ]
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=f"Account {balance.user_id}", expand=False)


def _policy_rows(account: Balance) -> list[tuple[str, str]]:
    """The card's lines for the account's policy (policy.py)."""
    rules, currency = account.policy, account.currency
    rows = []
    if rules.low_balance_threshold is not None:
        rows.append(("Low-balance alert below", money(rules.low_balance_threshold, currency)))
    line = suspension_line(account.credit_limit, rules)
    after = f" for {rules.grace_period}" if rules.grace_period is not None else ""
    rows.append(("Suspends below", money(line, currency) + after))
    rows.append(("Reactivates at", money(reactivation_line(account.credit_limit, rules), currency)))
    if account.suspend_at is not None:
        rows.append(("Suspends at", account.suspend_at.isoformat(timespec="seconds")))
    return rows


def statement_header(statement: Statement) -> str:
    currency = statement.currency
    totals = ", ".join(f"{kind} {money(n, currency)}" for kind, n in statement.totals.items())
    period = f"{statement.start.isoformat()} → {statement.end.isoformat()}"
    return (
        f"Account {statement.user_id}, {period}\n"
        f"Opening balance: {money(statement.opening_balance, currency)}\n"
        f"Closing balance: {money(statement.closing_balance, currency)}\n"
        f"Totals: {totals or 'no movements'}"
    )


def write_csv(stream: TextIO, rows: list[dict[str, Any]]) -> None:
    """Rows of one shape as CSV with a header (nothing at all for no rows)."""
    if rows:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def transaction_line(tx: Transaction, currency: str) -> str:
    return (
        f"{tx.transaction_type.value} #{tx.id}: {money(tx.amount, currency)}, balance "
        f"{money(tx.balance_before, currency)} → {money(tx.balance_after, currency)}"
    )


def history_table(transactions: list[Transaction], currency: str) -> Table:
    table = Table(title="Ledger (newest first)")
    for name, justify in [
        ("ID", "right"),
        ("When (UTC)", "left"),
        ("Type", "left"),
        ("Amount", "right"),
        ("Balance after", "right"),
        ("Service", "left"),
        ("Description", "left"),
        ("Reference", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for tx in transactions:
        reference = ":".join(filter(None, [tx.reference_model, tx.reference_id]))
        table.add_row(
            str(tx.id),
            tx.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            tx.transaction_type.value,
            signed_money(tx.balance_after - tx.balance_before, currency),
            money(tx.balance_after, currency),
            escape(tx.service_type or ""),
            escape(tx.description or ""),
            escape(reference),
        )
    return table


def api_keys_table(keys: list[ApiKey]) -> Table:
    """Keys newest first, told apart by their prefix; never a key or its hash."""
    table = Table(title="API keys (newest first)")
    for name in ("ID", "Name", "Prefix", "Scopes", "Created (UTC)", "Revoked (UTC)"):
        table.add_column(name, justify="right" if name == "ID" else "left")
    for key in keys:
        revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else ""
        table.add_row(
            str(key.id),
            escape(key.name),
            f"bl_{key.prefix}…",
            ",".join(scope_names(key.scopes)),
            key.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"[red]{revoked}[/]" if revoked else "[green]active[/]",
        )
    return table


def sync_summary(report: SyncReport) -> str:
    lines = [
        f"Checked: {report.checked:,} users",
        f"✅ Synced: {report.synced:,} users",
        f"⚠️  Fixed: {report.fixed:,} users",
    ]
    if report.errors:
        lines.append(f"❌ Errors: {len(report.errors):,}")
    return "\n".join(lines)


def discrepancy_table(discrepancies: list[Discrepancy], title: str) -> Table:
    table = Table(title=title)
    for name in ("User ID", "Stored Balance", "Actual Balance", "Difference", "Other columns"):
        table.add_column(name, justify="left" if name == "Other columns" else "right")
    for found in discrepancies:
        others = [
            f"{column} {_grouped(str(old))} → {_grouped(str(new))}"
            for column, old, new in found.changed_columns()
            if column != "balance"
        ]
        if found.missing_balance_row:
            others.insert(0, "no balance row")
        table.add_row(
            str(found.user_id),
            f"{found.stored_balance:,}",
            f"{found.actual_balance:,}",
            f"{found.difference:+,}",
            "; ".join(others),
        )
    return table


def errors_table(
    errors: Sequence[SyncError | ChainBreak],
    title: str = "Errors (the ledger itself; never fixed automatically)",
) -> Table:
    table = Table(title=title)
    table.add_column("User ID", justify="right")
    table.add_column("Row ID", justify="right")
    table.add_column("Problem")
    for error in errors:
        user_id = "" if error.user_id is None else str(error.user_id)
        row_id = "" if error.transaction_id is None else str(error.transaction_id)
        table.add_row(user_id, row_id, escape(error.message))
    return table


def changes_table(changes: list[ColumnChange], title: str) -> Table:
    table = Table(title=title)
    table.add_column("User ID", justify="right")
    table.add_column("Column")
    table.add_column("Old", justify="right")
    table.add_column("New", justify="right")
    for change in changes:
        old, new = _grouped(change.old_value), _grouped(change.new_value)
        table.add_row(str(change.user_id), change.column, old, new)
    return table


def _grouped(value: str) -> str:
    """Thousands separators for a number stored as text; other text unchanged."""
    return f"{int(value):,}" if value.lstrip("-").isdigit() else value


def runs_table(runs: list[SyncRun]) -> Table:
    table = Table(title="Sync runs (newest first)")
    for name in ("ID", "Run", "Started (UTC)", "Secs", "Checked", "Synced", "Fixed", "Errors"):
        table.add_column(name, justify="left" if name in ("Run", "Started (UTC)") else "right")
    table.add_column("Outcome")
    for run in runs:
        flags = [
            "fix" if run.fix and run.kind == "verify" else "",
            "full" if run.full_scan and run.kind == "verify" else "",
            f"user {run.user_id}" if run.user_id is not None else "",
            "scheduled" if run.scheduled_for else "",
        ]
        label = " ".join([run.kind, *filter(None, flags)])
        seconds = (
            f"{(run.finished_at - run.started_at).total_seconds():.1f}" if run.finished_at else "…"
        )
        outcome_style = {"in_sync": "green", "fixed": "yellow"}.get(run.outcome, "bold red")
        table.add_row(
            str(run.id),
            label,
            run.started_at.strftime("%m-%d %H:%M:%S"),
            seconds,
            f"{run.checked:,}",
            f"{run.synced:,}",
            f"{run.fixed:,}",
            f"{run.errors:,}",
            f"[{outcome_style}]{run.outcome}[/]",
        )
    return table
