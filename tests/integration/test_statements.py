"""balance_at and statement: history read from the ledger, never from the cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from balance_ledger import AccountNotFound, BalanceService, InvalidRequest

MICROSECOND = timedelta(microseconds=1)
WEST = timezone(timedelta(hours=-1))
END_OF_TIME = datetime.max.replace(tzinfo=UTC)


@pytest.fixture
def history(svc: BalanceService, account_factory):
    account = account_factory()
    user_id = account.user_id
    rows = [
        svc.recharge(user_id, 1_000),
        svc.charge_service(user_id, 100, "vps"),
        svc.charge_service(user_id, 50, "bandwidth"),
        svc.recharge(user_id, 10),
    ]
    return user_id, rows


def test_balance_at_sums_the_rows_written_by_then(svc, history):
    user_id, (recharge, charge, _, last) = history
    assert svc.balance_at(user_id, recharge.created_at - MICROSECOND) == 0
    assert svc.balance_at(user_id, recharge.created_at) == 1_000
    assert svc.balance_at(user_id, charge.created_at) == 900
    assert svc.balance_at(user_id, last.created_at + timedelta(days=1)) == 860


def test_balance_at_ignores_the_cache(svc, history, corrupt):
    user_id, rows = history
    corrupt(user_id, balance=123)
    assert svc.balance_at(user_id, rows[-1].created_at) == 860


def test_statement_opening_plus_rows_is_closing(svc, history):
    user_id, (_, charge, bandwidth, last) = history

    statement = svc.statement(user_id, charge.created_at, last.created_at)

    assert (statement.opening_balance, statement.closing_balance) == (1_000, 850)
    assert statement.transactions == [charge, bandwidth]
    assert statement.totals == {"charge": 150}
    assert statement.currency == "VND"
    movements = sum(tx.balance_after - tx.balance_before for tx in statement.transactions)
    assert statement.opening_balance + movements == statement.closing_balance


def test_statement_of_a_quiet_period_has_equal_opening_and_closing(svc, history):
    user_id, rows = history
    later = rows[-1].created_at + timedelta(hours=1)
    statement = svc.statement(user_id, later, later + timedelta(days=30))
    assert (statement.opening_balance, statement.closing_balance) == (860, 860)
    assert (statement.transactions, statement.totals) == ([], {})


def test_statement_of_everything_matches_the_cache(svc, history):
    user_id, rows = history
    statement = svc.statement(
        user_id, rows[0].created_at - timedelta(days=1), rows[-1].created_at + MICROSECOND
    )
    assert statement.closing_balance == svc.get_balance(user_id).balance
    assert statement.totals == {"recharge": 1_010, "charge": 150}


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2026, 1, 2), datetime(2026, 1, 3, tzinfo=UTC), "timezone-aware"),
        (datetime(2026, 1, 3, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "ends"),
        ("2026-01-01", datetime(2026, 1, 3, tzinfo=UTC), "timezone-aware"),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), END_OF_TIME, "out of range"),
        (datetime(1, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=WEST), "out of range"),
    ],
)
def test_statement_refuses_a_malformed_period(svc, account_factory, start, end, message):
    account = account_factory()
    with pytest.raises(InvalidRequest, match=message):
        svc.statement(account.user_id, start, end)


@pytest.mark.parametrize(
    "at", [datetime(1, 1, 1, tzinfo=UTC), END_OF_TIME], ids=["first-instant", "last-instant"]
)
def test_balance_at_the_ends_of_time(svc, account_factory, at):
    account = account_factory(balance=500)
    expected = 0 if at.year == 1 else 500
    assert svc.balance_at(account.user_id, at) == expected


def test_history_of_an_unknown_account_raises(svc):
    now = datetime.now(UTC)
    with pytest.raises(AccountNotFound):
        svc.balance_at(404, now)
    with pytest.raises(AccountNotFound):
        svc.statement(404, now, now)
