"""API-key authentication: ``Authorization: Bearer <key>``, one scope per route.

A missing, malformed, unknown or revoked key is 401; a key without the route's scope
is 403. Keys are stored hashed (apikeys.py); checking one is one indexed read, which
KeyCache spares the requests that follow within a few seconds.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..models import ApiKey, Scope
from ..service import BalanceService

_bearer = HTTPBearer(auto_error=False, description="An API key from `balance apikey create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class KeyCache:
    """Keys that authenticated in the last ``seconds``: their requests skip the read.

    The price: a key revoked in the database still works in this process for up to
    ``seconds`` (0 turns the cache off). Only keys that authenticated are kept, by
    their SHA-256, never the key itself; an unknown key is looked up every time.
    """

    MAX_ENTRIES = 10_000  # a bound on memory, far above the keys a deployment has

    def __init__(
        self,
        service: BalanceService,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def cached(self, secret: str) -> ApiKey | None:
        """The key, if it authenticated less than ``seconds`` ago: no database read."""
        if self.seconds <= 0:
            return None
        with self._lock:
            cached = self._entries.get(_digest(secret))
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        return None

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key, from the cache or else read (and then cached); None: unknown or revoked."""
        if self.seconds <= 0:
            return self.service.authenticate_api_key(secret)
        now = self.clock()
        found = self.cached(secret)
        if found is not None:
            return found
        key = self.service.authenticate_api_key(secret)
        digest = _digest(secret)
        with self._lock:
            if key is None:
                self._entries.pop(digest, None)
            else:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[digest] = (now + self.seconds, key)
        return key


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def require(scope: Scope) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that lets the request through with a key allowed ``scope``."""

    async def authorised(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        if credentials is None:
            raise HTTPException(401, "send an API key: Authorization: Bearer <key>", _CHALLENGE)
        keys: KeyCache = request.app.state.keys
        secret = credentials.credentials
        # On the event loop when cached; a read of the database goes to a worker thread.
        key = keys.cached(secret) or await run_in_threadpool(keys.authenticate, secret)
        if key is None:
            raise HTTPException(401, "the API key is unknown or revoked", _CHALLENGE)
        if not key.allows(scope):
            raise HTTPException(403, f"the API key {key.name!r} lacks the {scope} scope")
        return key

    return authorised
