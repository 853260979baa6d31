"""The rules of a money movement, and the locked writes that apply them.

``_decide`` holds every rule (currency, idempotent replay, suspension, funds, the
new figures) as one pure function; ``_apply`` wraps it in the account's row lock for
one movement and ``_apply_many`` for a batch, so a single charge and a batch item can
never follow different rules. BalanceService (service.py) validates, opens the
transaction, calls these, and runs callbacks after the commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from . import clock, events, idempotency, policy
from . import validation as valid
from .chain import Link, head_of, seal
from .db import outbox, queries, refusals
from .db.dialects import Backend
from .errors import (
    AccountNotFound,
    AccountSuspended,
    BalanceError,
    CurrencyMismatch,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    RefundExceedsCharge,
)
from .models import (
    EFFECTS,
    AccountStatus,
    Balance,
    Effect,
    KeyScope,
    Refusal,
    StatusChange,
    Transaction,
    TransactionType,
)

# The columns that identify a request: a replay must match them all.
_REQUEST_FIELDS = (
    "transaction_type",
    "amount",
    "service_type",
    "description",
    "reference_model",
    "reference_id",
    "related_transaction_id",
    "actor",
)


@dataclass(frozen=True, slots=True)
class _Movement:
    """A validated request to append one ledger row."""

    user_id: int
    transaction_type: TransactionType
    amount: int | None  # None only for a refund of whatever is left of its charge
    service_type: str | None
    description: str | None
    reference_model: str | None
    reference_id: str | None
    idempotency_key: str | None
    currency: str | None
    allow_overdraft: bool = False
    related_transaction_id: int | None = None
    actor: str | None = None
    direction: int = +1  # an adjustment's sign; every other type's is in EFFECTS

    def request(self) -> dict[str, Any]:
        """What identifies the request as asked: a remembered refusal's fingerprint."""
        return {
            **{field: getattr(self, field) for field in _REQUEST_FIELDS},
            "transaction_type": self.transaction_type.value,
            "direction": self.direction,
            "currency": self.currency,
            "allow_overdraft": self.allow_overdraft,
        }

    def differences(self, existing: Transaction) -> list[str]:
        fields = [f for f in _REQUEST_FIELDS if not (f == "amount" and self.amount is None)]
        found = [
            f"{field} {getattr(existing, field)!r} != {getattr(self, field)!r}"
            for field in fields
            if getattr(existing, field) != getattr(self, field)
        ]
        if self.transaction_type is TransactionType.ADJUSTMENT:
            existing_direction = 1 if existing.balance_after > existing.balance_before else -1
            if existing_direction != self.direction:
                found.append("the adjustment's sign differs")
        return found


@dataclass(frozen=True, slots=True)
class _Posted:
    transaction: Transaction
    status_change: StatusChange | None


@dataclass(frozen=True, slots=True)
class Refused:
    """What a unit of work returns instead of raising a refusal it remembered under the
    request's key (_remembered): the facade raises ``error`` after the COMMIT that keeps
    it (raising inside would roll the remembering back)."""

    error: BalanceError


def _movement(
    transaction_type: TransactionType,
    user_id: object,
    amount: object,
    *,
    service_type: str | None,
    description: object,
    reference_model: object,
    reference_id: object,
    idempotency_key: object,
    currency: object,
    allow_overdraft: object = False,
    related_transaction_id: int | None = None,
    actor: str | None = None,
    direction: int = +1,
) -> _Movement:
    if not isinstance(allow_overdraft, bool):
        raise InvalidRequest("allow_overdraft must be a bool")
    whatever_is_left = amount is None and transaction_type is TransactionType.REFUND
    return _Movement(
        user_id=valid.user_id(user_id),
        transaction_type=transaction_type,
        amount=None if whatever_is_left else valid.amount(amount),
        service_type=service_type,
        description=valid.text("description", description),
        reference_model=valid.text("reference_model", reference_model),
        reference_id=valid.reference_id(reference_id),
        idempotency_key=valid.idempotency_key(idempotency_key),
        currency=None if currency is None else valid.currency(currency),
        allow_overdraft=allow_overdraft,
        related_transaction_id=related_transaction_id,
        actor=actor,
        direction=direction,
    )


@dataclass(frozen=True, slots=True)
class _Decision:
    """What a movement does to an account: replay an earlier row, or append one."""

    replay: Transaction | None = None
    after: Balance | None = None
    row: dict[str, Any] | None = None  # the ledger row's columns but id


def _decide(
    account: Balance | None,
    movement: _Movement,
    existing: Transaction | Refusal | None,
    now: datetime,
) -> _Decision:
    """Every rule of a movement, in one pure function (no SQL): the caller holds the lock.

    ``existing`` is what an earlier attempt with the movement's idempotency key left, if
    any: its row, or its refusal (idempotency.py), which is the answer again.
    """
    if account is None:
        raise AccountNotFound(movement.user_id)
    if isinstance(existing, Refusal):
        raise idempotency.replay(existing, movement.request())
    # Currency first: a request in the wrong currency is wrong, retried or not.
    if movement.currency is not None and movement.currency != account.currency:
        raise CurrencyMismatch(account.user_id, account.currency, movement.currency)
    if existing is not None:
        differences = movement.differences(existing)
        if differences:
            key = movement.idempotency_key or ""
            raise IdempotencyConflict(movement.user_id, key, "; ".join(differences))
        return _Decision(replay=existing)
    if movement.transaction_type is TransactionType.CHARGE:
        _check_chargeable(account, movement)
    after = _moved(account, movement, now)  # every check passes before anything is written
    row = {
        "user_id": movement.user_id,
        "transaction_type": movement.transaction_type.value,
        "amount": movement.amount,
        "balance_before": account.balance,
        "balance_after": after.balance,
        "service_type": movement.service_type,
        "description": movement.description,
        "reference_model": movement.reference_model,
        "reference_id": movement.reference_id,
        "idempotency_key": movement.idempotency_key,
        "created_at": now,
        "related_transaction_id": movement.related_transaction_id,
        "actor": movement.actor,
    }
    return _Decision(after=after, row=row)


def _sealed(row: dict[str, Any], *, previous: Link | None) -> dict[str, Any]:
    """The row with its link in the account's hash chain (chain.py)."""
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


def _apply(conn: Connection, backend: Backend, movement: _Movement) -> _Posted | Refused:
    """The locked read-check-write of one movement; runs inside the write transaction.
    A refusal of a keyed movement is remembered and returned, anything else raised."""
    account = queries.lock_balance(conn, movement.user_id)
    key = movement.idempotency_key
    existing = None
    if account is not None and key is not None:
        existing = refusals.earlier_answer(conn, movement.user_id, key)
    now = clock.now()
    asked = movement
    try:
        if movement.transaction_type is TransactionType.REFUND and existing is None:
            movement = _within_refundable(conn, movement)
        decision = _decide(account, movement, existing, now)
    except BalanceError as error:
        if key is None or existing is not None:
            raise  # no key, or the key has its answer already: nothing to remember
        return _remembered(conn, error, asked.user_id, KeyScope.LEDGER, key, asked.request(), now)
    if decision.replay is not None:
        return _Posted(dataclasses.replace(decision.replay, replayed=True), status_change=None)
    assert account is not None, "_decide refuses a missing account"
    assert decision.after is not None
    assert decision.row is not None
    head = _link(conn, movement.user_id, queries.chain_head(conn, movement.user_id))
    row = _sealed(decision.row, previous=head)
    transaction = queries.append_transaction(conn, backend, row, decision.after, now=now)
    change = policy.status_change(account, decision.after, transaction.id)
    outbox.append_events(conn, backend, _announced(transaction, account, decision.after, change))
    return _Posted(transaction, change)


def _remembered(
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
    change and the alerts it caused, in that order (events.py)."""
    at, cause = row.created_at, {"transaction_id": row.id}
    return [
        events.movement(row, before.currency),
        *events.account_changes(before, after, change, at, **cause),
    ]


BATCH_ACCOUNTS = 1_000  # accounts per transaction in an independent batch


def _charge_movement(
    user_id: object,
    amount: object,
    service_type: object,
    *,
    description: object = None,
    reference_model: object = None,
    reference_id: object = None,
    idempotency_key: object = None,
    allow_overdraft: object = False,
    currency: object = None,
) -> _Movement:
    return _movement(
        TransactionType.CHARGE,
        user_id,
        amount,
        service_type=valid.text("service_type", service_type, required=True),
        description=description,
        reference_model=reference_model,
        reference_id=reference_id,
        idempotency_key=idempotency_key,
        currency=currency,
        allow_overdraft=allow_overdraft,
    )


def _charge_item(item: object) -> _Movement | BalanceError:
    """One batch item, validated; a malformed one becomes its error."""
    if not isinstance(item, Mapping):
        return InvalidRequest(f"a batch item is a mapping of charge arguments, not {item!r}")
    try:
        return _charge_movement(**item)
    except BalanceError as error:
        return error
    except TypeError as error:  # unknown or missing argument names
        return InvalidRequest(f"bad batch item {dict(item)!r}: {error}")


def _by_account_groups(
    indices: list[int], planned: list[_Movement | BalanceError], size: int
) -> list[list[int]]:
    """Split items into groups whose accounts do not overlap, ``size`` accounts each."""
    by_user: dict[int, list[int]] = {}
    for i in indices:
        movement = planned[i]
        assert isinstance(movement, _Movement)
        by_user.setdefault(movement.user_id, []).append(i)
    users = sorted(by_user)
    return [
        sorted(i for user in users[start : start + size] for i in by_user[user])
        for start in range(0, len(users), size)
    ]


def _apply_many(
    conn: Connection,
    *,
    movements: list[_Movement | BalanceError],
    indices: list[int],
    atomic: bool,
    backend: Backend,
) -> tuple[dict[int, Transaction | BalanceError], list[StatusChange]]:
    """The batch twin of _apply: lock every account once, decide each item in order with
    the same rules, then write all rows and balances with set-based statements.

    Refusals of keyed items are remembered, as by _apply. ``atomic``: the first refused
    item is the only outcome (raised after the commit that remembers it), or raised at
    once when it is not a refusal; nothing else is written."""
    items = {i: m for i in indices if isinstance(m := movements[i], _Movement)}
    if atomic and (malformed := [i for i in indices if i not in items]):
        first_malformed = malformed[0]
    else:
        first_malformed = None
    accounts = queries.lock_balances_of(conn, [m.user_id for m in items.values()])
    before = dict(accounts)
    keyed: set[tuple[int, str]] = {
        (m.user_id, m.idempotency_key) for m in items.values() if m.idempotency_key
    }
    earlier: dict[tuple[int, str], Transaction | Refusal] = {
        **refusals.find_many(conn, KeyScope.LEDGER, keyed),
        **queries.find_by_idempotency_keys(conn, keyed),
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
            decision = _decide(accounts.get(movement.user_id), movement, existing, now)
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
    refusals.insert_many(conn, remembered)
    outcomes.update(_insert_sealed(conn, backend, appended))
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
    conn: Connection, backend: Backend, appended: list[tuple[int, dict[str, Any]]]
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


def _within_refundable(conn: Connection, refund: _Movement) -> _Movement:
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


def _moved(account: Balance, movement: _Movement, now: datetime) -> Balance:
    """The account after the movement, settled by its policy (policy.py); InvalidAmount
    if a figure would overflow BIGINT."""
    no_totals = Effect(balance=movement.direction, total_recharged=0, total_spent=0)
    effect = EFFECTS.get(movement.transaction_type, no_totals)  # ADJUSTMENT: its own sign
    amount = movement.amount
    assert amount is not None, "a refund's amount is settled before it moves money"
    balance = account.balance + effect.balance * amount
    recharged = account.total_recharged + effect.total_recharged * amount
    spent = account.total_spent + effect.total_spent * amount
    return policy.settle(
        account,
        balance=valid.in_bigint_range(balance, "balance", amount=amount),
        total_recharged=valid.in_bigint_range(recharged, "total_recharged", amount=amount),
        total_spent=valid.in_bigint_range(spent, "total_spent", amount=amount),
        held=account.held,
        now=now,
    )


def _check_chargeable(account: Balance, movement: _Movement) -> None:
    if movement.allow_overdraft:
        return
    if account.status is AccountStatus.SUSPENDED:
        raise AccountSuspended(account.user_id, account.balance, account.credit_limit)
    assert movement.amount is not None
    if movement.amount > account.available:  # held money is not available
        raise InsufficientBalance(account.user_id, movement.amount, account.available)
