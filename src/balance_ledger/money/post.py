"""Where a charge happens: the locked read-check-write of every money movement.

``post`` is one movement (a charge, recharge, refund, adjustment or a hold's capture):

    lock the account's balance row            (SELECT … FOR UPDATE / BEGIN IMMEDIATE)
    earlier answer under the idempotency key  (its row, or its remembered refusal;
                                               PostgreSQL: the refusal; the row is read
                                               once the INSERT met it, or before a
                                               refusal is kept: KeysAnswered)
    decide: currency, replay, suspension, funds, the new figures  (rules.py, pure)
    INSERT the ledger row, sealed onto the account's hash chain   (chain/rules.py)
    UPDATE the cached balance, totals and status
    append its events to the outbox           (outbox/events.py)

``post_unchanged`` is the common single movement in one statement, tried first on
PostgreSQL: decided by the same ``decide`` on the account as this process last left it
(or as read now, without a lock), then written in one autocommit statement only while
the account's version is what it was decided on (db/unchanged.py); a version moves with
every write of the balance row. When it cannot write (the account changed, the key is
used, a refusal, a status change or an alert to announce, a refund), nothing is
written and ``post`` runs.

``post_many`` is the same for a batch: every account locked once, each item decided in
order by the same ``decide``, then set-based INSERTs and UPDATEs. These are the only
writes of ledger rows. BalanceService (service.py) opens the transaction, runs them,
commits, and runs the status callbacks after the commit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError

from .. import clock, idempotency, policy
from ..chain.rules import Link, head_of, seal
from ..db import outbox, queries, refusals, unchanged
from ..db.dialects import Backend
from ..errors import BalanceError, RefundExceedsCharge
from ..models import Balance, KeyScope, Refusal, StatusChange, Transaction, TransactionType
from ..outbox import events
from .requests import Movement
from .rules import Refused, decide
from .snapshots import Snapshot, Snapshots

BATCH_ACCOUNTS = 1_000  # accounts per transaction in an independent batch

Posted = tuple[Transaction | Refused, StatusChange | None]


class KeysAnswered(Exception):
    """A movement or batch that left its keys to the ledger's unique constraint met a
    key that has its row already (a retry): its transaction is rolled back, and it is
    run again reading its keys first (BalanceService)."""


@contextmanager
def _used_key_answered(backend: Backend, looked_up: bool) -> Iterator[None]:
    """An INSERT of rows whose keys were not ``looked_up``: a used key is KeysAnswered."""
    try:
        yield
    except DBAPIError as error:
        if not looked_up and backend.is_key_taken(error):
            raise KeysAnswered from error
        raise


def _no_key_answered(conn: Connection, pairs: set[tuple[int, str]]) -> None:
    """KeysAnswered if any of these keys has its row: a refusal or an error decided as
    if none had is then not the answer (it may be a replay, or follow one)."""
    if queries.find_by_idempotency_keys(conn, pairs):
        raise KeysAnswered


def post(
    conn: Connection, backend: Backend, movement: Movement, *, look_up_keys: bool = True
) -> Posted:
    """The locked read-check-write of one movement; runs inside the write transaction.

    Returns the ledger row (a replay's earlier row, marked ``replayed``) and the status
    change it made. A refusal of a keyed movement is remembered under the key and
    returned as Refused; anything else is raised (rollback: nothing is written).
    ``look_up_keys=False``: the key's ledger row is not read first, only its refusal:
    the INSERT meets a used key on the ledger's unique constraint, and a refusal is
    kept only once the key is read; either way a used key ends in KeysAnswered."""
    account = queries.lock_balance(conn, movement.user_id)
    key = movement.idempotency_key
    existing: Transaction | Refusal | None = None
    head: Row[Any] | None = None
    keyed = account is not None and key is not None
    if keyed:  # the chain head comes with the key's answer: one round trip
        assert key is not None
        existing, head = refusals.answer_and_head(conn, movement.user_id, key, rows=look_up_keys)
    now = clock.now()
    asked = movement
    try:
        if movement.transaction_type is TransactionType.REFUND and existing is None:
            movement = _within_refundable(conn, movement)
        decision = decide(account, movement, existing, now)
    except BalanceError as error:
        if key is None or existing is not None:
            raise  # no key, or the key has its answer already: nothing to remember
        if not look_up_keys:
            _no_key_answered(conn, {(asked.user_id, key)})  # else its answer is the row
        refused = remembered(conn, error, asked.user_id, KeyScope.LEDGER, key, asked.request(), now)
        return refused, None
    if decision.replay is not None:
        return dataclasses.replace(decision.replay, replayed=True), None
    assert account is not None, "decide refuses a missing account"
    assert decision.after is not None
    assert decision.row is not None
    if not keyed:
        head = queries.chain_head(conn, movement.user_id)
    row = _sealed(decision.row, previous=_link(conn, movement.user_id, head))
    with _used_key_answered(backend, look_up_keys):
        transaction = queries.append_transaction(conn, backend, row, decision.after, now=now)
    change = policy.status_change(account, decision.after, transaction.id)
    outbox.append_events(conn, backend, _announced(transaction, account, decision.after, change))
    return transaction, change


@dataclass(slots=True)
class Sent:
    """The row post_unchanged sent last (id 0) and the id of the row it sealed onto."""

    draft: Transaction | None = None
    after_id: int = 0


def post_unchanged(
    conn: Connection, movement: Movement, snapshots: Snapshots, sent: Sent
) -> Transaction | None:
    """The movement written in one statement if its account is unchanged since the
    snapshot it is decided on; None if nothing was written (then ``post`` it).

    Runs in autocommit (Database.write_alone); this process's movements of the account
    take turns (Snapshots.turn), and the wait for its turn is the account's lock wait.
    ``sent`` tells ``written_before`` what to look for if the session ends mid-write."""
    user_id = movement.user_id
    started = time.perf_counter()
    with snapshots.turn(user_id):
        try:
            return _post_unchanged(conn, movement, snapshots, sent, time.perf_counter() - started)
        except BaseException:
            snapshots.forget(user_id)  # whatever became of the write
            raise


def written_before(conn: Connection, sent: Sent) -> Transaction | None:
    """The row post_unchanged sent, if it committed before the server ended its session
    (Database.write_alone's settle); None if it did not (then ``post`` it)."""
    draft = sent.draft
    if draft is None:
        return None
    assert draft.row_hash is not None
    found = unchanged.written_row_id(conn, draft.user_id, sent.after_id, draft.row_hash)
    return None if found is None else dataclasses.replace(draft, id=found)


def _post_unchanged(
    conn: Connection, movement: Movement, snapshots: Snapshots, sent: Sent, waited: float
) -> Transaction | None:
    user_id = movement.user_id
    snapshot = snapshots.get(user_id) or _snapshot(conn, user_id)
    if snapshot is None:
        return None
    account = snapshot.account
    now = clock.now()
    try:
        decision = decide(account, movement, None, now)
    except BalanceError:
        return None  # refused on what this snapshot knows: the locked path decides
    assert decision.after is not None
    assert decision.row is not None
    after = decision.after
    row = _sealed(decision.row, previous=snapshot.head)
    draft = queries.transaction_of({**row, "id": 0})
    announced = _announced(draft, account, after, policy.status_change(account, after, 0))
    if len(announced) != 1:
        return None  # a status change or an alert: the locked path names its row
    event = announced[0]
    sent.draft, sent.after_id = draft, snapshot.head.id if snapshot.head else 0
    written = unchanged.write_unchanged(
        conn,
        row,
        after,
        version=snapshot.version,
        event=event,
        id_at=_id_in(event),
        now=now,
        waited=waited,
    )
    if written is None:
        snapshots.forget(user_id)
        return None
    snapshots.keep(user_id, Snapshot(after, snapshot.version + 1, Link(written, row["row_hash"])))
    return dataclasses.replace(draft, id=written)


_DRAFT_ID = '"transaction_id":0,'


def _id_in(event: dict[str, Any]) -> int:
    """Where the row's id goes in the payload of a draft row's event (its id is 0)."""
    payload: str = event["payload"]
    return payload.index(_DRAFT_ID) + len(_DRAFT_ID) - 2


def _snapshot(conn: Connection, user_id: int) -> Snapshot | None:
    """The account as it is now; None if there is none, or its newest row is unsealed
    (written by a writer older than migration 0006: the locked path seals onto it)."""
    found = unchanged.read_snapshot(conn, user_id)
    if found is None:
        return None
    account, version, head_id, head_hash = found
    if head_id is None:
        return Snapshot(account, version, None)
    if head_hash is None:
        return None
    return Snapshot(account, version, Link(head_id, head_hash))


def _sealed(row: dict[str, Any], *, previous: Link | None) -> dict[str, Any]:
    """The row with its link in the account's hash chain (chain/rules.py)."""
    return {**row, "row_hash": seal(previous, row)}


def _link(conn: Connection, user_id: int, head: Row[Any] | None) -> Link | None:
    """The link a new row of the account seals; run under the account's lock."""
    if head is None:
        return None
    if head.row_hash is not None:
        return Link(head.id, head.row_hash)
    # The newest rows were written without a hash (by a writer older than migration
    # 0006): chain onto the hashes the backfill will give them, so it agrees with us.
    return head_of(queries.unsealed_tail(conn, user_id))


def remembered(
    conn: Connection,
    error: BalanceError,
    user_id: int,
    scope: KeyScope,
    key: str | None,
    request: dict[str, Any],
    now: datetime,
) -> Refused:
    """Keep a keyed request's refusal under its key (idempotency.py) and return it, to
    be raised once this transaction commits; raise anything else (rollback)."""
    refusal = idempotency.remembered(
        error, user_id=user_id, scope=scope, key=key, request=request, now=now
    )
    if refusal is None:
        raise error
    refusals.insert_many(conn, [refusal])
    return Refused(error)


def _announced(
    row: Transaction, before: Balance, after: Balance, change: StatusChange | None
) -> list[dict[str, Any]]:
    """The outbox rows of a ledger row just written: its movement, then the status
    change and the alerts it caused, in that order (outbox/events.py)."""
    at, cause = row.created_at, {"transaction_id": row.id}
    return [
        events.movement(row, before.currency),
        *events.account_changes(before, after, change, at, **cause),
    ]


def by_account_groups(
    indices: list[int], planned: list[Movement | BalanceError], size: int
) -> list[list[int]]:
    """Split items into groups whose accounts do not overlap, ``size`` accounts each."""
    by_user: dict[int, list[int]] = {}
    for i in indices:
        movement = planned[i]
        assert isinstance(movement, Movement)
        by_user.setdefault(movement.user_id, []).append(i)
    users = sorted(by_user)
    return [
        sorted(i for user in users[start : start + size] for i in by_user[user])
        for start in range(0, len(users), size)
    ]


def post_many(
    conn: Connection,
    *,
    movements: list[Movement | BalanceError],
    indices: list[int],
    atomic: bool,
    backend: Backend,
    look_up_keys: bool = True,
) -> tuple[dict[int, Transaction | BalanceError], list[StatusChange]]:
    """The batch twin of post: lock every account once, decide each item in order with
    the same rules, then write all rows and balances with set-based statements.

    Refusals of keyed items are remembered, as by post. ``atomic``: the first refused
    item is the only outcome (raised after the commit that remembers it), or raised at
    once when it is not a refusal; nothing else is written.

    ``look_up_keys=False`` (where ``backend.keys_by_constraint``): the ledger rows of
    the items' keys are not read first, and every item is decided as new. A key that
    has its row already then fails the INSERT on the ledger's unique constraint; and
    before any item's error is the outcome (an earlier item may have been a replay that
    was decided as a charge), every key is read. Either way: KeysAnswered."""
    items = {i: m for i in indices if isinstance(m := movements[i], Movement)}
    if atomic and (malformed := [i for i in indices if i not in items]):
        first_malformed = malformed[0]
    else:
        first_malformed = None
    accounts = queries.lock_balances_of(conn, [m.user_id for m in items.values()])
    before = dict(accounts)
    keyed: set[tuple[int, str]] = {
        (m.user_id, m.idempotency_key) for m in items.values() if m.idempotency_key
    }
    kept = refusals.find_many(conn, KeyScope.LEDGER, keyed)
    rows_of = keyed if look_up_keys else set(kept)  # a row wins over a refusal (as post)
    earlier: dict[tuple[int, str], Transaction | Refusal] = {
        **kept,
        **queries.find_by_idempotency_keys(conn, rows_of),
    }
    now = clock.now()
    outcomes: dict[int, Transaction | BalanceError] = {}
    appended: list[tuple[int, dict[str, Any]]] = []
    settled: dict[int, tuple[Balance, Balance]] = {}  # item: its account before, after
    # A key repeated within the batch: the item that answers it first, and its row as a
    # draft or its refusal.
    in_batch: dict[tuple[int, str], tuple[int, Transaction | Refusal]] = {}
    same_as: dict[int, int] = {}
    remembered: list[Refusal] = []
    for i, movement in items.items():
        if first_malformed is not None and first_malformed < i:
            break  # an earlier item was malformed: it is the one to raise
        pair = (movement.user_id, movement.idempotency_key or "")
        first = in_batch.get(pair) if movement.idempotency_key else None
        existing = first[1] if first else earlier.get(pair)
        try:
            decision = decide(accounts.get(movement.user_id), movement, existing, now)
        except BalanceError as error:
            refusal = None
            if movement.idempotency_key is not None and existing is None:
                refusal = idempotency.remembered(
                    error,
                    user_id=movement.user_id,
                    scope=KeyScope.LEDGER,
                    key=movement.idempotency_key,
                    request=movement.request(),
                    now=now,
                )
            if atomic:
                error.batch_item = i
                if not look_up_keys:
                    _no_key_answered(conn, keyed)  # an earlier item may be a replay
                if refusal is None:
                    raise
                refusals.insert_many(conn, [refusal])
                return {i: error}, []
            if refusal is not None:
                remembered.append(refusal)
                in_batch[pair] = (i, refusal)
            outcomes[i] = error
            continue
        if first is not None:
            same_as[i] = first[0]
        elif decision.replay is not None:
            outcomes[i] = dataclasses.replace(decision.replay, replayed=True)
        else:
            assert decision.after is not None
            assert decision.row is not None
            settled[i] = (accounts[movement.user_id], decision.after)
            accounts[movement.user_id] = decision.after
            appended.append((i, decision.row))
            if movement.idempotency_key:
                kind = TransactionType(decision.row["transaction_type"])
                draft = Transaction(**{**decision.row, "id": 0, "transaction_type": kind})
                in_batch[pair] = (i, draft)
    if first_malformed is not None:
        malformed_item = movements[first_malformed]
        assert isinstance(malformed_item, BalanceError)
        malformed_item.batch_item = first_malformed
        raise malformed_item
    if not look_up_keys and outcomes:
        _no_key_answered(conn, keyed)  # an error, refused or not, may follow a replay
    refusals.insert_many(conn, remembered)
    outcomes.update(_insert_sealed(conn, backend, appended, look_up_keys))
    for i, answered_by in same_as.items():
        written = outcomes[answered_by]
        assert isinstance(written, Transaction)
        outcomes[i] = dataclasses.replace(written, replayed=True)
    moved = [accounts[u] for u in sorted(accounts) if accounts[u] is not before[u]]
    queries.update_balances(conn, moved, now=now)
    # Like single charges: each change names the row that crossed the limit, in order.
    changes: list[StatusChange] = []
    announced = []
    for i, _ in appended:  # item order, which is each account's order
        written_row = outcomes[i]
        assert isinstance(written_row, Transaction)
        previous, after = settled[i]
        change = policy.status_change(previous, after, written_row.id)
        changes += [change] if change else []
        announced += _announced(written_row, previous, after, change)
    outbox.append_events(conn, backend, announced)
    return outcomes, changes


def _insert_sealed(
    conn: Connection,
    backend: Backend,
    appended: list[tuple[int, dict[str, Any]]],
    looked_up: bool,
) -> dict[int, Transaction]:
    """Insert a batch's rows, each sealed onto its account's previous row.

    A row seals its predecessor's id. On PostgreSQL the ids are drawn from the sequence
    first, so every row is sealed before one INSERT; elsewhere an id is known only once
    its row is in, so rows go in rounds (the first new row of every account, then the
    second, …), as many INSERTs as the busiest account has rows in the batch.
    """
    newest = queries.chain_heads(conn, [row["user_id"] for _, row in appended])
    heads = {user: _link(conn, user, head) for user, head in newest.items()}
    ids = queries.reserve_ledger_ids(conn, backend, len(appended))
    if ids is not None:
        rows = []
        for (_, row), row_id in zip(appended, ids, strict=True):  # ascending in item order
            rows.append(
                sealed := _sealed({**row, "id": row_id}, previous=heads.get(row["user_id"]))
            )
            heads[row["user_id"]] = Link(row_id, sealed["row_hash"])
        with _used_key_answered(backend, looked_up):
            written = queries.insert_numbered_transactions(conn, backend, rows)
        return {i: tx for (i, _), tx in zip(appended, written, strict=True)}
    rounds: list[list[tuple[int, dict[str, Any]]]] = []
    seen: dict[int, int] = {}
    for item in appended:  # item order is each account's chain order
        user = item[1]["user_id"]
        seen[user] = seen.get(user, -1) + 1
        if seen[user] == len(rounds):
            rounds.append([])
        rounds[seen[user]].append(item)
    by_item: dict[int, Transaction] = {}
    for batch in rounds:
        rows = [_sealed(row, previous=heads.get(row["user_id"])) for _, row in batch]
        for (i, _), transaction in zip(batch, queries.insert_transactions(conn, rows), strict=True):
            by_item[i] = transaction
            heads[transaction.user_id] = Link(transaction.id, transaction.row_hash or "")
    return by_item


def _within_refundable(conn: Connection, refund: Movement) -> Movement:
    """The refund with its amount settled; never more than what is left of its charge.

    Runs under the account's lock, which every refund of the charge takes too, so
    racing refunds see each other and together never exceed the charge.
    """
    assert refund.related_transaction_id is not None
    charge = queries.get_transaction(conn, refund.related_transaction_id)
    assert charge is not None, "checked before the transaction began; the ledger only grows"
    refundable = charge.amount - queries.refunded_amount(conn, charge.id)
    amount = refundable if refund.amount is None else refund.amount
    if refundable == 0 or amount > refundable:
        raise RefundExceedsCharge(charge.id, amount or charge.amount, refundable)
    return dataclasses.replace(refund, amount=amount)
