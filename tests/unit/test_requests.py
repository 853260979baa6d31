"""A request is declared once (money/requests.py): what each surface builds, how it is
validated, and the HTTP bodies derived from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from pydantic import ValidationError

from balance_ledger import (
    Charge,
    DispatchReport,
    InvalidAmount,
    InvalidRequest,
    TransactionType,
)
from balance_ledger.http import bodies
from balance_ledger.money.requests import ChargeOptions, Recharge, RechargeOptions, charge_item


def test_a_charge_reads_like_charge_service():
    request = Charge(42, 300, "vps", idempotency_key="k-1", allow_overdraft=True)
    movement = request.movement()
    assert (movement.user_id, movement.amount, movement.service_type) == (42, 300, "vps")
    assert movement.transaction_type is TransactionType.CHARGE
    assert (movement.idempotency_key, movement.allow_overdraft) == ("k-1", True)
    with pytest.raises(TypeError):
        Charge(42, 300, "vps", "a description")  # type: ignore[misc]  # options are keywords


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (Charge(42, 0, "vps"), InvalidAmount),
        (Charge(42, 10, " "), InvalidRequest),
        (Charge(0, 10, "vps"), InvalidRequest),
        (Charge(42, 10, "vps", allow_overdraft=1), InvalidRequest),  # type: ignore[arg-type]
        (Charge(42, 10, "vps", currency="dollars"), InvalidRequest),
        (Recharge(42, -5), InvalidAmount),
    ],
)
def test_a_malformed_request_is_refused_when_it_becomes_a_movement(request_, error):
    with pytest.raises(error):
        request_.movement()


def test_a_recharge_has_no_service_type():
    movement = Recharge(7, 500, reference_id=981, currency="VND").movement()
    assert movement.transaction_type is TransactionType.RECHARGE
    assert (movement.service_type, movement.reference_id, movement.currency) == (None, "981", "VND")


def test_a_batch_item_is_a_charge_or_its_fields_and_a_malformed_one_its_error():
    assert charge_item(Charge(1, 5, "api")) == Charge(1, 5, "api").movement()
    assert charge_item({"user_id": 1, "amount": 5, "service_type": "api"}) == (
        Charge(1, 5, "api").movement()
    )
    assert isinstance(charge_item(["not", "a", "mapping"]), InvalidRequest)
    assert isinstance(charge_item({"user_id": 1, "amount": 5}), InvalidRequest)  # no type
    assert isinstance(charge_item({"user_id": 1, "amount": 5, "service": "api"}), InvalidRequest)
    assert isinstance(
        charge_item({"user_id": 1, "amount": 0, "service_type": "api"}), InvalidAmount
    )


def test_the_http_bodies_have_the_requests_fields_and_descriptions():
    charge = {f.name for f in dataclasses.fields(Charge)}
    recharge = {f.name for f in dataclasses.fields(Recharge)}
    in_path_and_header = {"user_id", "idempotency_key"}
    assert set(bodies.Charge.model_fields) == charge - in_path_and_header
    assert set(bodies.Recharge.model_fields) == recharge - in_path_and_header
    assert set(bodies.BatchCharge.model_fields) == charge
    schema = bodies.Charge.model_json_schema()
    assert schema["required"] == ["amount", "service_type"]
    assert "positive" in schema["properties"]["amount"]["description"]


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "5", "service_type": "vps"},  # no coercion: money is an integer
        {"amount": 5.0, "service_type": "vps"},
        {"amount": True, "service_type": "vps"},
        {"amount": 5, "service_type": "vps", "allow_overdraft": "yes"},
        {"amount": 5, "service_type": "vps", "amout": 5},  # a typo is an error
        {"amount": 5, "service_type": "vps", "user_id": 3},  # the account is the path's
        {"amount": 5},
    ],
)
def test_a_derived_body_is_strict(body):
    with pytest.raises(ValidationError):
        bodies.Charge.model_validate(body)


def test_dispatch_reports_add_up():
    total = DispatchReport(fanned_out=1, delivered=2) + DispatchReport(delivered=1, dead=1)
    assert total == DispatchReport(fanned_out=1, delivered=3, failed=0, dead=1)
    assert (DispatchReport() + DispatchReport()).idle


def test_the_keyword_options_are_the_requests_optional_fields():
    for request, options in ((Charge, ChargeOptions), (Recharge, RechargeOptions)):
        optional = {f.name for f in dataclasses.fields(request) if f.kw_only}
        assert set(typing.get_type_hints(options)) == optional
