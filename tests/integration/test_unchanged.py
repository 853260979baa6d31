"""A single movement written in one statement while its account is unchanged
(money/post.py: post_unchanged, PostgreSQL), and the version every write of a balance
row moves (guards.py), on every backend.

Two BalanceServices over one database stand in for two processes: each keeps its own
snapshots, so one's snapshot goes stale when the other writes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select, text

from balance_ledger import BalanceService, InsufficientBalance
from balance_ledger.db.tables import balance_events as events
from balance_ledger.db.tables import metadata
from balance_ledger.db.tables import user_balance_transactions as ledger
from balance_ledger.db.tables import user_balances as balances
from balance_ledger.errors import BalanceError
from balance_ledger.models import AccountPolicy, TransactionType
from tests.conftest import TEST_DATABASE
from tests.databases import recreate_database, server_url


def version_of(svc: BalanceService, user_id: int) -> int:
    with svc.engine.connect() as conn:
        stmt = select(balances.c.version).where(balances.c.user_id == user_id)
        return int(conn.execute(stmt).scalar_one())


@pytest.fixture
def svc(database_url: str) -> Iterator[BalanceService]:
    with BalanceService.from_url(database_url, one_statement=True) as service:
        yield service


@pytest.fixture
def other(database_url: str) -> Iterator[BalanceService]:
    """A second service over the same database: another process."""
    with BalanceService.from_url(database_url, one_statement=True) as service:
        yield service


def test_every_update_of_a_balance_row_moves_its_version(svc, account_factory):
    account = account_factory(balance=100)
    start = version_of(svc, account.user_id)
    svc.charge_service(account.user_id, 10, "vps")
    assert version_of(svc, account.user_id) == start + 1
    with svc.engine.begin() as conn:  # whoever writes, even by hand
        conn.execute(text("UPDATE user_balances SET balance = balance WHERE user_id = 1"))
        conn.execute(text("UPDATE user_balances SET version = 0 WHERE user_id = 1"))
    assert version_of(svc, account.user_id) == start + 3


def test_a_stale_snapshot_writes_nothing_and_the_charge_is_posted_on_the_news(
    svc, other, account_factory
):
    account = account_factory(balance=100)
    svc.charge_service(account.user_id, 10, "vps")  # svc's snapshot: balance 90
    other.charge_service(account.user_id, 50, "vps")  # behind svc's back: 40
    third = svc.charge_service(account.user_id, 30, "vps")
    assert (third.balance_before, third.balance_after) == (40, 10)
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 20, "vps")  # 10 left, whatever svc saw
    assert svc.get_balance(account.user_id).balance == 10
    assert not svc.verify_chain().breaks
    assert svc.verify_and_fix_balance(full=True).discrepancies == []


def test_a_refusal_kept_by_another_process_is_its_keys_answer(svc, other, account_factory):
    account = account_factory(balance=100)
    svc.charge_service(account.user_id, 10, "vps")  # svc's snapshot: 90, enough for 80
    other.charge_service(account.user_id, 60, "vps")  # 30 left
    with pytest.raises(InsufficientBalance):
        other.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    other.recharge(account.user_id, 1_000)
    # svc's snapshot is stale twice over; the key's answer stays the refusal.
    with pytest.raises(InsufficientBalance) as refused:
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    assert refused.value.replayed
    assert svc.get_balance(account.user_id).balance == 1_030


def test_a_key_answered_by_another_process_replays_its_row(svc, other, account_factory):
    account = account_factory(balance=100)
    svc.charge_service(account.user_id, 10, "vps")
    first = other.charge_service(account.user_id, 20, "vps", idempotency_key="k")
    again = svc.charge_service(account.user_id, 20, "vps", idempotency_key="k")
    assert again.replayed
    assert again.id == first.id
    assert svc.get_balance(account.user_id).balance == 70


def test_a_retry_on_an_unchanged_account_replays_its_row_and_writes_nothing(
    svc, account_factory, dump
):
    """The retry is decided on the snapshot its first attempt left: the one statement
    meets the key in the ledger's unique constraint, and the locked path answers it."""
    account = account_factory(balance=100)
    first = svc.charge_service(account.user_id, 20, "vps", idempotency_key="k")
    written = dump()
    again = svc.charge_service(account.user_id, 20, "vps", idempotency_key="k")
    assert again.replayed
    assert again.id == first.id
    assert dump() == written
    assert svc.charge_service(account.user_id, 5, "vps").balance_after == 75


def test_the_one_statement_reads_no_ledger_row(svc):
    """Its plan is cached by the server: a plan made while the ledger was small could
    read a key through the (user_id, id) index and filter every row of the account.
    The statement leaves the key to the unique constraint and reads no ledger row."""
    if svc.engine.dialect.name != "postgresql":
        pytest.skip("the one statement is PostgreSQL's")
    from balance_ledger.db.unchanged import _WRITE

    sql = _WRITE._for(svc.engine.dialect).sql
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    with svc.engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("PREPARE one_statement AS " + re.sub(r"%\((\w+)\)s", numbered, sql))
        nulls = ", ".join("NULL" for _ in names)
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE one_statement({nulls})").scalars())
    scans = [line for line in plan.splitlines() if "Scan" in line and ledger.name in line]
    assert scans == [], plan
    assert f"Insert on {ledger.name}" in plan


RACERS = 8
ROUNDS = 40


def test_two_processes_racing_one_account_never_overdraw_it(svc, other, account_factory):
    """Threads of two services race keyed charges on one account, and retry each once."""
    funded = 150
    account = account_factory(balance=funded * 3)
    barrier = threading.Barrier(RACERS)

    def racer(n: int) -> list[int]:
        service = (svc, other)[n % 2]
        barrier.wait()
        written = []
        for i in range(ROUNDS):
            for _attempt in range(2):  # a retry with the same key answers the same
                try:
                    row = service.charge_service(
                        account.user_id, 3, "vps", idempotency_key=f"{n}-{i}"
                    )
                except InsufficientBalance:
                    continue
                if not row.replayed:
                    written.append(row.id)
        return written

    with ThreadPoolExecutor(RACERS) as pool:
        written = [row_id for rows in pool.map(racer, range(RACERS)) for row_id in rows]

    assert len(written) == len(set(written)) == funded  # 450 / 3: every unit spent once
    assert svc.get_balance(account.user_id).balance == 0
    assert svc.verify_and_fix_balance(full=True).discrepancies == []
    assert not svc.verify_chain().breaks
    with svc.engine.connect() as conn:
        keys = conn.execute(select(ledger.c.idempotency_key).where(ledger.c.amount == 3))
        assert len(set(keys.scalars())) == funded


# -- the same operations, in one statement and under the lock: the same rows ----------

FROZEN = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("charge"),
            st.integers(1, 2),
            st.integers(1, 400),
            st.sampled_from([None, "a", "b"]),
            st.booleans(),
        ),
        st.tuples(st.just("recharge"), st.integers(1, 2), st.integers(1, 300)),
        st.tuples(st.just("adjust"), st.integers(1, 2), st.integers(-200, 200).filter(bool)),
        st.tuples(st.just("refund"), st.integers(1, 2), st.integers(1, 50)),
    ),
    max_size=16,
)


def play(svc: BalanceService, steps: list[tuple[object, ...]]) -> list[object]:
    answers: list[object] = []
    policy = AccountPolicy(low_balance_threshold=150, grace_amount=100)
    for user in (1, 2):
        svc.open_account(user, credit_limit=50, policy=policy)
        svc.recharge(user, 300)
    for step in steps:
        kind, user = step[0], int(step[1])  # type: ignore[call-overload]
        try:
            if kind == "charge":
                _, _, amount, key, overdraft = step
                row = svc.charge_service(
                    user, amount, "vps", idempotency_key=key, allow_overdraft=overdraft
                )
            elif kind == "recharge":
                row = svc.recharge(user, step[2])
            elif kind == "adjust":
                row = svc.adjust(user, step[2], reason="fix", actor="ops")
            else:
                charges = [
                    t
                    for t in svc.get_transactions(user)
                    if t.transaction_type is TransactionType.CHARGE
                ]
                if not charges:
                    continue
                row = svc.refund(charges[0].id, step[2])
            answers.append((row.id, row.balance_after, row.replayed))
        except BalanceError as error:
            answers.append(type(error).__name__)
    return answers


def tables(svc: BalanceService) -> dict[str, list[tuple[object, ...]]]:
    with svc.engine.connect() as conn:
        return {
            table.name: [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key))]
            for table in (ledger, balances, events)
        }


@pytest.fixture
def twin_url(backend: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if backend != "postgresql":
        pytest.skip("only PostgreSQL writes a movement in one statement")
    url = recreate_database(server_url(backend, "BALANCE_TEST"), f"{TEST_DATABASE}_twin")
    with BalanceService.from_url(url) as svc:
        svc.create_schema()
    return url


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=operations)
def test_one_statement_and_the_lock_write_the_same_rows(database_url, twin_url, monkeypatch, steps):
    monkeypatch.setattr("balance_ledger.clock.now", lambda: FROZEN)
    for url in (database_url, twin_url):  # empty, and ids from 1 again
        engine = create_engine(url)
        with engine.begin() as conn:
            names = ", ".join(table.name for table in metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
        engine.dispose()
    with (
        BalanceService.from_url(database_url, one_statement=True) as fast,
        BalanceService.from_url(twin_url) as locked,  # every movement under the lock
    ):
        assert play(fast, steps) == play(locked, steps)
        assert tables(fast) == tables(locked)
