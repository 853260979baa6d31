"""API keys: create, authenticate, list and revoke (the HTTP service's credentials).

A key is ``bl_`` followed by 40 characters of ``secrets.token_urlsafe`` (240 random
bits). It is shown once, when created; the database keeps only its SHA-256, its
first characters (``prefix``, to tell keys apart in a list), name and scopes.

A fast hash is right here, unlike for passwords: a password needs a slow hash
(bcrypt, argon2) because it has little entropy and can be guessed from a stolen
hash. A key of 240 random bits cannot be guessed at any hashing speed, and the
lookup on every request stays one cheap, indexed read.

No secret is ever compared in Python: authentication hashes the presented key and
looks the hash up through the unique index. The timing of that lookup depends only
on the hash of what the caller sent, which tells them nothing about any stored key,
so it is as good as a constant-time comparison.

The SQL is in db/api_keys.py; this module knows nothing of HTTP or terminals.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import Connection

from . import clock
from . import validation as valid
from .db import api_keys
from .db.transactions import Database
from .errors import ApiKeyNotFound
from .models import ApiKey, Scope

KEY_MARKER = "bl_"
KEY_BYTES = 30  # token_urlsafe(30): 40 characters, 240 bits
PREFIX_LENGTH = 8  # of the 40 random characters: 48 bits shown, 192 stay secret
_KEY = re.compile(rf"{KEY_MARKER}[A-Za-z0-9_-]{{40}}")


def new_secret() -> str:
    """A fresh key: ``bl_`` and 40 URL-safe characters."""
    return KEY_MARKER + secrets.token_urlsafe(KEY_BYTES)


def key_hash(secret: str) -> str:
    """What the database stores of a key: the hex SHA-256 of all of it."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create(db: Database, name: str, scopes: Iterable[Scope | str]) -> tuple[ApiKey, str]:
    """Store a new key's hash; return its record and the key itself (shown only now)."""
    name = valid.api_key_name(name)
    granted = valid.scopes(scopes)
    secret = new_secret()  # outside the transaction: a retried attempt stores the same key

    def work(conn: Connection) -> ApiKey:
        return api_keys.insert_api_key(
            conn,
            name=name,
            key_hash=key_hash(secret),
            prefix=secret[len(KEY_MARKER) :][:PREFIX_LENGTH],
            scopes=granted,
            now=clock.now(),
        )

    return db.write(work), secret


def authenticate(db: Database, secret: object) -> ApiKey | None:
    """The active key ``secret`` is, or None (unknown, malformed or revoked).

    A malformed value (not a str, or not the key format, however long) is refused
    before any hashing or database work.
    """
    if not isinstance(secret, str) or not _KEY.fullmatch(secret):
        return None  # fullmatch of a fixed length: a huge value fails after 43 characters
    found = db.read(lambda conn: api_keys.api_key_by_hash(conn, key_hash(secret)))
    return found if found is not None and found.active else None


def list_keys(db: Database) -> list[ApiKey]:
    """Every key, revoked ones included, newest first (never a key or its hash)."""
    return db.read(api_keys.all_api_keys)


def revoke(db: Database, key_id: int) -> ApiKey:
    """Revoke a key at once; revoking it again keeps the first revocation's time."""
    key_id = valid.row_id(key_id, "API key id")

    def work(conn: Connection) -> ApiKey:
        api_keys.revoke_api_key(conn, key_id, clock.now())
        revoked = api_keys.get_api_key(conn, key_id)
        if revoked is None:
            raise ApiKeyNotFound(key_id)
        return revoked

    return db.write(work)
