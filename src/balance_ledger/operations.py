"""The operators' half of BalanceService: what the scheduler, the CLI's admin commands
and the HTTP service's admin routes run, as opposed to a billing app's calls (service.py).

Reconciliation (verify, fix, rebuild and their audit: reconcile/), the hash chain's
verification and anchors (chain/anchors.py), the outbox's events, subscriptions and
deliveries (outbox/), API keys (apikeys.py), and forgetting old refusals
(idempotency.py); the sweeps that suspend overdue accounts and release expired
holds. Like every facade method, each validates, runs one unit of work per transaction
(facade.py) and returns; BalanceService inherits them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from . import apikeys, clock, idempotency
from . import validation as valid
from .chain import anchors
from .chain.rules import ChainDigest, ChainReport
from .db import outbox, queries, refusals
from .errors import InvalidRequest
from .facade import Facade
from .models import AccountStatus, ApiKey, Delivery, Event, Scope, Webhook
from .money import accounts, holds
from .outbox import sinks, subscriptions
from .outbox.dispatch import Dispatcher
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

SWEEP = 500  # accounts or holds a sweep job reads per round, each settled on its own


class Operations(Facade):
    """Reconcile, verify the chain, manage subscriptions and API keys; the sweeps."""

    # -- sweeps the scheduler runs every minute (money/) ------------------------------

    def suspend_overdue(self, now: datetime | None = None) -> int:
        """Suspend every account whose grace period ended below its suspension line.

        The scheduler runs it every minute; safe on any number of hosts (each account
        is settled again under its lock). Returns how many were suspended.
        """
        moment = clock.now() if now is None else valid.instant(now, "now")
        suspended = 0
        while due := self._db.read(lambda conn: queries.overdue_accounts(conn, moment, SWEEP)):
            for user_id in due:
                settle = partial(accounts.settle_again, user_id=user_id, now=moment)
                account = self._run(settle, user_id)
                assert account is not None, "accounts are never deleted"
                suspended += account.status is AccountStatus.SUSPENDED
        return suspended

    def expire_holds(self, now: datetime | None = None) -> int:
        """Release every active hold past its expiry; return how many were released."""
        moment = clock.now() if now is None else valid.instant(now, "now")
        released = 0
        while due := self._db.read(lambda conn: queries.expired_holds(conn, moment, SWEEP)):
            for hold_id, user_id in due:
                expire = partial(holds.expire_hold, user_id=user_id, hold_id=hold_id)
                released += self._run(expire, user_id)
        return released

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
        """Every account out of sync, largest |difference| first (a full scan; writes
        nothing; on the read replica if there is one)."""
        return self._heavy_read(lambda db: Reconciler(db).discrepancies())

    def rebuild_all_balances(
        self, *, dry_run: bool = False, progress: Progress | None = None
    ) -> RebuildReport:
        """Recompute every cache column from the ledger, chunk by chunk under its locks.

        ``dry_run`` computes the same changes and writes nothing.
        """
        return self._reconciler.rebuild(dry_run=valid.flag(dry_run, "dry_run"), progress=progress)

    # -- tamper evidence (chain/) ---------------------------------------------------------

    def verify_chain(self, user_id: int | None = None) -> ChainReport:
        """Recompute every account's hash chain (or one's) and check the anchored digests.

        Names the first row of each account whose fields were altered, or before which
        rows were deleted or inserted, and every anchored head that is gone or changed.
        Reads only (on the read replica if there is one); a break is reported, never
        repaired.
        """
        if user_id is not None:
            user_id = valid.user_id(user_id)
        return self._heavy_read(partial(anchors.verify_chain, user_id=user_id))

    def anchor_chains(self) -> ChainDigest | None:
        """Anchor the head of every account that moved since the last digest (daily job).

        Returns the new digest (publish its ``digest`` somewhere outside this database),
        or None when no account moved; raises JobBusy while another runner anchors.
        """
        return anchors.anchor_chains(self._db)

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

    # -- the event outbox (outbox/) ------------------------------------------------------

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
        ``secret`` (outbox/signatures.py); without one, a random secret is made. It is returned
        here; store it where the receiver can read it.
        """
        values = subscriptions.webhook_values(url, event_types, secret)
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
        kinds = valid.event_types(event_types)
        work = partial(subscriptions.subscribe_callback, name=name, event_types=kinds)
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
        return self._db.write(partial(subscriptions.remove, webhook_id=webhook_id))

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
