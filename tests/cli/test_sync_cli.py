"""verify-sync, discrepancies, sync-runs and scheduler: output and exit codes."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from balance_ledger import (
    AccountPolicy,
    AccountStatus,
    BalanceService,
    InsufficientBalance,
    InvalidRequest,
)
from balance_ledger.cli import main
from balance_ledger.db.tables import balance_refusals
from balance_ledger.jobs import scheduler
from balance_ledger.jobs.scheduler import build_scheduler, cron_trigger, run_job, slot_of
from tests.receiver import receiver


@pytest.fixture
def drifted(svc: BalanceService, account_factory, corrupt) -> int:
    """Three accounts; the second one's cached balance is 50,000 too high."""
    for _ in range(3):
        account = account_factory(balance=500_000)
        svc.charge_service(account.user_id, 50_000, "vps")
    corrupt(2, balance=500_000)
    return 2


def test_verify_sync_reports_and_exits_1_when_out_of_sync(balance, drifted):
    code, out, _ = balance("verify-sync")
    assert code == 1
    assert "Checked: 3 users" in out
    assert "Synced: 2 users" in out
    assert "Fixed: 0 users" in out
    assert "500,000" in out
    assert "450,000" in out
    assert "+50,000" in out


def test_verify_sync_fix_exits_0_and_leaves_everything_in_sync(balance, drifted, svc):
    code, out, _ = balance("verify-sync", "--fix")
    assert code == 0
    assert "Fixed: 1 users" in out
    assert svc.get_balance(drifted).balance == 450_000
    assert balance("verify-sync")[0] == 0


def test_verify_sync_json_is_the_report(balance, drifted):
    code, out, _ = balance("verify-sync", "--json", "--full")
    report = json.loads(out)
    assert code == 1
    assert (report["checked"], report["synced"], report["fixed"]) == (3, 2, 0)
    assert report["details"][0]["discrepancy"]["difference"] == 50_000


def test_verify_sync_of_one_user(balance, drifted):
    code, out, _ = balance("verify-sync", "--user-id", "1", "--json")
    assert code == 0
    assert json.loads(out)["checked"] == 1


def test_verify_sync_rebuild_dry_run_writes_nothing(balance, drifted, svc):
    code, out, _ = balance("verify-sync", "--rebuild", "--dry-run")
    assert code == 0
    assert "Would change: 1 users" in out
    assert "Dry run: nothing was written" in out
    assert svc.get_balance(drifted).balance == 500_000
    assert svc.sync_runs() == []


def test_verify_sync_rebuild_repairs(balance, drifted, svc):
    code, out, _ = balance("verify-sync", "--rebuild")
    assert code == 0
    assert "Changed: 1 users" in out
    assert svc.get_balance(drifted).balance == 450_000


@pytest.mark.parametrize(
    "args",
    [("--dry-run",), ("--rebuild", "--fix"), ("--rebuild", "--user-id", "1"), ("--user-id", "x")],
)
def test_verify_sync_rejects_contradictory_options_with_exit_2(balance, drifted, args):
    code, _, err = balance("verify-sync", *args)
    assert code == 2
    assert err.startswith("error: ")


def test_verify_sync_of_unknown_user_exits_1(balance, drifted):
    code, _, err = balance("verify-sync", "--user-id", "999")
    assert code == 1
    assert "account 999 does not exist" in err


def test_verify_sync_database_failure_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/x", "verify-sync"])
    assert exited.value.code == 2
    assert "StorageError" in capsys.readouterr().err


def test_discrepancies_csv_lists_each_account(balance, drifted):
    code, out, _ = balance("discrepancies", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1
    assert [(r["user_id"], r["difference"]) for r in rows] == [("2", "50000")]


def test_discrepancies_json_and_none_found(balance, drifted):
    code, out, _ = balance("discrepancies", "--json")
    assert (code, json.loads(out)[0]["user_id"]) == (1, 2)
    balance("verify-sync", "--fix")
    code, out, _ = balance("discrepancies")
    assert code == 0
    assert "no discrepancies" in out


def test_sync_runs_lists_the_audit_trail(balance, drifted):
    balance("verify-sync")
    balance("verify-sync", "--fix")
    code, out, _ = balance("sync-runs", "--json")
    runs = json.loads(out)
    assert code == 0
    assert [(r["fix"], r["outcome"]) for r in runs] == [(True, "fixed"), (False, "out_of_sync")]
    code, out, _ = balance("sync-runs")
    assert "out_of_sync" in out


def test_scheduler_has_the_seed_schedule_by_default(svc):
    jobs = {job.id: job for job in build_scheduler(svc).get_jobs()}
    assert set(jobs) == {
        "verify-fix",
        "rebuild",
        "expire-holds",
        "suspend-overdue",
        "purge-refusals",
        "anchor-chains",
        "dispatch",
    }
    assert jobs["dispatch"].trigger.interval == timedelta(seconds=10)
    after = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert jobs["verify-fix"].trigger.get_next_fire_time(None, after) == datetime(
        2026, 11, 25, 2, 0, tzinfo=UTC
    )
    assert jobs["rebuild"].trigger.get_next_fire_time(None, after) == datetime(
        2026, 12, 1, 3, 0, tzinfo=UTC
    )
    assert jobs["anchor-chains"].trigger.get_next_fire_time(None, after) == datetime(
        2026, 11, 25, 1, 30, tzinfo=UTC
    )
    assert jobs["purge-refusals"].trigger.get_next_fire_time(None, after) == datetime(
        2026, 11, 24, 12, 17, tzinfo=UTC
    )


def test_scheduler_times_and_timezone_are_configurable(svc):
    scheduler = build_scheduler(svc, verify_cron="30 1 * * *", timezone="Asia/Ho_Chi_Minh")
    job = scheduler.get_job("verify-fix")
    fire = job.trigger.get_next_fire_time(None, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    assert fire.astimezone(UTC) == datetime(2026, 11, 24, 18, 30, tzinfo=UTC)


def test_scheduled_job_records_one_run_per_slot(svc, account_factory):
    account_factory(balance=10)
    trigger = cron_trigger("0 2 * * *", "UTC")
    run_job(svc, "verify-fix", trigger, now=datetime(2026, 11, 25, 2, 0, 1, tzinfo=UTC))
    # Another host whose scheduler fired 40 minutes late: the same slot, so no second run.
    run_job(svc, "verify-fix", trigger, now=datetime(2026, 11, 25, 2, 40, tzinfo=UTC))
    (run,) = svc.sync_runs()
    assert (run.kind, run.fix) == ("verify", True)
    assert run.scheduled_for == datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def test_scheduler_dispatch_every_0_leaves_delivery_to_others(svc):
    assert build_scheduler(svc, dispatch_seconds=0).get_job("dispatch") is None


def test_scheduler_refuses_a_negative_dispatch_interval(svc):
    with pytest.raises(InvalidRequest):
        build_scheduler(svc, dispatch_seconds=-1)


def test_the_dispatch_job_delivers_until_nothing_is_due(svc):
    with receiver() as target:
        svc.add_webhook(target.url)
        svc.open_account(7)
        for amount in (100, 200, 300):  # one account: a pass delivers only its oldest
            svc.recharge(7, amount)
        job = build_scheduler(svc).get_job("dispatch")

        job.func(*job.args)

    assert [r.event["amount"] for r in target.received] == [100, 200, 300]


def test_the_running_scheduler_fires_the_dispatch_job(svc):
    runner = build_scheduler(svc, dispatch_seconds=0.1)
    thread = threading.Thread(target=runner.start)
    with receiver() as target:
        svc.add_webhook(target.url)
        thread.start()
        try:
            svc.open_account(7)
            svc.recharge(7, 100)
            deadline = time.monotonic() + 10
            while not target.received and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            runner.shutdown()
            thread.join()

    assert [r.event["amount"] for r in target.received] == [100]


def test_slot_is_the_latest_fire_time_not_after_the_firing():
    trigger = cron_trigger("0 3 1 * *", "Asia/Ho_Chi_Minh")
    late = datetime(2026, 12, 1, 3, 59, tzinfo=trigger.timezone)
    assert slot_of(trigger, late) == datetime(2026, 12, 1, 3, 0, tzinfo=trigger.timezone)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--verify-cron", "every night", "invalid cron expression"),
        ("--rebuild-cron", "0 3 32 * *", "invalid cron expression"),
        ("--timezone", "Mars/Olympus", "unknown time zone"),
        ("--dispatch-every", "-1", "greater than or equal to 0"),
    ],
)
def test_scheduler_rejects_bad_schedules_with_exit_2(balance, option, value, message):
    code, _, err = balance("scheduler", option, value)
    assert code == 2
    assert message in err


def test_the_suspend_overdue_job_suspends_an_account_whose_grace_ended(svc, corrupt):
    svc.open_account(1, policy=AccountPolicy(grace_period=timedelta(days=1)))
    svc.charge_service(1, 100, "vps", allow_overdraft=True)
    corrupt(1, suspend_at=datetime.now(UTC) - timedelta(seconds=1))

    scheduler.suspend_overdue(svc)

    assert svc.get_balance(1).status is AccountStatus.SUSPENDED


def test_the_purge_refusals_job_forgets_refusals_older_than_a_day(svc):
    svc.open_account(1)
    with pytest.raises(InsufficientBalance):
        svc.charge_service(1, 10, "vps", idempotency_key="k")
    scheduler.purge_refusals(svc)  # younger than a day: kept
    with pytest.raises(InsufficientBalance) as kept:
        svc.charge_service(1, 10, "vps", idempotency_key="k")
    assert kept.value.replayed
    with svc.engine.begin() as conn:  # as if refused a day and a minute ago
        aged = datetime.now(UTC) - timedelta(days=1, minutes=1)
        conn.execute(update(balance_refusals).values(created_at=aged))
    scheduler.purge_refusals(svc)
    svc.recharge(1, 10)
    assert svc.charge_service(1, 10, "vps", idempotency_key="k").balance_after == 0
