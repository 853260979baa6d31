"""Routes that move money: recharges, charges (one or a batch), refunds, adjustments, holds.

Every write honours ``Idempotency-Key``: the first call answers 201, a retry with the
same key 200 with ``Idempotent-Replayed: true`` and the same body, and the same key
with another request 409. A refusal (402, or 409 for the account's state) is the key's
answer too: a retry gets the same problem with ``Idempotent-Replayed: true``. Each
route is one BalanceService call, counted in metrics.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from ..errors import BalanceError
from ..models import ApiKey, Scope, Transaction
from ..money.requests import Charge
from . import bodies, problems
from .auth import require
from .deps import Charger, IdempotencyKey, Meter, Service, UserId, needs

router = APIRouter(prefix="/v1", tags=["movements"])

HoldId = Annotated[int, Path(description="The hold's id.")]


@router.post("/accounts/{user_id}/recharges", status_code=201, dependencies=needs(Scope.RECHARGE))
def recharge(
    user_id: UserId,
    body: bodies.Recharge,
    response: Response,
    svc: Service,
    meter: Meter,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Credit the account."""
    row = meter.movement(
        "recharge", svc.recharge, user_id, idempotency_key=idempotency_key, **body.model_dump()
    )
    return bodies.posted(row, response)


@router.post(
    "/accounts/{user_id}/charges",
    status_code=201,
    dependencies=needs(Scope.CHARGE),
    response_model=dict[str, Any],
)
async def charge(
    user_id: UserId,
    body: bodies.Charge,
    charge: Charger,
    meter: Meter,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Debit the account for a service; 402 when the balance cannot cover it.

    Under ``balance serve`` concurrent charges share a transaction (group commit): a
    charge waits at most for the batch being written, then is written with the ones
    that queued meanwhile; each gets its own answer, as alone."""
    # The hottest route: on the event loop, awaiting its charge, answered by orjson.
    request = Charge(user_id=user_id, idempotency_key=idempotency_key, **body.model_dump())
    row = await meter.awaited("charge", charge, request)
    return bodies.posted_response(row)


@router.post("/charges:batch", dependencies=needs(Scope.CHARGE))
def charge_batch(body: bodies.ChargeBatch, svc: Service, meter: Meter) -> dict[str, Any]:
    """Charge many accounts at once; ``results`` holds each item's outcome, in order.

    An item's ``status`` is what its own request would have answered: 201 with its
    ``transaction``, 200 for a replay of its idempotency key, or a refusal's status
    with its ``problem`` (``replayed`` true when its key was refused before). In
    ``all_or_nothing`` mode the first refused item refuses the whole request (its
    ``batch_item`` says which) and nothing else is written.
    """
    items = [Charge(**item.model_dump()) for item in body.items]
    outcomes = meter.movement("charge_batch", svc.charge_many, items, mode=body.mode)
    for outcome in outcomes:
        meter.record("charge", outcome)
    return {"results": [_batch_result(outcome) for outcome in outcomes]}


def _batch_result(outcome: Transaction | BalanceError) -> dict[str, Any]:
    if isinstance(outcome, BalanceError):
        status, problem = problems.document(outcome)
        return {"status": status, "problem": problem, "replayed": outcome.replayed}
    return {"status": 200 if outcome.replayed else 201, "transaction": bodies.transaction(outcome)}


@router.post(
    "/transactions/{transaction_id}:refund", status_code=201, dependencies=needs(Scope.RECHARGE)
)
def refund(
    transaction_id: Annotated[int, Path(description="The charge's ledger row id.")],
    response: Response,
    svc: Service,
    meter: Meter,
    body: bodies.Refund | None = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Give back (part of) a charge: a refund row naming it; never more than the charge."""
    body = body or bodies.Refund()
    row = meter.movement(
        "refund",
        svc.refund,
        transaction_id,
        body.amount,
        reason=body.reason,
        idempotency_key=idempotency_key,
    )
    return bodies.posted(row, response)


@router.post("/accounts/{user_id}/adjustments", status_code=201)
def adjust(
    user_id: UserId,
    body: bodies.Adjustment,
    response: Response,
    svc: Service,
    meter: Meter,
    key: Annotated[ApiKey, Depends(require(Scope.ADMIN))],
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """An administrator's signed correction; the API key's name is recorded as the actor."""
    row = meter.movement(
        "adjustment",
        svc.adjust,
        user_id,
        body.delta,
        reason=body.reason,
        actor=f"apikey:{key.id}:{key.name}",
        idempotency_key=idempotency_key,
    )
    return bodies.posted(row, response)


@router.post(
    "/accounts/{user_id}/holds", status_code=201, tags=["holds"], dependencies=needs(Scope.CHARGE)
)
def authorize(
    user_id: UserId,
    body: bodies.Authorize,
    response: Response,
    svc: Service,
    meter: Meter,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Reserve money for usage being metered; charges and other holds cannot use it."""
    reserved = meter.movement(
        "hold",
        svc.authorize,
        user_id,
        body.amount,
        body.service_type,
        description=body.description,
        ttl=body.ttl_seconds,
        expires_at=body.expires_at,
        idempotency_key=idempotency_key,
    )
    return bodies.replayable(reserved.replayed, response, bodies.hold(reserved))


@router.get("/holds/{hold_id}", tags=["holds"], dependencies=needs(Scope.READ))
def get_hold(hold_id: HoldId, svc: Service) -> dict[str, Any]:
    return bodies.hold(svc.get_hold(hold_id))


@router.post(
    "/holds/{hold_id}:capture", status_code=201, tags=["holds"], dependencies=needs(Scope.CHARGE)
)
def capture(
    hold_id: HoldId,
    response: Response,
    svc: Service,
    meter: Meter,
    body: bodies.Capture | None = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Charge up to the held amount (default: all) and release the hold; answers the charge."""
    amount = body.amount if body else None
    row = meter.movement("capture", svc.capture, hold_id, amount, idempotency_key=idempotency_key)
    return bodies.posted(row, response)


@router.post("/holds/{hold_id}:void", tags=["holds"], dependencies=needs(Scope.CHARGE))
def void(hold_id: HoldId, svc: Service, meter: Meter) -> dict[str, Any]:
    """Release an active hold without charging; 409 ``hold-not-active`` once it is closed.

    Safe to retry: a 409 whose ``hold_status`` is ``voided`` means an earlier void took.
    """
    return bodies.hold(meter.movement("void", svc.void, hold_id))
