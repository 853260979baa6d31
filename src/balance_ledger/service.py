"""BalanceService: the library's public API, and the facade over every capability.

Each method validates its arguments, picks a unit of work, runs it in ONE database
transaction and, after the commit, tells the status callbacks (``_run``, facade.py;
db/transactions.py retries a transaction the server aborted). The units of work and
their rules live in the capability packages:

    money/post.py           where a charge happens (every ledger row: single and batch)
    money/holds.py          authorize → capture | void (| expire)
    money/accounts.py       accounts opened or settled again without a ledger row
    money/history.py        statements and other reads of the ledger's past

This module holds what a billing app calls; the class inherits what operators and the
scheduler run from operations.py (reconcile/, chain/, outbox/, apikeys.py, the sweeps)
and its construction, callbacks and transaction runner from facade.py.

The ledger (``user_balance_transactions``) is the source of truth and is only ever
appended to; the balance row is a cache of it that the account's lock keeps exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, Unpack

from . import clock
from . import validation as valid
from .db import queries
from .db.transactions import Work
from .errors import (
    AccountNotFound,
    BalanceError,
    HoldNotFound,
    InvalidRequest,
)
from .models import (
    AccountPolicy,
    Balance,
    Hold,
    LedgerTotals,
    Statement,
    Transaction,
)
from .money import accounts, history, holds, requests
from .money.post import (
    BATCH_ACCOUNTS,
    KeysAnswered,
    Sent,
    by_account_groups,
    post,
    post_many,
    post_unchanged,
    written_before,
)
from .money.requests import (
    Charge,
    ChargeOptions,
    Movement,
    Recharge,
    RechargeOptions,
    charge_item,
)
from .operations import Operations

T = TypeVar("T")


class BalanceService(Operations):
    """Prepaid balances: open accounts, recharge, charge, hold, read balances and history;
    and, inherited from Operations (operations.py), what operators and the scheduler run.

    Thread-safe: one instance owns a connection pool and may be shared by threads.
    """

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

        work = partial(
            accounts.open_account,
            backend=self._db.backend,
            user_id=user_id,
            currency=currency,
            credit_limit=credit_limit,
            rules=chosen,
            policy_given=policy is not None,
        )
        return self._write(work, user_id)

    def set_account_policy(self, user_id: int, policy: AccountPolicy) -> Balance:
        """Give the account a new threshold and suspension rule; it applies at once.

        The account is settled again under its lock (policy.py): an alert whose
        threshold it is now below fires, and a status the new rule changes changes,
        with its event and callbacks. A running grace period keeps its deadline.
        """
        user_id = valid.user_id(user_id)
        now = clock.now()
        account = self._run(
            partial(accounts.settle_again, user_id=user_id, now=now, new_policy=policy), user_id
        )
        if account is None:
            raise AccountNotFound(user_id)
        return account

    def get_balance(self, user_id: int) -> Balance:
        return self._db.read(partial(history.existing, user_id=valid.user_id(user_id)))

    def get_transactions(
        self, user_id: int, *, limit: int = 50, before_id: int | None = None
    ) -> list[Transaction]:
        """Ledger rows newest first; pass the last row's id as ``before_id`` for the next page."""
        user_id = valid.user_id(user_id)
        limit = valid.page_size(limit)
        before_id = valid.optional_row_id(before_id)
        work = partial(history.page, user_id=user_id, limit=limit, before_id=before_id)
        return self._heavy_read(lambda db: db.read(work))

    def ledger_totals(self, user_id: int) -> LedgerTotals:
        """The account's balance and totals recomputed from the ledger, not the cache."""
        return self._db.read(partial(history.totals, user_id=valid.user_id(user_id)))

    # -- history from the ledger (never from the cache) ---------------------------------

    def balance_at(self, user_id: int, at: datetime) -> int:
        """The balance after every movement written at or before ``at`` (aware datetime)."""
        user_id = valid.user_id(user_id)
        at = valid.instant(at, "at")
        return self._db.read(partial(history.balance_at, user_id=user_id, at=at))

    def statement(self, user_id: int, start: datetime, end: datetime) -> Statement:
        """Opening balance, the movements written in [start, end), closing balance, totals."""
        user_id = valid.user_id(user_id)
        start, end = valid.instant(start, "start"), valid.instant(end, "end")
        if end < start:
            raise InvalidRequest(f"the period ends ({end.isoformat()}) before it starts")
        work = partial(history.statement, user_id=user_id, start=start, end=end)
        return self._heavy_read(lambda db: db.read(work))

    # -- money movements -------------------------------------------------------

    def recharge(
        self, user_id: int, amount: int, **options: Unpack[RechargeOptions]
    ) -> Transaction:
        """Credit ``amount`` (minor units); reactivates a suspended account it brings back.

        ``options``: ``description``, ``reference_model``, ``reference_id``,
        ``idempotency_key``, ``currency`` (money/requests.py: Recharge)."""
        return self._post(Recharge(user_id, amount, **options).movement())

    def charge(self, request: Charge) -> Transaction:
        """Debit ``request.amount`` (minor units) for ``request.service_type``.

        Refused with ``InsufficientBalance`` when the balance would fall below
        ``-credit_limit`` and with ``AccountSuspended`` on a suspended account —
        unless ``allow_overdraft``: usage that was already delivered is always
        recorded, and an account it takes past its limit is suspended.
        """
        return self._post(request.movement())

    def charge_service(
        self, user_id: int, amount: int, service_type: str, **options: Unpack[ChargeOptions]
    ) -> Transaction:
        """``charge(Charge(user_id, amount, service_type, **options))``.

        ``options``: ``description``, ``reference_model``, ``reference_id``,
        ``idempotency_key``, ``currency``, ``allow_overdraft`` (money/requests.py: Charge)."""
        return self.charge(Charge(user_id, amount, service_type, **options))

    def charge_many(
        self, items: Iterable[Charge | Mapping[str, Any]], *, mode: str = "independent"
    ) -> list[Transaction | BalanceError]:
        """Charge many items (each a ``Charge`` or a mapping of its fields) at once.

        ``independent``: a list in item order of each item's ``Transaction`` or the
        typed ``BalanceError`` that refused it. ``all_or_nothing``: the first refused
        item's error is raised and nothing is written (but that item's refusal under its
        idempotency key, if it has one: idempotency.py). Accounts are locked in user_id
        order, so concurrent batches never deadlock; rows are appended and balances
        updated with set-based statements, not a round trip per item.

        Independent mode commits each group of 1,000 accounts on its own (with node
        affinity, each home node's accounts apart, on their node): if the database
        fails part-way, the error is raised after earlier groups committed.
        Give items idempotency keys, and a retry of the whole batch is safe.
        """
        if mode not in ("independent", "all_or_nothing"):
            raise InvalidRequest(f"mode must be independent or all_or_nothing, not {mode!r}")
        planned = [charge_item(item) for item in items]
        return self._charge_planned(planned, atomic=mode == "all_or_nothing")

    def _charge_planned(
        self, planned: list[Movement | BalanceError], *, atomic: bool
    ) -> list[Transaction | BalanceError]:
        """charge_many of validated items (a malformed one is its error already)."""
        results: list[Transaction | BalanceError | None] = [
            entry if isinstance(entry, BalanceError) else None for entry in planned
        ]
        todo = [i for i, entry in enumerate(planned) if not isinstance(entry, BalanceError)]
        # One transaction for all_or_nothing (malformed items included: the first refused
        # item in order is raised); otherwise one per group of accounts, so no lock is
        # held for the whole of a huge batch.
        # With node affinity an independent batch is split by home node first, so each
        # account is written by its own node (an atomic one is one transaction: on the
        # home of its first account).
        everything = list(range(len(planned)))
        users = [m.user_id for i in todo if isinstance(m := planned[i], Movement)]
        groups = (
            [everything]
            if atomic
            else [
                group
                for part in self.split_by_home(users)
                for group in by_account_groups([todo[p] for p in part], planned, BATCH_ACCOUNTS)
            ]
        )
        backend = self._db.backend
        for group in groups:
            work = partial(
                post_many, movements=planned, indices=group, atomic=atomic, backend=backend
            )
            first = planned[group[0]] if group else None  # a group's writes go together
            home = first.user_id if isinstance(first, Movement) else None
            write = partial(self._write, user_id=home)
            outcomes, changes = self._keys_read_if_used(write, work)
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
        charge = self._db.read(partial(history.refundable_charge, charge_id=charge_id))
        return self._post(requests.refund(charge, amount, reason, idempotency_key))

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
        return self._post(requests.adjustment(user_id, delta, reason, actor, idempotency_key))

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
        expiry = holds.hold_expiry(expires_at, ttl)
        work = partial(
            holds.authorize,
            user_id=user_id,
            amount=amount,
            service_type=service_type,
            description=description,
            key=key,
            expiry=expiry,
        )
        return self._run(work, user_id)

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
        work = partial(
            holds.capture,
            backend=self._db.backend,
            user_id=user_id,
            hold_id=hold_id,
            amount=take,
            key=key,
        )
        return self._run(work, user_id)

    def void(self, hold_id: int) -> Hold:
        """Release an active hold without charging anything."""
        hold_id = valid.row_id(hold_id, "hold id")
        user_id = self._hold_owner(hold_id)
        return self._run(partial(holds.void, user_id=user_id, hold_id=hold_id), user_id)

    def get_hold(self, hold_id: int) -> Hold:
        hold_id = valid.row_id(hold_id, "hold id")
        hold = self._db.read(lambda conn: queries.get_hold(conn, hold_id))
        if hold is None:
            raise HoldNotFound(hold_id)
        return hold

    def _hold_owner(self, hold_id: int) -> int:
        return self.get_hold(hold_id).user_id

    def _post(self, request: Movement) -> Transaction:
        """One movement: in one statement while its account is unchanged (PostgreSQL),
        else, and for every refund, under the account's lock (money/post.py)."""
        user_id, snapshots = request.user_id, self._snapshots
        if snapshots is None:
            return self._post_locked(request)
        if request.related_transaction_id is None:
            sent = Sent()  # what a write whose session ended is looked up by
            work = partial(post_unchanged, movement=request, snapshots=snapshots, sent=sent)
            written = self._db.write_alone(work, settle=partial(written_before, sent=sent))
            if written is not None:
                return written
        try:
            return self._post_locked(request)
        finally:
            with snapshots.turn(user_id):
                snapshots.forget(user_id)  # its version moved (unless nothing was written)

    def _post_locked(self, request: Movement) -> Transaction:
        locked = partial(post, backend=self._db.backend, movement=request)
        run = partial(self._run, user_id=request.user_id)
        posted: Transaction = self._keys_read_if_used(run, locked)
        return posted

    def _keys_read_if_used(self, run: Callable[[Work[Any]], T], work: Callable[..., Any]) -> T:
        """``run(work)``, its idempotency keys left to the ledger's unique constraint
        where it can tell (dialects.py: keys_by_constraint); once a key is found used
        (KeysAnswered: rolled back), ``work`` is run again reading its keys first."""
        if not self._db.backend.keys_by_constraint:
            return run(work)
        try:
            return run(partial(work, look_up_keys=False))
        except KeysAnswered:
            return run(work)
