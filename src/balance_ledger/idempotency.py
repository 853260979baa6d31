"""One answer per idempotency key: which refusals are remembered, and how they replay.

A request that carries an idempotency key is decided once. Written, its ledger row (or
hold) carries the key, and a retry returns that row. Refused for a reason of the
account's state (``BalanceError.refusal``: insufficient balance, suspended account,
currency mismatch, refund exceeding its charge, hold not active), the refusal is
remembered under the key in the same transaction (``balance_refusals``, nothing else
is written), and every later attempt with the key is answered with the same error,
the same context, ``replayed`` set — even after a recharge that would now let it
through. A late copy of the first attempt (a stalled worker, a slow network) can
therefore never turn a refusal the client was given into a charge.

Not remembered, as with other payment APIs: malformed requests (``InvalidRequest``),
unknown accounts, conflicts and storage errors; a retry with the key is decided afresh.
An attempt whose request differs from the remembered one (another amount, type, ...)
is an ``IdempotencyConflict``, as for a written row; a refusal's request is compared
as asked (a refund or capture of "all" is another request than one of an amount, and
``allow_overdraft`` and ``currency`` count). In an all_or_nothing batch, the refused
item's figures are those it met within the batch. Refusals are kept at least
``DEFAULT_RETENTION`` (``purge_refusals``, scheduled hourly, deletes older ones; never
less than ``MIN_RETENTION``); ledger rows keep their keys forever.

Pure rules; the SQL is db/refusals.py, the units of work that use it money/post.py
(movements, single and batch) and money/holds.py (authorizations and captures).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .errors import BalanceError, IdempotencyConflict, refusal_class
from .models import KeyScope, Refusal

DEFAULT_RETENTION = timedelta(hours=24)  # the least time a refusal answers its key
# A shorter retention is refused: a late first attempt (a paused worker, a client's slow
# retry loop) could then outlive its refusal and be decided again.
MIN_RETENTION = timedelta(hours=1)


def remembered(
    error: BalanceError,
    *,
    user_id: int,
    scope: KeyScope,
    key: str | None,
    request: Mapping[str, Any],
    now: datetime,
) -> Refusal | None:
    """The refusal to keep for a keyed request's first answer ``error``; None when
    there is no key to keep it under or ``error`` is not a refusal (then nothing is
    kept: the transaction rolls back)."""
    if key is None or not error.refusal or error.replayed:
        return None
    return Refusal(
        id=0,
        user_id=user_id,
        key_scope=scope,
        idempotency_key=key,
        request=dict(request),
        code=error.code,
        context=error.context(),
        created_at=now,
    )


def replay(refusal: Refusal, request: Mapping[str, Any]) -> BalanceError:
    """The answer to a later attempt with the refusal's key: the same error, marked
    ``replayed``; IdempotencyConflict when the attempt is another request."""
    names = sorted(set(refusal.request) | set(request))
    differences = [
        f"{name} {refusal.request.get(name)!r} != {request.get(name)!r}"
        for name in names
        if refusal.request.get(name) != request.get(name)
    ]
    if differences:
        detail = f"it was refused ({refusal.code}) for another request: " + "; ".join(differences)
        return IdempotencyConflict(refusal.user_id, refusal.idempotency_key, detail)
    error = refusal_class(refusal.code)(**refusal.context)
    error.replayed = True
    return error
