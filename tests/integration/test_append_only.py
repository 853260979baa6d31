"""The ledger is append-only, and the database itself refuses UPDATE and DELETE."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from balance_ledger import BalanceService


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE user_balance_transactions SET amount = amount + 1",
        "UPDATE user_balance_transactions SET description = 'edited'",
        "DELETE FROM user_balance_transactions",
    ],
)
def test_the_database_refuses_to_change_history(svc: BalanceService, account_factory, statement):
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 100, "vps")
    rows = svc.get_transactions(account.user_id)

    with pytest.raises(DBAPIError, match="append-only"), svc.engine.begin() as conn:
        conn.execute(text(statement))

    assert svc.get_transactions(account.user_id) == rows


def test_appending_still_works_and_the_cache_stays_writable(svc, account_factory, corrupt):
    account = account_factory(balance=1_000)
    corrupt(account.user_id, balance=5)  # the cache may be rewritten; history may not
    assert svc.verify_and_fix_balance(fix=True).fixed == 1
    with svc.engine.connect() as conn:
        count = conn.execute(text("SELECT COUNT(*) FROM user_balance_transactions")).scalar()
    assert count == 1
    assert svc.charge_service(account.user_id, 1, "vps").balance_after == 999
