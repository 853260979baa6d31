"""The reconciler announces what it finds and fixes: sync.discrepancy_found, sync.fixed."""

from __future__ import annotations

from balance_ledger import EventType
from tests.events import events_of

SYNC = (
    EventType.SYNC_DISCREPANCY_FOUND,
    EventType.SYNC_FIXED,
    EventType.ACCOUNT_SUSPENDED,
    EventType.ACCOUNT_REACTIVATED,
)


def test_a_verify_run_announces_each_discrepancy_it_leaves(svc, account_factory, corrupt):
    account = account_factory(balance=1_000)
    corrupt(account.user_id, balance=1_500)

    report = svc.verify_and_fix_balance(full=True)

    (found,) = events_of(svc, *SYNC)
    assert found.event_type is EventType.SYNC_DISCREPANCY_FOUND
    assert found.user_id == account.user_id
    assert found.payload["run_id"] == report.run_id
    assert found.payload["difference"] == 500
    assert found.payload["changes"] == [{"column": "balance", "stored": 1_500, "actual": 1_000}]


def test_a_fix_announces_the_discrepancy_and_the_fix_in_its_transaction(
    svc, account_factory, corrupt
):
    account = account_factory(balance=1_000)
    corrupt(account.user_id, balance=1_500, total_spent=7)

    report = svc.verify_and_fix_balance(fix=True)

    found, fixed = events_of(svc, *SYNC)
    assert [found.event_type, fixed.event_type] == [
        EventType.SYNC_DISCREPANCY_FOUND,
        EventType.SYNC_FIXED,
    ]
    assert fixed.payload["run_id"] == report.run_id
    assert [c["column"] for c in fixed.payload["changes"]] == ["balance", "total_spent"]


def test_a_fix_that_changes_the_status_announces_it(svc, account_factory, corrupt):
    account = account_factory(balance=100)
    corrupt(account.user_id, balance=-100, status="suspended")

    svc.verify_and_fix_balance(fix=True, full=True)

    kinds = [e.event_type for e in events_of(svc, *SYNC)]
    assert kinds == [
        EventType.SYNC_DISCREPANCY_FOUND,
        EventType.SYNC_FIXED,
        EventType.ACCOUNT_REACTIVATED,
    ]


def test_a_rebuild_announces_every_account_it_rewrites(svc, account_factory, corrupt):
    first, second, _untouched = (account_factory(balance=100) for _ in range(3))
    corrupt(first.user_id, balance=1)
    corrupt(second.user_id, total_recharged=1)

    svc.rebuild_all_balances()

    fixed = [e.user_id for e in events_of(svc, *SYNC) if e.event_type is EventType.SYNC_FIXED]
    assert fixed == [first.user_id, second.user_id]


def test_runs_that_find_nothing_or_write_nothing_announce_nothing(svc, account_factory, corrupt):
    account = account_factory(balance=100)
    svc.verify_and_fix_balance(full=True)
    corrupt(account.user_id, balance=5)

    svc.get_balance_discrepancies()  # a read-only scan
    svc.rebuild_all_balances(dry_run=True)

    assert events_of(svc, *SYNC) == []
