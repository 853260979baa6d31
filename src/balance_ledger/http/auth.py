"""API-key authentication: ``Authorization: Bearer <key>``, one scope per route.

A missing, malformed, unknown or revoked key is 401; a key without the route's scope
is 403. Keys are stored hashed (apikeys.py); checking one is one indexed read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..models import ApiKey, Scope
from ..service import BalanceService

_bearer = HTTPBearer(auto_error=False, description="An API key from `balance apikey create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(scope: Scope) -> Callable[..., ApiKey]:
    """A dependency that lets the request through with a key allowed ``scope``."""

    def authorised(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        if credentials is None:
            raise HTTPException(401, "send an API key: Authorization: Bearer <key>", _CHALLENGE)
        service: BalanceService = request.app.state.service
        key = service.authenticate_api_key(credentials.credentials)
        if key is None:
            raise HTTPException(401, "the API key is unknown or revoked", _CHALLENGE)
        if not key.allows(scope):
            raise HTTPException(403, f"the API key {key.name!r} lacks the {scope} scope")
        return key

    return authorised
