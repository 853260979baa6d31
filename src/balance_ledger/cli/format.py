"""Rendering of money, balances and ledger rows for the terminal."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from babel.numbers import get_currency_precision
from rich.panel import Panel
from rich.table import Table

from ..models import AccountStatus, Balance, Transaction


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
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    if isinstance(value, list):
        value = [dataclasses.asdict(item) for item in value]
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
        ("Available", money(balance.available, balance.currency)),
        ("Credit limit", money(balance.credit_limit, balance.currency)),
        ("Total recharged", money(balance.total_recharged, balance.currency)),
        ("Total spent", money(balance.total_spent, balance.currency)),
        ("Status", f"[{status_style}]{balance.status.value}[/]"),
        ("Updated", balance.updated_at.isoformat(timespec="seconds")),
    ]
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=f"Account {balance.user_id}", expand=False)


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
            tx.service_type or "",
            tx.description or "",
            reference,
        )
    return table
