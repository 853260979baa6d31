"""Layer 3: verify, fix, rebuild, the discrepancy report and the audit trail.

The seed's scenarios 4 (verify detects and fixes), 7 (rebuild) and 9 (report).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest
from sqlalchemy import event, select, text

from balance_ledger import AccountNotFound, BalanceService, ColumnChange
from balance_ledger.db.tables import balance_sync_checkpoints as checkpoints
from balance_ledger.db.tables import user_balance_transactions as ledger
from tests.conftest import append_only_lifted


@pytest.fixture
def three_accounts(svc: BalanceService, account_factory) -> list[int]:
    ids = []
    for balance in (1_000, 2_000, 3_000):
        account = account_factory(balance=balance)
        svc.charge_service(account.user_id, 100, "vps")
        ids.append(account.user_id)
    return ids


def test_verify_of_a_consistent_ledger_finds_everything_in_sync(svc, three_accounts):
    report = svc.verify_and_fix_balance()
    assert (report.checked, report.synced, report.fixed, report.errors) == (3, 3, 0, [])
    assert report.in_sync
    assert report.details == []


def test_verify_detects_a_corrupted_balance_without_fixing_it(svc, three_accounts, corrupt):
    user_id = three_accounts[1]
    corrupt(user_id, balance=500_000)

    report = svc.verify_and_fix_balance()

    assert (report.checked, report.synced, report.fixed) == (3, 2, 0)
    (found,) = report.discrepancies
    assert (found.user_id, found.stored_balance, found.actual_balance) == (user_id, 500_000, 1_900)
    assert found.difference == 500_000 - 1_900
    assert svc.get_balance(user_id).balance == 500_000


def test_fix_rewrites_the_cache_from_the_ledger(svc, three_accounts, corrupt):
    user_id = three_accounts[0]
    corrupt(user_id, balance=1, total_recharged=2, total_spent=3, status="suspended")

    report = svc.verify_and_fix_balance(fix=True)

    assert (report.synced, report.fixed) == (2, 1)
    assert report.in_sync
    fixed = svc.get_balance(user_id)
    assert (fixed.balance, fixed.total_recharged, fixed.total_spent, fixed.status) == (
        900,
        1_000,
        100,
        "active",
    )
    assert svc.verify_and_fix_balance(full=True).in_sync


def test_every_fix_is_recorded_in_the_audit_tables(svc, three_accounts, corrupt):
    user_id = three_accounts[2]
    corrupt(user_id, balance=0, total_spent=0)

    report = svc.verify_and_fix_balance(fix=True)

    assert svc.sync_fixes(report.run_id) == [
        ColumnChange(user_id, "balance", "0", "2900"),
        ColumnChange(user_id, "total_spent", "0", "100"),
    ]
    run = svc.sync_runs(limit=1)[0]
    assert (run.id, run.kind, run.fix, run.outcome) == (report.run_id, "verify", True, "fixed")
    assert (run.checked, run.synced, run.fixed, run.discrepancies, run.errors) == (3, 2, 1, 1, 0)
    assert run.finished_at >= run.started_at


def test_status_that_disagrees_with_the_balance_is_a_discrepancy(svc, three_accounts, corrupt):
    corrupt(three_accounts[0], status="suspended")
    (found,) = svc.get_balance_discrepancies()
    assert (found.stored_status, found.expected_status, found.difference) == (
        "suspended",
        "active",
        0,
    )


def test_balance_row_without_ledger_rows_must_be_zero(svc, account_factory, corrupt):
    account = account_factory()
    corrupt(account.user_id, balance=42)
    (found,) = svc.get_balance_discrepancies()
    assert (found.stored_balance, found.actual_balance) == (42, 0)


def test_discrepancy_report_is_sorted_largest_difference_first(svc, account_factory, corrupt):
    accounts = [account_factory(balance=10_000).user_id for _ in range(4)]
    corrupt(accounts[0], balance=10_000 + 5)  # difference 5
    corrupt(accounts[1], balance=10_000 - 700)  # difference -700
    corrupt(accounts[2], total_spent=90)  # difference 0, totals off by 90
    corrupt(accounts[3], total_recharged=9_000)  # difference 0, totals off by 1,000

    found = svc.get_balance_discrepancies()

    assert [d.user_id for d in found] == [accounts[1], accounts[0], accounts[3], accounts[2]]
    assert [d.difference for d in found] == [-700, 5, 0, 0]


def test_discrepancy_report_writes_nothing(svc, three_accounts, corrupt):
    corrupt(three_accounts[0], balance=0)
    svc.get_balance_discrepancies()
    assert svc.sync_runs() == []
    assert svc.get_balance(three_accounts[0]).balance == 0


def test_verify_of_one_account_checks_only_that_account(svc, three_accounts, corrupt):
    corrupt(three_accounts[0], balance=0)
    corrupt(three_accounts[1], balance=0)

    report = svc.verify_and_fix_balance(three_accounts[1], fix=True)

    assert (report.checked, report.fixed) == (1, 1)
    assert [d.user_id for d in report.details] == [three_accounts[1]]
    assert svc.get_balance(three_accounts[0]).balance == 0


def test_verify_of_one_account_in_sync_reports_its_status(svc, three_accounts):
    report = svc.verify_and_fix_balance(three_accounts[0])
    assert [(d.user_id, d.status) for d in report.details] == [(three_accounts[0], "in_sync")]


def test_verify_of_an_unknown_account_raises(svc: BalanceService):
    with pytest.raises(AccountNotFound):
        svc.verify_and_fix_balance(404)


def test_reports_serialise_to_json(svc, three_accounts, corrupt):
    corrupt(three_accounts[0], balance=7)
    report = json.loads(svc.verify_and_fix_balance().to_json())
    assert report["details"][0]["discrepancy"]["difference"] == 7 - 900
    assert set(report) == {"run_id", "checked", "synced", "fixed", "errors", "details"}
    (found,) = svc.get_balance_discrepancies()
    assert json.loads(found.to_json())["stored_balance"] == 7


# -- the ledger chain -------------------------------------------------------------------


def shift_snapshot(svc: BalanceService, row_id: int, offset: int) -> None:
    """Tamper with one ledger row's snapshot, keeping its own arithmetic valid."""
    with append_only_lifted(svc.engine) as conn:
        conn.execute(
            ledger.update()
            .where(ledger.c.id == row_id)
            .values(
                balance_before=ledger.c.balance_before + offset,
                balance_after=ledger.c.balance_after + offset,
            )
        )


def test_broken_chain_is_reported_with_the_first_bad_row(svc, account_factory):
    account = account_factory(balance=1_000)
    rows = [svc.charge_service(account.user_id, 10, "vps") for _ in range(3)]
    shift_snapshot(svc, rows[1].id, 5)

    report = svc.verify_and_fix_balance(full=True, fix=True)

    (error,) = report.errors
    assert (error.user_id, error.transaction_id) == (account.user_id, rows[1].id)
    assert f"row {rows[1].id}" in error.message
    assert not report.in_sync
    assert svc.sync_runs(limit=1)[0].outcome == "out_of_sync"
    # The ledger is never "fixed".
    assert svc.get_transactions(account.user_id)[1].balance_before == rows[1].balance_before + 5


def test_chain_that_does_not_start_at_zero_is_broken(svc, account_factory):
    account = account_factory(balance=1_000)
    first = svc.get_transactions(account.user_id)[0]
    shift_snapshot(svc, first.id, 1)
    (error,) = svc.verify_and_fix_balance(full=True).errors
    assert error.transaction_id == first.id


# -- incremental verification -------------------------------------------------------------


def checkpoint_of(svc: BalanceService, user_id: int):
    with svc.engine.connect() as conn:
        return conn.execute(select(checkpoints).where(checkpoints.c.user_id == user_id)).first()


def test_verify_stores_a_checkpoint_per_account(svc, three_accounts):
    svc.verify_and_fix_balance()
    user_id = three_accounts[0]
    last = svc.get_transactions(user_id)[0]
    point = checkpoint_of(svc, user_id)
    assert (point.last_transaction_id, point.last_balance_after, point.row_count) == (
        last.id,
        900,
        2,
    )
    assert (point.total_recharged, point.total_spent) == (1_000, 100)


def test_incremental_verify_reads_only_rows_after_the_checkpoint(svc, account_factory):
    account = account_factory(balance=1_000)
    old = svc.charge_service(account.user_id, 10, "vps")
    svc.charge_service(account.user_id, 10, "vps")
    svc.verify_and_fix_balance()
    # Tamper with a row the checkpoint already covers: an incremental run cannot see it...
    shift_snapshot(svc, old.id, 3)
    new = svc.charge_service(account.user_id, 10, "vps")

    incremental = svc.verify_and_fix_balance()

    assert incremental.in_sync
    assert checkpoint_of(svc, account.user_id).last_transaction_id == new.id
    # ...a full run re-reads every row and finds it.
    (error,) = svc.verify_and_fix_balance(full=True).errors
    assert error.transaction_id == old.id


def test_a_full_run_finding_a_break_drops_the_checkpoint_so_it_stays_reported(svc, account_factory):
    account = account_factory(balance=1_000)
    old = svc.charge_service(account.user_id, 10, "vps")
    svc.charge_service(account.user_id, 10, "vps")
    svc.verify_and_fix_balance()
    shift_snapshot(svc, old.id, 3)

    assert svc.verify_and_fix_balance(full=True).errors[0].transaction_id == old.id

    assert checkpoint_of(svc, account.user_id) is None
    assert svc.verify_and_fix_balance().errors[0].transaction_id == old.id


def test_incremental_verify_notices_the_checkpoint_row_was_altered(svc, account_factory):
    account = account_factory(balance=1_000)
    last = svc.charge_service(account.user_id, 10, "vps")
    svc.verify_and_fix_balance()
    shift_snapshot(svc, last.id, 2)

    (error,) = svc.verify_and_fix_balance().errors

    assert error.transaction_id == last.id
    assert "removed or altered" in error.message
    assert checkpoint_of(svc, account.user_id) is None


def test_incremental_verify_notices_history_changed_behind_the_checkpoint(
    svc, account_factory, corrupt
):
    account = account_factory(balance=1_000)
    old = svc.charge_service(account.user_id, 10, "vps")
    svc.charge_service(account.user_id, 10, "vps")
    svc.verify_and_fix_balance()
    # Remove an old row and make the cache agree with what is left: the checkpoint's
    # sums are now the only witness of the old history.
    with append_only_lifted(svc.engine) as conn:
        conn.execute(ledger.delete().where(ledger.c.id == old.id))
    corrupt(account.user_id, balance=990, total_spent=10)

    report = svc.verify_and_fix_balance(fix=True)

    (error,) = report.errors
    assert "changed after it was verified" in error.message
    assert report.fixed == 0
    assert svc.get_balance(account.user_id).balance == 990


def test_incremental_verify_checks_new_rows_against_the_checkpoint(svc, account_factory):
    account = account_factory(balance=1_000)
    svc.verify_and_fix_balance()
    new = svc.charge_service(account.user_id, 10, "vps")
    shift_snapshot(svc, new.id, 4)

    (error,) = svc.verify_and_fix_balance().errors

    assert error.transaction_id == new.id
    # A broken chain drops the checkpoint: the next run re-reads and reports it again.
    assert checkpoint_of(svc, account.user_id) is None
    assert svc.verify_and_fix_balance().errors[0].transaction_id == new.id


def test_incremental_verify_still_compares_the_whole_cache(svc, account_factory, corrupt):
    account = account_factory(balance=1_000)
    svc.verify_and_fix_balance()
    corrupt(account.user_id, total_recharged=1)
    (found,) = svc.verify_and_fix_balance().discrepancies
    assert (found.stored_total_recharged, found.actual_total_recharged) == (1, 1_000)


# -- rebuild ---------------------------------------------------------------------------------


def test_rebuild_recomputes_every_cache_column(svc, three_accounts, corrupt):
    corrupt(three_accounts[0], balance=0, total_spent=0)
    corrupt(three_accounts[2], total_recharged=1, status="suspended")

    report = svc.rebuild_all_balances()

    assert (report.checked, report.changed) == (3, 2)
    assert {(c.user_id, c.column) for c in report.changes} == {
        (three_accounts[0], "balance"),
        (three_accounts[0], "total_spent"),
        (three_accounts[2], "total_recharged"),
        (three_accounts[2], "status"),
    }
    assert svc.sync_runs(limit=1)[0].kind == "rebuild"
    assert len(svc.sync_fixes(report.run_id)) == 4
    assert svc.verify_and_fix_balance(full=True).in_sync


def test_rebuild_dry_run_shows_the_diff_and_writes_nothing(svc, three_accounts, corrupt, dump):
    corrupt(three_accounts[1], balance=123)
    before = dump()

    report = svc.rebuild_all_balances(dry_run=True)

    assert report.changes == [ColumnChange(three_accounts[1], "balance", "123", "1900")]
    assert report.run_id is None
    assert dump() == before
    assert svc.sync_runs() == []


# -- ledger rows without a balance row ---------------------------------------------------------


def delete_balance_row_bypassing_the_foreign_key(svc, backend: str, user_id: int) -> None:
    if backend == "sqlite":  # a plain sqlite3 connection does not enforce foreign keys
        with closing(sqlite3.connect(svc.engine.url.database)) as conn, conn:
            conn.execute(f"DELETE FROM user_balances WHERE user_id = {user_id}")
        return
    with svc.engine.connect() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("SET session_replication_role = replica")
        else:
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        conn.execute(text(f"DELETE FROM user_balances WHERE user_id = {user_id}"))
        conn.commit()
    svc.engine.dispose()  # drop the connection with the relaxed setting


def test_ledger_rows_without_a_balance_row_are_reported(svc, backend, account_factory):
    keep, orphan = account_factory(balance=10), account_factory(balance=500)
    delete_balance_row_bypassing_the_foreign_key(svc, backend, orphan.user_id)

    report = svc.verify_and_fix_balance(full=True, fix=True)

    assert report.checked == 2
    (error,) = report.errors
    assert error.user_id == orphan.user_id
    assert "no balance row" in error.message
    (found,) = report.discrepancies
    assert (found.user_id, found.missing_balance_row, found.actual_balance) == (
        orphan.user_id,
        True,
        500,
    )
    assert svc.get_balance(keep.user_id).balance == 10


def test_sync_totals_add_up_every_run_per_kind(svc, three_accounts, corrupt):
    assert svc.sync_totals() == []
    corrupt(three_accounts[0], balance=0)
    corrupt(three_accounts[1], total_spent=7)
    svc.verify_and_fix_balance()  # finds two, fixes none
    svc.verify_and_fix_balance(fix=True, full=True)  # finds and fixes both
    corrupt(three_accounts[2], balance=1)
    svc.rebuild_all_balances()
    svc.rebuild_all_balances(dry_run=True)  # records no run

    rebuild, verify = svc.sync_totals()  # by kind

    counts = [(t.kind, t.runs, t.discrepancies, t.fixed, t.errors) for t in (verify, rebuild)]
    assert counts == [("verify", 2, 4, 2, 0), ("rebuild", 1, 1, 1, 0)]
    (last_rebuild, *_) = svc.sync_runs()
    assert rebuild.last_finished_at == last_rebuild.finished_at


def test_a_run_that_fails_is_recorded_as_failed(svc, three_accounts):
    def fail_the_chain_walk(conn, cursor, statement, parameters, context, many):
        if "lag(" in statement.lower():
            raise RuntimeError("disk on fire")

    event.listen(svc.engine, "before_cursor_execute", fail_the_chain_walk)
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            svc.verify_and_fix_balance()
    finally:
        event.remove(svc.engine, "before_cursor_execute", fail_the_chain_walk)

    (run,) = svc.sync_runs()
    assert (run.outcome, run.message) == ("failed", "disk on fire")
    assert run.finished_at is not None


def test_a_fix_that_fails_is_reported_and_the_account_stays_out_of_sync(
    svc, three_accounts, corrupt
):
    corrupt(three_accounts[0], balance=0)

    def break_cache_writes(conn, cursor, statement, parameters, context, many):
        if statement.lstrip().upper().startswith("UPDATE USER_BALANCES"):
            return "UPDATE user_balances SET status = 'bogus'", ()
        return statement, parameters

    event.listen(svc.engine, "before_cursor_execute", break_cache_writes, retval=True)
    try:
        report = svc.verify_and_fix_balance(fix=True)
    finally:
        event.remove(svc.engine, "before_cursor_execute", break_cache_writes)

    assert (report.synced, report.fixed) == (2, 0)
    (error,) = report.errors
    assert error.message.startswith(f"fix of account {three_accounts[0]} failed")
    assert [d.user_id for d in report.discrepancies] == [three_accounts[0]]
    assert svc.sync_runs()[0].outcome == "out_of_sync"
    assert svc.sync_fixes(report.run_id) == []


def test_fix_never_copies_a_damaged_ledger_into_the_cache(svc, account_factory):
    account = account_factory(balance=1_000)
    charge = svc.charge_service(account.user_id, 100, "vps")
    svc.charge_service(account.user_id, 100, "vps")
    # The CHECK constraints allow a refund of any shape: turn a charge into one.
    with append_only_lifted(svc.engine) as conn:
        conn.execute(
            ledger.update().where(ledger.c.id == charge.id).values(transaction_type="refund")
        )

    report = svc.verify_and_fix_balance(full=True, fix=True)

    (error,) = report.errors
    assert error.transaction_id == charge.id
    assert report.fixed == 0
    assert [(d.user_id, d.status) for d in report.details] == [(account.user_id, "ledger_error")]
    assert svc.get_balance(account.user_id).balance == 800


def test_rebuild_leaves_an_account_with_a_broken_chain_alone(svc, account_factory, corrupt):
    damaged, drifted = account_factory(balance=1_000), account_factory(balance=1_000)
    rows = [svc.charge_service(damaged.user_id, 10, "vps") for _ in range(2)]
    shift_snapshot(svc, rows[0].id, 7)
    corrupt(damaged.user_id, balance=1)
    corrupt(drifted.user_id, balance=2)

    report = svc.rebuild_all_balances()

    assert [e.user_id for e in report.errors] == [damaged.user_id]
    assert {c.user_id for c in report.changes} == {drifted.user_id}
    assert svc.get_balance(damaged.user_id).balance == 1
    assert svc.sync_runs()[0].outcome == "out_of_sync"


def test_a_row_too_large_to_sum_fails_only_its_own_account(svc, account_factory, corrupt):
    poisoned, drifted = account_factory(balance=10), account_factory(balance=10)
    svc.recharge(poisoned.user_id, 2**62)
    with svc.engine.begin() as conn:
        conn.execute(
            ledger.insert().values(
                user_id=poisoned.user_id,
                transaction_type="refund",
                amount=2**63 - 1,
                balance_before=0,
                balance_after=0,
                created_at=svc.get_balance(poisoned.user_id).created_at,
            )
        )
    corrupt(drifted.user_id, balance=5)

    report = svc.verify_and_fix_balance(full=True, fix=True)

    assert [e.user_id for e in report.errors] == [poisoned.user_id]
    assert report.fixed == 1
    assert svc.get_balance(drifted.user_id).balance == 10
    rebuilt = svc.rebuild_all_balances()
    assert [e.user_id for e in rebuilt.errors] == [poisoned.user_id]


def test_verify_of_an_unknown_account_records_no_run(svc):
    with pytest.raises(AccountNotFound):
        svc.verify_and_fix_balance(404)
    assert svc.sync_runs() == []
