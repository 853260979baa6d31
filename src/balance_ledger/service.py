"""BalanceService: the public API of every money movement.

Each method validates its arguments, runs one database transaction, and calls the
status callbacks after the commit. The rules of a movement and the locked writes
live in movements.py (``_decide``, ``_apply``, ``_apply_many``). Every movement
follows the same path, in ONE database transaction:

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
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from . import apikeys, clock, events, idempotency, integrity, sinks
from . import validation as valid
from .accounts import new_account, settle_again
from .chain import ChainDigest, ChainReport
from .db import outbox, queries, refusals
from .db.dialects import create_ledger_engine
from .db.migrate import upgrade_to_head
from .db.transactions import Database
from .dispatch import Dispatcher
from .errors import (
    AccountExists,
    AccountNotFound,
    AccountSuspended,
    BalanceError,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    TransactionNotFound,
    WebhookNotFound,
)
from .holds import (
    authorize_request,
    capture_replay,
    capture_request,
    expire_hold,
    hold_expiry,
    hold_moved,
    release,
)
from .models import (
    AccountPolicy,
    AccountStatus,
    ApiKey,
    Balance,
    Delivery,
    Event,
    EventType,
    Hold,
    HoldStatus,
    KeyScope,
    LedgerTotals,
    Scope,
    Statement,
    StatusChange,
    Transaction,
    TransactionType,
    Webhook,
)
from .movements import (
    BATCH_ACCOUNTS,
    Refused,
    _apply,
    _apply_many,
    _by_account_groups,
    _charge_item,
    _charge_movement,
    _Movement,
    _movement,
    _Posted,
    _remembered,
)
from .reconcile import (
    ColumnChange,
    Discrepancy,
    Progress,
    RebuildReport,
    Reconciler,
    SyncReport,
    SyncRun,
    SyncTotals,
)

log = logging.getLogger(__name__)

StatusCallback = Callable[[StatusChange], object]
R = TypeVar("R")


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
        account_policy: AccountPolicy | None = None,
    ) -> None:
        """``max_attempts``: how often a transaction the server aborted is run before
        ``RetriesExhausted``. ``account_policy``: what ``open_account`` gives an account
        opened without one (default: the seed's rule, no low-balance alert)."""
        self.engine = engine
        self.account_policy = account_policy or AccountPolicy()
        self._db = Database(engine, max_attempts=max_attempts)
        self._reconciler = Reconciler(self._db)
        self._on_suspend: list[StatusCallback] = [on_suspend] if on_suspend else []
        self._on_reactivate: list[StatusCallback] = [on_reactivate] if on_reactivate else []
        self._callbacks: dict[str, sinks.Callback] = {}  # add_callback's, by name

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
        account_policy: AccountPolicy | None = None,
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
            account_policy=account_policy,
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

    def on_lock_wait(self, callback: Callable[[float], object]) -> Callable[[float], object]:
        """Register ``callback(seconds)``, told how long each account lock took to get.

        PostgreSQL and MariaDB: each ``SELECT … FOR UPDATE`` of balance rows. SQLite: each
        write transaction's wait for the database's write lock. Runs on the writing
        thread, inside the transaction: keep it quick (a histogram's observe).
        """
        self._db.on_lock_wait(callback)
        return callback

    # -- accounts ----------------------------------------------------------------

    def open_account(
        self,
        user_id: int,
        *,
        currency: str = "VND",
        credit_limit: int = 0,
        policy: AccountPolicy | None = None,
    ) -> Balance:
        """Create the account's balance row; opening it again with the same settings is a no-op.

        ``policy``: its low-balance threshold and suspension rule (default: the
        service's ``account_policy``); change it later with ``set_account_policy``.
        """
        user_id = valid.user_id(user_id)
        currency = valid.currency(currency)
        credit_limit = valid.credit_limit(credit_limit)
        chosen = valid.account_policy(policy or self.account_policy, credit_limit)

        def work(conn: Connection) -> Balance:
            now = clock.now()
            # Insert-if-absent, then lock: two racing opens of a new account both succeed.
            opened = new_account(user_id, currency, credit_limit, chosen, now)
            queries.insert_balance(conn, self._db.backend, opened)
            account = queries.lock_balance(conn, user_id)
            assert account is not None
            settings = (account.currency, account.credit_limit)
            if settings != (currency, credit_limit) or (policy and account.policy != chosen):
                raise AccountExists(
                    user_id,
                    f"currency {account.currency}, credit limit {account.credit_limit}"
                    f" and {account.policy}",
                )
            return account

        return self._db.write(work)

    def set_account_policy(self, user_id: int, policy: AccountPolicy) -> Balance:
        """Give the account a new threshold and suspension rule; it applies at once.

        The account is settled again under its lock (policy.py): an alert whose
        threshold it is now below fires, and a status the new rule changes changes,
        with its event and callbacks. A running grace period keeps its deadline.
        """
        user_id = valid.user_id(user_id)
        now = clock.now()
        account = self._after_commit(
            partial(settle_again, user_id=user_id, now=now, new_policy=policy)
        )
        if account is None:
            raise AccountNotFound(user_id)
        return account

    def suspend_overdue(self, now: datetime | None = None) -> int:
        """Suspend every account whose grace period ended below its suspension line.

        The scheduler runs it every minute; safe on any number of hosts (each account
        is settled again under its lock). Returns how many were suspended.
        """
        moment = clock.now() if now is None else valid.instant(now, "now")
        suspended = 0
        while due := self._db.read(lambda conn: queries.overdue_accounts(conn, moment, 500)):
            for user_id in due:
                account = self._after_commit(partial(settle_again, user_id=user_id, now=moment))
                assert account is not None, "accounts are never deleted"
                suspended += account.status is AccountStatus.SUSPENDED
        return suspended

    def purge_refusals(
        self,
        *,
        older_than: timedelta = idempotency.DEFAULT_RETENTION,
        now: datetime | None = None,
    ) -> int:
        """Forget the refusals remembered under idempotency keys more than ``older_than``
        ago (idempotency.py); a later attempt with such a key is decided afresh. The
        scheduler runs it hourly with the default, 24 h; less than an hour is refused
        (idempotency.MIN_RETENTION). Returns how many were forgotten."""
        if not isinstance(older_than, timedelta) or older_than < idempotency.MIN_RETENTION:
            raise InvalidRequest(
                f"older_than must be a timedelta of at least {idempotency.MIN_RETENTION}, "
                f"not {older_than!r}: a late attempt could outlive its refusal"
            )
        before = (clock.now() if now is None else valid.instant(now, "now")) - older_than
        forgotten = 0
        while purged := self._db.write(lambda conn: refusals.purge(conn, before, 1_000)):
            forgotten += purged
        return forgotten

    def ping(self) -> None:
        """Raise StorageError (or SchemaMissing) unless the database answers."""
        self._db.read(queries.ping)

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

    # -- reconciliation (layer 3; the logic lives in reconcile/) --------------------------

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

    # -- tamper evidence (chain.py, integrity.py) -------------------------------------------

    def verify_chain(self, user_id: int | None = None) -> ChainReport:
        """Recompute every account's hash chain (or one's) and check the anchored digests.

        Names the first row of each account whose fields were altered, or before which
        rows were deleted or inserted, and every anchored head that is gone or changed.
        Reads only; a break is reported, never repaired.
        """
        if user_id is not None:
            user_id = valid.user_id(user_id)
        return integrity.verify_chain(self._db, user_id)

    def anchor_chains(self) -> ChainDigest | None:
        """Anchor the head of every account that moved since the last digest (daily job).

        Returns the new digest (publish its ``digest`` somewhere outside this database),
        or None when no account moved; raises JobBusy while another runner anchors.
        """
        return integrity.anchor_chains(self._db)

    def sync_runs(self, limit: int = 20) -> list[SyncRun]:
        """The most recent verify / rebuild runs, newest first."""
        return self._reconciler.runs(valid.page_size(limit))

    def sync_totals(self) -> list[SyncTotals]:
        """Every recorded run added up per kind: discrepancies found, fixed (monitoring)."""
        return self._reconciler.totals()

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
        item's error is raised and nothing is written (but that item's refusal under its
        idempotency key, if it has one: idempotency.py). Accounts are locked in user_id
        order, so concurrent batches never deadlock; rows are appended and balances
        updated with set-based statements, not a round trip per item.

        Independent mode commits each group of 1,000 accounts on its own: if the
        database fails part-way, the error is raised after earlier groups committed.
        Give items idempotency keys, and a retry of the whole batch is safe.
        """
        if mode not in ("independent", "all_or_nothing"):
            raise InvalidRequest(f"mode must be independent or all_or_nothing, not {mode!r}")
        planned = [_charge_item(item) for item in items]
        return self._charge_planned(planned, atomic=mode == "all_or_nothing")

    def _charge_planned(
        self, planned: list[_Movement | BalanceError], *, atomic: bool
    ) -> list[Transaction | BalanceError]:
        """charge_many of validated items (a malformed one is its error already)."""
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
            work = partial(
                _apply_many,
                movements=planned,
                indices=group,
                atomic=atomic,
                backend=self._db.backend,
            )
            outcomes, changes = self._db.write(work)
            for i, outcome in outcomes.items():
                results[i] = outcome
            for change in changes:
                self._notify(change)
            refused = [o for o in outcomes.values() if isinstance(o, BalanceError)]
            if atomic and refused:
                raise refused[0]  # remembered under its key by the commit above
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

    # -- the event outbox (events.py) ---------------------------------------------------

    def events(
        self, *, after_id: int = 0, limit: int = 100, user_id: int | None = None
    ) -> list[Event]:
        """Outbox events with ids above ``after_id``, oldest first (one account's, or all).

        Each was written in the transaction of what it announces. Pass the last id seen
        as ``after_id`` for the next page.
        """
        after_id = valid.cursor(after_id, "after_id")
        limit = valid.page_size(limit)
        if user_id is not None:
            user_id = valid.user_id(user_id)
        return self._db.read(
            lambda conn: outbox.events_page(conn, after_id=after_id, limit=limit, user_id=user_id)
        )

    def add_webhook(
        self, url: str, *, event_types: Iterable[str] | None = None, secret: str | None = None
    ) -> tuple[Webhook, str]:
        """Subscribe ``url`` to ``event_types`` (default: every event); (webhook, secret).

        ``url``: an http(s) URL (POSTs) or a Redis stream, ``redis://host:port/db?stream=
        NAME[&maxlen=N]`` (XADDs; needs the ``redis`` extra). Deliveries are signed with
        ``secret`` (signatures.py); without one, a random secret is made. It is returned
        here; store it where the receiver can read it.
        """
        values: dict[str, Any] = {
            "url": valid.subscription_url(url),
            "event_types": valid.event_types(event_types),
            "secret": valid.webhook_secret(secret),
            "created_at": clock.now(),
        }
        webhook = self._db.write(lambda conn: outbox.insert_webhook(conn, values))
        return webhook, values["secret"]

    def add_callback(
        self, name: str, callback: sinks.Callback, *, event_types: Iterable[str] | None = None
    ) -> Webhook:
        """Deliver ``event_types`` (default: every event) to ``callback(event)`` in this
        process, through a durable subscription (url ``callback:<name>``): returned.

        Like a webhook's: at least once, in order per account, a raise is a failed attempt
        (backoff; dead after max_attempts). Only this process's dispatchers claim them, so
        events committed while no process has the callback wait for the next one that
        registers ``name`` (again: the same subscription, even after a restart).
        Registering it with other event types is refused (InvalidRequest): remove the
        subscription or use a new name, so no code change silently narrows what it gets.
        """
        name = valid.callback_name(name)
        valid.callback(callback)
        url = sinks.callback_url(name)
        kinds = valid.event_types(event_types)

        def work(conn: Connection) -> Webhook:
            now = clock.now()
            key = outbox.lock_subscribing(conn, url, now)
            subscription = next(iter(outbox.live_subscriptions(conn, url)), None)
            if subscription is None:
                values = {"url": url, "event_types": kinds, "secret": valid.webhook_secret(None)}
                subscription = outbox.insert_webhook(conn, {**values, "created_at": now})
            elif (stored := valid.event_types(subscription.event_types)) != kinds:
                raise InvalidRequest(
                    f"callback {name!r} is subscription {subscription.id}, to event types "
                    f"{stored!r}, not {kinds!r}: remove it (remove_webhook) or use a new name"
                )
            outbox.unlock_subscribing(conn, key)
            return subscription

        subscription = self._db.write(work)
        self._callbacks[name] = callback
        return subscription

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook, removed ones included (never their secrets)."""
        return self._db.read(outbox.list_webhooks)

    def remove_webhook(self, webhook_id: int) -> Webhook:
        """Stop delivering to it; its undelivered deliveries die. Again: no change.

        Any subscription: a callback's too (its undelivered deliveries die at any
        dispatcher's next pass; add_callback of the name then makes a new one)."""
        webhook_id = valid.row_id(webhook_id, "webhook id")

        def work(conn: Connection) -> Webhook:
            outbox.remove_webhook(conn, webhook_id, clock.now())
            webhook = outbox.get_webhook(conn, webhook_id)
            if webhook is None:
                raise WebhookNotFound(webhook_id)
            return webhook

        return self._db.write(work)

    def dispatcher(self, **options: Any) -> Dispatcher:
        """A Dispatcher of this database's outbox (options: see dispatch.Dispatcher); it
        serves the callbacks added to this service, now and later."""
        return Dispatcher(self._db, callbacks=self._callbacks, **options)

    def deliveries(self, event_id: int | None = None) -> list[Delivery]:
        """Deliveries, oldest first (one event's, or all): status, attempts, last error."""
        if event_id is not None:
            event_id = valid.row_id(event_id, "event id")
        return self._db.read(lambda conn: outbox.deliveries_of(conn, event_id))

    def retry_event(self, event_id: int) -> int:
        """Give an event's dead deliveries a fresh set of attempts; return how many."""
        event_id = valid.row_id(event_id, "event id")
        return self._db.write(
            lambda conn: outbox.revive_dead_deliveries(conn, event_id, clock.now())
        )

    # -- API keys (apikeys.py): the HTTP service's credentials ------------------------

    def create_api_key(self, name: str, scopes: Iterable[Scope | str]) -> tuple[ApiKey, str]:
        """A new key with ``scopes`` (read, charge, recharge, admin): (its record, the key).

        The key itself is returned only here; the database keeps its SHA-256.
        """
        return apikeys.create(self._db, name, scopes)

    def authenticate_api_key(self, secret: str) -> ApiKey | None:
        """The active key ``secret`` is, or None when it is unknown, malformed or revoked."""
        return apikeys.authenticate(self._db, secret)

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, newest first (never a key or its hash)."""
        return apikeys.list_keys(self._db)

    def revoke_api_key(self, key_id: int) -> ApiKey:
        """Revoke a key (ApiKeyNotFound if there is none); again keeps the first time."""
        return apikeys.revoke(self._db, key_id)

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
        expiry = hold_expiry(expires_at, ttl)

        request = authorize_request(amount, service_type, description)

        def work(conn: Connection) -> tuple[Hold | Refused, StatusChange | None]:
            account = queries.lock_balance(conn, user_id)
            if account is None:
                raise AccountNotFound(user_id)
            now = clock.now()
            if key is not None and (existing := queries.find_hold_by_key(conn, user_id, key)):
                asked = (amount, service_type, description)
                if (existing.amount, existing.service_type, existing.description) != asked:
                    raise IdempotencyConflict(user_id, key, f"hold {existing.id} differs")
                return dataclasses.replace(existing, replayed=True), None
            if key is not None and (refused := refusals.find(conn, user_id, KeyScope.HOLD, key)):
                raise idempotency.replay(refused, request)
            try:
                if account.status is AccountStatus.SUSPENDED:
                    raise AccountSuspended(account.user_id, account.balance, account.credit_limit)
                if amount > account.available:
                    raise InsufficientBalance(user_id, amount, account.available)
            except BalanceError as error:
                return _remembered(conn, error, user_id, KeyScope.HOLD, key, request, now), None
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
            event = events.hold(EventType.HOLD_AUTHORIZED, hold, now)
            return hold, hold_moved(conn, account, held, now, event, hold.id)

        return self._after_commit(work)

    def capture(
        self, hold_id: int, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> Transaction:
        """Charge up to the held amount (default: all of it) and release the hold.

        The charge goes through the one movement path; the rest of the hold is
        released. Under races exactly one capture or void of a hold wins; every other
        raises ``HoldNotActive`` — except a retry with the winning capture's
        ``idempotency_key``, which returns its row (``replayed``).
        """
        hold_id = valid.row_id(hold_id, "hold id")
        take = None if amount is None else valid.amount(amount)
        key = valid.idempotency_key(idempotency_key)
        user_id = self._hold_owner(hold_id)

        def work(conn: Connection) -> _Posted | Refused:
            if key is not None and (replay := capture_replay(conn, user_id, hold_id, take, key)):
                return _Posted(replay, status_change=None)
            try:
                account, hold = self._lock_active_hold(conn, user_id, hold_id, capturing=True)
            except HoldNotActive as refused:
                request = capture_request(hold_id, take)
                return _remembered(
                    conn, refused, user_id, KeyScope.LEDGER, key, request, clock.now()
                )
            charged = hold.amount if take is None else take
            if charged > hold.amount:
                raise InvalidAmount(charged, f"hold {hold_id} reserved only {hold.amount}")
            now = clock.now()
            queries.set_held(conn, user_id, account.held - hold.amount, now)
            movement = _Movement(
                user_id=user_id,
                transaction_type=TransactionType.CHARGE,
                amount=charged,
                service_type=hold.service_type,
                description=hold.description,
                reference_model="hold",
                reference_id=str(hold_id),
                idempotency_key=key,
                currency=None,
                # Reserved money for usage already delivered: always recorded.
                allow_overdraft=True,
            )
            posted = _apply(conn, self._db.backend, movement)
            if isinstance(posted, Refused):  # never: reserved money is always captured
                return posted
            closed: dict[str, Any] = {
                "status": HoldStatus.CAPTURED,
                "captured_amount": charged,
                "capture_transaction_id": posted.transaction.id,
                "closed_at": now,
            }
            queries.close_hold(conn, hold_id, {**closed, "status": HoldStatus.CAPTURED.value})
            captured = dataclasses.replace(hold, **closed)
            outbox.append_event(conn, events.hold(EventType.HOLD_CAPTURED, captured, now))
            return posted

        return self._commit(work)

    def void(self, hold_id: int) -> Hold:
        """Release an active hold without charging anything."""
        hold_id = valid.row_id(hold_id, "hold id")
        user_id = self._hold_owner(hold_id)

        def work(conn: Connection) -> tuple[Hold, StatusChange | None]:
            account, hold = self._lock_active_hold(conn, user_id, hold_id, capturing=False)
            return release(conn, account, hold, HoldStatus.VOIDED)

        return self._after_commit(work)

    def expire_holds(self, now: datetime | None = None) -> int:
        """Release every active hold past its expiry; return how many were released."""
        moment = clock.now() if now is None else valid.instant(now, "now")
        released = 0
        while due := self._db.read(lambda conn: queries.expired_holds(conn, moment, 500)):
            for hold_id, user_id in due:
                released += self._after_commit(
                    partial(expire_hold, user_id=user_id, hold_id=hold_id)
                )
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
        if capturing and hold.expires_at is not None and hold.expires_at <= clock.now():
            raise HoldNotActive(hold_id, "expired")
        return account, hold

    def _post(self, movement: _Movement) -> Transaction:
        return self._commit(lambda conn: _apply(conn, self._db.backend, movement))

    def _commit(self, work: Callable[[Connection], _Posted | Refused]) -> Transaction:
        """Run a movement's transaction; only after its commit, tell the callbacks."""

        def posted(conn: Connection) -> tuple[Transaction | Refused, StatusChange | None]:
            done = work(conn)
            if isinstance(done, Refused):
                return done, None  # raised by _after_commit
            return done.transaction, done.status_change

        return self._after_commit(posted)

    def _after_commit(
        self, work: Callable[[Connection], tuple[R | Refused, StatusChange | None]]
    ) -> R:
        """Run a transaction that may change an account's status; after the commit, tell
        the callbacks. A refusal the transaction remembered under its key is raised now."""
        result, change = self._db.write(work)
        if change is not None:
            self._notify(change)
        if isinstance(result, Refused):
            raise result.error
        return result

    def _notify(self, change: StatusChange) -> None:
        suspended = change.new_status is AccountStatus.SUSPENDED
        callbacks = self._on_suspend if suspended else self._on_reactivate
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                # The money already moved and committed; a broken hook must not hide that.
                log.exception("status callback %r failed for account %s", callback, change.user_id)
