"""API-key authentication: ``Authorization: Bearer <key>``, one scope per route.

A missing, malformed, unknown or revoked key is 401; a key without the route's scope
is 403. Keys are stored hashed (apikeys.py); checking one is one indexed read, which
KeyCache spares the requests that follow within a few seconds.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
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

    def authenticate(self, secret: str) -> ApiKey | None:
        if self.seconds <= 0:
            return self.service.authenticate_api_key(secret)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            cached = self._entries.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        key = self.service.authenticate_api_key(secret)
        with self._lock:
            if key is None:
                self._entries.pop(digest, None)
            else:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[digest] = (now + self.seconds, key)
        return key


def require(scope: Scope) -> Callable[..., ApiKey]:
    """A dependency that lets the request through with a key allowed ``scope``."""

    def authorised(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        if credentials is None:
            raise HTTPException(401, "send an API key: Authorization: Bearer <key>", _CHALLENGE)
        keys: KeyCache = request.app.state.keys
        key = keys.authenticate(credentials.credentials)
        if key is None:
            raise HTTPException(401, "the API key is unknown or revoked", _CHALLENGE)
        if not key.allows(scope):
            raise HTTPException(403, f"the API key {key.name!r} lacks the {scope} scope")
        return key

    return authorised
