"""The SQL of the HTTP service's API keys (apikeys.py holds the rules)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    select,
    update,
)

from ..models import (
    ApiKey,
    Scope,
    scope_names,
)
from .queries import insert_one
from .tables import balance_api_keys as api_keys

# Every column but the hash: nothing read back from this table carries it.
_API_KEY_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]


_KNOWN_SCOPES = frozenset(scope.value for scope in Scope)


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
    # A name this version does not know (a row from a newer version) grants nothing.
    names = row["scopes"].split(",")
    scopes = frozenset(Scope(name) for name in names if name in _KNOWN_SCOPES)
    return ApiKey(**{**row, "scopes": scopes})


def insert_api_key(
    conn: Connection,
    *,
    name: str,
    key_hash: str,
    prefix: str,
    scopes: frozenset[Scope],
    now: datetime,
) -> ApiKey:
    values = {
        "name": name,
        "key_hash": key_hash,
        "prefix": prefix,
        "scopes": ",".join(scope_names(scopes)),
        "created_at": now,
        "revoked_at": None,
    }
    key_id = insert_one(conn, api_keys, values)
    return ApiKey(
        id=key_id, name=name, scopes=scopes, prefix=prefix, created_at=now, revoked_at=None
    )


def api_key_by_hash(conn: Connection, key_hash: str) -> ApiKey | None:
    """The key whose hash this is, revoked or not (one probe of the unique index)."""
    stmt = select(*_API_KEY_COLUMNS).where(api_keys.c.key_hash == key_hash)
    row = conn.execute(stmt).mappings().first()
    return _api_key(row) if row else None


def get_api_key(conn: Connection, key_id: int) -> ApiKey | None:
    row = conn.execute(select(*_API_KEY_COLUMNS).where(api_keys.c.id == key_id)).mappings().first()
    return _api_key(row) if row else None


def all_api_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, newest first."""
    stmt = select(*_API_KEY_COLUMNS).order_by(api_keys.c.id.desc())
    return [_api_key(row) for row in conn.execute(stmt).mappings()]


def revoke_api_key(conn: Connection, key_id: int, now: datetime) -> None:
    """Set revoked_at unless it is set already: the first revocation's time stays."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
