"""``POST /v1/accounts/{user_id}/charges`` without FastAPI's routing and dependency
solving: the route every integrator calls, where those were most of a request's CPU.

Only a request that route would plainly accept takes this way: a bearer key the key
cache already trusts with the ``charge`` scope, a JSON body the route's own model
accepts, at most one Idempotency-Key. Every other request (no key, an unknown one, a
malformed body, ...) goes on to the FastAPI route with its body intact, which answers
it as always. A charge's answer is the route's: the same call through the same
metrics, the same row encoding, status and header, the same problem documents
(tests/http/test_fast_charge.py sends the same requests both ways).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BalanceError
from ..models import ApiKey
from ..models import Scope as KeyScope
from ..money.requests import Charge
from . import bodies, movements, problems
from .auth import KeyCache

_MATCH = re.compile(r"/v1/accounts/([0-9]{1,18})/charges")  # within a BIGINT


class FastCharges:
    """ASGI middleware, installed innermost (inside the request ids, metrics and body
    limit, which apply as to any request)."""

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self.api = api
        # The route the requests would take: the request metrics count them under it.
        self.route = next(
            route
            for route in movements.router.routes
            if isinstance(route, APIRoute) and route.endpoint is movements.charge
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = _MATCH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if matched is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if headers is None or self._key(headers) is None:
            await self.app(scope, receive, send)
            return
        received, body = await _body(receive)
        request = None if body is None else _charge(int(matched.group(1)), headers, body)
        if request is None:  # the route answers it, from the same messages
            await self.app(scope, _replaying(received, receive), send)
            return
        scope["route"] = self.route
        state = self.api.state
        try:
            row = await state.metrics.awaited("charge", state.charge, request)
        except BalanceError as error:
            answer: Any = problems.from_error(error)
        else:
            answer = bodies.posted_response(row)
        await answer(scope, receive, send)

    def _key(self, headers: dict[bytes, bytes]) -> ApiKey | None:
        scheme, _, secret = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        keys: KeyCache = self.api.state.keys
        key = keys.cached(secret)
        return key if key is not None and key.allows(KeyScope.CHARGE) else None


def _headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The request's headers by lower-case name; None if one that matters here is
    repeated or the body is not declared JSON (the route decides those)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in found and name in (b"authorization", b"idempotency-key", b"content-type"):
            return None
        found[name] = value
    kind = found.get(b"content-type", b"").split(b";")[0].strip().lower()
    return found if kind == b"application/json" else None


async def _body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages received, and the whole body; None if the client left before it
    was sent whole (the route then meets the disconnect, as it would have)."""
    received: list[Message] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return received, None
        if not message.get("more_body", False):
            return received, b"".join(m.get("body", b"") for m in received)


def _charge(user_id: int, headers: dict[bytes, bytes], body: bytes) -> Charge | None:
    """The route's request, or None where the route's parsing would refuse the body (the
    route then answers it). A charge the request's own checks refuse is refused by the
    call, with the problem the route gives it."""
    try:
        parsed = bodies.Charge.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    key = headers.get(b"idempotency-key")
    return Charge(
        user_id=user_id,
        idempotency_key=None if key is None else key.decode("latin-1"),
        **parsed.model_dump(),
    )


def _replaying(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages already received, in order."""
    pending = list(received)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
