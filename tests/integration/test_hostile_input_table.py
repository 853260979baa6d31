"""One table of hostile inputs against every library entry point.

Each row is a call with one bad argument; it must raise the named typed error, and
every table of the database must be exactly as before (``dump``). The CLI's
table is in tests/cli/test_hostile_cli.py; SQL metacharacters and unicode, which are
valid, are stored verbatim (last test).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from balance_ledger import (
    AccountNotFound,
    BalanceError,
    BalanceService,
    CurrencyMismatch,
    HoldNotFound,
    InvalidAmount,
    InvalidRequest,
    TransactionNotFound,
)

USER = 1  # opened with 10,000 VND by the `ledger` fixture; charge CHARGE_ID is its charge
MEGABYTE = "x" * 1_000_000
SQL = "'; DROP TABLE user_balances; --"
NOW = datetime.now(UTC)

Call = Callable[[BalanceService, dict[str, int]], object]

BAD_AMOUNTS = [0, -1, 2**63, 10**30, 1.5, float("nan"), float("inf"), "100", Decimal(1), True]
BAD_USERS = [0, -5, "1", 2**64, 1.0, True, None]


def _charge(**overrides: object) -> Call:
    request: dict[str, object] = {"user_id": USER, "amount": 10, "service_type": "vps"}
    request.update(overrides)
    return lambda svc, ids: svc.charge_service(**request)


CASES: list[tuple[str, Call, type[BalanceError]]] = [
    *[(f"charge amount {a!r}", _charge(amount=a), InvalidAmount) for a in BAD_AMOUNTS],
    *[
        (f"recharge amount {a!r}", lambda svc, ids, a=a: svc.recharge(USER, a), InvalidAmount)
        for a in BAD_AMOUNTS
    ],
    *[(f"charge user {u!r}", _charge(user_id=u), InvalidRequest) for u in BAD_USERS],
    ("charge unknown user", _charge(user_id=424242), AccountNotFound),
    ("charge 1 MB description", _charge(description=MEGABYTE), InvalidRequest),
    ("charge NUL in description", _charge(description="a\x00b"), InvalidRequest),
    ("charge lone surrogate", _charge(description="\ud800"), InvalidRequest),
    ("charge 1 MB service type", _charge(service_type=MEGABYTE), InvalidRequest),
    ("charge empty service type", _charge(service_type=""), InvalidRequest),
    ("charge service type int", _charge(service_type=5), InvalidRequest),
    ("charge 1 MB reference", _charge(reference_id=MEGABYTE), InvalidRequest),
    ("charge 1 MB idempotency key", _charge(idempotency_key=MEGABYTE), InvalidRequest),
    ("charge unknown currency", _charge(currency="ZZZ"), InvalidRequest),
    ("charge other currency", _charge(currency="USD"), CurrencyMismatch),
    ("charge overdraft flag str", _charge(allow_overdraft="yes"), InvalidRequest),
    (
        "open unknown currency",
        lambda svc, ids: svc.open_account(2, currency="ABC"),
        InvalidRequest,
    ),
    ("open currency int", lambda svc, ids: svc.open_account(2, currency=840), InvalidRequest),
    ("open credit limit -1", lambda svc, ids: svc.open_account(2, credit_limit=-1), InvalidRequest),
    (
        "open credit limit nan",
        lambda svc, ids: svc.open_account(2, credit_limit=float("nan")),
        InvalidRequest,
    ),
    ("refund unknown charge", lambda svc, ids: svc.refund(999_999, 1), TransactionNotFound),
    ("refund amount -3", lambda svc, ids: svc.refund(ids["charge"], -3), InvalidAmount),
    (
        "refund 1 MB reason",
        lambda svc, ids: svc.refund(ids["charge"], 1, reason=MEGABYTE),
        InvalidRequest,
    ),
    (
        "adjust delta 0",
        lambda svc, ids: svc.adjust(USER, 0, reason="r", actor="a"),
        InvalidAmount,
    ),
    (
        "adjust delta float",
        lambda svc, ids: svc.adjust(USER, 2.5, reason="r", actor="a"),
        InvalidAmount,
    ),
    (
        "adjust without actor",
        lambda svc, ids: svc.adjust(USER, 5, reason="r", actor=""),
        InvalidRequest,
    ),
    (
        "authorize ttl negative",
        lambda svc, ids: svc.authorize(USER, 10, "vps", ttl=-1),
        InvalidRequest,
    ),
    (
        "authorize expiry in the past",
        lambda svc, ids: svc.authorize(USER, 10, "vps", expires_at=NOW - timedelta(days=1)),
        InvalidRequest,
    ),
    ("capture unknown hold", lambda svc, ids: svc.capture(999_999), HoldNotFound),
    ("capture amount str", lambda svc, ids: svc.capture(ids["hold"], "5"), InvalidAmount),
    ("void hold id str", lambda svc, ids: svc.void("1; DELETE"), InvalidRequest),
    (
        "batch item not a mapping",
        lambda svc, ids: svc.charge_many([SQL], mode="all_or_nothing"),
        InvalidRequest,
    ),
    (
        "batch unknown argument",
        lambda svc, ids: svc.charge_many(
            [{"user_id": USER, "amount": 1, "service_type": "vps", "drop": SQL}],
            mode="all_or_nothing",
        ),
        InvalidRequest,
    ),
    (
        "batch bad mode",
        lambda svc, ids: svc.charge_many([], mode=SQL),
        InvalidRequest,
    ),
    (
        "history limit 10**6",
        lambda svc, ids: svc.get_transactions(USER, limit=10**6),
        InvalidRequest,
    ),
    (
        "statement naive datetime",
        lambda svc, ids: svc.statement(USER, datetime(2026, 1, 1), NOW),
        InvalidRequest,
    ),
    ("verify chain user str", lambda svc, ids: svc.verify_chain(SQL), InvalidRequest),
    ("verify user -1", lambda svc, ids: svc.verify_and_fix_balance(-1), InvalidRequest),
]


@pytest.fixture
def ledger(svc: BalanceService) -> dict[str, int]:
    svc.open_account(USER)
    svc.recharge(USER, 10_000)
    charge = svc.charge_service(USER, 100, "vps")
    hold = svc.authorize(USER, 50, "vps")
    return {"charge": charge.id, "hold": hold.id}


@pytest.mark.parametrize(("call", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_a_typed_error_and_changes_nothing(svc, ledger, dump, call, error):
    before = dump()
    with pytest.raises(error) as refused:
        call(svc, ledger)
    assert len(str(refused.value)) < 300  # a readable message, not the input echoed back
    assert dump() == before


@pytest.mark.parametrize(
    "field", ["description", "reference_model", "reference_id", "idempotency_key"]
)
@pytest.mark.parametrize("value", [SQL, "💸 ñ 中文 ‮rtl", '%s %(x)s ? :name \\ " ` $1'])
def test_sql_metacharacters_and_unicode_are_stored_verbatim(svc, ledger, field, value):
    row = svc.charge_service(USER, 1, "vps", **{field: value})
    assert getattr(svc.get_transactions(USER, limit=1)[0], field) == value
    assert getattr(row, field) == value
    assert svc.verify_chain().intact
    assert svc.verify_and_fix_balance(full=True).in_sync
