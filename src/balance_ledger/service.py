"""BalanceService: the one place where money moves.

Every movement follows the same path (``_post``), in ONE database transaction:

    lock the account's balance row            (SELECT … FOR UPDATE / BEGIN IMMEDIATE)
    replay: same idempotency key → return the first row, write nothing
    check currency, suspension and funds      (typed error → rollback, nothing written)
    INSERT the ledger row with balance_before / balance_after
    UPDATE the cached balance, totals and status
    COMMIT                                    (lock released)
    then, outside the lock, run on_suspend / on_reactivate callbacks

The ledger (``user_balance_transactions``) is the source of truth and is only ever
appended to; the balance row is a cache of it that the lock keeps exact.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from . import validation as valid
from .db import queries
from .db.dialects import create_ledger_engine
from .db.migrate import upgrade_to_head
from .db.transactions import Database
from .errors import (
    AccountExists,
    AccountNotFound,
    AccountSuspended,
    BalanceError,
    CurrencyMismatch,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    RefundExceedsCharge,
    TransactionNotFound,
)
from .models import (
    EFFECTS,
    AccountStatus,
    Balance,
    Effect,
    Hold,
    HoldStatus,
    LedgerTotals,
    Statement,
    StatusChange,
    Transaction,
    TransactionType,
    status_for,
)
from .reconcile import (
    ColumnChange,
    Discrepancy,
    Progress,
    RebuildReport,
    Reconciler,
    SyncReport,
    SyncRun,
)

log = logging.getLogger(__name__)

StatusCallback = Callable[[StatusChange], object]

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


class BalanceService:
    """Prepaid balances: open accounts, recharge, charge, read balances and history.

    Thread-safe: one instance owns a connection pool and may be shared by threads.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
    ) -> None:
        """``max_attempts``: how often a transaction the server aborted is run before
        ``RetriesExhausted``."""
        self.engine = engine
        self._db = Database(engine, max_attempts=max_attempts)
        self._reconciler = Reconciler(self._db)
        self._on_suspend: list[StatusCallback] = [on_suspend] if on_suspend else []
        self._on_reactivate: list[StatusCallback] = [on_reactivate] if on_reactivate else []

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
        **engine_options: Any,
    ) -> Self:
        """Connect to ``sqlite:///…``, ``postgresql+psycopg://…`` or ``mysql+pymysql://…``.

        ``engine_options`` go to SQLAlchemy's ``create_engine`` (``pool_size``, …).
        """
        return cls(
            create_ledger_engine(url, **engine_options),
            max_attempts=max_attempts,
            on_suspend=on_suspend,
            on_reactivate=on_reactivate,
        )

    def create_schema(self) -> None:
        """Apply every migration up to the newest (creates the tables if missing)."""
        self._db.run_outside_transaction(upgrade_to_head)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- callbacks ---------------------------------------------------------------

    def on_suspend(self, callback: StatusCallback) -> StatusCallback:
        """Register ``callback(StatusChange)`` to run after a commit suspends an account."""
        self._on_suspend.append(callback)
        return callback

    def on_reactivate(self, callback: StatusCallback) -> StatusCallback:
        """Register ``callback(StatusChange)`` to run after a commit reactivates an account."""
        self._on_reactivate.append(callback)
        return callback

    # -- accounts ----------------------------------------------------------------

    def open_account(
        self, user_id: int, *, currency: str = "VND", credit_limit: int = 0
    ) -> Balance:
        """Create the account's balance row; opening it again with the same settings is a no-op."""
        user_id = valid.user_id(user_id)
        currency = valid.currency(currency)
        credit_limit = valid.credit_limit(credit_limit)

        def work(conn: Connection) -> Balance:
            # Insert-if-absent, then lock: two racing opens of a new account both succeed.
            queries.insert_balance(
                conn,
                self._db.backend,
                user_id=user_id,
                currency=currency,
                credit_limit=credit_limit,
                now=_now(),
            )
            account = queries.lock_balance(conn, user_id)
            assert account is not None
            if (account.currency, account.credit_limit) != (currency, credit_limit):
                raise AccountExists(
                    user_id, f"currency {account.currency} and credit limit {account.credit_limit}"
                )
            return account

        return self._db.write(work)

    def get_balance(self, user_id: int) -> Balance:
        user_id = valid.user_id(user_id)
        balance = self._db.read(lambda conn: queries.get_balance(conn, user_id))
        if balance is None:
            raise AccountNotFound(user_id)
        return balance

    def get_transactions(
        self, user_id: int, *, limit: int = 50, before_id: int | None = None
    ) -> list[Transaction]:
        """Ledger rows newest first; pass the last row's id as ``before_id`` for the next page."""
        user_id = valid.user_id(user_id)
        limit = valid.page_size(limit)
        before_id = valid.optional_row_id(before_id)

        def work(conn: Connection) -> list[Transaction]:
            if queries.get_balance(conn, user_id) is None:
                raise AccountNotFound(user_id)
            return queries.transactions_page(conn, user_id, limit=limit, before_id=before_id)

        return self._db.read(work)

    def ledger_totals(self, user_id: int) -> LedgerTotals:
        """The account's balance and totals recomputed from the ledger, not the cache."""
        user_id = valid.user_id(user_id)

        def work(conn: Connection) -> LedgerTotals:
            if queries.get_balance(conn, user_id) is None:
                raise AccountNotFound(user_id)
            return queries.ledger_totals(conn, user_id)

        return self._db.read(work)

    # -- history from the ledger (never from the cache) ---------------------------------

    def balance_at(self, user_id: int, at: datetime) -> int:
        """The balance after every movement written at or before ``at`` (aware datetime)."""
        user_id = valid.user_id(user_id)
        at = valid.instant(at, "at")

        def work(conn: Connection) -> int:
            if queries.get_balance(conn, user_id) is None:
                raise AccountNotFound(user_id)
            return queries.balance_before(conn, user_id, at, inclusive=True)

        return self._db.read(work)

    def statement(self, user_id: int, start: datetime, end: datetime) -> Statement:
        """Opening balance, the movements written in [start, end), closing balance, totals."""
        user_id = valid.user_id(user_id)
        start, end = valid.instant(start, "start"), valid.instant(end, "end")
        if end < start:
            raise InvalidRequest(f"the period ends ({end.isoformat()}) before it starts")

        def work(conn: Connection) -> Statement:
            account = queries.get_balance(conn, user_id)
            if account is None:
                raise AccountNotFound(user_id)
            opening = queries.balance_before(conn, user_id, start, inclusive=False)
            rows = queries.transactions_between(conn, user_id, start, end)
            totals: Counter[str] = Counter()
            for tx in rows:
                totals[tx.transaction_type.value] += tx.amount
            return Statement(
                user_id=user_id,
                currency=account.currency,
                start=start,
                end=end,
                opening_balance=opening,
                closing_balance=opening + sum(tx.balance_after - tx.balance_before for tx in rows),
                transactions=rows,
                totals=dict(totals),
            )

        # Rows are stamped when written, so one committing between the two statements
        # falls in the period, not before it; closing = opening + the period's rows always.
        return self._db.read(work)

    # -- money movements -------------------------------------------------------

    def recharge(
        self,
        user_id: int,
        amount: int,
        *,
        description: str | None = None,
        reference_model: str | None = None,
        reference_id: str | int | None = None,
        idempotency_key: str | None = None,
        currency: str | None = None,
    ) -> Transaction:
        """Credit ``amount`` (minor units); reactivates a suspended account it brings back."""
        movement = _movement(
            TransactionType.RECHARGE,
            user_id,
            amount,
            service_type=None,
            description=description,
            reference_model=reference_model,
            reference_id=reference_id,
            idempotency_key=idempotency_key,
            currency=currency,
        )
        return self._post(movement)

    def charge_service(
        self,
        user_id: int,
        amount: int,
        service_type: str,
        *,
        description: str | None = None,
        reference_model: str | None = None,
        reference_id: str | int | None = None,
        idempotency_key: str | None = None,
        allow_overdraft: bool = False,
        currency: str | None = None,
    ) -> Transaction:
        """Debit ``amount`` (minor units) for ``service_type``.

        Refused with ``InsufficientBalance`` when the balance would fall below
        ``-credit_limit`` and with ``AccountSuspended`` on a suspended account —
        unless ``allow_overdraft``: usage that was already delivered is always
        recorded, and an account it takes past its limit is suspended.
        """
        movement = _charge_movement(
            user_id,
            amount,
            service_type,
            description=description,
            reference_model=reference_model,
            reference_id=reference_id,
            idempotency_key=idempotency_key,
            allow_overdraft=allow_overdraft,
            currency=currency,
        )
        return self._post(movement)

    # -- reconciliation (layer 3; the logic lives in reconcile.py) --------------------------

    def verify_and_fix_balance(
        self,
        user_id: int | None = None,
        *,
        fix: bool = False,
        full: bool = False,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Compare every account's cache (or one account's) with the ledger.

        ``fix`` rewrites what disagrees, under the account's lock, and records each
        change. Incremental by default: only ledger rows after each account's checkpoint
        are read; ``full`` re-reads every row (and looks for ledger rows without a
        balance row). Every run is recorded in ``balance_sync_runs``.
        """
        if user_id is not None:
            user_id = valid.user_id(user_id)
        fix, full = valid.flag(fix, "fix"), valid.flag(full, "full")
        return self._reconciler.verify(user_id, fix=fix, full=full, progress=progress)

    def get_balance_discrepancies(self) -> list[Discrepancy]:
        """Every account out of sync, largest |difference| first (a full scan; writes nothing)."""
        return self._reconciler.discrepancies()

    def rebuild_all_balances(
        self, *, dry_run: bool = False, progress: Progress | None = None
    ) -> RebuildReport:
        """Recompute every cache column from the ledger, chunk by chunk under its locks.

        ``dry_run`` computes the same changes and writes nothing.
        """
        return self._reconciler.rebuild(dry_run=valid.flag(dry_run, "dry_run"), progress=progress)

    def sync_runs(self, limit: int = 20) -> list[SyncRun]:
        """The most recent verify / rebuild runs, newest first."""
        return self._reconciler.runs(valid.page_size(limit))

    def sync_fixes(self, run_id: int) -> list[ColumnChange]:
        """Every cache column a run rewrote, with old and new values."""
        return self._reconciler.fixes(valid.row_id(run_id, "run id"))

    def run_scheduled_job(
        self, job: str, scheduled_for: datetime
    ) -> SyncReport | RebuildReport | None:
        """Run ``verify-fix`` or ``rebuild`` for a schedule slot, once across all runners.

        Returns None (and logs why) when another runner holds the job or ran the slot.
        """
        if job not in ("verify-fix", "rebuild"):
            raise InvalidRequest(f"unknown job {job!r}: use verify-fix or rebuild")
        slot = valid.instant(scheduled_for, "scheduled_for")
        return self._reconciler.run_scheduled(job, slot)

    def charge_many(
        self, items: Iterable[Mapping[str, Any]], *, mode: str = "independent"
    ) -> list[Transaction | BalanceError]:
        """Charge many items (each the keyword arguments of ``charge_service``) at once.

        ``independent``: a list in item order of each item's ``Transaction`` or the
        typed ``BalanceError`` that refused it. ``all_or_nothing``: the first refused
        item's error is raised and nothing is written. Accounts are locked in user_id
        order, so concurrent batches never deadlock; rows are appended and balances
        updated with set-based statements, not a round trip per item.

        Independent mode commits each group of 1,000 accounts on its own: if the
        database fails part-way, the error is raised after earlier groups committed.
        Give items idempotency keys, and a retry of the whole batch is safe.
        """
        if mode not in ("independent", "all_or_nothing"):
            raise InvalidRequest(f"mode must be independent or all_or_nothing, not {mode!r}")
        atomic = mode == "all_or_nothing"
        planned = [_charge_item(item) for item in items]
        results: list[Transaction | BalanceError | None] = [
            entry if isinstance(entry, BalanceError) else None for entry in planned
        ]
        todo = [i for i, entry in enumerate(planned) if not isinstance(entry, BalanceError)]
        # One transaction for all_or_nothing (malformed items included: the first refused
        # item in order is raised); otherwise one per group of accounts, so no lock is
        # held for the whole of a huge batch.
        everything = list(range(len(planned)))
        groups = [everything] if atomic else _by_account_groups(todo, planned, BATCH_ACCOUNTS)
        for group in groups:
            work = partial(_apply_many, movements=planned, indices=group, atomic=atomic)
            outcomes, changes = self._db.write(work)
            for i, outcome in outcomes.items():
                results[i] = outcome
            for change in changes:
                self._notify(change)
        assert all(r is not None for r in results), "every item has its outcome"
        return results  # type: ignore[return-value]

    def refund(
        self,
        transaction_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Give back ``amount`` of a charge (default: all that is not refunded yet).

        Appends a ``refund`` row that names the charge; history is never changed. The
        refunds of one charge never add up to more than it (``RefundExceedsCharge``),
        races included. A refund lowers ``total_spent`` and may reactivate the account.
        """
        charge_id = valid.row_id(transaction_id, "transaction id")
        charge = self._db.read(lambda conn: queries.get_transaction(conn, charge_id))
        if charge is None:
            raise TransactionNotFound(charge_id)
        if charge.transaction_type is not TransactionType.CHARGE:
            raise InvalidRequest(
                f"ledger row {charge_id} is a {charge.transaction_type}; only charges are refunded"
            )
        movement = _movement(
            TransactionType.REFUND,
            charge.user_id,
            amount,
            service_type=charge.service_type,
            description=reason,
            reference_model=charge.reference_model,
            reference_id=charge.reference_id,
            idempotency_key=idempotency_key,
            currency=None,
            related_transaction_id=charge_id,
        )
        return self._post(movement)

    def adjust(
        self,
        user_id: int,
        delta: int,
        *,
        reason: str,
        actor: str,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """An administrator's correction: ``delta`` (signed, minor units) with who and why.

        Moves only the balance (not the totals) and ignores the credit limit; the
        suspension rule still applies to the result.
        """
        if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0:
            raise InvalidAmount(delta, "an adjustment is a non-zero int; its sign is the direction")
        movement = _movement(
            TransactionType.ADJUSTMENT,
            user_id,
            abs(delta),
            service_type=None,
            description=valid.text("description", reason, required=True),
            reference_model=None,
            reference_id=None,
            idempotency_key=idempotency_key,
            currency=None,
            actor=valid.text("actor", actor, required=True),
            direction=1 if delta > 0 else -1,
        )
        return self._post(movement)

    # -- holds: authorize → capture | void (| expire) ----------------------------------

    def authorize(
        self,
        user_id: int,
        amount: int,
        service_type: str,
        *,
        expires_at: datetime | None = None,
        ttl: timedelta | int | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Reserve ``amount`` for usage being metered; charges and holds cannot use it.

        ``expires_at`` (aware) or ``ttl`` (a timedelta or seconds) bound the hold;
        ``expire_holds`` releases it after that. Refused like a charge: unknown or
        suspended account, or more than ``available`` (balance + credit limit - held).
        """
        user_id = valid.user_id(user_id)
        amount = valid.amount(amount)
        service_type = valid.text("service_type", service_type, required=True)
        description = valid.text("description", description)
        key = valid.idempotency_key(idempotency_key)
        expiry = _expiry(expires_at, ttl)

        def work(conn: Connection) -> Hold:
            account = queries.lock_balance(conn, user_id)
            if account is None:
                raise AccountNotFound(user_id)
            if key is not None and (existing := queries.find_hold_by_key(conn, user_id, key)):
                asked = (amount, service_type, description)
                if (existing.amount, existing.service_type, existing.description) != asked:
                    raise IdempotencyConflict(user_id, key, f"hold {existing.id} differs")
                return existing
            if account.status is AccountStatus.SUSPENDED:
                raise AccountSuspended(account.user_id, account.balance, account.credit_limit)
            if amount > account.available:
                raise InsufficientBalance(user_id, amount, account.available)
            now = _now()
            held = valid.in_bigint_range(account.held + amount, "held", amount=amount)
            hold = queries.insert_hold(
                conn,
                {
                    "user_id": user_id,
                    "amount": amount,
                    "service_type": service_type,
                    "description": description,
                    "status": HoldStatus.ACTIVE.value,
                    "expires_at": expiry,
                    "idempotency_key": key,
                    "captured_amount": None,
                    "capture_transaction_id": None,
                    "created_at": now,
                    "closed_at": None,
                },
            )
            queries.set_held(conn, user_id, held, now)
            return hold

        return self._db.write(work)

    def capture(self, hold_id: int, amount: int | None = None) -> Transaction:
        """Charge up to the held amount (default: all of it) and release the hold.

        The charge goes through the one movement path; the rest of the hold is
        released. Under races exactly one capture or void of a hold wins; every other
        raises ``HoldNotActive``.
        """
        hold_id = valid.row_id(hold_id, "hold id")
        take = None if amount is None else valid.amount(amount)
        user_id = self._hold_owner(hold_id)

        def work(conn: Connection) -> _Posted:
            account, hold = self._lock_active_hold(conn, user_id, hold_id, capturing=True)
            charged = hold.amount if take is None else take
            if charged > hold.amount:
                raise InvalidAmount(charged, f"hold {hold_id} reserved only {hold.amount}")
            now = _now()
            queries.set_held(conn, user_id, account.held - hold.amount, now)
            movement = _Movement(
                user_id=user_id,
                transaction_type=TransactionType.CHARGE,
                amount=charged,
                service_type=hold.service_type,
                description=hold.description,
                reference_model="hold",
                reference_id=str(hold_id),
                idempotency_key=None,
                currency=None,
                # Reserved money for usage already delivered: always recorded.
                allow_overdraft=True,
            )
            posted = _apply(conn, movement)
            queries.close_hold(
                conn,
                hold_id,
                {
                    "status": HoldStatus.CAPTURED.value,
                    "captured_amount": charged,
                    "capture_transaction_id": posted.transaction.id,
                    "closed_at": now,
                },
            )
            return posted

        posted = self._db.write(work)
        if posted.status_change is not None:
            self._notify(posted.status_change)
        return posted.transaction

    def void(self, hold_id: int) -> Hold:
        """Release an active hold without charging anything."""
        hold_id = valid.row_id(hold_id, "hold id")
        user_id = self._hold_owner(hold_id)

        def work(conn: Connection) -> Hold:
            account, hold = self._lock_active_hold(conn, user_id, hold_id, capturing=False)
            return _release(conn, account, hold, HoldStatus.VOIDED)

        return self._db.write(work)

    def expire_holds(self, now: datetime | None = None) -> int:
        """Release every active hold past its expiry; return how many were released."""
        moment = _now() if now is None else valid.instant(now, "now")
        released = 0
        while due := self._db.read(lambda conn: queries.expired_holds(conn, moment, 500)):
            for hold_id, user_id in due:
                released += self._db.write(partial(_expire, user_id=user_id, hold_id=hold_id))
        return released

    def get_hold(self, hold_id: int) -> Hold:
        hold_id = valid.row_id(hold_id, "hold id")
        hold = self._db.read(lambda conn: queries.get_hold(conn, hold_id))
        if hold is None:
            raise HoldNotFound(hold_id)
        return hold

    def _hold_owner(self, hold_id: int) -> int:
        return self.get_hold(hold_id).user_id

    @staticmethod
    def _lock_active_hold(
        conn: Connection, user_id: int, hold_id: int, *, capturing: bool
    ) -> tuple[Balance, Hold]:
        """Lock the hold's account, then re-read the hold: only one closer can see it open."""
        account = queries.lock_balance(conn, user_id)
        hold = queries.get_hold(conn, hold_id)
        assert account is not None, "an account with holds is never deleted"
        assert hold is not None, "holds are never deleted"
        if hold.status is not HoldStatus.ACTIVE:
            raise HoldNotActive(hold_id, hold.status.value)
        if capturing and hold.expires_at is not None and hold.expires_at <= _now():
            raise HoldNotActive(hold_id, "expired")
        return account, hold

    def _post(self, movement: _Movement) -> Transaction:
        posted = self._db.write(lambda conn: _apply(conn, movement))
        if posted.status_change is not None:
            self._notify(posted.status_change)
        return posted.transaction

    def _notify(self, change: StatusChange) -> None:
        suspended = change.new_status is AccountStatus.SUSPENDED
        callbacks = self._on_suspend if suspended else self._on_reactivate
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                # The money already moved and committed; a broken hook must not hide that.
                log.exception("status callback %r failed for account %s", callback, change.user_id)


def _now() -> datetime:
    return datetime.now(UTC)


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
    account: Balance | None, movement: _Movement, existing: Transaction | None, now: datetime
) -> _Decision:
    """Every rule of a movement, in one pure function (no SQL): the caller holds the lock.

    ``existing`` is the row written earlier with the movement's idempotency key, if any.
    """
    if account is None:
        raise AccountNotFound(movement.user_id)
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
    after = _moved(account, movement)  # every check passes before anything is written
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


def _status_change(before: Balance, after: Balance, transaction_id: int) -> StatusChange | None:
    if after.status is before.status:
        return None
    return StatusChange(
        user_id=before.user_id,
        old_status=before.status,
        new_status=after.status,
        balance=after.balance,
        transaction_id=transaction_id,
    )


def _apply(conn: Connection, movement: _Movement) -> _Posted:
    """The locked read-check-write of one movement; runs inside the write transaction."""
    account = queries.lock_balance(conn, movement.user_id)
    existing = None
    if account is not None and movement.idempotency_key is not None:
        existing = queries.find_by_idempotency_key(conn, movement.user_id, movement.idempotency_key)
    if movement.transaction_type is TransactionType.REFUND and existing is None:
        movement = _within_refundable(conn, movement)
    now = _now()
    decision = _decide(account, movement, existing, now)
    if decision.replay is not None:
        return _Posted(decision.replay, status_change=None)
    assert account is not None, "_decide refuses a missing account"
    assert decision.after is not None
    assert decision.row is not None
    transaction = queries.insert_transaction(conn, decision.row)
    queries.update_balance(conn, decision.after, now=now)
    return _Posted(transaction, _status_change(account, decision.after, transaction.id))


BATCH_ACCOUNTS = 1_000  # accounts per transaction in an independent batch
MAX_HOLD = timedelta(days=366)  # the longest a hold may reserve money


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
) -> tuple[dict[int, Transaction | BalanceError], list[StatusChange]]:
    """The batch twin of _apply: lock every account once, decide each item in order with
    the same rules, then write all rows and balances with set-based statements."""
    items = {i: m for i in indices if isinstance(m := movements[i], _Movement)}
    if atomic and (malformed := [i for i in indices if i not in items]):
        first_malformed = malformed[0]
    else:
        first_malformed = None
    accounts = queries.lock_balances_of(conn, [m.user_id for m in items.values()])
    before = dict(accounts)
    keyed = {(m.user_id, m.idempotency_key) for m in items.values() if m.idempotency_key}
    earlier = queries.find_by_idempotency_keys(conn, keyed)  # type: ignore[arg-type]
    now = _now()
    outcomes: dict[int, Transaction | BalanceError] = {}
    appended: list[tuple[int, dict[str, Any]]] = []
    crossings: list[tuple[int, Balance, Balance]] = []  # (item, before, after) in order
    # A key repeated within the batch: the item that writes it, and its row as a draft.
    in_batch: dict[tuple[int, str], tuple[int, Transaction]] = {}
    same_as: dict[int, int] = {}
    for i, movement in items.items():
        if first_malformed is not None and first_malformed < i:
            break  # an earlier item was malformed: it is the one to raise
        pair = (movement.user_id, movement.idempotency_key or "")
        first = in_batch.get(pair) if movement.idempotency_key else None
        existing = first[1] if first else earlier.get(pair)
        try:
            decision = _decide(accounts.get(movement.user_id), movement, existing, now)
        except BalanceError as error:
            if atomic:
                error.batch_item = i
                raise
            outcomes[i] = error
            continue
        if first is not None:
            same_as[i] = first[0]
        elif decision.replay is not None:
            outcomes[i] = decision.replay
        else:
            assert decision.after is not None
            assert decision.row is not None
            previous = accounts[movement.user_id]
            if decision.after.status is not previous.status:
                crossings.append((i, previous, decision.after))
            accounts[movement.user_id] = decision.after
            appended.append((i, decision.row))
            if movement.idempotency_key:
                kind = TransactionType(decision.row["transaction_type"])
                draft = Transaction(**{**decision.row, "id": 0, "transaction_type": kind})
                in_batch[pair] = (i, draft)
    if first_malformed is not None:
        error = movements[first_malformed]
        assert isinstance(error, BalanceError)
        error.batch_item = first_malformed
        raise error
    written = queries.insert_transactions(conn, [row for _, row in appended])
    for (i, _), transaction in zip(appended, written, strict=True):
        outcomes[i] = transaction
    for i, first in same_as.items():
        outcomes[i] = outcomes[first]
    moved = [accounts[u] for u in sorted(accounts) if accounts[u] is not before[u]]
    queries.update_balances(conn, moved, now=now)
    # Like single charges: each change names the row that crossed the limit, in order.
    changes = []
    for i, previous, after in crossings:
        written_row = outcomes[i]
        assert isinstance(written_row, Transaction)
        if change := _status_change(previous, after, written_row.id):
            changes.append(change)
    return outcomes, changes


def _release(conn: Connection, account: Balance, hold: Hold, status: HoldStatus) -> Hold:
    now = _now()
    queries.set_held(conn, account.user_id, account.held - hold.amount, now)
    queries.close_hold(conn, hold.id, {"status": status.value, "closed_at": now})
    return dataclasses.replace(hold, status=status, closed_at=now)


def _expire(conn: Connection, *, user_id: int, hold_id: int) -> int:
    """Release one due hold, if it is still open (a capture or void may have won)."""
    account = queries.lock_balance(conn, user_id)
    hold = queries.get_hold(conn, hold_id)
    if account is None or hold is None or hold.status is not HoldStatus.ACTIVE:
        return 0
    _release(conn, account, hold, HoldStatus.EXPIRED)
    return 1


def _expiry(expires_at: object, ttl: object) -> datetime | None:
    if expires_at is not None and ttl is not None:
        raise InvalidRequest("give expires_at or ttl, not both")
    if expires_at is not None:
        expiry = valid.instant(expires_at, "expires_at")
        if not _now() < expiry <= _now() + MAX_HOLD:
            raise InvalidRequest("expires_at must be in the future and at most a year away")
        return expiry
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        seconds = ttl
    else:
        raise InvalidRequest(f"ttl must be a timedelta or whole seconds, not {type(ttl).__name__}")
    if not 0 < seconds <= MAX_HOLD.total_seconds():
        raise InvalidRequest(f"ttl must be positive and at most a year, got {seconds} s")
    return _now() + timedelta(seconds=seconds)


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


def _moved(account: Balance, movement: _Movement) -> Balance:
    """The account after the movement; InvalidAmount if a figure would overflow BIGINT."""
    no_totals = Effect(balance=movement.direction, total_recharged=0, total_spent=0)
    effect = EFFECTS.get(movement.transaction_type, no_totals)  # ADJUSTMENT: its own sign
    amount = movement.amount
    assert amount is not None, "a refund's amount is settled before it moves money"
    balance = account.balance + effect.balance * amount
    recharged = account.total_recharged + effect.total_recharged * amount
    spent = account.total_spent + effect.total_spent * amount
    return dataclasses.replace(
        account,
        balance=valid.in_bigint_range(balance, "balance", amount=amount),
        total_recharged=valid.in_bigint_range(recharged, "total_recharged", amount=amount),
        total_spent=valid.in_bigint_range(spent, "total_spent", amount=amount),
        status=status_for(balance, account.credit_limit),
    )


def _check_chargeable(account: Balance, movement: _Movement) -> None:
    if movement.allow_overdraft:
        return
    if account.status is AccountStatus.SUSPENDED:
        raise AccountSuspended(account.user_id, account.balance, account.credit_limit)
    assert movement.amount is not None
    if movement.amount > account.available:  # held money is not available
        raise InsufficientBalance(account.user_id, movement.amount, account.available)
