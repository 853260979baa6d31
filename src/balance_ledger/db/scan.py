"""The verifier's scan: ONE statement per chunk of accounts reads each ledger row once.

Per account it returns the cache beside the ledger's figures (the checkpoint's sums
plus the rows after it, or every row in full mode), the active holds, and whether a
row is ``broken``: a snapshot break (its ``balance_before`` is not the previous row's
``balance_after``, or its ``balance_after`` is not ``balance_before ± amount``) or, in
full mode, a chain break (its hash, recomputed by the server where it can, differs).

Where one statement can also write (PostgreSQL), it can *pass* the accounts that are
plainly in sync — figures and holds agree, no break, and the status needs no rule to
judge — write their checkpoints itself, and return only the others, which Python
judges with the rules of reconcile/. One statement reads one snapshot, so a charge
committing mid-scan moves the cache and the ledger together and is never mistaken
for a discrepancy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Row,
    Subquery,
    and_,
    case,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select, bindparam

from ..models import AccountStatus, HoldStatus
from .dialects import Backend
from .queries import CHAIN_COLUMNS, POLICY_COLUMNS, effect_on
from .tables import balance_holds as holds
from .tables import balance_sync_checkpoints as checkpoints
from .tables import user_balance_transactions as ledger
from .tables import user_balances as balances

_ROW_COLUMNS = ("id", "user_id", "transaction_type", "amount", "balance_before", "balance_after")
_CHECKPOINT_SUMS = ("balance", "total_recharged", "total_spent", "row_count")
# The chunk's bounds and the checkpoints' time: parameters of statements built once.
_LOW = bindparam("low", type_=BigInteger())
_HIGH = bindparam("high", type_=BigInteger())
_AT = bindparam("at", type_=checkpoints.c.verified_at.type)


@dataclass(frozen=True, slots=True)
class ChunkScan:
    """What one chunk's statement returned."""

    rows: list[Row[Any]]  # the accounts left to judge, in user_id order
    passed: int  # accounts the statement found in sync (their checkpoints written)
    hashes_checked: bool  # False: no hash was checked (full mode on SQLite: walk them)


def rows_to_verify(low: Any, high: Any, incremental: bool) -> Subquery:
    """Ledger rows of accounts low..high still to verify, with the balance they start from.

    Full mode: every row, starting from 0, with the sealed columns. Incremental mode:
    the rows after each account's checkpoint, starting from its last verified
    balance; accounts without a checkpoint contribute every row.
    """
    if not incremental:
        every_row = select(*CHAIN_COLUMNS, literal(0).label("start_after"))
        return every_row.where(ledger.c.user_id.between(low, high)).subquery("rows")
    columns = [ledger.c[name] for name in _ROW_COLUMNS]
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


def snapshot_breaks(conn: Connection, low: int, high: int, *, incremental: bool) -> list[Row[Any]]:
    """Ledger rows of accounts low..high whose snapshot does not follow the previous row.

    A row is broken when ``balance_after != balance_before ± amount`` or when its
    ``balance_before`` is not the previous row's ``balance_after`` (0 before the first
    row; the checkpoint's last balance before the first unverified row).
    """
    rows = rows_to_verify(low, high, incremental)
    effect, previous_after, broken = _snapshot_walk(rows)
    walk = select(
        *[rows.c[name] for name in _ROW_COLUMNS],
        effect.label("effect"),
        previous_after.label("previous_after"),
        _flag(broken).label("broken"),
    ).subquery("walk")
    stmt = select(walk).where(walk.c.broken == 1).order_by(walk.c.user_id, walk.c.id)
    return list(conn.execute(stmt))


def _snapshot_walk(rows: Subquery) -> tuple[Any, Any, ColumnElement[bool]]:
    """Over ``rows`` (rows_to_verify): each row's effect on the balance, the balance it
    must start from (the previous row's ``balance_after``; ``start_after`` before the
    first), and whether it is a snapshot break. One definition for the scan and for
    snapshot_breaks, which names the broken row."""
    c = rows.c
    previous = func.lag(c.balance_after).over(partition_by=c.user_id, order_by=c.id)
    previous_after = func.coalesce(previous, c.start_after)
    effect = effect_on("balance", rows)
    broken = or_(c.balance_after != c.balance_before + effect, c.balance_before != previous_after)
    return effect, previous_after, broken


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 where ``condition`` holds, else 0 (MAX of it is every backend's BOOL_OR)."""
    return case((condition, 1), else_=0)


def _account_sums(backend: Backend, incremental: bool) -> tuple[Subquery, bool]:
    """Per account: the sums of its rows to verify and whether one is broken (a snapshot
    or chain break); and whether the hashes were checked."""
    rows = rows_to_verify(_LOW, _HIGH, incremental)
    c = rows.c
    order = {"partition_by": c.user_id, "order_by": c.id}
    effect, _, broken = _snapshot_walk(rows)
    flags = [broken]
    hashes_checked = False
    if not incremental:
        computed = backend.row_hash_sql(
            rows,
            func.lag(c.id).over(**order),  # type: ignore[arg-type]
            func.lag(c.row_hash).over(**order),  # type: ignore[arg-type]
        )
        if computed is not None:
            flags.append(or_(c.row_hash.is_(None), c.row_hash != computed))
            hashes_checked = True
    walk = select(
        c.user_id,
        c.id,
        effect.label("effect"),
        effect_on("total_recharged", rows).label("recharged"),
        effect_on("total_spent", rows).label("spent"),
        _flag(or_(*flags)).label("broken"),
    ).subquery("walk")
    w = walk.c
    sums = (
        select(
            w.user_id,
            func.count().label("row_count"),
            func.sum(w.effect).label("balance"),
            func.sum(w.recharged).label("total_recharged"),
            func.sum(w.spent).label("total_spent"),
            func.max(w.id).label("last_transaction_id"),
            func.max(w.broken).label("broken"),
        )
        .group_by(w.user_id)
        .subquery("new")
    )
    return sums, hashes_checked


def scan_chunk(
    conn: Connection,
    backend: Backend,
    low: int,
    high: int,
    *,
    incremental: bool,
    passing: bool = False,
    checkpoint_at: datetime | None = None,
) -> ChunkScan:
    """Scan accounts low..high in one statement.

    ``passing`` (PostgreSQL only; elsewhere every account is returned): leave out the
    accounts found plainly in sync, and with ``checkpoint_at`` write their checkpoints
    in the same statement.
    """
    passing = passing and backend.chains_writes
    saving = passing and checkpoint_at is not None
    stmt, hashes_checked = _statement(backend, incremental, passing, saving)
    params: dict[str, Any] = {"low": low, "high": high}
    if saving:
        # A checkpoint lost in a crash is only work to redo: the next run reads its
        # rows again. So the chunk's commit does not wait for the disk.
        backend.commit_without_waiting(conn)
        # SQLAlchemy caches no compiled INSERT … SELECT: compiled here, once.
        sql, fixed = _compiled(stmt, conn.dialect)
        result = list(conn.exec_driver_sql(sql, {**fixed, **params, "at": checkpoint_at}))
    else:
        result = list(conn.execute(stmt, params))
    if not passing:
        return ChunkScan(result, 0, hashes_checked)
    passed = int(result[0].passed_count) if result else 0
    return ChunkScan([row for row in result if row.user_id is not None], passed, hashes_checked)


_compiled_sql: dict[tuple[int, str, str], tuple[str, dict[str, Any]]] = {}


def _compiled(stmt: Select[Any], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """``stmt``'s SQL for ``dialect`` and the values of its own literals."""
    # stmt is one of _statement's, which live for good; the SQL is the driver's.
    key = (id(stmt), dialect.name, dialect.driver)
    found = _compiled_sql.get(key)
    if found is None:
        compiled = stmt.compile(dialect=dialect)
        found = _compiled_sql[key] = (str(compiled), dict(compiled.params))
    return found


@cache
def _statement(
    backend: Backend, incremental: bool, passing: bool, saving: bool
) -> tuple[Select[Any], bool]:
    """The chunk statement of one kind, built once: building and compiling it for every
    chunk cost more client CPU than the server spent running it."""
    new, hashes_checked = _account_sums(backend, incremental)
    active = (
        select(holds.c.user_id, func.sum(holds.c.amount).label("held"))
        .where(holds.c.status == HoldStatus.ACTIVE.value, holds.c.user_id.between(_LOW, _HIGH))
        .group_by(holds.c.user_id)
        .subquery("active_holds")
    )
    joined = balances.outerjoin(new, new.c.user_id == balances.c.user_id).outerjoin(
        active, active.c.user_id == balances.c.user_id
    )
    checkpoint_columns: dict[str, Any]
    if incremental:
        # The row the checkpoint ended at, to check it is still there as verified.
        ended_at = ledger.alias("checkpoint_row")
        joined = joined.outerjoin(
            checkpoints, checkpoints.c.user_id == balances.c.user_id
        ).outerjoin(
            ended_at,
            and_(
                ended_at.c.id == checkpoints.c.last_transaction_id,
                ended_at.c.user_id == checkpoints.c.user_id,
            ),
        )
        checkpoint_columns = {
            "cp_last_transaction_id": checkpoints.c.last_transaction_id,
            "cp_last_balance_after": checkpoints.c.last_balance_after,
            **{f"cp_{name}": checkpoints.c[name] for name in _CHECKPOINT_SUMS},
            "cp_row_balance_after": ended_at.c.balance_after,
        }
        intact_checkpoint: Any = or_(
            checkpoints.c.last_transaction_id.is_(None),
            ended_at.c.balance_after == checkpoints.c.last_balance_after,
        )
    else:
        names = ("last_transaction_id", "last_balance_after", *_CHECKPOINT_SUMS)
        checkpoint_columns = {f"cp_{name}": null() for name in names}
        checkpoint_columns["cp_row_balance_after"] = null()
        intact_checkpoint = literal(True)
    actual = {
        name: (
            func.coalesce(new.c[name], 0)
            if not incremental
            else func.coalesce(checkpoints.c[name], 0) + func.coalesce(new.c[name], 0)
        )
        for name in _CHECKPOINT_SUMS
    }
    actual_held = func.coalesce(active.c.held, 0)
    columns: list[Any] = [
        balances.c.user_id,
        balances.c.balance.label("cached_balance"),
        balances.c.total_recharged.label("cached_total_recharged"),
        balances.c.total_spent.label("cached_total_spent"),
        balances.c.credit_limit,
        *(balances.c[name] for name in POLICY_COLUMNS),
        balances.c.suspend_at,
        balances.c.status.label("cached_status"),
        balances.c.held.label("cached_held"),
        actual_held.label("actual_held"),
        new.c.row_count,
        new.c.balance,
        new.c.total_recharged,
        new.c.total_spent,
        new.c.last_transaction_id,
        func.coalesce(new.c.broken, 0).label("broken"),
        *(column.label(name) for name, column in checkpoint_columns.items()),
    ]
    scan = select(*columns).select_from(joined).where(balances.c.user_id.between(_LOW, _HIGH))
    if not passing:
        return scan.order_by(balances.c.user_id), hashes_checked
    in_sync = and_(
        balances.c.balance == actual["balance"],
        balances.c.total_recharged == actual["total_recharged"],
        balances.c.total_spent == actual["total_spent"],
        balances.c.held == actual_held,
        func.coalesce(new.c.broken, 0) == 0,
        intact_checkpoint,
        plainly_active(balances.c.status, actual["balance"], balances.c.reactivation_threshold),
    )
    judged = scan.add_columns(
        _flag(in_sync).label("passed"),
        *(value.label(f"actual_{name}") for name, value in actual.items()),
    ).cte("judged")
    j = judged.c
    summary = (
        select(func.count().label("passed_count"))
        .select_from(judged)
        .where(j.passed == 1)
        .subquery("summary")
    )
    stmt = (
        select(summary.c.passed_count, *(j[column.name] for column in columns))
        .select_from(summary.outerjoin(judged, j.passed == 0))
        .order_by(j.user_id)
    )
    if saving:
        stmt = stmt.add_cte(_checkpoints_of_passed(judged))
    return stmt, hashes_checked


def plainly_active(
    status: ColumnElement[str], balance: ColumnElement[Any], reactivation_threshold: Any
) -> ColumnElement[bool]:
    """True only where policy.expected_status is certainly "active" and so is ``status``.

    A conservative shortcut, not the rule: both lines of the policy are at or below 0
    (``credit_limit`` and ``grace_amount`` are never negative) unless a reactivation
    threshold is set, so an active account at or above 0 and that threshold stays
    active. Every other account is judged by the rule itself, in Python.
    """
    return and_(
        status == AccountStatus.ACTIVE.value,
        balance >= 0,
        balance >= func.coalesce(reactivation_threshold, 0),
    )


def _checkpoints_of_passed(judged: Any) -> Any:
    """The checkpoint upsert of the passed accounts that had rows to verify."""
    j = judged.c
    values = select(
        j.user_id,
        j.last_transaction_id,
        j.actual_balance.label("last_balance_after"),  # the chain holds: the last row ends here
        j.actual_balance.label("balance"),
        j.actual_total_recharged.label("total_recharged"),
        j.actual_total_spent.label("total_spent"),
        j.actual_row_count.label("row_count"),
        _AT.label("verified_at"),
    ).where(j.passed == 1, j.row_count.is_not(None))
    names = [
        "user_id",
        "last_transaction_id",
        "last_balance_after",
        *_CHECKPOINT_SUMS,
        "verified_at",
    ]
    upsert = postgresql.insert(checkpoints).from_select(names, values)
    return upsert.on_conflict_do_update(
        index_elements=[checkpoints.c.user_id],
        set_={name: upsert.excluded[name] for name in names if name != "user_id"},
    ).cte("saved")
