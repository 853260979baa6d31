"""charge_many: bill many items at once, with the same rules as charge_service."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from balance_ledger import (
    AccountNotFound,
    AccountStatus,
    BalanceService,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    Transaction,
)


def test_independent_batch_returns_each_items_row_or_error_in_order(svc, account_factory):
    rich, poor = account_factory(balance=1_000), account_factory(balance=10)
    items = [
        {"user_id": rich.user_id, "amount": 100, "service_type": "vps"},
        {"user_id": poor.user_id, "amount": 50, "service_type": "vps"},
        {"user_id": 404, "amount": 1, "service_type": "vps"},
        {"user_id": rich.user_id, "amount": 0, "service_type": "vps"},
        {"user_id": rich.user_id, "amount": 5, "service": "typo"},
        "not a mapping",
        {"user_id": rich.user_id, "amount": 200, "service_type": "bandwidth", "reference_id": 7},
    ]

    results = svc.charge_many(items)

    kinds = [type(r) for r in results]
    assert kinds == [
        Transaction,
        InsufficientBalance,
        AccountNotFound,
        InvalidAmount,
        InvalidRequest,
        InvalidRequest,
        Transaction,
    ]
    first, last = results[0], results[-1]
    assert (first.balance_before, first.balance_after) == (1_000, 900)
    assert (last.balance_before, last.balance_after, last.reference_id) == (900, 700, "7")
    assert svc.get_balance(rich.user_id).balance == 700
    assert svc.get_balance(poor.user_id).balance == 10
    assert svc.verify_and_fix_balance(full=True).in_sync


def test_items_of_one_account_see_each_other(svc, account_factory):
    account = account_factory(balance=100)
    items = [{"user_id": account.user_id, "amount": 60, "service_type": "vps"}] * 2
    ok, refused = svc.charge_many(items)
    assert ok.balance_after == 40
    assert isinstance(refused, InsufficientBalance)


def test_all_or_nothing_batch_with_one_bad_item_writes_nothing(svc, account_factory, dump):
    a, b = account_factory(balance=1_000), account_factory(balance=10)
    before = dump()
    items = [
        {"user_id": a.user_id, "amount": 100, "service_type": "vps"},
        {"user_id": b.user_id, "amount": 50, "service_type": "vps"},
        {"user_id": a.user_id, "amount": 100, "service_type": "vps"},
    ]
    with pytest.raises(InsufficientBalance) as refused:
        svc.charge_many(items, mode="all_or_nothing")
    assert (refused.value.user_id, refused.value.batch_item) == (b.user_id, 1)
    assert dump() == before


def test_all_or_nothing_raises_the_first_malformed_item(svc, account_factory, dump):
    a = account_factory(balance=1_000)
    before = dump()
    items = [
        {"user_id": a.user_id, "amount": 1, "service_type": "vps"},
        {"user_id": a.user_id, "amount": -1, "service_type": "vps"},
    ]
    with pytest.raises(InvalidAmount):
        svc.charge_many(items, mode="all_or_nothing")
    assert dump() == before


def test_batch_items_are_idempotent_with_their_keys(svc, account_factory):
    account = account_factory(balance=1_000)
    earlier = svc.charge_service(account.user_id, 100, "vps", idempotency_key="hour-1")
    item = {"user_id": account.user_id, "service_type": "vps"}
    results = svc.charge_many(
        [
            {**item, "amount": 100, "idempotency_key": "hour-1"},
            {**item, "amount": 50, "idempotency_key": "hour-2"},
            {**item, "amount": 50, "idempotency_key": "hour-2"},
            {**item, "amount": 70, "idempotency_key": "hour-2"},
        ]
    )
    assert results[0] == earlier
    assert results[1] == results[2]
    assert isinstance(results[3], IdempotencyConflict)
    assert svc.get_balance(account.user_id).balance == 850
    assert svc.charge_many([{**item, "amount": 50, "idempotency_key": "hour-2"}]) == [results[1]]


@pytest.mark.parametrize("mode", ["independent", "all_or_nothing"])
def test_a_used_key_the_balance_could_not_pay_again_replays_its_row(
    svc, account_factory, dump, mode
):
    """A retried item is its first answer even where deciding it anew would refuse it
    (PostgreSQL decides a batch before it reads its keys: the refusal is not kept)."""
    account = account_factory(balance=100)
    first = svc.charge_service(account.user_id, 80, "vps", idempotency_key="hour-1")
    item = {"user_id": account.user_id, "service_type": "vps"}
    before = dump()
    results = svc.charge_many([{**item, "amount": 80, "idempotency_key": "hour-1"}], mode=mode)
    assert results == [first]
    assert results[0].replayed
    assert dump() == before
    fresh = svc.charge_many(
        [
            {**item, "amount": 80, "idempotency_key": "hour-1"},
            {**item, "amount": 15, "idempotency_key": "hour-2"},
        ],
        mode=mode,
    )
    assert fresh[0] == first
    assert isinstance(fresh[1], Transaction)
    assert fresh[1].balance_after == 5


@pytest.mark.parametrize("mode", ["independent", "all_or_nothing"])
def test_an_item_after_a_replay_is_decided_on_the_balance_the_replay_left(
    svc, account_factory, mode
):
    """The replay debits nothing: the next item has all the money (PostgreSQL decides
    a batch before it reads its keys, so a refusal there is checked before it counts)."""
    account = account_factory(balance=100)
    first = svc.charge_service(account.user_id, 30, "vps", idempotency_key="h1")
    item = {"user_id": account.user_id, "service_type": "vps"}
    results = svc.charge_many(
        [
            {**item, "amount": 30, "idempotency_key": "h1"},
            {**item, "amount": 50, "idempotency_key": "h2"},
        ],
        mode=mode,
    )
    assert results[0] == first
    assert isinstance(results[1], Transaction)
    assert results[1].balance_after == 20
    again = svc.charge_many([{**item, "amount": 50, "idempotency_key": "h2"}], mode=mode)
    assert again == [results[1]]


def test_batch_overdraft_suspends_and_calls_back_after_commit(svc, account_factory):
    account = account_factory(balance=10)
    seen = []
    svc.on_suspend(lambda change: seen.append(svc.get_balance(change.user_id).status))
    svc.charge_many(
        [{"user_id": account.user_id, "amount": 30, "service_type": "vps", "allow_overdraft": True}]
    )
    assert seen == [AccountStatus.SUSPENDED]


def test_unknown_mode_is_refused(svc):
    with pytest.raises(InvalidRequest, match="mode"):
        svc.charge_many([], mode="best_effort")


def test_independent_batch_of_ten_thousand_items(svc):
    accounts = 500
    assert svc.charge_many([]) == []
    for user_id in range(1, accounts + 1):
        svc.open_account(user_id)
        svc.recharge(user_id, 100)
    items = [
        {"user_id": n % accounts + 1, "amount": 3, "service_type": "vps", "reference_id": n}
        for n in range(10_000)
    ]

    results = svc.charge_many(items)

    assert all(isinstance(r, Transaction) for r in results)
    assert [r.reference_id for r in results[:3]] == ["0", "1", "2"]
    assert svc.get_balance(1).balance == 100 - 20 * 3
    assert svc.verify_and_fix_balance(full=True).in_sync


@pytest.mark.race
def test_overlapping_batches_in_opposite_order_do_not_deadlock(database_url):
    accounts, rounds = 50, 10
    with BalanceService.from_url(database_url, pool_size=4, max_attempts=2) as svc:
        for user_id in range(1, accounts + 1):
            svc.open_account(user_id)
            svc.recharge(user_id, 10_000)
        forward = [{"user_id": u, "amount": 1, "service_type": "vps"} for u in range(1, 51)]
        barrier = threading.Barrier(2)

        def biller(items: list[dict]) -> int:
            barrier.wait()
            done = 0
            for _ in range(rounds):
                done += sum(isinstance(r, Transaction) for r in svc.charge_many(items))
            return done

        with ThreadPoolExecutor(2) as pool:
            charged = sum(pool.map(biller, [forward, forward[::-1]]))
        assert charged == 2 * rounds * accounts
        assert svc.get_balance(1).balance == 10_000 - 2 * rounds
        assert svc.verify_and_fix_balance(full=True).in_sync


def test_batch_status_callbacks_name_the_crossing_row_in_item_order(svc, account_factory):
    first, second = account_factory(balance=100), account_factory(balance=100)
    seen = []
    svc.on_suspend(seen.append)
    item = {"service_type": "vps", "allow_overdraft": True}
    results = svc.charge_many(
        [
            {**item, "user_id": second.user_id, "amount": 150},
            {**item, "user_id": first.user_id, "amount": 150},
            {**item, "user_id": second.user_id, "amount": 500},
        ]
    )
    assert [(c.user_id, c.transaction_id, c.balance) for c in seen] == [
        (second.user_id, results[0].id, -50),
        (first.user_id, results[1].id, -50),
    ]


def test_all_or_nothing_raises_the_first_refused_item_in_order(svc, account_factory, dump):
    poor = account_factory(balance=10)
    before = dump()
    items = [
        {"user_id": poor.user_id, "amount": 50, "service_type": "vps"},  # refused by funds
        {"user_id": poor.user_id, "amount": -1, "service_type": "vps"},  # malformed
    ]
    with pytest.raises(InsufficientBalance) as refused:
        svc.charge_many(items, mode="all_or_nothing")
    assert refused.value.batch_item == 0
    with pytest.raises(InvalidAmount) as malformed:
        svc.charge_many(items[::-1], mode="all_or_nothing")
    assert malformed.value.batch_item == 0
    assert dump() == before
