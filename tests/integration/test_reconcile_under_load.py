"""Reconciliation is safe while charges are flowing, and scheduled jobs run once."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from balance_ledger import BalanceService, InsufficientBalance

ACCOUNTS = 20
STORM_THREADS = 8


def charge_storm_while(svc: BalanceService, reconcile) -> list:
    """Charge random accounts from STORM_THREADS threads until ``reconcile`` ran 5 times."""
    done = threading.Event()

    def charger(n: int) -> int:
        charged, i = 0, 0
        while not done.is_set():
            i += 1
            try:
                svc.charge_service((n * 7 + i) % ACCOUNTS + 1, 1, "api")
                charged += 1
            except InsufficientBalance:
                pass
        return charged

    with ThreadPoolExecutor(STORM_THREADS) as pool:
        storm = [pool.submit(charger, n) for n in range(STORM_THREADS)]
        try:
            results = [reconcile() for _ in range(5)]
        finally:
            done.set()
        assert sum(f.result() for f in storm) > 0
    return results


@pytest.fixture
def loaded_service(database_url: str):
    with BalanceService.from_url(database_url, pool_size=STORM_THREADS + 4) as svc:
        for user_id in range(1, ACCOUNTS + 1):
            svc.open_account(user_id)
            svc.recharge(user_id, 1_000_000)
        yield svc


@pytest.mark.race
@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_verify_fix_during_a_charge_storm_makes_no_false_fixes(loaded_service, full):
    svc = loaded_service
    reports = charge_storm_while(svc, lambda: svc.verify_and_fix_balance(fix=True, full=full))

    assert [(r.fixed, r.errors, r.discrepancies) for r in reports] == [(0, [], [])] * 5
    assert all(r.checked == ACCOUNTS for r in reports)
    assert svc.verify_and_fix_balance(full=True).in_sync


@pytest.mark.race
def test_rebuild_during_a_charge_storm_changes_nothing_and_loses_nothing(loaded_service):
    svc = loaded_service
    reports = charge_storm_while(svc, svc.rebuild_all_balances)

    assert [r.changes for r in reports] == [[]] * 5
    assert svc.verify_and_fix_balance(full=True).in_sync


@pytest.mark.race
def test_rebuild_during_a_charge_storm_repairs_drift_without_losing_charges(
    loaded_service, corrupt
):
    svc = loaded_service
    corrupt(3, balance=0, total_spent=0)
    reports = charge_storm_while(svc, svc.rebuild_all_balances)

    assert {c.user_id for c in reports[0].changes} == {3}
    assert [r.changes for r in reports[1:]] == [[]] * 4
    assert svc.verify_and_fix_balance(full=True).in_sync


SLOT = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


@pytest.mark.race
@pytest.mark.parametrize("job", ["verify-fix", "rebuild"])
def test_two_schedulers_racing_for_one_slot_record_exactly_one_run(svc, account_factory, job):
    account_factory(balance=10)
    barrier = threading.Barrier(2)

    def scheduler(_: int):
        barrier.wait()
        return svc.run_scheduled_job(job, SLOT)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(scheduler, range(2)))

    assert sum(result is not None for result in results) == 1
    runs = svc.sync_runs()
    assert len(runs) == 1
    assert runs[0].scheduled_for == SLOT


def test_a_slot_already_run_is_skipped(svc, account_factory, caplog):
    account_factory(balance=10)
    assert svc.run_scheduled_job("verify-fix", SLOT) is not None
    with caplog.at_level(logging.INFO, logger="balance_ledger"):
        assert svc.run_scheduled_job("verify-fix", SLOT) is None
    assert "already happened" in caplog.text
    assert len(svc.sync_runs()) == 1


def test_a_runner_finding_the_lock_held_skips_and_says_so(svc, account_factory, caplog):
    account_factory(balance=10)
    backend = svc._db.backend
    with backend.job_lock(svc.engine, "verify-fix", lease=timedelta(hours=1)) as held:
        assert held
        with caplog.at_level(logging.INFO, logger="balance_ledger"):
            assert svc.run_scheduled_job("verify-fix", SLOT) is None
    assert "skipped: another run holds the lock" in caplog.text
    assert svc.sync_runs() == []
    assert svc.run_scheduled_job("verify-fix", SLOT) is not None
