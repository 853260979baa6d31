"""The ledger on a real 3-node MariaDB Galera cluster (db/galera.py): causal reads, job
locks, retries, races across nodes, a node killed mid-race (galera_nodes.py: the
cluster; test_node_affinity.py: writes of each account on one node).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from balance_ledger import (
    BalanceService,
    InsufficientBalance,
    JobBusy,
    NodeUnavailable,
    RetriesExhausted,
    StorageError,
)
from balance_ledger.db.dialects import backend_of, create_ledger_engine
from balance_ledger.db.galera import LOCKED_ACCOUNTS
from balance_ledger.db.transactions import Database
from tests.cluster.galera_nodes import every_node_agrees, fresh_account, nodes, urls
from tests.conftest import SERVER_URLS

__all__ = ["nodes", "urls"]  # fixtures


def test_a_galera_node_reads_causally_and_a_lone_server_does_not(urls):
    galera = create_ledger_engine(urls[1])
    alone = create_ledger_engine(SERVER_URLS["mariadb"])
    try:
        with galera.connect() as conn:
            assert conn.execute(text("SELECT @@wsrep_sync_wait")).scalar() == 1
        with alone.connect() as conn:
            assert conn.execute(text("SELECT @@wsrep_sync_wait")).scalar() == 0
    finally:
        galera.dispose()
        alone.dispose()


def test_a_recharge_confirmed_by_one_node_is_seen_by_the_next_charge_on_another(nodes):
    """Without causal reads, measured: 1 charge in 500 refused, 13 balances stale."""
    first, second, third = nodes
    user_id = fresh_account(first)
    for _ in range(200):
        first.recharge(user_id, 100)
        assert second.charge_service(user_id, 100, "vps").balance_after == 0
        assert third.get_balance(user_id).balance == 0


def test_an_accounts_rows_written_in_turn_by_every_node_keep_their_order_by_id(urls, nodes):
    """Each node hands out ids of its own residue (auto_increment_increment 3), so ids
    are not contiguous; an account's chain follows its rows in id order, which must be
    the order they were written. A node's counter passes every id it applies from the
    others, and causal reads make it apply them before the next movement locks the
    account: each row's id is above the one before, whichever node wrote either."""
    user_id = fresh_account(nodes[0])
    nodes[0].recharge(user_id, 10_000)
    written = [nodes[n % 3].charge_service(user_id, 1, "vps") for n in range(30)]
    ids = [row.id for row in written]
    assert ids == sorted(ids)
    assert len({i % 3 for i in ids}) == 3  # every node's residue: not a contiguous range
    assert [row.balance_after for row in written] == list(range(9_999, 9_969, -1))
    for url in urls:
        with BalanceService.from_url(url) as svc:
            rows = svc.get_transactions(user_id, limit=100)
            assert [r.id for r in rows if r.transaction_type == "charge"] == sorted(
                ids, reverse=True
            )
            assert svc.verify_chain(user_id).intact


def test_a_job_held_on_one_node_is_busy_on_every_other(nodes):
    first, second, third = nodes
    backend = backend_of(first.engine)
    with backend.job_lock(first.engine, "anchor-chains") as held:
        assert held
        for svc in (second, third):
            with pytest.raises(JobBusy):
                svc.anchor_chains()
    second.anchor_chains()  # free again: it runs (a digest, or None if nothing moved)


def test_runners_racing_on_three_nodes_never_hold_a_job_at_once(nodes):
    spans: list[tuple[float, float]] = []
    start = threading.Barrier(len(nodes))

    def runner(svc: BalanceService) -> None:
        backend = backend_of(svc.engine)
        for _ in range(10):
            start.wait()
            with backend.job_lock(svc.engine, "verify-fix") as held:
                if held:
                    began = time.monotonic()
                    time.sleep(0.05)
                    spans.append((began, time.monotonic()))

    threads = [threading.Thread(target=runner, args=(svc,)) for svc in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    spans.sort()
    assert len(spans) >= 10  # every round had a holder
    overlapping = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert overlapping == []


def test_a_node_that_cannot_serve_is_node_unavailable():
    """MariaDB's 1047, as a node outside the primary component answers every statement."""
    import pymysql

    db = Database(create_ledger_engine("mysql+pymysql://root@127.0.0.1:1/unused"))
    refused = pymysql.err.OperationalError(
        1047, "WSREP has not yet prepared node for application use"
    )
    error = DBAPIError.instance("SELECT 1", {}, refused, pymysql.Error)
    assert db.backend.is_node_unavailable(error)
    typed = db._storage_error(error, 1)
    assert isinstance(typed, NodeUnavailable)
    assert "another node" in str(typed)
    db.engine.dispose()


def test_galera_aborts_are_run_again_and_a_used_key_is_not():
    """1062 on PRIMARY (auto-increment ids during a membership change) and the 1064 a
    transaction aborted by another node's write set gets while opening triggers are
    run again; 1062 on the idempotency key's constraint is the key's answer, and a real
    syntax error an error, never retried."""
    import pymysql

    backend = backend_of(create_engine("mysql+pymysql://root@127.0.0.1:1/unused"))
    clash = pymysql.err.IntegrityError(1062, "Duplicate entry '7' for key 'PRIMARY'")
    used_key = pymysql.err.IntegrityError(
        1062, "Duplicate entry '1-k' for key 'uq_user_balance_transactions_user_id_idempotency_key'"
    )
    aborted = pymysql.err.ProgrammingError(
        1064, "Unknown trigger has an error in its body: 'Query was empty'"
    )
    syntax = pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax")
    assert backend.is_retryable(DBAPIError.instance("INSERT", {}, clash, pymysql.Error))
    assert backend.is_retryable(DBAPIError.instance("INSERT", {}, aborted, pymysql.Error))
    assert not backend.is_retryable(DBAPIError.instance("INSERT", {}, used_key, pymysql.Error))
    assert not backend.is_retryable(DBAPIError.instance("SELECT", {}, syntax, pymysql.Error))


def test_charges_racing_on_three_nodes_keep_the_ledger_whole(urls, nodes):
    """Three services, one per node, four threads each, charging a hot and some cold
    accounts with idempotency keys (every fifth one sent twice). After: no overdraft,
    every acknowledged charge in the ledger exactly once, the cache equal to the ledger
    and every chain intact on every node, and the nodes' tables identical."""
    first = nodes[0]
    hot = fresh_account(first)
    cold = [fresh_account(first) for _ in range(5)]
    for user_id in (hot, *cold):
        first.recharge(user_id, 2_000)
    acknowledged: dict[str, int] = {}
    failures: list[BaseException] = []
    exhausted: list[str] = []
    guard = threading.Lock()
    stop = time.monotonic() + 6

    def client(svc: BalanceService, n: int) -> None:
        rng = random.Random(n)
        count = 0
        while time.monotonic() < stop:
            user_id = hot if rng.random() < 0.5 else rng.choice(cold)
            key = f"race-{n}-{count}"
            count += 1
            sends = 2 if count % 5 == 0 else 1  # a retry with the same key
            while sends:
                try:
                    row = svc.charge_service(user_id, 7, "vps", idempotency_key=key)
                except InsufficientBalance:
                    break
                except RetriesExhausted:
                    # Certification conflicts on the hot account across nodes: nothing
                    # was written; the caller retries with its key (node affinity is
                    # what avoids them).
                    with guard:
                        exhausted.append(key)
                    continue
                except BaseException as error:
                    with guard:
                        failures.append(error)
                    return
                sends -= 1
                with guard:
                    assert acknowledged.setdefault(key, row.id) == row.id

    threads = [
        threading.Thread(target=client, args=(svc, i * 10 + t))
        for i, svc in enumerate(nodes)
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert len(acknowledged) > 100
    ids_by_key: dict[str, list[int]] = {}
    for user_id in (hot, *cold):
        assert first.get_balance(user_id).balance >= 0  # no overdraft
        for tx in first.get_transactions(user_id, limit=1000):
            if tx.idempotency_key:
                ids_by_key.setdefault(tx.idempotency_key, []).append(tx.id)
    assert {key: [row] for key, row in acknowledged.items()} == {
        key: ids for key, ids in ids_by_key.items() if key in acknowledged
    }
    every_node_agrees(urls)


def test_a_rebuild_while_every_node_charges_locks_few_accounts_at_a_time(urls, nodes):
    """A rebuild chunk locks its accounts and is aborted when another node writes one:
    on Galera a chunk holds at most galera.LOCKED_ACCOUNTS, so the rebuild gets through
    while three nodes charge the same accounts."""
    first = nodes[0]
    accounts = [fresh_account(first) for _ in range(2 * LOCKED_ACCOUNTS + 10)]
    for user_id in accounts:
        first.recharge(user_id, 1_000)
    locked: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def count(_conn, cursor, statement, *_args) -> None:
        if "FOR UPDATE" in statement and "BETWEEN" in statement:
            locked.append(cursor.rowcount)

    def client(svc: BalanceService, n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            try:
                svc.charge_service(rng.choice(accounts), 1, "vps")
            except RetriesExhausted:
                pass  # a certification conflict between the charging nodes
            except BaseException as error:
                failures.append(error)
                return

    threads = [threading.Thread(target=client, args=(svc, i)) for i, svc in enumerate(nodes)]
    for thread in threads:
        thread.start()
    event.listen(Engine, "after_cursor_execute", count)
    try:
        report = first.rebuild_all_balances()
    finally:
        event.remove(Engine, "after_cursor_execute", count)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert report.errors == []
    assert report.checked >= len(accounts)
    assert 0 < max(locked) <= LOCKED_ACCOUNTS
    every_node_agrees(urls)


SCRIPT = Path(__file__).with_name("galera.sh")


def _cluster(*args: str) -> None:
    subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="kills and restarts a node: run as root (CI)")
def test_a_node_killed_mid_race_loses_no_acknowledged_charge_and_rejoins(urls, nodes):
    """kill -9 of node 3 while all three take keyed charges; its callers resend their
    keys to node 1, as an integrator would. Node 3 rejoins (position recovery, IST) with
    tables identical to the others', and every invariant holds on every node."""
    first = nodes[0]
    accounts = [fresh_account(first) for _ in range(6)]
    for user_id in accounts:
        first.recharge(user_id, 10**6)
    acknowledged: dict[str, int] = {}
    unexpected: list[BaseException] = []
    guard = threading.Lock()
    stop = time.monotonic() + 10

    def client(svc: BalanceService, n: int) -> None:
        rng = random.Random(n)
        count = 0
        while time.monotonic() < stop:
            key, count = f"loss-{n}-{count}", count + 1
            user_id = rng.choice(accounts)
            for target in (svc, first, first, first):  # lost: resend the key elsewhere
                try:
                    row = target.charge_service(user_id, 3, "vps", idempotency_key=key)
                except StorageError:  # node lost, commit unknown, retries exhausted
                    time.sleep(0.2)
                    continue
                except BaseException as error:
                    with guard:
                        unexpected.append(error)
                    return
                with guard:
                    assert acknowledged.setdefault(key, row.id) == row.id
                break

    threads = [
        threading.Thread(target=client, args=(svc, i * 10 + t))
        for i, svc in enumerate(nodes)
        for t in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(3)
    _cluster("kill", "3")
    try:
        for thread in threads:
            thread.join()
    finally:
        _cluster("rejoin", "3")

    assert unexpected == []
    assert len(acknowledged) > 50
    found: dict[str, list[int]] = {}
    for user_id in accounts:
        for tx in first.get_transactions(user_id, limit=1000):
            if tx.idempotency_key and tx.idempotency_key.startswith("loss-"):
                found.setdefault(tx.idempotency_key, []).append(tx.id)
    assert all(found.get(key) == [row] for key, row in acknowledged.items())
    assert all(len(ids) == 1 for ids in found.values())  # an unacknowledged key: once at most
    every_node_agrees(urls)


def test_schedulers_on_two_nodes_run_each_slot_once(nodes):
    """Measured before the lease rows: both nodes held verify-fix at once, and 7 of 10
    losers of a slot got a raw duplicate-key error. Now each slot runs once; the other
    scheduler is told it was run or is running (None), never an error."""
    from datetime import UTC, datetime, timedelta

    fresh_account(nodes[0])
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    slots = [base + timedelta(minutes=i) for i in range(15)]
    results: dict[int, list[object]] = {0: [], 1: []}
    failures: list[BaseException] = []

    fire = threading.Barrier(2)  # both schedulers' clocks reach each slot together

    def scheduler(n: int) -> None:
        for slot in slots:
            fire.wait()
            try:
                results[n].append(nodes[n].run_scheduled_job("verify-fix", slot))
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=scheduler, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    runs = [r for r in nodes[2].sync_runs(limit=100) if r.scheduled_for in slots]
    assert sorted(r.scheduled_for for r in runs) == slots  # each slot once
    ran = [r for n in (0, 1) for r in results[n] if r is not None]
    assert len(ran) == len(slots)
