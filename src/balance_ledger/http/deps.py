"""What route handlers are given: the service, the metrics, the parsed common headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
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


READ_FROM = "Balance-Read-From"
# A heavy read's route documents the header in its OpenAPI answer.
READ_FROM_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            READ_FROM: {
                "description": "With a read replica: where this read went (`replica; "
                'lag=0.4`, or `primary; reason="…"`).',
                "schema": {"type": "string"},
            }
        }
    }
}


def tell_where_read(svc: BalanceService, response: Response) -> None:
    """With a read replica, say in the answer where the handler's heavy read went:
    ``Balance-Read-From: replica; lag=0.4`` (seconds behind, at most), or ``primary;
    reason="3.2 s behind, past the bound of 1 s"``. Run on the handler's own thread."""
    status = svc.last_heavy_read()
    if status is None:
        return
    if status.used:
        response.headers[READ_FROM] = f"replica; lag={status.lag_seconds or 0:.1f}"
    else:
        # One line of plain ASCII, quotable: an error's text may hold anything.
        reason = " ".join(status.reason.split())[:200].replace("\\", "").replace('"', "'")
        reason = reason.encode("ascii", "replace").decode()
        response.headers[READ_FROM] = f'primary; reason="{reason}"'
