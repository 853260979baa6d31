"""Malformed requests are refused with a typed error before touching the database."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from balance_ledger import BalanceService, InvalidAmount, InvalidRequest

BIGINT_MAX = 2**63 - 1

BAD_AMOUNTS = [
    pytest.param(0, "must be positive", id="zero"),
    pytest.param(-1, "must be positive", id="negative"),
    pytest.param(-(2**70), "must be positive", id="huge-negative"),
    pytest.param(2**63, "must not exceed", id="beyond-bigint"),
    pytest.param(10**30, "must not exceed", id="far-beyond-bigint"),
    pytest.param(1.0, "not float", id="float"),
    pytest.param(1.5, "not float", id="fractional-float"),
    pytest.param(float("nan"), "not float", id="nan"),
    pytest.param(float("inf"), "not float", id="infinity"),
    pytest.param(True, "not bool", id="true"),
    pytest.param(False, "not bool", id="false"),
    pytest.param("100", "not str", id="string"),
    pytest.param(None, "not NoneType", id="none"),
    pytest.param(Decimal("100"), "not Decimal", id="decimal"),
    pytest.param(Fraction(1, 1), "not Fraction", id="fraction"),
]


@pytest.mark.parametrize(("amount", "reason"), BAD_AMOUNTS)
def test_charge_refuses_invalid_amount(svc, account_factory, dump, amount, reason):
    account = account_factory(balance=1_000)
    before = dump()
    with pytest.raises(InvalidAmount, match=reason) as refused:
        svc.charge_service(account.user_id, amount, "vps")
    assert refused.value.amount is amount
    assert dump() == before


@pytest.mark.parametrize(("amount", "reason"), BAD_AMOUNTS)
def test_recharge_refuses_invalid_amount(svc, account_factory, dump, amount, reason):
    account = account_factory(balance=1_000)
    before = dump()
    with pytest.raises(InvalidAmount, match=reason):
        svc.recharge(account.user_id, amount)
    assert dump() == before


def test_recharge_that_would_overflow_the_balance_is_refused(svc, account_factory, dump):
    account = account_factory(balance=BIGINT_MAX)
    before = dump()
    with pytest.raises(InvalidAmount, match="would not fit in a 64-bit integer"):
        svc.recharge(account.user_id, 1)
    assert dump() == before


def test_largest_amount_is_accepted(svc: BalanceService, account_factory):
    account = account_factory()
    assert svc.recharge(account.user_id, BIGINT_MAX).balance_after == BIGINT_MAX


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("description", "x" * 1025, "1025 characters long; the limit is 1024"),
        ("description", "a\x00b", "NUL"),
        ("description", "bell\x07", "control characters"),
        ("reference_model", "esc\x1b[31m", "control characters"),
        ("description", 5, "must be a str"),
        ("reference_model", "m" * 129, "limit is 128"),
        ("reference_id", "r" * 129, "limit is 128"),
        ("reference_id", 1.5, "must be a str"),
        ("idempotency_key", "", "must not be empty"),
        ("idempotency_key", "k" * 256, "limit is 255"),
        ("currency", "XYZ", "unknown currency"),
        ("currency", "dollars", "three-letter"),
    ],
)
def test_charge_refuses_malformed_fields(svc, account_factory, dump, field, value, reason):
    account = account_factory(balance=1_000)
    before = dump()
    with pytest.raises(InvalidRequest, match=reason):
        svc.charge_service(account.user_id, 1, "vps", **{field: value})
    assert dump() == before


def test_tabs_and_line_breaks_are_allowed_in_descriptions(svc, account_factory):
    account = account_factory(balance=10)
    text = "line one\r\nline two\tend"
    assert svc.charge_service(account.user_id, 1, "vps", description=text).description == text


def test_unicode_and_sql_metacharacters_are_stored_verbatim(svc, account_factory):
    account = account_factory(balance=1_000)
    text = "Robert'); DROP TABLE user_balances;-- 🚀 Tiếng Việt"
    tx = svc.charge_service(account.user_id, 1, "vps", description=text, idempotency_key=text)
    assert svc.get_transactions(account.user_id)[0].description == text
    assert tx.idempotency_key == text


@pytest.mark.parametrize("user_id", [0, -1, 2**63, "1", 1.0, True, None])
def test_invalid_user_id_is_refused(svc: BalanceService, user_id):
    with pytest.raises(InvalidRequest, match="user id"):
        svc.open_account(user_id)


@pytest.mark.parametrize("credit_limit", [-1, 1.5, True, 2**63])
def test_invalid_credit_limit_is_refused(svc: BalanceService, credit_limit):
    with pytest.raises(InvalidRequest, match="credit limit"):
        svc.open_account(1, credit_limit=credit_limit)


def test_allow_overdraft_must_be_a_bool(svc, account_factory):
    account = account_factory(balance=10)
    with pytest.raises(InvalidRequest, match="allow_overdraft"):
        svc.charge_service(account.user_id, 1, "vps", allow_overdraft="yes")


@pytest.mark.parametrize(("limit", "before_id"), [(0, None), (1001, None), (10, 0), (10, "5")])
def test_invalid_page_is_refused(svc, account_factory, limit, before_id):
    account = account_factory()
    with pytest.raises(InvalidRequest):
        svc.get_transactions(account.user_id, limit=limit, before_id=before_id)
