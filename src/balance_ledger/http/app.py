"""The HTTP service: a thin adapter that parses, calls BalanceService and answers JSON.

No SQL here: every route is one service call. Errors are problem documents
(problems.py); every /v1 route needs an API key with its scope (auth.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..models import Balance, Scope, Transaction
from ..service import BalanceService
from . import problems
from .auth import require, service_of
from .limits import BodySizeLimit

DEFAULT_MAX_BODY_BYTES = 64 * 1024

Service = Annotated[BalanceService, Depends(service_of)]
UserId = Annotated[int, "the account's user id"]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retry with the same key returns the first result (200, not 201).",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAccount(_Body):
    user_id: StrictInt
    currency: StrictStr = "VND"
    credit_limit: StrictInt = 0


class Recharge(_Body):
    amount: StrictInt = Field(description="Minor units (cents; VND has none), positive.")
    description: StrictStr | None = None
    reference_model: StrictStr | None = None
    reference_id: StrictStr | StrictInt | None = None
    currency: StrictStr | None = Field(default=None, description="Asserts the account's.")


class Charge(Recharge):
    service_type: StrictStr = Field(description="What is charged: vps, bandwidth, api…")
    allow_overdraft: StrictBool = False


class TransactionPage(BaseModel):
    transactions: list[dict[str, Any]]
    next_before_id: int | None = Field(description="Pass as before_id for the next page.")


def create_app(service: BalanceService, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The app over ``service`` (which the caller owns and closes)."""
    app = FastAPI(
        title="balance-ledger",
        version="1",
        description="Prepaid balances: charge, recharge and inspect accounts.",
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    problems.install(app)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up (no database check)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz(svc: Service) -> dict[str, str]:
        """The database answers (503 problem otherwise)."""
        svc.ping()
        return {"status": "ready"}

    @app.post("/v1/accounts", status_code=201, tags=["accounts"])
    def open_account(
        body: OpenAccount, svc: Service, _: Annotated[Any, Depends(require(Scope.ADMIN))]
    ) -> dict[str, Any]:
        """Open an account; opening it again with the same settings returns it unchanged."""
        balance = svc.open_account(
            body.user_id, currency=body.currency, credit_limit=body.credit_limit
        )
        return _balance(balance)

    @app.get("/v1/accounts/{user_id}", tags=["accounts"])
    def get_account(
        user_id: UserId, svc: Service, _: Annotated[Any, Depends(require(Scope.READ))]
    ) -> dict[str, Any]:
        """The balance card: balance, totals, status, credit limit, held, available."""
        return _balance(svc.get_balance(user_id))

    @app.post("/v1/accounts/{user_id}/recharges", status_code=201, tags=["movements"])
    def recharge(
        user_id: UserId,
        body: Recharge,
        response: Response,
        svc: Service,
        _: Annotated[Any, Depends(require(Scope.RECHARGE))],
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Credit the account."""
        row = svc.recharge(user_id, idempotency_key=idempotency_key, **body.model_dump())
        return _posted(row, response)

    @app.post("/v1/accounts/{user_id}/charges", status_code=201, tags=["movements"])
    def charge(
        user_id: UserId,
        body: Charge,
        response: Response,
        svc: Service,
        _: Annotated[Any, Depends(require(Scope.CHARGE))],
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Debit the account for a service; 402 when the balance cannot cover it."""
        row = svc.charge_service(user_id, idempotency_key=idempotency_key, **body.model_dump())
        return _posted(row, response)

    @app.get("/v1/accounts/{user_id}/transactions", tags=["accounts"])
    def transactions(
        user_id: UserId,
        svc: Service,
        _: Annotated[Any, Depends(require(Scope.READ))],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> TransactionPage:
        """Ledger rows newest first; follow ``next_before_id`` for older ones."""
        rows = svc.get_transactions(user_id, limit=limit, before_id=before_id)
        following = rows[-1].id if len(rows) == limit else None
        return TransactionPage(transactions=[_row(r) for r in rows], next_before_id=following)

    return app


def _posted(row: Transaction, response: Response) -> dict[str, Any]:
    """201 for a new row; 200 and ``Idempotent-Replayed: true`` for a retry's replay."""
    if row.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return _row(row)


def _row(row: Transaction) -> dict[str, Any]:
    """The ledger row's columns (``replayed`` is said by the status and a header)."""
    columns = dataclasses.asdict(row)
    del columns["replayed"]
    return columns  # FastAPI encodes the enum and the datetime


def _balance(balance: Balance) -> dict[str, Any]:
    return {
        "user_id": balance.user_id,
        "currency": balance.currency,
        "balance": balance.balance,
        "total_recharged": balance.total_recharged,
        "total_spent": balance.total_spent,
        "credit_limit": balance.credit_limit,
        "held": balance.held,
        "available": balance.available,
        "status": balance.status.value,
        "updated_at": balance.updated_at.isoformat(),
    }


def app_from_environment() -> FastAPI:
    """The app ``balance serve`` runs in each uvicorn worker (BALANCE_DATABASE_URL)."""
    url = os.environ.get("BALANCE_DATABASE_URL", "sqlite:///balance.db")
    return create_app(BalanceService.from_url(url))
