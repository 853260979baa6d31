"""The reconciliation's comparison (reconcile/compare.py) without a database: what a
cache row must hold for the ledger's figures, and the discrepancy it reports otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from balance_ledger import AccountPolicy, LedgerTotals
from balance_ledger.reconcile.compare import discrepancy_of, ledger_figures

LEDGER = LedgerTotals(user_id=7, balance=700, total_recharged=1_000, total_spent=300, row_count=3)


def test_a_cache_row_equal_to_the_ledger_is_no_discrepancy():
    assert discrepancy_of(7, (700, 1_000, 300, "active", 0), LEDGER) is None


def test_a_drifted_balance_is_reported_with_its_difference():
    found = discrepancy_of(7, (900, 1_000, 300, "active", 0), LEDGER)
    assert found is not None
    assert (found.stored_balance, found.actual_balance, found.difference) == (900, 700, 200)
    assert not found.missing_balance_row


def test_a_missing_cache_row_is_reported_as_missing():
    found = discrepancy_of(7, None, LEDGER)
    assert found is not None
    assert found.missing_balance_row
    assert (found.stored_balance, found.difference) == (0, -700)


def test_held_money_and_the_status_are_compared_too():
    assert discrepancy_of(7, (700, 1_000, 300, "active", 50), LEDGER, actual_held=0) is not None
    assert discrepancy_of(7, (700, 1_000, 300, "active", 50), LEDGER, actual_held=50) is None
    overdrawn = LedgerTotals(user_id=7, balance=-10, total_recharged=0, total_spent=10, row_count=1)
    found = discrepancy_of(7, (-10, 0, 10, "active", 0), overdrawn)
    assert found is not None
    assert found.expected_status == "suspended"
    grace = AccountPolicy(grace_amount=100)
    assert discrepancy_of(7, (-10, 0, 10, "active", 0), overdrawn, rules=grace) is None
    in_grace_period = datetime(2026, 12, 5, tzinfo=UTC)
    within = AccountPolicy(grace_period=in_grace_period - datetime(2026, 12, 4, tzinfo=UTC))
    assert (
        discrepancy_of(
            7, (-10, 0, 10, "active", 0), overdrawn, rules=within, suspend_at=in_grace_period
        )
        is None
    )


def test_the_ledgers_figures_add_the_checkpoint_to_the_rows_after_it():
    row = SimpleNamespace(
        user_id=7,
        cp_balance=500,
        cp_total_recharged=800,
        cp_total_spent=300,
        cp_row_count=2,
        balance=200,
        total_recharged=200,
        total_spent=0,
        row_count=1,
    )
    assert ledger_figures(row) == LEDGER
    fresh = SimpleNamespace(
        user_id=7,
        cp_balance=None,
        cp_total_recharged=None,
        cp_total_spent=None,
        cp_row_count=None,
        balance=700,
        total_recharged=1_000,
        total_spent=300,
        row_count=3,
    )
    assert ledger_figures(fresh) == LEDGER
