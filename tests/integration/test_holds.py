"""Holds: authorize → capture | void | expire, exactly once, never spending held money."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from balance_ledger import (
    AccountSuspended,
    BalanceService,
    HoldNotActive,
    HoldNotFound,
    HoldStatus,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    TransactionType,
)


def test_authorize_reserves_funds_that_charges_cannot_use(svc, account_factory, dump):
    account = account_factory(balance=1_000)

    hold = svc.authorize(account.user_id, 700, "vps", description="VPS #7 running")

    assert (hold.amount, hold.status, hold.service_type) == (700, HoldStatus.ACTIVE, "vps")
    balance = svc.get_balance(account.user_id)
    assert (balance.balance, balance.held, balance.available) == (1_000, 700, 300)
    before = dump()
    with pytest.raises(InsufficientBalance, match="only 300 is available"):
        svc.charge_service(account.user_id, 301, "api")
    with pytest.raises(InsufficientBalance):
        svc.authorize(account.user_id, 301, "vps")
    assert dump() == before
    assert svc.charge_service(account.user_id, 300, "api").balance_after == 700


def test_capture_charges_up_to_the_hold_and_releases_the_rest(svc, account_factory):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 700, "vps")

    charge = svc.capture(hold.id, 450)

    assert (charge.transaction_type, charge.amount) == (TransactionType.CHARGE, 450)
    assert (charge.reference_model, charge.reference_id) == ("hold", str(hold.id))
    balance = svc.get_balance(account.user_id)
    assert (balance.balance, balance.held, balance.available) == (550, 0, 550)
    closed = svc.get_hold(hold.id)
    assert (closed.status, closed.captured_amount) == (HoldStatus.CAPTURED, 450)
    assert closed.capture_transaction_id == charge.id


def test_capture_of_more_than_the_hold_is_refused(svc, account_factory):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 100, "vps")
    with pytest.raises(InvalidAmount, match="reserved only 100"):
        svc.capture(hold.id, 101)
    assert svc.get_hold(hold.id).status is HoldStatus.ACTIVE


def test_void_releases_the_hold_without_charging(svc, account_factory):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 400, "vps")

    voided = svc.void(hold.id)

    assert voided.status is HoldStatus.VOIDED
    balance = svc.get_balance(account.user_id)
    assert (balance.balance, balance.held, balance.total_spent) == (1_000, 0, 0)


def test_a_hold_is_closed_exactly_once(svc, account_factory):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 100, "vps")
    svc.capture(hold.id)
    with pytest.raises(HoldNotActive, match="captured"):
        svc.capture(hold.id)
    with pytest.raises(HoldNotActive):
        svc.void(hold.id)
    assert svc.get_balance(account.user_id).balance == 900


def test_expired_holds_are_released_and_cannot_be_captured(svc, account_factory):
    account = account_factory(balance=1_000)
    soon = svc.authorize(account.user_id, 100, "vps", ttl=60)
    later = svc.authorize(account.user_id, 200, "vps", ttl=timedelta(hours=2))
    forever = svc.authorize(account.user_id, 300, "vps")
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)

    assert svc.expire_holds(now=in_an_hour) == 1
    assert svc.expire_holds(now=in_an_hour) == 0

    assert svc.get_hold(soon.id).status is HoldStatus.EXPIRED
    assert svc.get_hold(later.id).status is HoldStatus.ACTIVE
    assert svc.get_hold(forever.id).status is HoldStatus.ACTIVE
    assert svc.get_balance(account.user_id).held == 500
    with pytest.raises(HoldNotActive, match="expired"):
        svc.capture(soon.id)


def test_a_hold_past_its_expiry_cannot_be_captured_even_before_release(svc, account_factory):
    account = account_factory(balance=1_000)
    hold = svc.authorize(
        account.user_id, 100, "vps", expires_at=datetime.now(UTC) + timedelta(milliseconds=1)
    )
    threading.Event().wait(0.01)
    with pytest.raises(HoldNotActive, match="expired"):
        svc.capture(hold.id)


def test_authorize_replay_with_its_key_returns_the_hold(svc, account_factory):
    account = account_factory(balance=1_000)
    first = svc.authorize(account.user_id, 100, "vps", idempotency_key="vm-7")
    again = svc.authorize(account.user_id, 100, "vps", idempotency_key="vm-7")
    assert again == first
    assert (first.replayed, again.replayed) == (False, True)
    assert svc.get_balance(account.user_id).held == 100
    with pytest.raises(IdempotencyConflict):
        svc.authorize(account.user_id, 200, "vps", idempotency_key="vm-7")


def test_capture_retried_with_its_key_returns_the_first_charge(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 300, "vps")
    first = svc.capture(hold.id, 200, idempotency_key="capture-1")
    before = dump()

    again = svc.capture(hold.id, 200, idempotency_key="capture-1")

    assert (again, again.replayed, first.replayed) == (first, True, False)
    assert dump() == before
    with pytest.raises(HoldNotActive, match="captured"):
        svc.capture(hold.id, 200)  # without the key it is a second capture


@pytest.mark.parametrize(
    ("amount", "key"),
    [(100, "capture-1"), (None, "capture-1"), (200, "a-charge")],
    ids=["other-amount", "whole-hold", "key-of-another-row"],
)
def test_capture_with_a_key_of_another_movement_is_a_conflict(
    svc, account_factory, dump, amount, key
):
    account = account_factory(balance=1_000)
    hold = svc.authorize(account.user_id, 300, "vps")
    svc.charge_service(account.user_id, 5, "api", idempotency_key="a-charge")
    svc.capture(hold.id, 200, idempotency_key="capture-1")
    before = dump()

    with pytest.raises(IdempotencyConflict):
        svc.capture(hold.id, amount, idempotency_key=key)
    assert dump() == before


def test_suspended_accounts_cannot_authorize(svc, account_factory):
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 20, "vps", allow_overdraft=True)
    with pytest.raises(AccountSuspended):
        svc.authorize(account.user_id, 1, "vps")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "positive"),
        ({"ttl": -5}, "positive"),
        ({"ttl": 1.5}, "timedelta or whole seconds"),
        ({"ttl": 10, "expires_at": datetime(2030, 1, 1, tzinfo=UTC)}, "not both"),
        ({"expires_at": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_malformed_expiry_is_refused(svc, account_factory, kwargs, message):
    account = account_factory(balance=10)
    with pytest.raises(InvalidRequest, match=message):
        svc.authorize(account.user_id, 1, "vps", **kwargs)


def test_unknown_hold_raises(svc):
    with pytest.raises(HoldNotFound):
        svc.capture(404)


def test_verify_checks_the_cached_held_against_the_open_holds(svc, account_factory, corrupt):
    account = account_factory(balance=1_000)
    svc.authorize(account.user_id, 300, "vps")
    assert svc.verify_and_fix_balance(full=True).in_sync
    corrupt(account.user_id, held=0)

    (found,) = svc.get_balance_discrepancies()

    assert (found.stored_held, found.actual_held) == (0, 300)
    assert svc.verify_and_fix_balance(fix=True).fixed == 1
    assert svc.get_balance(account.user_id).held == 300


@pytest.mark.race
def test_capture_void_and_expiry_racing_on_one_hold_exactly_one_wins(database_url):
    with BalanceService.from_url(database_url, pool_size=12) as svc:
        svc.open_account(1)
        svc.recharge(1, 10_000)
        outcomes = []
        for _ in range(5):
            hold = svc.authorize(1, 1_000, "vps", ttl=3600)
            barrier = threading.Barrier(12)
            later = datetime.now(UTC) + timedelta(hours=2)

            def racer(
                n: int,
                hold_id: int = hold.id,
                later: datetime = later,
                barrier: threading.Barrier = barrier,
            ) -> str:
                barrier.wait()
                try:
                    if n % 3 == 0:
                        svc.capture(hold_id, 600)
                        return "captured"
                    if n % 3 == 1:
                        svc.void(hold_id)
                        return "voided"
                    return "expired" if svc.expire_holds(now=later) else "lost"
                except HoldNotActive:
                    return "lost"

            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(racer, range(12)))
            assert results.count("lost") == 11
            outcomes.append(svc.get_hold(hold.id).status)

        balance = svc.get_balance(1)
        captured = outcomes.count(HoldStatus.CAPTURED)
        assert (balance.held, balance.balance) == (0, 10_000 - 600 * captured)
        assert svc.verify_and_fix_balance(full=True).in_sync


@pytest.mark.race
def test_racing_holds_and_charges_never_make_available_negative(database_url):
    racers = 16
    with BalanceService.from_url(database_url, pool_size=racers) as svc:
        svc.open_account(1, credit_limit=100)
        svc.recharge(1, 5_000)
        barrier = threading.Barrier(racers)

        def racer(n: int) -> None:
            barrier.wait()
            for _ in range(15):
                try:
                    if n % 2:
                        svc.authorize(1, 70, "vps")
                    else:
                        svc.charge_service(1, 50, "api")
                except InsufficientBalance:
                    pass

        with ThreadPoolExecutor(racers) as pool:
            list(pool.map(racer, range(racers)))
        balance = svc.get_balance(1)
        assert balance.available >= 0
        assert balance.balance >= -100
        assert svc.verify_and_fix_balance(full=True).in_sync


@pytest.mark.parametrize("days", [-1, 400])
def test_expires_at_must_be_ahead_and_within_a_year(svc, account_factory, days):
    account = account_factory(balance=10)
    when = datetime.now(UTC) + timedelta(days=days)
    with pytest.raises(InvalidRequest, match="expires_at must be in the future"):
        svc.authorize(account.user_id, 1, "vps", expires_at=when)
