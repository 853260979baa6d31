"""Refunds and adjustments: compensating rows; history never changes."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from balance_ledger import (
    AccountStatus,
    BalanceService,
    IdempotencyConflict,
    InvalidAmount,
    InvalidRequest,
    RefundExceedsCharge,
    TransactionNotFound,
    TransactionType,
)


@pytest.fixture
def charged(svc: BalanceService, account_factory):
    account = account_factory(balance=1_000)
    charge = svc.charge_service(
        account.user_id, 300, "vps", reference_model="VpsUsage", reference_id=9
    )
    return account.user_id, charge


def test_refund_gives_back_the_rest_of_a_charge_by_default(svc, charged):
    user_id, charge = charged

    refund = svc.refund(charge.id, reason="outage credit")

    assert refund.transaction_type is TransactionType.REFUND
    assert (refund.amount, refund.related_transaction_id) == (300, charge.id)
    assert (refund.balance_before, refund.balance_after) == (700, 1_000)
    assert (refund.service_type, refund.reference_model, refund.reference_id) == (
        "vps",
        "VpsUsage",
        "9",
    )
    balance = svc.get_balance(user_id)
    assert (balance.balance, balance.total_spent, balance.total_recharged) == (1_000, 0, 1_000)


def test_partial_refunds_never_add_up_to_more_than_the_charge(svc, charged, dump):
    _, charge = charged
    svc.refund(charge.id, 100)
    svc.refund(charge.id, 150)
    before = dump()

    with pytest.raises(RefundExceedsCharge, match="only 50 of it") as refused:
        svc.refund(charge.id, 51)

    assert refused.value.refundable == 50
    assert dump() == before
    assert svc.refund(charge.id).amount == 50
    with pytest.raises(RefundExceedsCharge):
        svc.refund(charge.id)


def test_the_charge_itself_is_never_changed(svc, charged):
    user_id, charge = charged
    svc.refund(charge.id, 100)
    assert charge in svc.get_transactions(user_id)


def test_only_charges_can_be_refunded(svc, charged):
    user_id, _ = charged
    recharge = svc.get_transactions(user_id)[-1]
    with pytest.raises(InvalidRequest, match="only charges are refunded"):
        svc.refund(recharge.id)
    with pytest.raises(TransactionNotFound):
        svc.refund(10**12)


def test_refund_replay_with_its_key_returns_the_first_refund(svc, charged):
    _, charge = charged
    first = svc.refund(charge.id, 100, idempotency_key="r1")
    assert svc.refund(charge.id, 100, idempotency_key="r1") == first
    with pytest.raises(IdempotencyConflict):
        svc.refund(charge.id, 120, idempotency_key="r1")


def test_refund_can_reactivate_a_suspended_account(svc, account_factory):
    account = account_factory(balance=100)
    charge = svc.charge_service(account.user_id, 150, "vps", allow_overdraft=True)
    assert svc.get_balance(account.user_id).status is AccountStatus.SUSPENDED
    svc.refund(charge.id, 50)
    assert svc.get_balance(account.user_id).status is AccountStatus.ACTIVE


@pytest.mark.race
def test_racing_refunds_of_one_charge_never_exceed_it(database_url):
    racers = 16
    with BalanceService.from_url(database_url, pool_size=racers) as svc:
        svc.open_account(1)
        svc.recharge(1, 10_000)
        charge = svc.charge_service(1, 1_000, "vps")
        barrier = threading.Barrier(racers)

        def racer(_: int) -> int:
            barrier.wait()
            refunded = 0
            for _ in range(10):
                with contextlib.suppress(RefundExceedsCharge):
                    refunded += svc.refund(charge.id, 7).amount
            return refunded

        with ThreadPoolExecutor(racers) as pool:
            refunded = sum(pool.map(racer, range(racers)))
        assert refunded == 1_000 - 1_000 % 7
        assert svc.get_balance(1).total_spent == 1_000 - refunded
        assert svc.verify_and_fix_balance(full=True).in_sync


def test_adjustment_moves_the_balance_either_way_with_who_and_why(svc, account_factory):
    account = account_factory(balance=500)

    up = svc.adjust(account.user_id, 250, reason="goodwill", actor="alice@ops")
    down = svc.adjust(account.user_id, -1_000, reason="chargeback", actor="bob@ops")

    assert (up.amount, up.balance_after, up.actor, up.description) == (
        250,
        750,
        "alice@ops",
        "goodwill",
    )
    assert (down.amount, down.balance_before, down.balance_after) == (1_000, 750, -250)
    balance = svc.get_balance(account.user_id)
    assert (balance.total_recharged, balance.total_spent) == (500, 0)
    assert balance.status is AccountStatus.SUSPENDED


@pytest.mark.parametrize(
    ("delta", "reason", "actor", "error"),
    [
        (0, "x", "a", InvalidAmount),
        (True, "x", "a", InvalidAmount),
        (1.5, "x", "a", InvalidAmount),
        (2**63, "x", "a", InvalidAmount),
        (5, "", "a", InvalidRequest),
        (5, "x", None, InvalidRequest),
    ],
)
def test_malformed_adjustments_are_refused(svc, account_factory, dump, delta, reason, actor, error):
    account = account_factory(balance=10)
    before = dump()
    with pytest.raises(error):
        svc.adjust(account.user_id, delta, reason=reason, actor=actor)
    assert dump() == before


def test_adjustment_replay_with_the_opposite_sign_conflicts(svc, account_factory):
    account = account_factory(balance=10)
    svc.adjust(account.user_id, 5, reason="x", actor="a", idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="sign"):
        svc.adjust(account.user_id, -5, reason="x", actor="a", idempotency_key="k")


def test_verify_stays_in_sync_after_every_kind_of_movement(svc, account_factory):
    account = account_factory(balance=1_000)
    charge = svc.charge_service(account.user_id, 400, "vps")
    svc.refund(charge.id, 150)
    svc.adjust(account.user_id, -75, reason="fee", actor="ops")
    svc.adjust(account.user_id, 30, reason="credit", actor="ops")

    assert svc.verify_and_fix_balance(full=True).in_sync
    assert svc.rebuild_all_balances().changes == []
    totals = svc.ledger_totals(account.user_id)
    assert (totals.balance, totals.total_recharged, totals.total_spent) == (705, 1_000, 250)
