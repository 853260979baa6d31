"""Inputs a hostile or careless caller sends: each is a typed error and changes nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from sqlalchemy import create_engine

from balance_ledger import (
    AccountNotFound,
    BalanceService,
    CurrencyMismatch,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
)

BIGINT_MAX = 2**63 - 1


def test_an_enormous_int_is_refused_with_a_readable_message(svc, account_factory, dump):
    account = account_factory(balance=10)
    before = dump()
    with pytest.raises(InvalidAmount, match="33220-bit integer"):
        svc.charge_service(account.user_id, 10**10_000, "vps")
    with pytest.raises(InvalidRequest, match="bit integer"):
        svc.get_transactions(account.user_id, before_id=10**10_000)
    assert dump() == before


@pytest.mark.parametrize("field", ["description", "service_type", "idempotency_key"])
def test_text_that_is_not_valid_unicode_is_refused(svc, account_factory, dump, field):
    account = account_factory(balance=10)
    before = dump()
    request = {"service_type": "vps", field: "bad \ud800 text"}
    with pytest.raises(InvalidRequest, match="not valid Unicode"):
        svc.charge_service(account.user_id, 1, **request)
    assert dump() == before


def test_idempotency_keys_differing_in_trailing_space_are_different_keys(svc, account_factory):
    account = account_factory(balance=1_000)
    first = svc.charge_service(account.user_id, 100, "vps", idempotency_key="k")
    second = svc.charge_service(account.user_id, 100, "vps", idempotency_key="k ")
    assert first.id != second.id
    assert svc.get_balance(account.user_id).balance == 800


def test_a_replay_in_the_wrong_currency_is_a_currency_mismatch(svc, account_factory):
    account = account_factory(balance=1_000)
    svc.charge_service(account.user_id, 100, "vps", idempotency_key="k")
    with pytest.raises(CurrencyMismatch):
        svc.charge_service(account.user_id, 100, "vps", idempotency_key="k", currency="USD")


def test_a_total_that_would_overflow_names_the_requested_amount(svc, account_factory, corrupt):
    account = account_factory(balance=10)
    corrupt(account.user_id, total_recharged=BIGINT_MAX)
    with pytest.raises(InvalidAmount, match="total_recharged would not fit") as refused:
        svc.recharge(account.user_id, 1)
    assert refused.value.amount == 1


def test_no_currency_and_testing_codes_are_not_account_currencies(svc):
    for code in ("XXX", "XTS"):
        with pytest.raises(InvalidRequest, match="unknown currency"):
            svc.open_account(1, currency=code)


@pytest.mark.race
def test_racing_opens_of_a_new_account_all_succeed_with_one_row(database_url):
    racers = 8
    with BalanceService.from_url(database_url, pool_size=racers) as svc:
        barrier = threading.Barrier(racers)

        def open_it(_: int):
            barrier.wait()
            return svc.open_account(77, currency="EUR")

        with ThreadPoolExecutor(racers) as pool:
            opened = list(pool.map(open_it, range(racers)))
        assert {(b.user_id, b.currency) for b in opened} == {(77, "EUR")}


@pytest.mark.race
def test_a_caller_built_sqlite_engine_still_serialises_charges(sqlite_url):
    with BalanceService.from_url(sqlite_url) as setup:
        setup.create_schema()
        setup.open_account(1)
        setup.recharge(1, 1_000)
    engine = create_engine(sqlite_url, pool_size=16, connect_args={"check_same_thread": False})
    svc = BalanceService(engine)
    barrier = threading.Barrier(16)

    def racer(_: int) -> int:
        barrier.wait()
        charged = 0
        for _ in range(5):
            try:
                svc.charge_service(1, 100, "vps")
                charged += 1
            except InsufficientBalance:
                pass
        return charged

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(racer, range(16))) == 10
    assert svc.get_balance(1).balance == svc.ledger_totals(1).balance == 0
    svc.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda svc: svc.sync_fixes("x"), "run id must be an int"),
        (lambda svc: svc.sync_fixes(2**70), "run id must be between"),
        (lambda svc: svc.verify_and_fix_balance(fix="no"), "fix must be a bool"),
        (lambda svc: svc.rebuild_all_balances(dry_run=1), "dry_run must be a bool"),
        (lambda svc: svc.run_scheduled_job("verify-fix", datetime(2026, 1, 1)), "timezone-aware"),
        (lambda svc: svc.run_scheduled_job("verify-fix", "2026-01-01"), "timezone-aware"),
        (lambda svc: svc.run_scheduled_job("drop-tables", datetime.now()), "unknown job"),
        (lambda svc: svc.sync_runs(limit=0), "limit"),
    ],
)
def test_malformed_arguments_to_reconciliation_are_refused(svc, call, message):
    with pytest.raises(InvalidRequest, match=message):
        call(svc)


def test_ledger_totals_of_an_unknown_account_raises(svc):
    with pytest.raises(AccountNotFound):
        svc.ledger_totals(404)


@pytest.mark.parametrize("attempts", [0, -1, "3"])
def test_max_attempts_must_be_positive(sqlite_url, attempts):
    with pytest.raises(InvalidRequest, match="max_attempts"):
        BalanceService.from_url(sqlite_url, max_attempts=attempts)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "cannot use database URL"),
        ("oracle://scott@db/x", "cannot use database URL|unsupported database"),
        ("postgresql://postgres@127.0.0.1/x", "cannot use database URL"),
        ("mysql+pymysql://root@127.0.0.1/x?charset=latin1", "charset=utf8mb4"),
    ],
)
def test_unusable_database_urls_are_refused(url, message):
    with pytest.raises(InvalidRequest, match=message):
        BalanceService.from_url(url)
