"""Every BalanceError as an RFC 9457 problem (``application/problem+json``).

Each error class has a stable ``code`` and HTTP status; the body carries the error's
message as ``detail`` and its context attributes (``user_id``, ``amount``,
``available``, ...) as extension members. Never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import errors

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

# (status, code) per error class; the most specific class listed wins (MRO order).
# 402: a prepaid balance that cannot cover a charge is exactly "payment required".
# 409: the request is well-formed but the account's state refuses it.
STATUS: dict[type[errors.BalanceError], tuple[int, str]] = {
    errors.InsufficientBalance: (402, "insufficient-balance"),
    errors.AccountSuspended: (409, "account-suspended"),
    errors.AccountNotFound: (404, "account-not-found"),
    errors.AccountExists: (409, "account-exists"),
    errors.TransactionNotFound: (404, "transaction-not-found"),
    errors.RefundExceedsCharge: (409, "refund-exceeds-charge"),
    errors.HoldNotFound: (404, "hold-not-found"),
    errors.WebhookNotFound: (404, "webhook-not-found"),
    errors.HoldNotActive: (409, "hold-not-active"),
    errors.CurrencyMismatch: (409, "currency-mismatch"),
    errors.IdempotencyConflict: (409, "idempotency-conflict"),
    errors.JobBusy: (409, "job-busy"),
    errors.InvalidAmount: (422, "invalid-amount"),
    errors.InvalidRequest: (422, "invalid-request"),
    errors.SchemaMissing: (503, "schema-missing"),
    errors.RetriesExhausted: (503, "retries-exhausted"),
    errors.CommitUnknown: (503, "commit-unknown"),
    errors.StorageError: (503, "storage-error"),
    errors.BalanceError: (400, "refused"),
}
# Context attributes an error may carry, copied into the problem when present.
_CONTEXT = (
    "user_id",
    "amount",
    "available",
    "balance",
    "credit_limit",
    "transaction_id",
    "refundable",
    "hold_id",
    "account_currency",
    "requested_currency",
    "idempotency_key",
    "attempts",
    "batch_item",
)


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return _response(_body(status, code, detail, **extra), headers)


def _response(body: dict[str, Any], headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=MEDIA_TYPE, headers=headers)


def _body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    body = {"type": f"urn:balance-ledger:problem:{code}", "title": _title(code), "status": status}
    return body | {"code": code, "detail": detail, **extra}


def _title(code: str) -> str:
    return code.replace("-", " ").capitalize()


def status_of(error: errors.BalanceError) -> tuple[int, str]:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]  # type: ignore[index]
    raise AssertionError("BalanceError itself is listed")


def document(error: errors.BalanceError) -> tuple[int, dict[str, Any]]:
    """The error's HTTP status and problem document."""
    status, code = status_of(error)
    context = {name: getattr(error, name) for name in _CONTEXT if hasattr(error, name)}
    context = {k: v for k, v in context.items() if isinstance(v, int | str)}
    if isinstance(error, errors.HoldNotActive):  # its .status would shadow the HTTP one
        context["hold_status"] = error.status
    return status, _body(status, code, str(error), **context)


def from_error(error: errors.BalanceError) -> JSONResponse:
    status, body = document(error)
    return _response(body, {"Retry-After": "1"} if status == 503 else None)


def install(app: FastAPI) -> None:
    """Answer every error the app can meet with a problem document."""

    @app.exception_handler(errors.BalanceError)
    async def balance_error(_request: Request, error: errors.BalanceError) -> JSONResponse:
        return from_error(error)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in error.errors()
        ]
        return problem(
            422, "malformed-request", "the request does not match its schema", errors=fields
        )

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = {401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed"}
        detail = error.detail if isinstance(error.detail, str) else "refused"
        headers = dict(error.headers) if error.headers else None
        return problem(
            error.status_code, code.get(error.status_code, "http-error"), detail, headers
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return problem(
            500, "internal-error", "the server failed; nothing about it is in this answer"
        )
