from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from balance_ledger import Transaction, TransactionType


def test_transaction_is_immutable():
    tx = Transaction(
        1, 1, TransactionType.CHARGE, 5, 10, 5, "vps", None, None, None, None, datetime.now(UTC)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.amount = 6  # type: ignore[misc]
