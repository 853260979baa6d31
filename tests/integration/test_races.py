"""The seed's scenario 3, at scale: racing charges on ONE account never overdraw it.

Every racer is a thread with its own pooled connection (pool_size = racers), so the
database, not the GIL, is what serialises them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import pytest
from sqlalchemy import select

from balance_ledger import BalanceService, InsufficientBalance
from balance_ledger.db.tables import user_balance_transactions as ledger

RACERS = 64
CHARGES_PER_RACER = 32  # 2,048 attempted charges
AMOUNT = 7
FUNDED_CHARGES = 1_000
CREDIT_LIMIT = 50


@dataclass
class Tally:
    charged: int = 0
    declined: int = 0


def charge_storm(svc: BalanceService, user_id: int) -> Tally:
    barrier = threading.Barrier(RACERS)

    def racer(_: int) -> Tally:
        tally = Tally()
        barrier.wait()
        for _ in range(CHARGES_PER_RACER):
            try:
                svc.charge_service(user_id, AMOUNT, "api-call")
                tally.charged += 1
            except InsufficientBalance:
                tally.declined += 1
        return tally

    with ThreadPoolExecutor(RACERS) as pool:
        tallies = list(pool.map(racer, range(RACERS)))
    return Tally(sum(t.charged for t in tallies), sum(t.declined for t in tallies))


@pytest.mark.race
def test_64_racers_on_one_account_never_overdraw_it(database_url: str):
    with BalanceService.from_url(database_url, pool_size=RACERS, max_overflow=0) as svc:
        svc.open_account(1, credit_limit=CREDIT_LIMIT)
        svc.recharge(1, FUNDED_CHARGES * AMOUNT)

        tally = charge_storm(svc, 1)

        # Every charge the balance plus credit limit could pay went through; no more.
        assert tally.charged + tally.declined == RACERS * CHARGES_PER_RACER
        assert tally.charged == (FUNDED_CHARGES * AMOUNT + CREDIT_LIMIT) // AMOUNT
        final = svc.get_balance(1)
        assert final.balance >= -CREDIT_LIMIT
        assert final.total_spent == tally.charged * AMOUNT
        totals = svc.ledger_totals(1)
        assert (totals.balance, totals.total_spent, totals.total_recharged) == (
            final.balance,
            final.total_spent,
            final.total_recharged,
        )

        with svc.engine.connect() as conn:
            rows = conn.execute(
                select(ledger.c.balance_before, ledger.c.balance_after)
                .where(ledger.c.user_id == 1)
                .order_by(ledger.c.id)
            ).all()
        # The snapshot chain is unbroken: each charge saw the previous one's result.
        assert all(prev.balance_after == row.balance_before for prev, row in pairwise(rows))
        assert min(row.balance_after for row in rows) >= -CREDIT_LIMIT


@pytest.mark.race
def test_racers_on_many_accounts_keep_every_account_exact(database_url: str):
    accounts, racers, charges = 8, 32, 40
    with BalanceService.from_url(database_url, pool_size=racers, max_overflow=0) as svc:
        for user_id in range(1, accounts + 1):
            svc.open_account(user_id)
            svc.recharge(user_id, 100)
        barrier = threading.Barrier(racers)

        def racer(n: int) -> int:
            barrier.wait()
            charged = 0
            for i in range(charges):
                try:
                    svc.charge_service((n + i) % accounts + 1, 3, "bandwidth")
                    charged += 1
                except InsufficientBalance:
                    pass
            return charged

        with ThreadPoolExecutor(racers) as pool:
            charged = sum(pool.map(racer, range(racers)))

        assert charged == accounts * (100 // 3)
        for user_id in range(1, accounts + 1):
            balance = svc.get_balance(user_id)
            assert balance.balance == 100 % 3
            assert svc.ledger_totals(user_id).balance == balance.balance
