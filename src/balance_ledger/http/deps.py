"""What route handlers are given: the service, the metrics, the parsed common headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.params import Depends as Dependency

from ..models import Scope, Transaction
from ..money.requests import Charge
from ..service import BalanceService
from ..validation import MAX_PAGE
from .auth import require
from .metrics import Metrics

# Dependencies are coroutines wherever they do no I/O: FastAPI runs a plain function
# on a worker thread, a hop each that a request pays for nothing.


async def service_of(request: Request) -> BalanceService:
    return request.app.state.service  # type: ignore[no-any-return]


async def charge_of(request: Request) -> Callable[[Charge], Awaitable[Transaction]]:
    return request.app.state.charge  # type: ignore[no-any-return]


async def metrics_of(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def needs(scope: Scope) -> list[Dependency]:
    """A route's ``dependencies=``: an API key allowed ``scope`` (auth.py)."""
    return [Depends(require(scope))]


Service = Annotated[BalanceService, Depends(service_of)]
# BalanceService.charge on a worker thread, or a ChargeCoalescer's submit_async while the
# app has group commit: awaited either way.
Charger = Annotated[Callable[[Charge], Awaitable[Transaction]], Depends(charge_of)]
Meter = Annotated[Metrics, Depends(metrics_of)]
UserId = Annotated[int, Path(description="The account's user id.")]
PageSize = Query(ge=1, le=MAX_PAGE, description="Rows per page.")
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retry with the same key returns the first result (200, not 201).",
    ),
]
