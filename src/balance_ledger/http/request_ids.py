"""A request id on every answer: the client's well-formed ``X-Request-Id``, or a fresh one.

The id goes back in the ``X-Request-Id`` response header and in every problem document
(``request_id``), and the server's log lines about a failed request name it, so a
client quoting it to support leads straight to the cause in the log.
"""

from __future__ import annotations

import os
import random
import re
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-Id"
# Ids echoed into headers and logs: short, and nothing that could split a line or a header.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_STATE_KEY = "request_id"
# Seeded from os.urandom when the process starts, and again in a forked child, so no
# two processes share a stream; ids need to be unique, not secret.
_random = random.Random()
_random_bits = _random.getrandbits
os.register_at_fork(after_in_child=_random.seed)
_current: ContextVar[str | None] = ContextVar("balance_request_id", default=None)


def current() -> str | None:
    """The id of the request being answered (None outside a request)."""
    return _current.get()


def of(request: Request) -> str | None:
    """The id of ``request``; also where the middleware's context has already been left
    (the app's 500 handler runs outside every middleware)."""
    found = request.scope.get("state", {}).get(_STATE_KEY)
    return found if isinstance(found, str) else current()


def chosen(scope: Scope) -> str:
    """The client's ``X-Request-Id`` if well-formed, else a fresh one: 32 random hex digits
    (128 bits from a generator seeded by the OS, without a system call per request)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-request-id":
            text: str = value.decode("latin-1")
            if _WELL_FORMED.fullmatch(text):
                return text
            break
    return f"{_random_bits(128):032x}"


class RequestIds:
    """ASGI middleware (install it outermost): picks the request's id, exposes it to
    handlers (``current()``, and ``request.state.request_id``) and adds the
    ``X-Request-Id`` header to the answer, unless the answer carries it already."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = chosen(scope)
        scope.setdefault("state", {})[_STATE_KEY] = request_id

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:
                    headers.append(HEADER, request_id)
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, stamped)
        finally:
            _current.reset(token)
