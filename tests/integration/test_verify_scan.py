"""The verifier's one-statement scan (db/scan.py) against the rules it leaves to Python.

Where the statement passes accounts itself (PostgreSQL), every account it passes must
be one the Python rules judge in sync with an intact chain, the accounts it returns
must come back exactly as the full scan has them, and the checkpoints it writes must
be the ones Python would write. Elsewhere the same assertions hold with nothing passed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import literal, select

from balance_ledger import BalanceService
from balance_ledger.db.scan import ChunkScan, plainly_active, scan_chunk
from balance_ledger.db.tables import balance_sync_checkpoints as checkpoints
from balance_ledger.db.tables import user_balance_transactions as ledger
from balance_ledger.models import AccountPolicy, AccountStatus
from balance_ledger.policy import expected_status
from balance_ledger.reconcile.compare import (
    chain_errors,
    checkpoint_of,
    ledger_figures,
    scanned_discrepancy,
    stale_checkpoint,
)
from tests.conftest import append_only_lifted

STATUSES = [status.value for status in AccountStatus]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    status=st.sampled_from(STATUSES),
    balance=st.integers(-300, 300),
    credit_limit=st.integers(0, 100),
    grace_amount=st.integers(0, 100),
    threshold=st.none() | st.integers(-300, 300),
    in_grace=st.booleans(),
)
def test_plainly_active_is_only_said_of_what_the_rule_keeps_active(
    svc: BalanceService,
    status: str,
    balance: int,
    credit_limit: int,
    grace_amount: int,
    threshold: int | None,
    in_grace: bool,
) -> None:
    condition = plainly_active(literal(status), literal(balance), literal(threshold))
    with svc.engine.connect() as conn:
        said = conn.execute(select(condition)).scalar_one() in (1, True)
    if said:
        rules = AccountPolicy(grace_amount=grace_amount, reactivation_threshold=threshold)
        suspend_at = datetime(2026, 1, 1, tzinfo=UTC) if in_grace else None
        kept = expected_status(
            status, balance, credit_limit=credit_limit, policy=rules, suspend_at=suspend_at
        )
        assert kept == status == AccountStatus.ACTIVE.value


@dataclass(frozen=True)
class Plan:
    credit_limit: int
    threshold: int | None
    grace_amount: int
    amounts: list[int]  # > 0: a recharge, < 0: a charge (overdraft allowed)
    damage: tuple[str, int] | None


DAMAGE = st.none() | st.tuples(
    st.sampled_from(["balance", "total_spent", "held", "status", "snapshot", "sealed text"]),
    st.integers(1, 50),
)
PLANS = st.builds(
    Plan,
    credit_limit=st.integers(0, 50),
    threshold=st.none() | st.integers(0, 150),
    grace_amount=st.integers(0, 30),
    amounts=st.lists(st.integers(-80, 80).filter(bool), max_size=5),
    damage=DAMAGE,
)
_blocks = itertools.count(1_000_000, 1_000)  # each example its own account ids


def _open(svc: BalanceService, user_id: int, plan: Plan) -> None:
    rules = AccountPolicy(grace_amount=plan.grace_amount, reactivation_threshold=plan.threshold)
    svc.open_account(user_id, credit_limit=plan.credit_limit, policy=rules)
    _move(svc, user_id, plan.amounts)


def _move(svc: BalanceService, user_id: int, amounts: list[int]) -> None:
    for amount in amounts:
        if amount > 0:
            svc.recharge(user_id, amount)
        else:
            svc.charge_service(user_id, -amount, "vps", allow_overdraft=True)


def _damage(svc: BalanceService, corrupt: Any, user_id: int, damage: tuple[str, int]) -> None:
    what, by = damage
    account = svc.get_balance(user_id)
    if what == "snapshot":
        with append_only_lifted(svc.engine) as conn:
            first = conn.execute(
                select(ledger.c.id).where(ledger.c.user_id == user_id).order_by(ledger.c.id)
            ).first()
            if first is not None:
                conn.execute(
                    ledger.update()
                    .where(ledger.c.id == first.id)
                    .values(
                        balance_before=ledger.c.balance_before + by,
                        balance_after=ledger.c.balance_after + by,
                    )
                )
    elif what == "sealed text":  # only the hash can tell: the figures all still add up
        with append_only_lifted(svc.engine) as conn:
            conn.execute(
                ledger.update().where(ledger.c.user_id == user_id).values(description=f"x{by}")
            )
    elif what == "status":
        flipped = "active" if account.status.value == "suspended" else "suspended"
        corrupt(user_id, status=flipped)
    else:
        corrupt(user_id, **{what: getattr(account, what) + by})


def _without_passed_count(row: Any) -> dict[str, Any]:
    return {key: value for key, value in row._mapping.items() if key != "passed_count"}


def _assert_passing_agrees(svc: BalanceService, low: int, high: int, incremental: bool) -> None:
    """The passing scan leaves out only accounts the rules judge in sync with an intact
    chain (looked for in every account, not only where the scan saw a break), and
    returns the others exactly as the plain scan does, checkpointing or not."""
    backend = svc._db.backend
    with svc.engine.connect() as conn:
        every = scan_chunk(conn, backend, low, high, incremental=incremental)
        breaks = chain_errors(conn, backend, low, high, incremental)
        scans: list[ChunkScan] = [
            scan_chunk(conn, backend, low, high, incremental=incremental, passing=True),
            scan_chunk(
                conn,
                backend,
                low,
                high,
                incremental=incremental,
                passing=True,
                checkpoint_at=datetime.now(UTC),
            ),
        ]
        conn.rollback()  # the second wrote checkpoints on PostgreSQL
    judged_in_sync = {
        row.user_id
        for row in every.rows
        if row.user_id not in breaks
        and (not incremental or stale_checkpoint(row) is None)
        and scanned_discrepancy(row) is None
    }
    for passing in scans:
        returned = {row.user_id: row for row in passing.rows}
        passed = {row.user_id for row in every.rows} - set(returned)
        assert len(passed) == passing.passed
        assert passed <= judged_in_sync
        for row in every.rows:
            if row.user_id in returned:
                assert _without_passed_count(returned[row.user_id]) == dict(row._mapping)
        if not backend.chains_writes:
            assert passing.passed == 0


@pytest.mark.parametrize("full", [True, False], ids=["full", "incremental"])
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plans=st.lists(PLANS, min_size=1, max_size=5),
    later=st.lists(st.integers(-80, 80).filter(bool), max_size=3),
)
def test_the_scan_passes_only_what_python_judges_in_sync(
    svc: BalanceService, corrupt: Any, full: bool, plans: list[Plan], later: list[int]
) -> None:
    base = next(_blocks)
    ids = [base + i for i in range(1, len(plans) + 1)]
    for user_id, plan in zip(ids, plans, strict=True):
        _open(svc, user_id, plan)
    low, high = ids[0], ids[-1]
    if not full:
        svc.verify_and_fix_balance()  # checkpoints, then rows after them
        _move(svc, ids[0], later)
    for user_id, plan in zip(ids, plans, strict=True):
        if plan.damage is not None:
            _damage(svc, corrupt, user_id, plan.damage)

    _assert_passing_agrees(svc, low, high, incremental=not full)

    # A recorded run keeps the checkpoints Python would keep, whoever writes them: none
    # for a broken chain or a stale checkpoint, the ledger's sums for the others.
    backend = svc._db.backend
    with svc.engine.connect() as conn:
        every = scan_chunk(conn, backend, low, high, incremental=not full)
        breaks = chain_errors(conn, backend, low, high, not full)
    now = datetime.now(UTC)
    expected: dict[int, dict[str, Any] | None] = {}
    for row in every.rows:
        if row.user_id in breaks or (not full and stale_checkpoint(row) is not None):
            expected[row.user_id] = None
        elif full or scanned_discrepancy(row) is None:
            point = checkpoint_of(row, ledger_figures(row), now)
            if point is not None:
                expected[row.user_id] = {k: v for k, v in point.items() if k != "verified_at"}
        # an incremental discrepancy is re-checked against the whole ledger: test_reconcile
    svc.verify_and_fix_balance(full=full)
    with svc.engine.connect() as conn:
        stored = conn.execute(
            select(checkpoints).where(checkpoints.c.user_id.between(low, high))
        ).mappings()
        kept = {
            row["user_id"]: {k: int(v) for k, v in row.items() if k != "verified_at"}
            for row in stored
        }
    assert {user: kept.get(user) for user in expected} == expected


def test_only_the_doubtful_accounts_come_back_where_the_statement_can_write(
    svc: BalanceService, corrupt: Any
) -> None:
    base = next(_blocks)
    healthy, drifted, overdrawn = base + 1, base + 2, base + 3
    for user_id in (healthy, drifted, overdrawn):
        svc.open_account(user_id)
        svc.recharge(user_id, 100)
    corrupt(drifted, balance=7)
    svc.charge_service(overdrawn, 150, "vps", allow_overdraft=True)  # suspended: the rules judge

    with svc.engine.connect() as conn:
        scanned = scan_chunk(
            conn, svc._db.backend, healthy, overdrawn, incremental=False, passing=True
        )

    returned = [row.user_id for row in scanned.rows]
    if svc._db.backend.chains_writes:
        assert (returned, scanned.passed) == ([drifted, overdrawn], 1)
    else:
        assert (returned, scanned.passed) == ([healthy, drifted, overdrawn], 0)
    report = svc.verify_and_fix_balance(full=True)
    assert [d.user_id for d in report.discrepancies if d.user_id >= base] == [drifted]
    with svc.engine.connect() as conn:
        kept = conn.execute(
            select(checkpoints.c.user_id, checkpoints.c.balance)
            .where(checkpoints.c.user_id.between(healthy, overdrawn))
            .order_by(checkpoints.c.user_id)
        ).all()
    assert [tuple(row) for row in kept] == [(healthy, 100), (drifted, 100), (overdrawn, -50)]
