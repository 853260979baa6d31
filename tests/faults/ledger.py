"""What the fault tests read back: acknowledgements, ledger rows, whole-table dumps."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from balance_ledger import TransactionType
from balance_ledger.db.tables import user_balance_transactions as ledger
from balance_ledger.db.tables import user_balances

_user_ids = itertools.count(1)


def new_user_ids(count: int) -> list[int]:
    """User ids that no other test of this run has used (the databases are never emptied)."""
    return [next(_user_ids) for _ in range(count)]


@dataclass(frozen=True)
class Ack:
    """A charge its caller was told had succeeded."""

    key: str
    transaction_id: int
    user_id: int
    amount: int

    def line(self) -> str:
        return f"{self.key} {self.transaction_id} {self.user_id} {self.amount}\n"


def read_acks(path: Path) -> list[Ack]:
    """The complete lines of an ack file (a process killed mid-write leaves no half line
    that counts)."""
    if not path.exists():
        return []
    acks = []
    for line in path.read_text().splitlines(keepends=True):
        fields = line.split()
        if line.endswith("\n") and len(fields) == 4:
            key, transaction_id, user_id, amount = fields
            acks.append(Ack(key, int(transaction_id), int(user_id), int(amount)))
    return acks


@dataclass(frozen=True)
class LedgerRow:
    id: int
    user_id: int
    transaction_type: str
    amount: int
    balance_before: int
    balance_after: int
    idempotency_key: str | None


def ledger_rows(engine: Engine, user_ids: Iterable[int]) -> list[LedgerRow]:
    """The accounts' ledger rows in id order."""
    stmt = (
        select(
            ledger.c.id,
            ledger.c.user_id,
            ledger.c.transaction_type,
            ledger.c.amount,
            ledger.c.balance_before,
            ledger.c.balance_after,
            ledger.c.idempotency_key,
        )
        .where(ledger.c.user_id.in_(list(user_ids)))
        .order_by(ledger.c.id)
    )
    with engine.connect() as conn:
        return [LedgerRow(*row) for row in conn.execute(stmt)]


def charges(rows: Iterable[LedgerRow]) -> list[LedgerRow]:
    return [row for row in rows if row.transaction_type == TransactionType.CHARGE.value]


def recharged(rows: Iterable[LedgerRow], user_id: int) -> int:
    return sum(
        row.amount
        for row in rows
        if row.user_id == user_id and row.transaction_type == TransactionType.RECHARGE.value
    )


Dump = dict[str, list[tuple[object, ...]]]


def dump(engine: Engine, user_ids: Iterable[int]) -> Dump:
    """Every column of the accounts' balance and ledger rows: equal dumps, nothing written."""
    ids = list(user_ids)
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(
                    select(table).where(table.c.user_id.in_(ids)).order_by(*table.primary_key)
                )
            ]
            for table in (user_balances, ledger)
        }
