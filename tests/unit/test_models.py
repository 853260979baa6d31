from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from balance_ledger import AccountStatus, Transaction, TransactionType
from balance_ledger.models import status_for


@pytest.mark.parametrize(
    ("balance", "credit_limit", "status"),
    [
        (0, 0, AccountStatus.ACTIVE),
        (-1, 0, AccountStatus.SUSPENDED),
        (-50, 50, AccountStatus.ACTIVE),
        (-51, 50, AccountStatus.SUSPENDED),
        (10, 0, AccountStatus.ACTIVE),
    ],
)
def test_status_follows_the_credit_limit(balance, credit_limit, status):
    assert status_for(balance, credit_limit) is status


def test_transaction_is_immutable():
    tx = Transaction(
        1, 1, TransactionType.CHARGE, 5, 10, 5, "vps", None, None, None, None, datetime.now(UTC)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.amount = 6  # type: ignore[misc]
