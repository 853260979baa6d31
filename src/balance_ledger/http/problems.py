"""Every BalanceError as an RFC 9457 problem (``application/problem+json``).

Each error class has a stable ``code`` and HTTP status. Every document carries the
request's id as ``request_id`` (the same id as the ``X-Request-Id`` response header,
request_ids.py), for a client to quote to support. Never a stack trace.

A refusal (4xx) is about the caller's own data: ``detail`` is the error's message and
its context attributes (``user_id``, ``amount``, ``available``, ...) are extension
members. A server failure (5xx: StorageError and its subclasses, anything unexpected)
says only what the client can act on: ``detail`` is a fixed sentence per code, never
the driver's text (hosts, ports, SQL), and ``Retry-After`` is set where a retry can
help. The cause goes to the server's log instead: one line on the
``balance_ledger.http`` logger with the request id, the error class and its full
message (a traceback for the unexpected).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import errors
from . import request_ids

log = logging.getLogger("balance_ledger.http")

MEDIA_TYPE = "application/problem+json"

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


# The detail of each server failure: what happened and what to do, as the client sees
# it. The error's own message (driver text, hosts, SQL) goes to the log only.
SERVER_DETAIL = {
    "storage-error": "the database failed or could not be reached; nothing was written, "
    "retry later",
    "commit-unknown": "the database connection failed while the write was being committed, "
    "so it may or may not have been committed; retry with the same Idempotency-Key to "
    "find out",
    "retries-exhausted": "the database kept aborting the transaction under contention; "
    "nothing was written, retry",
    "node-unavailable": "the database node this server uses cannot serve now (it is not "
    "part of its cluster's primary component); nothing was written, retry or use a server "
    "on another node",
    "schema-missing": "the ledger's tables are missing from the database; nothing was "
    "written, an operator must migrate it before any request can succeed",
    "internal-error": "the server failed unexpectedly; quote the request_id to support, "
    "the cause is in the server's log",
}
# Seconds a client should wait before retrying; a code not listed gains nothing from a
# retry (schema-missing waits for an operator).
RETRY_AFTER = {
    "storage-error": 2,
    "commit-unknown": 1,
    "retries-exhausted": 1,
    "node-unavailable": 5,
}
# Context of a server failure that is safe to show: counts, never text.
_SERVER_CONTEXT = ("attempts", "batch_item")


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return _response(_body(status, code, detail, **extra), headers)


def _response(body: dict[str, Any], headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=MEDIA_TYPE, headers=headers)


def _body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    body = {"type": f"urn:balance-ledger:problem:{code}", "title": _title(code), "status": status}
    return body | {"code": code, "detail": detail, "request_id": request_ids.current(), **extra}


def _title(code: str) -> str:
    return code.replace("-", " ").capitalize()


def status_of(error: errors.BalanceError) -> tuple[int, str]:
    """The error's HTTP status and problem code, both declared on its class (errors.py)."""
    return error.http_status, error.code


def document(error: errors.BalanceError) -> tuple[int, dict[str, Any]]:
    """The error's HTTP status and problem document; a server failure is logged."""
    status, code = status_of(error)
    if status >= 500:
        log_failure(request_ids.current(), status, code, error)
        context = {name: getattr(error, name, None) for name in _SERVER_CONTEXT}
        context = {k: v for k, v in context.items() if isinstance(v, int)}
        detail = SERVER_DETAIL.get(code, SERVER_DETAIL["storage-error"])
        return status, _body(status, code, detail, **context)
    context = {name: getattr(error, name) for name in _CONTEXT if hasattr(error, name)}
    context = {k: v for k, v in context.items() if isinstance(v, int | str)}
    if isinstance(error, errors.HoldNotActive):  # its .status would shadow the HTTP one
        context["hold_status"] = error.status
    return status, _body(status, code, str(error), **context)


def log_failure(
    request_id: str | None,
    status: int,
    code: str,
    error: BaseException,
    *,
    traceback: bool = False,
) -> None:
    """The log line of a server failure: request id, class and the full message (the
    driver's text), on one line; then the traceback if asked."""
    message = " ".join(str(error).splitlines())
    log.error(
        "request %s answered %d %s: %s: %s",
        request_id,
        status,
        code,
        type(error).__name__,
        message,
        exc_info=error if traceback else None,
    )


def from_error(error: errors.BalanceError) -> JSONResponse:
    """The error's problem response; a refusal replayed from its idempotency key says so
    as a replayed row does (``Idempotent-Replayed: true``)."""
    status, body = document(error)
    headers = {"Idempotent-Replayed": "true"} if error.replayed else {}
    if status >= 500 and (seconds := RETRY_AFTER.get(body["code"])) is not None:
        headers["Retry-After"] = str(seconds)
    return _response(body, headers or None)


def install(app: FastAPI) -> None:
    """Answer every error the app can meet with a problem document."""
    # A server failure's cause is only in the log, so it must not be lost to a quiet
    # root logger (the CLI's default is CRITICAL); a level set on this logger stays.
    if log.level == logging.NOTSET and log.getEffectiveLevel() > logging.ERROR:
        log.setLevel(logging.ERROR)

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
        code = {
            401: "unauthorized",
            403: "forbidden",
            404: "not-found",
            405: "method-not-allowed",
            413: "body-too-large",  # limits.py, raised while a route reads its body
        }
        detail = error.detail if isinstance(error.detail, str) else "refused"
        headers = dict(error.headers) if error.headers else None
        status = error.status_code
        if status >= 500:  # none of ours; the detail stays in the log
            log_failure(request_ids.current(), status, "http-error", error)
            detail = SERVER_DETAIL["internal-error"]
        return problem(status, code.get(status, "http-error"), detail, headers)

    # Runs outside every middleware (Starlette's ServerErrorMiddleware): the request id
    # comes from the request, and the header is set here, not by RequestIds.
    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        request_id = request_ids.of(request)
        log_failure(request_id, 500, "internal-error", error, traceback=True)
        body = _body(500, "internal-error", SERVER_DETAIL["internal-error"])
        body["request_id"] = request_id
        headers = None if request_id is None else {request_ids.HEADER: request_id}
        return _response(body, headers)
