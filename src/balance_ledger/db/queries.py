"""Every SQL statement the ledger runs, by name. Nothing else builds SQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    FromClause,
    Row,
    RowMapping,
    Subquery,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)

from ..chain import SEALED_FIELDS
from ..models import (
    EFFECTS,
    AccountPolicy,
    AccountStatus,
    ApiKey,
    Balance,
    Delivery,
    DeliveryStatus,
    Event,
    EventType,
    Hold,
    HoldStatus,
    LedgerTotals,
    Scope,
    Transaction,
    TransactionType,
    Webhook,
    scope_names,
)
from .dialects import Backend, execute_locking
from .tables import balance_api_keys as api_keys
from .tables import balance_chain_anchors as anchors
from .tables import balance_chain_digests as digests
from .tables import balance_event_deliveries as deliveries
from .tables import balance_events as events
from .tables import balance_holds as holds
from .tables import balance_job_locks as job_locks
from .tables import balance_sync_checkpoints as checkpoints
from .tables import balance_sync_fixes as sync_fixes
from .tables import balance_sync_runs as sync_runs
from .tables import balance_webhooks as webhooks
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances

# What sealing or checking a row reads.
_CHAIN_COLUMNS = [ledger.c[name] for name in ("id", "row_hash", *SEALED_FIELDS)]


# The statements of every single movement, built once: constructing a statement and
# its cache key on each call was a measurable part of a charge's client CPU.
_LOCK_BALANCE = select(balances).where(balances.c.user_id == bindparam("user_id")).with_for_update()
_CHAIN_HEAD = (
    select(ledger.c.id, ledger.c.row_hash)
    .where(ledger.c.user_id == bindparam("user_id"))
    .order_by(ledger.c.id.desc())
    .limit(1)
)
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
_UPDATE_BALANCE = (
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
_INSERT_AND_UPDATE = _UPDATE_BALANCE.add_cte(_NEW_ROW).returning(
    select(_NEW_ROW.c.id).scalar_subquery()
)


def _insert(conn: Connection, table: Table, values: Mapping[str, Any]) -> int:
    """Insert one row; its new id."""
    return _new_id(conn.execute(insert(table).values(values)))


def _new_id(inserted: CursorResult[Any]) -> int:
    """The id the database gave the row a single-row INSERT wrote."""
    key = inserted.inserted_primary_key
    if key is None or key[0] is None:
        raise RuntimeError("the INSERT returned no id")  # a driver that lost it: a bug
    return int(key[0])


# The columns of an AccountPolicy (models.py); the rest of the row is the Balance's.
_POLICY_COLUMNS = (
    "low_balance_threshold",
    "grace_amount",
    "grace_period_seconds",
    "reactivation_threshold",
)


def _balance(row: Mapping[Any, Any]) -> Balance:
    figures = {k: v for k, v in row.items() if k not in _POLICY_COLUMNS}
    return Balance(
        **{
            **figures,
            "status": AccountStatus(row["status"]),
            "policy": AccountPolicy.from_columns(row),
        }
    )


def _transaction(row: Mapping[Any, Any]) -> Transaction:
    return Transaction(**{**row, "transaction_type": TransactionType(row["transaction_type"])})


def get_balance(conn: Connection, user_id: int) -> Balance | None:
    row = conn.execute(select(balances).where(balances.c.user_id == user_id)).mappings().first()
    return _balance(row) if row else None


def lock_balance(conn: Connection, user_id: int) -> Balance | None:
    """Read the balance row and hold its lock until the transaction ends.

    ``FOR UPDATE`` on PostgreSQL and MariaDB; SQLite ignores the clause and relies on
    the ``BEGIN IMMEDIATE`` its write transactions start with (see dialects.py).
    """
    row = execute_locking(conn, _LOCK_BALANCE, {"user_id": user_id}).mappings().first()
    return _balance(row) if row else None


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
    stmt = _UPDATE_BALANCE.values(**account.policy.columns())
    conn.execute(stmt, _balance_params(account, now))


def overdue_accounts(conn: Connection, now: datetime, limit: int) -> list[int]:
    """Active accounts whose grace period ended: the sweep suspends them (policy.py)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.suspend_at <= now, balances.c.status == AccountStatus.ACTIVE.value)
        .order_by(balances.c.user_id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def _balance_params(account: Balance, now: datetime) -> dict[str, Any]:
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
        conn.execute(_UPDATE_BALANCE, [_balance_params(a, now) for a in accounts])


def lock_balances_of(conn: Connection, user_ids: list[int]) -> dict[int, Balance]:
    """Lock many accounts' rows, in user_id order (the order every locker uses)."""
    found: dict[int, Balance] = {}
    ordered = sorted(set(user_ids))
    for start in range(0, len(ordered), 1_000):  # bounded IN lists
        chunk = {"user_ids": ordered[start : start + 1_000]}
        rows = execute_locking(conn, _LOCK_BALANCES, chunk)
        found.update((row["user_id"], _balance(row)) for row in rows.mappings())
    return found


def find_by_idempotency_keys(
    conn: Connection, pairs: set[tuple[int, str]]
) -> dict[tuple[int, str], Transaction]:
    """The rows written earlier with any of these (user_id, key) pairs."""
    return {pair: _transaction(row) for pair, row in keyed_rows(conn, ledger, pairs)}


def keyed_rows(
    conn: Connection, table: Table, pairs: set[tuple[int, str]], *where: ColumnElement[bool]
) -> Iterator[tuple[tuple[int, str], RowMapping]]:
    """The rows of ``table`` (also matching ``where``) whose (user_id, idempotency_key)
    is one of ``pairs``, by pair; in bounded IN lists."""
    listed = sorted(pairs)
    for start in range(0, len(listed), 1_000):
        part = listed[start : start + 1_000]
        stmt = select(table).where(
            *where,
            table.c.user_id.in_({u for u, _ in part}),
            table.c.idempotency_key.in_({k for _, k in part}),
        )
        for row in conn.execute(stmt).mappings():
            pair = (row["user_id"], row["idempotency_key"])
            if pair in pairs:
                yield pair, row


def reserve_ledger_ids(conn: Connection, backend: Backend, count: int) -> list[int] | None:
    """Ledger ids drawn before the INSERT (PostgreSQL), so a batch can seal them."""
    return backend.reserve_ids(conn, ledger, count)


def insert_numbered_transactions(
    conn: Connection, backend: Backend, rows: list[dict[str, Any]]
) -> list[Transaction]:
    """Append many ledger rows whose ids were reserved (reserve_ledger_ids)."""
    if rows:
        backend.insert_rows(conn, ledger, rows)
    return [_transaction(row) for row in rows]


def insert_transactions(conn: Connection, rows: list[dict[str, Any]]) -> list[Transaction]:
    """Append many ledger rows in one statement; their ids come back in order."""
    if not rows:
        return []
    stmt = insert(ledger).returning(ledger.c.id, sort_by_parameter_order=True)
    ids = [row_id for (row_id,) in conn.execute(stmt, rows)]
    return [_transaction({**row, "id": row_id}) for row, row_id in zip(rows, ids, strict=True)]


def append_transaction(
    conn: Connection, backend: Backend, values: dict[str, Any], account: Balance, *, now: datetime
) -> Transaction:
    """Append one ledger row (``values``: every column but ``id``) and write the
    account's moved figures: one statement on PostgreSQL, two elsewhere."""
    if backend.chains_writes:
        params = {f"row_{name}": value for name, value in values.items()}
        written = conn.execute(_INSERT_AND_UPDATE, {**params, **_balance_params(account, now)})
        return _transaction({**values, "id": written.scalar_one()})
    row_id = _new_id(conn.execute(_INSERT_TRANSACTION, values))
    update_balances(conn, [account], now=now)
    return _transaction({**values, "id": row_id})


def chain_heads(conn: Connection, user_ids: list[int]) -> dict[int, Row[Any]]:
    """(id, row_hash) of each account's newest row (accounts without rows are absent).

    Read under the accounts' locks, after them: in READ COMMITTED each statement sees
    what committed before it, so the head is the row the previous holder wrote.
    """
    found: dict[int, Row[Any]] = {}
    ordered = sorted(set(user_ids))
    for start in range(0, len(ordered), 1_000):
        part = ordered[start : start + 1_000]
        found.update((row.user_id, row) for row in conn.execute(_CHAIN_HEADS, {"user_ids": part}))
    return found


def chain_head(conn: Connection, user_id: int) -> Row[Any] | None:
    """(id, row_hash) of the account's newest row; None before its first."""
    return conn.execute(_CHAIN_HEAD, {"user_id": user_id}).first()


def unsealed_tail(conn: Connection, user_id: int) -> list[RowMapping]:
    """The account's rows from its newest sealed one on (every row if none is sealed)."""
    last_sealed = select(func.max(ledger.c.id)).where(
        ledger.c.user_id == user_id, ledger.c.row_hash.is_not(None)
    )
    stmt = (
        select(*_CHAIN_COLUMNS)
        .where(
            ledger.c.user_id == user_id,
            ledger.c.id >= func.coalesce(last_sealed.scalar_subquery(), 0),
        )
        .order_by(ledger.c.id)
    )
    return list(conn.execute(stmt).mappings())


def get_transaction(conn: Connection, transaction_id: int) -> Transaction | None:
    row = conn.execute(select(ledger).where(ledger.c.id == transaction_id)).mappings().first()
    return _transaction(row) if row else None


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
    return [_transaction(row) for row in conn.execute(stmt).mappings()]


# -- the ledger's sums ---------------------------------------------------------------


def _effect_on(column: str, rows: FromClause = ledger) -> ColumnElement[int]:
    """A row's signed effect on one cache column, generated from models.EFFECTS."""
    c = rows.c
    signs = {t.value: getattr(effect, column) for t, effect in EFFECTS.items()}
    whens = [(c.transaction_type == t, sign * c.amount) for t, sign in signs.items() if sign]
    if column == "balance":
        direction = case((c.balance_after >= c.balance_before, 1), else_=-1)
        adjustment = TransactionType.ADJUSTMENT.value
        whens.append((c.transaction_type == adjustment, direction * c.amount))
    return case(*whens, else_=0)


def _sums(rows: FromClause = ledger) -> list[Any]:
    """Per-account aggregates of ledger rows: what the cache must hold."""
    return [
        func.count().label("row_count"),
        func.coalesce(func.sum(_effect_on("balance", rows)), 0).label("balance"),
        func.coalesce(func.sum(_effect_on("total_recharged", rows)), 0).label("total_recharged"),
        func.coalesce(func.sum(_effect_on("total_spent", rows)), 0).label("total_spent"),
        func.max(rows.c.id).label("last_transaction_id"),
    ]


def ledger_totals(conn: Connection, user_id: int) -> LedgerTotals:
    """The account's figures recomputed from its ledger rows alone."""
    row = conn.execute(select(*_sums()).where(ledger.c.user_id == user_id)).one()
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
    return _hold({**values, "id": _insert(conn, holds, values)})


def get_hold(conn: Connection, hold_id: int) -> Hold | None:
    row = conn.execute(select(holds).where(holds.c.id == hold_id)).mappings().first()
    return _hold(row) if row else None


def find_hold_by_key(conn: Connection, user_id: int, key: str) -> Hold | None:
    stmt = select(holds).where(holds.c.user_id == user_id, holds.c.idempotency_key == key)
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
    stmt = select(func.coalesce(func.sum(_effect_on("balance")), 0)).where(
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
    return [_transaction(row) for row in conn.execute(stmt).mappings()]


# -- reconciliation ------------------------------------------------------------------


def ping(conn: Connection) -> None:
    conn.execute(select(literal(1))).one()


def account_exists(conn: Connection, user_id: int) -> bool:
    """A balance row or ledger rows (an orphan account is still an account to verify)."""
    cached = select(balances.c.user_id).where(balances.c.user_id == user_id)
    ledgered = select(ledger.c.user_id).where(ledger.c.user_id == user_id)
    return conn.execute(select(or_(cached.exists(), ledgered.exists()))).scalar_one() in (1, True)


def count_accounts(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(balances)).scalar_one())


def next_user_ids(conn: Connection, *, after: int, limit: int) -> list[int]:
    """The next chunk of account ids, in order (keyset: ``after`` is the last one seen)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.user_id > after)
        .order_by(balances.c.user_id)
        .limit(limit)
    )
    return list(conn.execute(stmt).scalars())


def lock_balances(conn: Connection, low: int, high: int) -> None:
    """Lock a chunk of balance rows, in user_id order (the order every locker uses)."""
    stmt = (
        select(balances.c.user_id)
        .where(balances.c.user_id.between(low, high))
        .order_by(balances.c.user_id)
        .with_for_update()
    )
    execute_locking(conn, stmt, {}).all()


_ROW_COLUMNS = ("id", "user_id", "transaction_type", "amount", "balance_before", "balance_after")


def _rows_to_verify(low: int, high: int, incremental: bool) -> Subquery:
    """Ledger rows of accounts low..high still to verify, with the balance they start from.

    Full mode: every row, starting from 0. Incremental mode: the rows after each
    account's checkpoint, starting from its last verified balance; accounts without a
    checkpoint contribute every row.
    """
    columns = [ledger.c[name] for name in _ROW_COLUMNS]
    if not incremental:
        in_chunk = ledger.c.user_id.between(low, high)
        return select(*columns, literal(0).label("start_after")).where(in_chunk).subquery("rows")
    # Driven from the chunk's checkpoints, so each account is one (user_id, id) index
    # seek past its checkpoint: rows verified before are not read at all.
    after_checkpoint = (
        select(*columns, checkpoints.c.last_balance_after.label("start_after"))
        .select_from(checkpoints.join(ledger, ledger.c.user_id == checkpoints.c.user_id))
        .where(
            checkpoints.c.user_id.between(low, high),
            ledger.c.id > checkpoints.c.last_transaction_id,
        )
    )
    chunk_checkpoints = and_(
        checkpoints.c.user_id == balances.c.user_id, checkpoints.c.user_id.between(low, high)
    )
    never_verified = (
        select(balances.c.user_id)
        .outerjoin(checkpoints, chunk_checkpoints)
        .where(balances.c.user_id.between(low, high), checkpoints.c.user_id.is_(None))
    )
    from_start = select(*columns, literal(0).label("start_after")).where(
        ledger.c.user_id.between(low, high), ledger.c.user_id.in_(never_verified)
    )
    return union_all(after_checkpoint, from_start).subquery("rows")


def compare_chunk(conn: Connection, low: int, high: int, *, incremental: bool) -> list[Row[Any]]:
    """Cache, checkpoint and new-row sums of accounts low..high, in ONE statement.

    One statement reads one snapshot, so a charge committing mid-scan moves the cache
    and the ledger sums together and is never mistaken for a discrepancy.
    """
    rows = _rows_to_verify(low, high, incremental)
    new = select(rows.c.user_id, *_sums(rows)).group_by(rows.c.user_id).subquery("new")
    checkpoint_columns: list[Any] = [
        checkpoints.c.last_transaction_id.label("cp_last_transaction_id"),
        checkpoints.c.last_balance_after.label("cp_last_balance_after"),
        checkpoints.c.balance.label("cp_balance"),
        checkpoints.c.total_recharged.label("cp_total_recharged"),
        checkpoints.c.total_spent.label("cp_total_spent"),
        checkpoints.c.row_count.label("cp_row_count"),
    ]
    active = (
        select(holds.c.user_id, func.sum(holds.c.amount).label("held"))
        .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.user_id.between(low, high))
        .group_by(holds.c.user_id)
        .subquery("active_holds")
    )
    joined = balances.outerjoin(new, new.c.user_id == balances.c.user_id).outerjoin(
        active, active.c.user_id == balances.c.user_id
    )
    if incremental:
        # The row the checkpoint ended at, to check it is still there as verified.
        anchor = ledger.alias("anchor")
        joined = joined.outerjoin(
            checkpoints, checkpoints.c.user_id == balances.c.user_id
        ).outerjoin(
            anchor,
            and_(
                anchor.c.id == checkpoints.c.last_transaction_id,
                anchor.c.user_id == checkpoints.c.user_id,
            ),
        )
        checkpoint_columns.append(anchor.c.balance_after.label("anchor_balance_after"))
    else:
        checkpoint_columns.append(null().label("anchor_balance_after"))
        checkpoint_columns = [null().label(column.name) for column in checkpoint_columns]
    stmt = (
        select(
            balances.c.user_id,
            balances.c.balance.label("cached_balance"),
            balances.c.total_recharged.label("cached_total_recharged"),
            balances.c.total_spent.label("cached_total_spent"),
            balances.c.credit_limit,
            *(balances.c[name] for name in _POLICY_COLUMNS),
            balances.c.suspend_at,
            balances.c.status.label("cached_status"),
            balances.c.held.label("cached_held"),
            func.coalesce(active.c.held, 0).label("actual_held"),
            new.c.row_count,
            new.c.balance,
            new.c.total_recharged,
            new.c.total_spent,
            new.c.last_transaction_id,
            *checkpoint_columns,
        )
        .select_from(joined)
        .where(balances.c.user_id.between(low, high))
        .order_by(balances.c.user_id)
    )
    return list(conn.execute(stmt))


def chain_breaks(conn: Connection, low: int, high: int, *, incremental: bool) -> list[Row[Any]]:
    """Ledger rows of accounts low..high whose snapshot does not follow the previous row.

    A row is broken when ``balance_after != balance_before ± amount`` or when its
    ``balance_before`` is not the previous row's ``balance_after`` (0 before the first
    row; the checkpoint's last balance before the first unverified row).
    """
    rows = _rows_to_verify(low, high, incremental)
    previous_after = func.lag(rows.c.balance_after).over(
        partition_by=rows.c.user_id, order_by=rows.c.id
    )
    walk = select(
        *[rows.c[name] for name in _ROW_COLUMNS],
        _effect_on("balance", rows).label("effect"),
        func.coalesce(previous_after, rows.c.start_after).label("previous_after"),
    ).subquery("walk")
    stmt = (
        select(walk)
        .where(
            or_(
                walk.c.balance_after != walk.c.balance_before + walk.c.effect,
                walk.c.balance_before != walk.c.previous_after,
            )
        )
        .order_by(walk.c.user_id, walk.c.id)
    )
    return list(conn.execute(stmt))


def orphan_ledger_accounts(conn: Connection, user_id: int | None = None) -> list[Row[Any]]:
    """Accounts with ledger rows but no balance row, with their ledger sums."""
    has_balance = select(balances.c.user_id).where(balances.c.user_id == ledger.c.user_id)
    stmt = select(ledger.c.user_id, *_sums()).where(~has_balance.exists())
    if user_id is not None:
        stmt = stmt.where(ledger.c.user_id == user_id)
    return list(conn.execute(stmt.group_by(ledger.c.user_id).order_by(ledger.c.user_id)))


def save_checkpoints(
    conn: Connection, backend: Backend, rows: list[dict[str, Any]], drop: list[int]
) -> None:
    """Advance the checkpoints of ``rows``; forget those of ``drop`` (re-read from the start)."""
    if rows:
        backend.upsert(conn, checkpoints, rows, key="user_id")
    if drop:
        conn.execute(delete(checkpoints).where(checkpoints.c.user_id.in_(drop)))


def rewrite_balance(conn: Connection, user_id: int, values: dict[str, Any], now: datetime) -> None:
    """The verifier's write to the cache (the ledger is never written here)."""
    conn.execute(
        update(balances).where(balances.c.user_id == user_id).values(**values, updated_at=now)
    )


def start_sync_run(conn: Connection, values: dict[str, Any]) -> int:
    return _insert(conn, sync_runs, {"outcome": "running", **values})


def finish_sync_run(conn: Connection, run_id: int, values: dict[str, Any]) -> None:
    conn.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(**values))


def slot_was_run(conn: Connection, kind: str, scheduled_for: datetime) -> bool:
    stmt = select(sync_runs.c.id).where(
        sync_runs.c.kind == kind, sync_runs.c.scheduled_for == scheduled_for
    )
    return conn.execute(stmt).first() is not None


def record_fixes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(sync_fixes), rows)


def recent_sync_runs(conn: Connection, limit: int) -> list[RowMapping]:
    stmt = select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    return list(conn.execute(stmt).mappings())


def sync_run_totals(conn: Connection) -> list[RowMapping]:
    """Per kind: runs, and the sums of their discrepancies, fixes and errors."""
    stmt = (
        select(
            sync_runs.c.kind,
            func.count().label("runs"),
            func.coalesce(func.sum(sync_runs.c.discrepancies), 0).label("discrepancies"),
            func.coalesce(func.sum(sync_runs.c.fixed), 0).label("fixed"),
            func.coalesce(func.sum(sync_runs.c.errors), 0).label("errors"),
            func.max(sync_runs.c.finished_at).label("last_finished_at"),
        )
        .group_by(sync_runs.c.kind)
        .order_by(sync_runs.c.kind)
    )
    return list(conn.execute(stmt).mappings())


def fixes_of_run(conn: Connection, run_id: int) -> list[RowMapping]:
    stmt = select(sync_fixes).where(sync_fixes.c.run_id == run_id).order_by(sync_fixes.c.id)
    return list(conn.execute(stmt).mappings())


# -- the hash chain --------------------------------------------------------------------


def chain_rows_page(conn: Connection, *, after: tuple[int, int], limit: int) -> list[RowMapping]:
    """The next ``limit`` ledger rows in (user_id, id) order after ``after``.

    Spelled so that every backend seeks the (user_id, id) index: the bare OR makes
    PostgreSQL sort the rest of the ledger, and a row value makes MariaDB scan the
    index from its start, on every page.
    """
    user, row_id = after
    stmt = (
        select(*_CHAIN_COLUMNS)
        .where(ledger.c.user_id >= user, or_(ledger.c.user_id > user, ledger.c.id > row_id))
        .order_by(ledger.c.user_id, ledger.c.id)
        .limit(limit)
    )
    return list(conn.execute(stmt).mappings())


def backfill_row_hashes(conn: Connection, hashes: list[tuple[int, str]]) -> None:
    """The one UPDATE of ledger rows: sealing rows from before the chain (db/backfill.py)."""
    if hashes:
        stmt = (
            update(ledger)
            .where(ledger.c.id == bindparam("row_id"))
            .values(row_hash=bindparam("hash"))
        )
        conn.execute(stmt, [{"row_id": i, "hash": h} for i, h in hashes])


def ledger_accounts(
    conn: Connection, *, after: int, limit: int, user_id: int | None
) -> list[Row[Any]]:
    """(user_id, rows) of the next ``limit`` accounts with ledger rows after ``after``."""
    stmt = select(ledger.c.user_id, func.count().label("rows")).where(ledger.c.user_id > after)
    if user_id is not None:
        stmt = stmt.where(ledger.c.user_id == user_id)
    stmt = stmt.group_by(ledger.c.user_id).order_by(ledger.c.user_id).limit(limit)
    return list(conn.execute(stmt))


def hash_suspects(conn: Connection, backend: Backend, low: int, high: int) -> list[int] | None:
    """Accounts low..high with a row whose hash the server computes differently from the
    stored one, checked set-based in the database; None where it cannot (SQLite)."""
    by_account = {"partition_by": ledger.c.user_id, "order_by": ledger.c.id}
    rows = (
        select(
            *_CHAIN_COLUMNS,
            func.lag(ledger.c.id).over(**by_account).label("previous_id"),  # type: ignore[arg-type]
            func.lag(ledger.c.row_hash).over(**by_account).label("previous_hash"),  # type: ignore[arg-type]
        )
        .where(ledger.c.user_id.between(low, high))
        .subquery("rows")
    )
    computed = backend.row_hash_sql(rows, rows.c.previous_id, rows.c.previous_hash)
    if computed is None:
        return None
    stmt = (
        select(rows.c.user_id)
        .where(or_(rows.c.row_hash.is_(None), rows.c.row_hash != computed))
        .group_by(rows.c.user_id)
        .order_by(rows.c.user_id)
    )
    return list(conn.execute(stmt).scalars())


def chain_rows_of_accounts(conn: Connection, low: int, high: int) -> Iterator[RowMapping]:
    """Every ledger row of accounts low..high in (user_id, id) order, streamed."""
    stmt = (
        select(*_CHAIN_COLUMNS)
        .where(ledger.c.user_id.between(low, high))
        .order_by(ledger.c.user_id, ledger.c.id)
        .execution_options(yield_per=5_000)
    )
    yield from conn.execute(stmt).mappings()


def unanchored_heads(conn: Connection) -> list[Row[Any]]:
    """(user_id, id, row_hash) of each account head newer than its last anchor."""
    newest = (
        select(ledger.c.user_id, func.max(ledger.c.id).label("id"))
        .group_by(ledger.c.user_id)
        .subquery("newest")
    )
    anchored = (
        select(anchors.c.user_id, func.max(anchors.c.transaction_id).label("id"))
        .group_by(anchors.c.user_id)
        .subquery("anchored")
    )
    stmt = (
        select(ledger.c.user_id, ledger.c.id, ledger.c.row_hash)
        .select_from(
            newest.join(ledger, ledger.c.id == newest.c.id).outerjoin(
                anchored, anchored.c.user_id == newest.c.user_id
            )
        )
        .where(or_(anchored.c.id.is_(None), anchored.c.id < newest.c.id))
        .order_by(ledger.c.user_id)
    )
    return list(conn.execute(stmt))


def latest_digest(conn: Connection) -> RowMapping | None:
    return conn.execute(select(digests).order_by(digests.c.id.desc()).limit(1)).mappings().first()


def insert_digest(
    conn: Connection, values: dict[str, Any], heads: list[tuple[int, int, str]]
) -> int:
    digest_id = _insert(conn, digests, values)
    conn.execute(
        insert(anchors),
        [
            {"digest_id": digest_id, "user_id": u, "transaction_id": t, "row_hash": h}
            for u, t, h in heads
        ],
    )
    return digest_id


def digests_with_anchors(conn: Connection) -> list[tuple[RowMapping, list[Row[Any]]]]:
    """Every digest, oldest first, with the (user, row, hash) triples it anchored."""
    found: list[tuple[RowMapping, list[Row[Any]]]] = [
        (digest, []) for digest in conn.execute(select(digests).order_by(digests.c.id)).mappings()
    ]
    by_id: dict[int, list[Row[Any]]] = {digest["id"]: rows for digest, rows in found}
    stmt = select(anchors).order_by(anchors.c.digest_id, anchors.c.user_id)
    for row in conn.execute(stmt):
        by_id.setdefault(row.digest_id, []).append(row)
    return found


def broken_anchors(conn: Connection, user_id: int | None) -> list[Row[Any]]:
    """Anchors whose row is gone, moved to another account, or hashes differently now."""
    stmt = (
        select(
            anchors.c.digest_id,
            anchors.c.user_id,
            anchors.c.transaction_id,
            anchors.c.row_hash.label("anchored_hash"),
            ledger.c.user_id.label("row_user_id"),
            ledger.c.row_hash.label("row_hash"),
        )
        .select_from(anchors.outerjoin(ledger, ledger.c.id == anchors.c.transaction_id))
        .where(
            or_(
                ledger.c.id.is_(None),
                ledger.c.user_id != anchors.c.user_id,
                ledger.c.row_hash.is_(None),
                ledger.c.row_hash != anchors.c.row_hash,
            )
        )
        .order_by(anchors.c.user_id, anchors.c.transaction_id)
    )
    if user_id is not None:
        stmt = stmt.where(anchors.c.user_id == user_id)
    return list(conn.execute(stmt))


def count_anchors(conn: Connection, user_id: int | None) -> int:
    stmt = select(func.count()).select_from(anchors)
    if user_id is not None:
        stmt = stmt.where(anchors.c.user_id == user_id)
    return int(conn.execute(stmt).scalar_one())


# -- API keys ----------------------------------------------------------------------------

# Every column but the hash: nothing read back from this table carries it.
_API_KEY_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]


_KNOWN_SCOPES = frozenset(scope.value for scope in Scope)


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
    # A name this version does not know (a row from a newer version) grants nothing.
    names = row["scopes"].split(",")
    scopes = frozenset(Scope(name) for name in names if name in _KNOWN_SCOPES)
    return ApiKey(**{**row, "scopes": scopes})


def insert_api_key(
    conn: Connection,
    *,
    name: str,
    key_hash: str,
    prefix: str,
    scopes: frozenset[Scope],
    now: datetime,
) -> ApiKey:
    values = {
        "name": name,
        "key_hash": key_hash,
        "prefix": prefix,
        "scopes": ",".join(scope_names(scopes)),
        "created_at": now,
        "revoked_at": None,
    }
    key_id = _insert(conn, api_keys, values)
    return ApiKey(
        id=key_id, name=name, scopes=scopes, prefix=prefix, created_at=now, revoked_at=None
    )


def api_key_by_hash(conn: Connection, key_hash: str) -> ApiKey | None:
    """The key whose hash this is, revoked or not (one probe of the unique index)."""
    stmt = select(*_API_KEY_COLUMNS).where(api_keys.c.key_hash == key_hash)
    row = conn.execute(stmt).mappings().first()
    return _api_key(row) if row else None


def get_api_key(conn: Connection, key_id: int) -> ApiKey | None:
    row = conn.execute(select(*_API_KEY_COLUMNS).where(api_keys.c.id == key_id)).mappings().first()
    return _api_key(row) if row else None


def all_api_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, newest first."""
    stmt = select(*_API_KEY_COLUMNS).order_by(api_keys.c.id.desc())
    return [_api_key(row) for row in conn.execute(stmt).mappings()]


def revoke_api_key(conn: Connection, key_id: int, now: datetime) -> None:
    """Set revoked_at unless it is set already: the first revocation's time stays."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


# -- the event outbox (events.py builds the rows) -----------------------------------------


def append_event(conn: Connection, row: dict[str, Any]) -> None:
    """Append one outbox row inside the caller's transaction."""
    conn.execute(_INSERT_EVENT, row)


def append_events(conn: Connection, backend: Backend, rows: list[dict[str, Any]]) -> None:
    """Append outbox rows, in order (a batch's: by COPY on PostgreSQL)."""
    if len(rows) == 1:
        append_event(conn, rows[0])
    else:
        backend.insert_rows(conn, events, rows)


_INSERT_EVENT = insert(events)


def _event(row: Mapping[Any, Any]) -> Event:
    return Event(
        id=row["id"],
        event_type=EventType(row["event_type"]),
        user_id=row["user_id"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
    )


def events_page(
    conn: Connection, *, after_id: int, limit: int, user_id: int | None = None
) -> list[Event]:
    """Events with ids above ``after_id``, oldest first (optionally one account's)."""
    stmt = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    if user_id is not None:
        stmt = stmt.where(events.c.user_id == user_id)
    return [_event(row) for row in conn.execute(stmt).mappings()]


def events_by_id(conn: Connection, ids: list[int]) -> dict[int, Event]:
    stmt = select(events).where(events.c.id.in_(ids))
    return {row["id"]: _event(row) for row in conn.execute(stmt).mappings()}


def lock_unfanned_events(conn: Connection, limit: int) -> list[Event]:
    """The oldest events not yet fanned out, locked; rows another dispatcher holds are
    skipped (SKIP LOCKED; SQLite's one writer needs no skipping)."""
    stmt = (
        select(events)
        .where(events.c.fanned_out == false())
        .order_by(events.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [_event(row) for row in conn.execute(stmt).mappings()]


def mark_fanned_out(conn: Connection, event_ids: list[int]) -> None:
    conn.execute(update(events).where(events.c.id.in_(event_ids)).values(fanned_out=True))


# -- webhooks and deliveries (dispatch.py) --------------------------------------------------


def _webhook(row: Mapping[Any, Any]) -> Webhook:
    kinds = row["event_types"]
    return Webhook(
        id=row["id"],
        url=row["url"],
        event_types=None if kinds == "*" else frozenset(kinds.split(",")),
        created_at=row["created_at"],
        removed_at=row["removed_at"],
    )


def insert_webhook(conn: Connection, values: dict[str, Any]) -> Webhook:
    return _webhook({**values, "id": _insert(conn, webhooks, values), "removed_at": None})


def list_webhooks(conn: Connection) -> list[Webhook]:
    stmt = select(webhooks).order_by(webhooks.c.id)
    return [_webhook(row) for row in conn.execute(stmt).mappings()]


def get_webhook(conn: Connection, webhook_id: int) -> Webhook | None:
    row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).mappings().first()
    return _webhook(row) if row else None


def remove_webhook(conn: Connection, webhook_id: int, now: datetime) -> None:
    stmt = update(webhooks).where(webhooks.c.id == webhook_id, webhooks.c.removed_at.is_(None))
    conn.execute(stmt.values(removed_at=now))


def live_subscriptions(conn: Connection, url: str) -> list[Webhook]:
    """The subscriptions of ``url`` not removed, oldest first."""
    stmt = (
        select(webhooks)
        .where(webhooks.c.url == url, webhooks.c.removed_at.is_(None))
        .order_by(webhooks.c.id)
    )
    return [_webhook(row) for row in conn.execute(stmt).mappings()]


def lock_subscribing(conn: Connection, url: str, now: datetime) -> str:
    """Make the other transactions subscribing ``url`` wait until this one ends; the key
    to pass to ``unlock_subscribing`` before committing.

    Two processes registering one callback at once must not both find no row and both
    insert one. A key row of balance_job_locks, inserted now and deleted in the same
    transaction, is the mutex: a second insert of the key waits on the unique index
    until the first transaction ends, then finds nothing there. (SQLite's writers take
    turns anyway.) Hashed: a lock name is at most 64 characters.
    """
    key = "balance_ledger:subscribe:" + hashlib.sha256(url.encode()).hexdigest()[:32]
    conn.execute(insert(job_locks).values(name=key, holder="subscribe", expires_at=now))
    return key


def unlock_subscribing(conn: Connection, key: str) -> None:
    conn.execute(delete(job_locks).where(job_locks.c.name == key))


def webhook_targets(conn: Connection, ids: list[int]) -> dict[int, tuple[str, str]]:
    """(url, secret) of each webhook not removed: what a delivery needs."""
    stmt = select(webhooks.c.id, webhooks.c.url, webhooks.c.secret).where(
        webhooks.c.id.in_(ids), webhooks.c.removed_at.is_(None)
    )
    return {row.id: (row.url, row.secret) for row in conn.execute(stmt)}


def insert_deliveries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(deliveries), rows)


def _delivery(row: Mapping[Any, Any]) -> Delivery:
    return Delivery(**{**row, "status": DeliveryStatus(row["status"])})


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Due for an attempt: pending and due, or claimed by a dispatcher whose lease ran out."""
    return or_(
        and_(
            deliveries.c.status == DeliveryStatus.PENDING.value,
            deliveries.c.next_attempt_at <= now,
        ),
        and_(
            deliveries.c.status == DeliveryStatus.DELIVERING.value,
            deliveries.c.lease_until < now,
        ),
    )


def claim_deliveries(
    conn: Connection, now: datetime, lease_until: datetime, limit: int, *, skip: list[int]
) -> list[Delivery]:
    """Claim due deliveries, each the oldest unfinished one of its (webhook, account),
    and behind no event of its account still waiting to be fanned out, leaving those of
    the webhooks in ``skip`` (the ones this dispatcher cannot deliver to) alone.

    Two statements on purpose: the head test reads other deliveries, and a locking read
    with SKIP LOCKED could skip a locked earlier delivery and take a later one first.
    The lock then takes the heads still claimable; rows another dispatcher holds are
    skipped. Each claimed delivery counts an attempt and holds a lease.
    """
    earlier = deliveries.alias("earlier")
    unfinished = (DeliveryStatus.PENDING.value, DeliveryStatus.DELIVERING.value)
    head = ~(
        select(earlier.c.id)
        .where(
            earlier.c.webhook_id == deliveries.c.webhook_id,
            earlier.c.user_id == deliveries.c.user_id,
            earlier.c.event_id < deliveries.c.event_id,
            earlier.c.status.in_(unfinished),
        )
        .exists()
    )
    # An earlier event of the account whose deliveries another dispatcher's fan-out has
    # not committed yet must go first too: it will be this one's predecessor.
    unfanned = ~(
        select(events.c.id)
        .where(
            events.c.user_id == deliveries.c.user_id,
            events.c.id < deliveries.c.event_id,
            events.c.fanned_out == false(),
        )
        .exists()
    )
    candidates = (
        select(deliveries.c.id)
        .where(_claimable(now), head, unfanned, deliveries.c.webhook_id.not_in(skip))
        .order_by(deliveries.c.event_id)
        .limit(limit)
    )
    ids = list(conn.execute(candidates).scalars())
    if not ids:
        return []
    locked = (
        select(deliveries)
        .where(deliveries.c.id.in_(ids), _claimable(now))
        .order_by(deliveries.c.event_id)
        .with_for_update(skip_locked=True)
    )
    claimed = [_delivery(row) for row in conn.execute(locked).mappings()]
    if claimed:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_([d.id for d in claimed]))
            .values(
                status=DeliveryStatus.DELIVERING.value,
                attempts=deliveries.c.attempts + 1,
                lease_until=lease_until,
            )
        )
    return claimed


def settle_delivery(conn: Connection, delivery_id: int, values: dict[str, Any]) -> None:
    """Record an attempt's outcome, unless another dispatcher took the delivery over."""
    conn.execute(
        update(deliveries)
        .where(
            deliveries.c.id == delivery_id,
            deliveries.c.status == DeliveryStatus.DELIVERING.value,
        )
        .values(**values)
    )


def deliveries_of(conn: Connection, event_id: int | None = None) -> list[Delivery]:
    stmt = select(deliveries).order_by(deliveries.c.id)
    if event_id is not None:
        stmt = stmt.where(deliveries.c.event_id == event_id)
    return [_delivery(row) for row in conn.execute(stmt).mappings()]


def revive_dead_deliveries(conn: Connection, event_id: int, now: datetime) -> int:
    """Dead deliveries of an event back to pending, with their attempts from 0."""
    stmt = (
        update(deliveries)
        .where(
            deliveries.c.event_id == event_id,
            deliveries.c.status == DeliveryStatus.DEAD.value,
        )
        .values(
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
        )
    )
    return conn.execute(stmt).rowcount
