"""The SQL of accounts, the ledger, holds and history, by name.

The other capabilities' SQL sits beside it, each next to its statements:
sync_audit.py (reconciliation), hash_chain.py (the chain and its anchors), api_keys.py,
outbox.py (events, subscriptions, deliveries), refusals.py (idempotency). Nothing
outside db/ builds SQL (an import-linter contract keeps the adapters free of it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    FromClause,
    Row,
    RowMapping,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from ..chain.rules import SEALED_FIELDS
from ..models import (
    EFFECTS,
    AccountPolicy,
    AccountStatus,
    Balance,
    Hold,
    HoldStatus,
    LedgerTotals,
    Transaction,
    TransactionType,
)
from .dialects import Backend, execute_locking, planned_each_run
from .tables import balance_holds as holds
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances

# What sealing or checking a row reads.
CHAIN_COLUMNS = [ledger.c[name] for name in ("id", "row_hash", *SEALED_FIELDS)]


# The statements of every single movement, built once: constructing a statement and
# its cache key on each call was a measurable part of a charge's client CPU.
_LOCK_BALANCE = select(balances).where(balances.c.user_id == bindparam("user_id")).with_for_update()


def newest_row(user_id: Any, *columns: Any) -> Select[Any]:
    """``columns`` of the account ``user_id``'s newest ledger row: its chain head."""
    return select(*columns).where(ledger.c.user_id == user_id).order_by(ledger.c.id.desc()).limit(1)


_CHAIN_HEAD = newest_row(bindparam("user_id"), ledger.c.id, ledger.c.row_hash)
_INSERT_TRANSACTION = insert(ledger)
# A batch's statements over its accounts (an expanding IN), built once too.
_LOCK_BALANCES = (
    select(balances)
    .where(balances.c.user_id.in_(bindparam("user_ids", expanding=True)))
    .order_by(balances.c.user_id)
    .with_for_update()
)
# max(id) per account, each its own index probe: a GROUP BY over the accounts' rows
# would read every row of a hot account, on every batch.
_NEWER = ledger.alias("newer")
_HEAD_IDS = select(
    select(func.max(_NEWER.c.id)).where(_NEWER.c.user_id == balances.c.user_id).scalar_subquery()
).where(balances.c.user_id.in_(bindparam("user_ids", expanding=True)))
_CHAIN_HEADS = select(ledger.c.user_id, ledger.c.id, ledger.c.row_hash).where(
    ledger.c.id.in_(_HEAD_IDS)
)
UPDATE_BALANCE = (
    update(balances)
    .where(balances.c.user_id == bindparam("account_id"))
    .values(
        balance=bindparam("new_balance"),
        total_recharged=bindparam("new_total_recharged"),
        total_spent=bindparam("new_total_spent"),
        status=bindparam("new_status"),
        held=bindparam("new_held"),
        low_balance_alerted=bindparam("new_low_balance_alerted"),
        depleted_alerted=bindparam("new_depleted_alerted"),
        suspend_at=bindparam("new_suspend_at"),
        updated_at=bindparam("now"),
    )
)
# PostgreSQL: the ledger row and the balance update in one statement (a writable CTE).
_NEW_ROW = (
    insert(ledger)
    .values({c.name: bindparam(f"row_{c.name}") for c in ledger.c if c.name != "id"})
    .returning(ledger.c.id)
    .cte("new_row")
)
_INSERT_AND_UPDATE = UPDATE_BALANCE.add_cte(_NEW_ROW).returning(
    select(_NEW_ROW.c.id).scalar_subquery()
)


def insert_one(conn: Connection, table: Table, values: Mapping[str, Any]) -> int:
    """Insert one row; its new id."""
    return _new_id(conn.execute(insert(table).values(values)))


def _new_id(inserted: CursorResult[Any]) -> int:
    """The id the database gave the row a single-row INSERT wrote."""
    key = inserted.inserted_primary_key
    if key is None or key[0] is None:
        raise RuntimeError("the INSERT returned no id")  # a driver that lost it: a bug
    return int(key[0])


# The columns of an AccountPolicy (models.py); the rest of the row is the Balance's.
POLICY_COLUMNS = (
    "low_balance_threshold",
    "grace_amount",
    "grace_period_seconds",
    "reactivation_threshold",
)


# The columns of a balance row that are not a Balance's figures.
_NOT_FIGURES = (*POLICY_COLUMNS, "version")


def balance_of(row: Mapping[Any, Any]) -> Balance:
    figures = {k: v for k, v in row.items() if k not in _NOT_FIGURES}
    return Balance(
        **{
            **figures,
            "status": AccountStatus(row["status"]),
            "policy": AccountPolicy.from_columns(row),
        }
    )


def transaction_of(row: Mapping[Any, Any]) -> Transaction:
    return Transaction(**{**row, "transaction_type": TransactionType(row["transaction_type"])})


def get_balance(conn: Connection, user_id: int) -> Balance | None:
    row = conn.execute(select(balances).where(balances.c.user_id == user_id)).mappings().first()
    return balance_of(row) if row else None


def lock_balance(conn: Connection, user_id: int) -> Balance | None:
    """Read the balance row and hold its lock until the transaction ends.

    ``FOR UPDATE`` on PostgreSQL and MariaDB; SQLite ignores the clause and relies on
    the ``BEGIN IMMEDIATE`` its write transactions start with (see dialects.py).
    """
    row = execute_locking(conn, _LOCK_BALANCE, {"user_id": user_id}).mappings().first()
    return balance_of(row) if row else None


def insert_balance(conn: Connection, backend: Backend, account: Balance) -> None:
    """Create the account's balance row unless it exists (then nothing changes)."""
    row = {
        "user_id": account.user_id,
        "currency": account.currency,
        "balance": account.balance,
        "total_recharged": account.total_recharged,
        "total_spent": account.total_spent,
        "credit_limit": account.credit_limit,
        "status": account.status.value,
        "created_at": account.created_at,
        "updated_at": account.updated_at,
        "held": account.held,
        "low_balance_alerted": account.low_balance_alerted,
        "depleted_alerted": account.depleted_alerted,
        "suspend_at": account.suspend_at,
        **account.policy.columns(),
    }
    backend.insert_if_absent(conn, balances, row, key="user_id")


def save_account(conn: Connection, account: Balance, now: datetime) -> None:
    """Write an account's figures, state and policy in one statement (a movement's path
    writes only the first two: update_balances)."""
    stmt = UPDATE_BALANCE.values(**account.policy.columns())
    conn.execute(stmt, balance_params(account, now))


def overdue_accounts(conn: Connection, now: datetime, limit: int) -> list[int]:
    """Active accounts whose grace period ended: the sweep suspends them (policy.py)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.suspend_at <= now, balances.c.status == AccountStatus.ACTIVE.value)
        .order_by(balances.c.user_id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def balance_params(account: Balance, now: datetime) -> dict[str, Any]:
    return {
        "account_id": account.user_id,
        "new_balance": account.balance,
        "new_total_recharged": account.total_recharged,
        "new_total_spent": account.total_spent,
        "new_status": account.status.value,
        "new_held": account.held,
        "new_low_balance_alerted": account.low_balance_alerted,
        "new_depleted_alerted": account.depleted_alerted,
        "new_suspend_at": account.suspend_at,
        "now": now,
    }


def update_balances(conn: Connection, accounts: list[Balance], *, now: datetime) -> None:
    """Write many accounts' figures in one executemany."""
    if accounts:
        conn.execute(UPDATE_BALANCE, [balance_params(a, now) for a in accounts])


def lock_balances_of(conn: Connection, user_ids: list[int]) -> dict[int, Balance]:
    """Lock many accounts' rows, in user_id order (the order every locker uses)."""
    found: dict[int, Balance] = {}
    ordered = sorted(set(user_ids))
    for start in range(0, len(ordered), 1_000):  # bounded IN lists
        chunk = {"user_ids": ordered[start : start + 1_000]}
        rows = execute_locking(conn, _LOCK_BALANCES, chunk)
        found.update((row["user_id"], balance_of(row)) for row in rows.mappings())
    return found


def find_by_idempotency_keys(
    conn: Connection, pairs: set[tuple[int, str]]
) -> dict[tuple[int, str], Transaction]:
    """The rows written earlier with any of these (user_id, key) pairs."""
    return {pair: transaction_of(row) for pair, row in keyed_rows(conn, ledger, pairs)}


def keyed_rows(
    conn: Connection, table: Table, pairs: set[tuple[int, str]], key_scope: str | None = None
) -> Iterator[tuple[tuple[int, str], RowMapping]]:
    """The rows of ``table`` (of ``key_scope``, where the table has scopes) whose
    (user_id, idempotency_key) is one of ``pairs``, by pair; in bounded lists."""
    stmt = _keyed_rows(conn.dialect.name, table, key_scope)
    listed = sorted(pairs)
    for start in range(0, len(listed), 1_000):
        part = listed[start : start + 1_000]
        users, keys = [u for u, _ in part], [k for _, k in part]
        with planned_each_run(conn):
            found = conn.execute(stmt, {"users": users, "keys": keys}).mappings().all()
        for row in found:
            pair = (row["user_id"], row["idempotency_key"])
            if pair in pairs:
                yield pair, row


@cache
def _keyed_rows(dialect: str, table: Table, key_scope: str | None) -> Select[Any]:
    """keyed_rows' statement, built once.

    PostgreSQL: the pairs as rows (``unnest`` of two arrays), each looked up in the
    (user_id, idempotency_key) index. Its two IN lists made the planner, misled by
    statistics older than a hot account's rows, read every row of the account: 25 ms
    for a batch of 24 charges to one account of 60,000 rows, where this takes 0.1 ms.
    It is planned on each run (dialects.planned_each_run): a plan the server kept from
    when the ledger was small scans it whole, whatever the statement's form.
    Elsewhere the IN lists, which those engines look up in the index.
    """
    if dialect == "postgresql":
        given = func.unnest(
            bindparam("users", type_=postgresql.ARRAY(BigInteger())),
            bindparam("keys", type_=postgresql.ARRAY(String())),
        )
        pairs = given.table_valued("user_id", "idempotency_key").render_derived(name="pairs")
        stmt = select(table).join(
            pairs,
            and_(
                table.c.user_id == pairs.c.user_id,
                table.c.idempotency_key == pairs.c.idempotency_key,
            ),
        )
    else:
        stmt = select(table).where(
            table.c.user_id.in_(bindparam("users", expanding=True)),
            table.c.idempotency_key.in_(bindparam("keys", expanding=True)),
        )
    return stmt if key_scope is None else stmt.where(table.c.key_scope == key_scope)


def reserve_ledger_ids(conn: Connection, backend: Backend, count: int) -> list[int] | None:
    """Ledger ids drawn before the INSERT (PostgreSQL), so a batch can seal them."""
    return backend.reserve_ids(conn, ledger, count)


def insert_numbered_transactions(
    conn: Connection, backend: Backend, rows: list[dict[str, Any]]
) -> list[Transaction]:
    """Append many ledger rows whose ids were reserved (reserve_ledger_ids)."""
    if rows:
        backend.insert_rows(conn, ledger, rows)
    return [transaction_of(row) for row in rows]


def insert_transactions(conn: Connection, rows: list[dict[str, Any]]) -> list[Transaction]:
    """Append many ledger rows in one statement; their ids come back in order."""
    if not rows:
        return []
    stmt = insert(ledger).returning(ledger.c.id, sort_by_parameter_order=True)
    ids = [row_id for (row_id,) in conn.execute(stmt, rows)]
    return [transaction_of({**row, "id": row_id}) for row, row_id in zip(rows, ids, strict=True)]


def append_transaction(
    conn: Connection, backend: Backend, values: dict[str, Any], account: Balance, *, now: datetime
) -> Transaction:
    """Append one ledger row (``values``: every column but ``id``) and write the
    account's moved figures: one statement on PostgreSQL, two elsewhere."""
    if backend.chains_writes:
        params = {f"row_{name}": value for name, value in values.items()}
        written = conn.execute(_INSERT_AND_UPDATE, {**params, **balance_params(account, now)})
        return transaction_of({**values, "id": written.scalar_one()})
    row_id = _new_id(conn.execute(_INSERT_TRANSACTION, values))
    update_balances(conn, [account], now=now)
    return transaction_of({**values, "id": row_id})


def chain_heads(conn: Connection, user_ids: list[int]) -> dict[int, Row[Any]]:
    """(id, row_hash) of each account's newest row (accounts without rows are absent).

    Read under the accounts' locks, after them: in READ COMMITTED each statement sees
    what committed before it, so the head is the row the previous holder wrote.
    """
    found: dict[int, Row[Any]] = {}
    ordered = sorted(set(user_ids))
    for start in range(0, len(ordered), 1_000):
        part = ordered[start : start + 1_000]
        with planned_each_run(conn):  # a plan kept from a small ledger scans it whole
            rows = conn.execute(_CHAIN_HEADS, {"user_ids": part}).all()
        found.update((row.user_id, row) for row in rows)
    return found


def chain_head(conn: Connection, user_id: int) -> Row[Any] | None:
    """(id, row_hash) of the account's newest row; None before its first."""
    with planned_each_run(conn):  # a plan kept from a small ledger scans it whole
        return conn.execute(_CHAIN_HEAD, {"user_id": user_id}).first()


def unsealed_tail(conn: Connection, user_id: int) -> list[RowMapping]:
    """The account's rows from its newest sealed one on (every row if none is sealed)."""
    last_sealed = select(func.max(ledger.c.id)).where(
        ledger.c.user_id == user_id, ledger.c.row_hash.is_not(None)
    )
    stmt = (
        select(*CHAIN_COLUMNS)
        .where(
            ledger.c.user_id == user_id,
            ledger.c.id >= func.coalesce(last_sealed.scalar_subquery(), 0),
        )
        .order_by(ledger.c.id)
    )
    return list(conn.execute(stmt).mappings())


def get_transaction(conn: Connection, transaction_id: int) -> Transaction | None:
    row = conn.execute(select(ledger).where(ledger.c.id == transaction_id)).mappings().first()
    return transaction_of(row) if row else None


def refunded_amount(conn: Connection, charge_id: int) -> int:
    """How much of a charge its refunds have given back so far."""
    stmt = select(func.coalesce(func.sum(ledger.c.amount), 0)).where(
        ledger.c.related_transaction_id == charge_id,
        ledger.c.transaction_type == TransactionType.REFUND.value,
    )
    return int(conn.execute(stmt).scalar_one())


def transactions_page(
    conn: Connection, user_id: int, *, limit: int, before_id: int | None
) -> list[Transaction]:
    """Newest first; ``before_id`` continues after the last row of the previous page."""
    stmt = select(ledger).where(ledger.c.user_id == user_id)
    if before_id is not None:
        stmt = stmt.where(ledger.c.id < before_id)
    stmt = stmt.order_by(ledger.c.id.desc()).limit(limit)
    return [transaction_of(row) for row in conn.execute(stmt).mappings()]


# -- the ledger's sums ---------------------------------------------------------------


def effect_on(column: str, rows: FromClause = ledger) -> ColumnElement[int]:
    """A row's signed effect on one cache column, generated from models.EFFECTS."""
    c = rows.c
    signs = {t.value: getattr(effect, column) for t, effect in EFFECTS.items()}
    whens = [(c.transaction_type == t, sign * c.amount) for t, sign in signs.items() if sign]
    if column == "balance":
        direction = case((c.balance_after >= c.balance_before, 1), else_=-1)
        adjustment = TransactionType.ADJUSTMENT.value
        whens.append((c.transaction_type == adjustment, direction * c.amount))
    return case(*whens, else_=0)


def ledger_sums(rows: FromClause = ledger) -> list[Any]:
    """Per-account aggregates of ledger rows: what the cache must hold."""
    return [
        func.count().label("row_count"),
        func.coalesce(func.sum(effect_on("balance", rows)), 0).label("balance"),
        func.coalesce(func.sum(effect_on("total_recharged", rows)), 0).label("total_recharged"),
        func.coalesce(func.sum(effect_on("total_spent", rows)), 0).label("total_spent"),
        func.max(rows.c.id).label("last_transaction_id"),
    ]


def ledger_totals(conn: Connection, user_id: int) -> LedgerTotals:
    """The account's figures recomputed from its ledger rows alone."""
    row = conn.execute(select(*ledger_sums()).where(ledger.c.user_id == user_id)).one()
    return LedgerTotals(
        user_id=user_id,
        balance=int(row.balance),
        total_recharged=int(row.total_recharged),
        total_spent=int(row.total_spent),
        row_count=int(row.row_count),
    )


# -- holds -------------------------------------------------------------------------------


def _hold(row: Mapping[Any, Any]) -> Hold:
    return Hold(**{**row, "status": HoldStatus(row["status"])})


def insert_hold(conn: Connection, values: dict[str, Any]) -> Hold:
    return _hold({**values, "id": insert_one(conn, holds, values)})


def get_hold(conn: Connection, hold_id: int) -> Hold | None:
    row = conn.execute(select(holds).where(holds.c.id == hold_id)).mappings().first()
    return _hold(row) if row else None


def find_hold_by_key(conn: Connection, user_id: int, key: str) -> Hold | None:
    stmt = select(holds).where(holds.c.user_id == user_id, holds.c.idempotency_key == key)
    with planned_each_run(conn):
        row = conn.execute(stmt).mappings().first()
    return _hold(row) if row else None


def close_hold(conn: Connection, hold_id: int, values: dict[str, Any]) -> None:
    conn.execute(update(holds).where(holds.c.id == hold_id).values(**values))


def set_held(conn: Connection, user_id: int, held: int, now: datetime) -> None:
    conn.execute(
        update(balances).where(balances.c.user_id == user_id).values(held=held, updated_at=now)
    )


def held_by_active_holds(conn: Connection, user_id: int) -> int:
    stmt = select(func.coalesce(func.sum(holds.c.amount), 0)).where(
        holds.c.user_id == user_id, holds.c.status == HoldStatus.ACTIVE.value
    )
    return int(conn.execute(stmt).scalar_one())


def expired_holds(conn: Connection, now: datetime, limit: int) -> list[Row[Any]]:
    """(id, user_id) of active holds past their expiry, oldest first."""
    stmt = (
        select(holds.c.id, holds.c.user_id)
        .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.expires_at <= now)
        .order_by(holds.c.expires_at, holds.c.id)
        .limit(limit)
    )
    return list(conn.execute(stmt))


# -- history -------------------------------------------------------------------------------


def balance_before(conn: Connection, user_id: int, instant: datetime, *, inclusive: bool) -> int:
    """The balance the ledger gives at ``instant``: the sum of the rows written by then."""
    written = ledger.c.created_at <= instant if inclusive else ledger.c.created_at < instant
    stmt = select(func.coalesce(func.sum(effect_on("balance")), 0)).where(
        ledger.c.user_id == user_id, written
    )
    return int(conn.execute(stmt).scalar_one())


def transactions_between(
    conn: Connection, user_id: int, start: datetime, end: datetime
) -> list[Transaction]:
    """Rows written in [start, end), oldest first."""
    stmt = (
        select(ledger)
        .where(ledger.c.user_id == user_id, ledger.c.created_at >= start, ledger.c.created_at < end)
        .order_by(ledger.c.id)
    )
    return [transaction_of(row) for row in conn.execute(stmt).mappings()]


def ping(conn: Connection) -> None:
    """Raise unless the database answers."""
    conn.execute(select(literal(1))).one()
