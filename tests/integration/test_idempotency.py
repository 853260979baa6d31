"""Idempotency keys: a retry returns the first result; a different request conflicts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from balance_ledger import BalanceService, IdempotencyConflict


def test_repeated_charge_returns_the_first_row_and_writes_nothing(svc, account_factory, dump):
    account = account_factory(balance=1_000)
    first = svc.charge_service(account.user_id, 100, "vps", idempotency_key="usage-1")
    before = dump()

    again = svc.charge_service(account.user_id, 100, "vps", idempotency_key="usage-1")

    assert again == first
    assert dump() == before


def test_a_replay_says_it_is_one_and_the_first_call_does_not(svc, account_factory):
    account = account_factory(balance=1_000)
    first = svc.charge_service(account.user_id, 100, "vps", idempotency_key="usage-1")
    again = svc.charge_service(account.user_id, 100, "vps", idempotency_key="usage-1")

    assert (first.replayed, again.replayed) == (False, True)


def test_a_batch_marks_replays_and_repeats_of_a_key_within_it(svc, account_factory):
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 5, "vps", idempotency_key="earlier")
    item = {"user_id": account.user_id, "amount": 5, "service_type": "vps"}

    results = svc.charge_many(
        [
            {**item, "idempotency_key": "earlier"},
            {**item, "idempotency_key": "new"},
            {**item, "idempotency_key": "new"},
        ]
    )

    assert [r.replayed for r in results] == [True, False, True]


def test_repeated_recharge_returns_the_first_row(svc: BalanceService, account_factory):
    account = account_factory()
    first = svc.recharge(account.user_id, 500, idempotency_key="pay-1", reference_id=1)
    assert svc.recharge(account.user_id, 500, idempotency_key="pay-1", reference_id="1") == first
    assert svc.get_balance(account.user_id).balance == 500


@pytest.mark.parametrize(
    "changed",
    [
        {"amount": 101},
        {"service_type": "bandwidth"},
        {"description": "other"},
        {"reference_model": "Invoice"},
        {"reference_id": "2"},
    ],
)
def test_same_key_with_different_request_conflicts(svc, account_factory, dump, changed):
    account = account_factory(balance=1_000)
    request = {"amount": 100, "service_type": "vps", "reference_id": "1"}
    svc.charge_service(account.user_id, **request, idempotency_key="k")
    before = dump()

    with pytest.raises(IdempotencyConflict, match="already used for a different request"):
        svc.charge_service(account.user_id, **{**request, **changed}, idempotency_key="k")

    assert dump() == before


def test_key_used_by_a_recharge_conflicts_with_a_charge(svc, account_factory):
    account = account_factory()
    svc.recharge(account.user_id, 100, idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="transaction_type"):
        svc.charge_service(account.user_id, 100, "vps", idempotency_key="k")


def test_keys_are_scoped_per_account(svc: BalanceService, account_factory):
    alice, bob = account_factory(), account_factory()
    svc.recharge(alice.user_id, 10, idempotency_key="same")
    svc.recharge(bob.user_id, 10, idempotency_key="same")
    assert svc.get_balance(bob.user_id).balance == 10


def test_keys_are_case_sensitive(svc: BalanceService, account_factory):
    account = account_factory()
    svc.recharge(account.user_id, 10, idempotency_key="Key")
    svc.recharge(account.user_id, 10, idempotency_key="key")
    assert svc.get_balance(account.user_id).balance == 20


def test_a_refused_charge_keeps_its_key_answered(svc: BalanceService, account_factory):
    # A refusal is the key's answer (tests/integration/test_key_refusals.py).
    account = account_factory(balance=50)
    with pytest.raises(Exception, match="cannot be charged"):
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    svc.recharge(account.user_id, 50)
    with pytest.raises(Exception, match="cannot be charged 80: only 50"):
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    assert svc.charge_service(account.user_id, 80, "vps", idempotency_key="k2").balance_after == 20


def test_replay_of_overdraft_charge_on_suspended_account_returns_the_row(svc, account_factory):
    account = account_factory(balance=10)
    first = svc.charge_service(
        account.user_id, 50, "vps", allow_overdraft=True, idempotency_key="k"
    )
    assert (
        svc.charge_service(account.user_id, 50, "vps", allow_overdraft=True, idempotency_key="k")
        == first
    )


@pytest.mark.race
@pytest.mark.parametrize("operation", ["charge", "recharge"])
def test_racing_duplicates_write_exactly_one_row(database_url: str, operation: str):
    racers = 32
    with BalanceService.from_url(database_url, pool_size=racers, max_overflow=0) as svc:
        svc.open_account(1)
        svc.recharge(1, 1_000)
        barrier = threading.Barrier(racers)

        def duplicate(_: int):
            barrier.wait()
            if operation == "charge":
                return svc.charge_service(1, 100, "vps", idempotency_key="dup")
            return svc.recharge(1, 100, idempotency_key="dup")

        with ThreadPoolExecutor(racers) as pool:
            results = list(pool.map(duplicate, range(racers)))

        assert len(set(results)) == 1
        assert len(svc.get_transactions(1)) == 2
        expected = 900 if operation == "charge" else 1_100
        assert svc.get_balance(1).balance == expected
