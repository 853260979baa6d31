"""Drills: damage the balance cache on purpose, as a bad manual edit or a buggy script
would, so the demo (and the tests) can show the verifier finding and fixing it.

The ledger never calls this; nothing but a drill should write the cache behind it.
"""

from __future__ import annotations

from sqlalchemy import Engine, update

from .tables import user_balances


def overwrite_cache(engine: Engine, user_id: int, **columns: object) -> None:
    """Set cache columns of one account's balance row directly (no lock, no audit)."""
    with engine.begin() as conn:
        stmt = update(user_balances).where(user_balances.c.user_id == user_id)
        conn.execute(stmt.values(**columns))
