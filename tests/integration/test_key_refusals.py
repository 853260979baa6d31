"""One answer per idempotency key: a refusal is remembered and replayed (idempotency.py).

Every test runs on SQLite, PostgreSQL and MariaDB. The race that motivated it: a first
attempt stalls before it takes the account's lock, its retry is refused, the account is
recharged, and the stalled attempt resumes. It must replay the refusal, never charge.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from balance_ledger import (
    AccountSuspended,
    BalanceError,
    BalanceService,
    CurrencyMismatch,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientBalance,
    RefundExceedsCharge,
    Transaction,
)
from balance_ledger.coalescer import ChargeCoalescer
from balance_ledger.db.tables import balance_refusals, user_balance_transactions
from balance_ledger.errors import AccountNotFound, InvalidAmount

WAIT = 30  # seconds: a bound on every wait, so a broken test fails instead of hanging


def refusals_of(svc: BalanceService) -> list[tuple[Any, ...]]:
    with svc.engine.connect() as conn:
        columns = balance_refusals.c
        stmt = select(columns.user_id, columns.key_scope, columns.idempotency_key, columns.code)
        return [tuple(row) for row in conn.execute(stmt.order_by(columns.id))]


def answer(call: Callable[[], object]) -> object:
    """What a call answered: its result, or the BalanceError it raised."""
    try:
        return call()
    except BalanceError as error:
        return error


def same_refusal(first: object, again: object) -> None:
    assert isinstance(first, BalanceError)
    assert isinstance(again, BalanceError)
    assert type(again) is type(first)
    assert (again.context(), str(again)) == (first.context(), str(first))
    assert (first.replayed, again.replayed) == (False, True)


# -- the rule, operation by operation ---------------------------------------------------


def test_a_refused_keyed_charge_is_replayed_even_after_a_recharge(svc, account_factory, dump):
    account = account_factory(balance=50)
    first = answer(lambda: svc.charge_service(account.user_id, 80, "vps", idempotency_key="k"))
    svc.recharge(account.user_id, 50)
    before = dump()
    again = answer(lambda: svc.charge_service(account.user_id, 80, "vps", idempotency_key="k"))
    same_refusal(first, again)
    assert isinstance(again, InsufficientBalance)
    assert (again.amount, again.available) == (80, 50)
    assert dump() == before, "a replayed refusal writes nothing"
    assert svc.get_balance(account.user_id).balance == 100
    assert refusals_of(svc) == [(account.user_id, "ledger", "k", "insufficient-balance")]


def test_a_keyed_refusal_keeps_only_its_answer(svc, account_factory, dump):
    account = account_factory(balance=50)
    before = dump()
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    after = dump()
    changed = {table for table in before if before[table] != after[table]}
    # The refusal, and the account's version (guards.py): its figures are as they were.
    assert changed == {"balance_refusals", "user_balances"}
    assert svc.get_balance(account.user_id) == account
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 80, "vps")  # no key: nothing at all is kept
    assert dump() == after


def test_a_refused_key_with_another_request_is_a_conflict(svc, account_factory, dump):
    account = account_factory(balance=50)
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k")
    before = dump()
    with pytest.raises(IdempotencyConflict, match="amount 80 != 60"):
        svc.charge_service(account.user_id, 60, "vps", idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="allow_overdraft"):
        svc.charge_service(account.user_id, 80, "vps", idempotency_key="k", allow_overdraft=True)
    with pytest.raises(IdempotencyConflict, match="transaction_type"):
        svc.recharge(account.user_id, 80, idempotency_key="k")
    assert dump() == before


def test_unknown_accounts_and_invalid_requests_are_not_remembered(svc, dump):
    before = dump()
    with pytest.raises(AccountNotFound):
        svc.charge_service(7, 500, "vps", idempotency_key="k")
    assert dump() == before
    svc.open_account(7)
    svc.recharge(7, 500)
    assert svc.charge_service(7, 500, "vps", idempotency_key="k").balance_after == 0
    # Invalid for the account's figures, found under the lock (a balance past BIGINT):
    # not a refusal, so not the key's answer.
    svc.adjust(7, 2**63 - 10, reason="test", actor="test")  # balance just under the top
    before = dump()
    with pytest.raises(InvalidAmount, match="would not fit in a 64-bit integer"):
        svc.recharge(7, 20, idempotency_key="big")
    assert dump() == before
    svc.charge_service(7, 100, "vps")
    assert svc.recharge(7, 20, idempotency_key="big").replayed is False


def test_a_suspended_account_refusal_is_replayed_after_reactivation(svc, account_factory):
    account = account_factory(balance=10)
    svc.charge_service(account.user_id, 50, "vps", allow_overdraft=True)
    first = answer(lambda: svc.charge_service(account.user_id, 5, "vps", idempotency_key="k"))
    assert isinstance(first, AccountSuspended)
    svc.recharge(account.user_id, 100)
    same_refusal(
        first, answer(lambda: svc.charge_service(account.user_id, 5, "vps", idempotency_key="k"))
    )


def test_a_currency_mismatch_is_replayed(svc, account_factory):
    account = account_factory(balance=10)
    call = lambda: svc.recharge(account.user_id, 5, currency="USD", idempotency_key="k")  # noqa: E731
    first = answer(call)
    assert isinstance(first, CurrencyMismatch)
    same_refusal(first, answer(call))


def test_a_refund_refusal_is_replayed(svc, account_factory):
    account = account_factory(balance=100)
    charge = svc.charge_service(account.user_id, 40, "vps")
    first = answer(lambda: svc.refund(charge.id, 50, idempotency_key="r"))
    assert isinstance(first, RefundExceedsCharge)
    assert svc.refund(charge.id, 40, idempotency_key="other").amount == 40
    same_refusal(first, answer(lambda: svc.refund(charge.id, 50, idempotency_key="r")))
    # "Whatever is left" is a request of its own: its refusal is its key's answer too.
    whole = answer(lambda: svc.refund(charge.id, idempotency_key="rest"))
    same_refusal(whole, answer(lambda: svc.refund(charge.id, idempotency_key="rest")))
    with pytest.raises(IdempotencyConflict, match="amount None != 40"):
        svc.refund(charge.id, 40, idempotency_key="rest")


def test_a_capture_refusal_is_replayed(svc, account_factory):
    account = account_factory(balance=100)
    hold = svc.authorize(account.user_id, 30, "vps")
    svc.void(hold.id)
    first = answer(lambda: svc.capture(hold.id, idempotency_key="c"))
    assert isinstance(first, HoldNotActive)
    assert first.status == "voided"
    same_refusal(first, answer(lambda: svc.capture(hold.id, idempotency_key="c")))
    with pytest.raises(IdempotencyConflict):
        svc.capture(hold.id, 10, idempotency_key="c")
    with pytest.raises(IdempotencyConflict):  # one namespace for ledger keys
        svc.charge_service(account.user_id, 10, "vps", idempotency_key="c")


def test_an_authorize_refusal_is_replayed_and_hold_keys_are_their_own(svc, account_factory):
    account = account_factory(balance=10)
    call = lambda: svc.authorize(account.user_id, 30, "vps", idempotency_key="h")  # noqa: E731
    first = answer(call)
    assert isinstance(first, InsufficientBalance)
    svc.recharge(account.user_id, 100)
    same_refusal(first, answer(call))
    assert svc.get_balance(account.user_id).held == 0
    # A hold's key does not answer for a charge: another namespace (as for the rows).
    assert svc.charge_service(account.user_id, 30, "vps", idempotency_key="h").amount == 30


# -- batches and the coalescer: the same rule per item ------------------------------------


def test_batch_items_remember_and_replay_their_refusals(svc, account_factory):
    rich, poor = account_factory(balance=100), account_factory(balance=10)
    items = [
        {"user_id": rich.user_id, "amount": 30, "service_type": "vps", "idempotency_key": "a"},
        {"user_id": poor.user_id, "amount": 30, "service_type": "vps", "idempotency_key": "b"},
        {"user_id": poor.user_id, "amount": 30, "service_type": "vps", "idempotency_key": "b"},
    ]
    first = svc.charge_many(items)
    assert isinstance(first[0], Transaction)
    assert isinstance(first[1], InsufficientBalance)
    same_refusal(first[1], first[2])  # the key's second item in the same batch
    svc.recharge(poor.user_id, 100)
    again = svc.charge_many(items)
    assert isinstance(again[0], Transaction)
    assert (again[0].id, again[0].replayed) == (first[0].id, True)
    same_refusal(first[1], again[1])
    same_refusal(
        first[1], answer(lambda: svc.charge_service(poor.user_id, 30, "vps", idempotency_key="b"))
    )
    assert svc.get_balance(poor.user_id).balance == 110


def test_an_all_or_nothing_batch_remembers_the_refused_item(svc, account_factory, dump):
    rich, poor = account_factory(balance=100), account_factory(balance=10)
    items = [
        {"user_id": rich.user_id, "amount": 30, "service_type": "vps", "idempotency_key": "a"},
        {"user_id": poor.user_id, "amount": 30, "service_type": "vps", "idempotency_key": "b"},
    ]
    first = answer(lambda: svc.charge_many(items, mode="all_or_nothing"))
    assert isinstance(first, InsufficientBalance)
    assert first.batch_item == 1
    assert refusals_of(svc) == [(poor.user_id, "ledger", "b", "insufficient-balance")]
    svc.recharge(poor.user_id, 100)
    before = dump()
    again = answer(lambda: svc.charge_many(items, mode="all_or_nothing"))
    same_refusal(first, again)
    assert again.batch_item == 1
    assert dump() == before, "nothing charged, not even the item that would pass"
    # The item that was never decided keeps its key free.
    assert svc.charge_service(rich.user_id, 30, "vps", idempotency_key="a").replayed is False


def test_a_refusal_through_the_coalescer_is_the_keys_answer_everywhere(svc, account_factory):
    account = account_factory(balance=10)
    with ChargeCoalescer(svc) as coalescer:
        first = answer(lambda: coalescer.charge(account.user_id, 30, "vps", idempotency_key="k"))
        svc.recharge(account.user_id, 100)
        again = answer(lambda: coalescer.charge(account.user_id, 30, "vps", idempotency_key="k"))
    assert isinstance(first, InsufficientBalance)
    same_refusal(first, again)
    same_refusal(
        first, answer(lambda: svc.charge_service(account.user_id, 30, "vps", idempotency_key="k"))
    )
    assert svc.get_balance(account.user_id).balance == 110


# -- retention -----------------------------------------------------------------------------


def test_refusals_are_kept_for_the_retention_then_purged(svc, account_factory):
    account = account_factory(balance=10)
    with pytest.raises(InsufficientBalance):
        svc.charge_service(account.user_id, 30, "vps", idempotency_key="k")
    assert svc.purge_refusals() == 0, "younger than 24 h: kept"
    with svc.engine.begin() as conn:  # as if it had been refused two days ago
        two_days_ago = datetime.now(UTC) - timedelta(days=2)
        conn.execute(update(balance_refusals).values(created_at=two_days_ago))
    assert svc.purge_refusals() == 1
    assert refusals_of(svc) == []
    svc.recharge(account.user_id, 100)
    assert svc.charge_service(account.user_id, 30, "vps", idempotency_key="k").amount == 30
    for too_short in (timedelta(0), timedelta(minutes=59)):
        with pytest.raises(BalanceError, match="older_than must be a timedelta of at least"):
            svc.purge_refusals(older_than=too_short)
    assert svc.purge_refusals(older_than=timedelta(hours=1)) == 0


# -- the race: a stalled first attempt ------------------------------------------------------


@pytest.fixture
def two_workers(database_url: str) -> Iterator[tuple[BalanceService, BalanceService]]:
    """Two services over one database, as two workers (or hosts) of the HTTP service."""
    with BalanceService.from_url(database_url) as a, BalanceService.from_url(database_url) as b:
        yield a, b


def stall_first_connect(svc: BalanceService) -> tuple[threading.Event, threading.Event]:
    """Pause the next transaction of ``svc`` before it connects (so before any lock):
    (reached, resume)."""
    reached, resume = threading.Event(), threading.Event()
    connect = svc.engine.connect
    first = itertools.count()

    def stalled_connect() -> Any:
        if next(first) == 0:
            reached.set()
            assert resume.wait(WAIT), "the test never resumed the stalled attempt"
        return connect()

    svc.engine.connect = stalled_connect  # type: ignore[method-assign]
    return reached, resume


@pytest.mark.race
def test_a_stalled_first_attempt_replays_the_refusal_its_retry_got(two_workers):
    stalled, retrying = two_workers
    retrying.open_account(7)  # balance 0
    reached, resume = stall_first_connect(stalled)
    late: list[object] = []
    worker = threading.Thread(
        target=lambda: late.append(
            answer(lambda: stalled.charge_service(7, 500, "vps", idempotency_key="K1"))
        )
    )
    worker.start()
    try:
        assert reached.wait(WAIT)
        retry = answer(lambda: retrying.charge_service(7, 500, "vps", idempotency_key="K1"))
        assert isinstance(retry, InsufficientBalance)
        retrying.recharge(7, 1_000)
    finally:
        resume.set()
        worker.join(WAIT)
    assert not worker.is_alive()
    same_refusal(retry, late[0])
    assert retrying.get_balance(7).balance == 1_000
    assert [tx.transaction_type.value for tx in retrying.get_transactions(7)] == ["recharge"]


@pytest.mark.race
def test_racing_attempts_of_one_refused_key_all_get_one_answer(database_url: str):
    racers = 12
    with BalanceService.from_url(database_url, pool_size=racers, max_overflow=0) as svc:
        svc.open_account(1)
        svc.recharge(1, 10)
        barrier = threading.Barrier(racers)

        def attempt(_: int) -> object:
            barrier.wait(WAIT)
            return answer(lambda: svc.charge_service(1, 30, "vps", idempotency_key="k"))

        threads_answers: list[object] = []
        workers = [
            threading.Thread(target=lambda n=n: threads_answers.append(attempt(n)))
            for n in range(racers)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert len(threads_answers) == racers
        fresh = [a for a in threads_answers if isinstance(a, BalanceError) and not a.replayed]
        assert len(fresh) == 1, "exactly one attempt decided; the others replayed it"
        for other in threads_answers:
            if other is not fresh[0]:
                same_refusal(fresh[0], other)
        assert refusals_of(svc) == [(1, "ledger", "k", "insufficient-balance")]


@pytest.mark.race
def test_racing_batches_with_one_refused_key_all_get_one_answer(database_url: str):
    racers = 8
    with BalanceService.from_url(database_url, pool_size=racers, max_overflow=0) as svc:
        svc.open_account(1)
        item = {"user_id": 1, "amount": 30, "service_type": "vps", "idempotency_key": "k"}
        barrier = threading.Barrier(racers)
        outcomes: list[object] = []

        def batch() -> None:
            barrier.wait(WAIT)
            outcomes.extend(svc.charge_many([item]))

        workers = [threading.Thread(target=batch) for _ in range(racers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        fresh = [o for o in outcomes if isinstance(o, BalanceError) and not o.replayed]
        assert len(outcomes) == racers
        assert len(fresh) == 1
        for other in outcomes:
            if other is not fresh[0]:
                same_refusal(fresh[0], other)


# -- the property: any interleaving, one answer ---------------------------------------------

EXAMPLES = {"sqlite": 40, "postgresql": 20, "mariadb": 20}
_accounts = itertools.count(1_000)

step = st.one_of(
    st.tuples(st.just("attempt"), st.just(0)),
    st.tuples(st.just("recharge"), st.integers(1, 100)),
    st.tuples(st.just("charge"), st.integers(1, 100)),
    st.tuples(st.just("suspend"), st.integers(1, 100)),
)


def summary(outcome: object) -> tuple[object, ...]:
    if isinstance(outcome, Transaction):
        return ("row", outcome.id, outcome.amount, outcome.balance_after)
    assert isinstance(outcome, BalanceError), outcome
    return ("refused", type(outcome).__name__, tuple(sorted(outcome.context().items())))


def test_every_attempt_with_one_key_gets_the_same_answer(svc, backend):
    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        opening=st.integers(0, 100),
        amount=st.integers(1, 100),
        steps=st.lists(step, min_size=1, max_size=12).filter(
            lambda steps: any(kind == "attempt" for kind, _ in steps)
        ),
    )
    def one_answer(opening: int, amount: int, steps: list[tuple[str, int]]) -> None:
        user_id = next(_accounts)
        svc.open_account(user_id)
        if opening:
            svc.recharge(user_id, opening)
        answers = []
        for kind, value in steps:
            if kind == "attempt":
                call = lambda: svc.charge_service(user_id, amount, "vps", idempotency_key="K")  # noqa: E731
                answers.append(answer(call))
            elif kind == "recharge":
                svc.recharge(user_id, value)
            elif kind == "charge":
                answer(lambda: svc.charge_service(user_id, value, "vps"))  # noqa: B023
            else:  # past the limit: suspended until a recharge brings it back
                svc.charge_service(user_id, value, "vps", allow_overdraft=True)
        assert len({summary(a) for a in answers}) == 1, answers
        assert [getattr(a, "replayed", None) for a in answers] == [False] + [True] * (
            len(answers) - 1
        )
        with svc.engine.connect() as conn:
            keyed = select(func.count()).where(
                user_balance_transactions.c.user_id == user_id,
                user_balance_transactions.c.idempotency_key == "K",
            )
            assert conn.execute(keyed).scalar() == (1 if isinstance(answers[0], Transaction) else 0)

    one_answer()
