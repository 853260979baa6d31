"""Layer 3: verify the balance cache against the ledger, fix it, rebuild it.

The ledger is the truth; the cache (``user_balances``) must equal it:

* ``balance``, ``total_recharged`` and ``total_spent`` equal the ledger's sums
  (signs from ``models.EFFECTS``), and ``status`` follows the balance;
* every ledger row's snapshot follows its predecessor (``balance_before`` is the
  previous ``balance_after``, ``balance_after = balance_before ± amount``);
* no account has ledger rows without a balance row.

How it scales and stays safe under live charges:

* Accounts are scanned in chunks of ``CHUNK_SIZE`` user ids; each chunk is compared
  with ONE set-based statement (GROUP BY over the ledger joined to the cache), which
  reads one snapshot, so a charge committing mid-scan is never a false discrepancy.
* Incremental mode reads only the ledger rows after each account's checkpoint
  (``balance_sync_checkpoints``: last verified row id and the sums up to it).
* A fix locks the account's row, recomputes its sums inside the lock, and writes
  only if they still disagree; every rewritten column is recorded in
  ``balance_sync_fixes`` under the run's ``balance_sync_runs`` row. The ledger itself
  is never written: a broken chain is reported, not "fixed".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Row

from . import clock, events, integrity, policy
from .db import outbox, queries, sync_audit
from .db.dialects import Backend
from .db.transactions import Database
from .errors import AccountNotFound, BalanceError, StorageError
from .models import (
    AccountPolicy,
    AccountStatus,
    Balance,
    LedgerTotals,
    Serialisable,
    StatusChange,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1_000
NO_POLICY = AccountPolicy()  # an orphan's ledger has no account, so no policy
JOB_LEASE = timedelta(hours=6)  # SQLite only: how long a crashed runner blocks its job

Progress = Callable[[int, int], object]  # (accounts done, accounts in all)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Discrepancy(Serialisable):
    """An account whose cache disagrees with its ledger."""

    user_id: int
    stored_balance: int
    actual_balance: int
    stored_total_recharged: int
    actual_total_recharged: int
    stored_total_spent: int
    actual_total_spent: int
    stored_status: str | None
    expected_status: str
    difference: int  # stored balance - actual balance
    missing_balance_row: bool = False
    stored_held: int = 0
    actual_held: int = 0  # the sum of the account's active holds

    def sort_key(self) -> tuple[int, int, int]:
        """Largest |difference| first, then the largest difference in the totals."""
        totals = max(
            abs(self.stored_total_recharged - self.actual_total_recharged),
            abs(self.stored_total_spent - self.actual_total_spent),
        )
        return (-abs(self.difference), -totals, self.user_id)

    def changed_columns(self) -> list[tuple[str, object, object]]:
        """(column, stored, actual) for every cache column that is wrong."""
        pairs = [
            ("balance", self.stored_balance, self.actual_balance),
            ("total_recharged", self.stored_total_recharged, self.actual_total_recharged),
            ("total_spent", self.stored_total_spent, self.actual_total_spent),
            ("status", self.stored_status, self.expected_status),
            ("held", self.stored_held, self.actual_held),
        ]
        return [(column, old, new) for column, old, new in pairs if old != new]


@dataclass(frozen=True, slots=True)
class SyncError(Serialisable):
    """Something verify could not fix: a broken ledger chain, an orphan, a failed fix."""

    user_id: int
    transaction_id: int | None
    message: str


@dataclass(frozen=True, slots=True)
class UserSync(Serialisable):
    """One account's outcome: ``in_sync``, ``out_of_sync``, ``fixed`` or ``ledger_error``.

    ``ledger_error``: the ledger itself is in doubt (a broken chain, history changed
    since it was verified, rows the database cannot even sum); see ``SyncReport.errors``.
    Such an account is never "fixed" from its ledger.
    """

    user_id: int
    status: str
    discrepancy: Discrepancy | None = None


@dataclass(slots=True)
class SyncReport(Serialisable):
    """What a verify run found (the seed's array, plus the audit ``run_id``).

    ``details`` lists every account that was not in sync (and the one account asked
    for, when verify was given a ``user_id``).
    """

    run_id: int | None
    checked: int = 0
    synced: int = 0
    fixed: int = 0
    errors: list[SyncError] = field(default_factory=list)
    details: list[UserSync] = field(default_factory=list)

    @property
    def discrepancies(self) -> list[Discrepancy]:
        """The discrepancies left unfixed, largest first."""
        found = [d.discrepancy for d in self.details if d.status == "out_of_sync" and d.discrepancy]
        return sorted(found, key=Discrepancy.sort_key)

    @property
    def in_sync(self) -> bool:
        """True when nothing is left out of sync (after fixes) and nothing is broken."""
        return not self.errors and not self.discrepancies


@dataclass(frozen=True, slots=True)
class ColumnChange(Serialisable):
    user_id: int
    column: str
    old_value: str
    new_value: str


@dataclass(slots=True)
class RebuildReport(Serialisable):
    """A rebuild: every cache column recomputed. ``dry_run`` reports without writing."""

    run_id: int | None
    dry_run: bool
    checked: int = 0
    changed: int = 0  # accounts with at least one column changed
    changes: list[ColumnChange] = field(default_factory=list)
    errors: list[SyncError] = field(default_factory=list)  # accounts left alone


@dataclass(frozen=True, slots=True)
class SyncRun(Serialisable):
    """One row of the ``balance_sync_runs`` audit table."""

    id: int
    kind: str
    fix: bool
    full_scan: bool
    user_id: int | None
    scheduled_for: datetime | None
    started_at: datetime
    finished_at: datetime | None
    checked: int
    synced: int
    fixed: int
    discrepancies: int
    errors: int
    outcome: str
    message: str | None


@dataclass(frozen=True, slots=True)
class SyncTotals(Serialisable):
    """Every recorded run of one kind (``verify`` or ``rebuild``) added up, for monitoring.

    The sums only grow (runs are never deleted), so they are counters that every host's
    runs feed, whichever process reads them.
    """

    kind: str
    runs: int
    discrepancies: int  # accounts found out of sync
    fixed: int  # accounts whose cache was rewritten
    errors: int  # accounts whose ledger was in doubt
    last_finished_at: datetime | None


# -- comparing one account --------------------------------------------------------------


def _actual(row: Row[Any]) -> LedgerTotals:
    """Checkpoint sums plus the sums of the rows after it (or all rows, in full mode)."""
    return LedgerTotals(
        user_id=row.user_id,
        balance=int(row.cp_balance or 0) + int(row.balance or 0),
        total_recharged=int(row.cp_total_recharged or 0) + int(row.total_recharged or 0),
        total_spent=int(row.cp_total_spent or 0) + int(row.total_spent or 0),
        row_count=int(row.cp_row_count or 0) + int(row.row_count or 0),
    )


Stored = tuple[int, int, int, str, int]  # balance, total_recharged, total_spent, status, held


def _discrepancy(
    user_id: int,
    stored: Stored | None,
    actual: LedgerTotals,
    actual_held: int = 0,
    *,
    credit_limit: int = 0,
    rules: AccountPolicy = NO_POLICY,
    suspend_at: datetime | None = None,
) -> Discrepancy | None:
    """The discrepancy between a cache row (None: missing) and the ledger, if any."""
    expected_status = policy.expected_status(
        None if stored is None else stored[3],
        actual.balance,
        credit_limit=credit_limit,
        policy=rules,
        suspend_at=suspend_at,
    )
    expected = (
        actual.balance,
        actual.total_recharged,
        actual.total_spent,
        expected_status,
        actual_held,
    )
    if stored == expected:
        return None
    balance, recharged, spent, status, held = stored or (0, 0, 0, None, 0)
    return Discrepancy(
        user_id=user_id,
        stored_balance=balance,
        actual_balance=actual.balance,
        stored_total_recharged=recharged,
        actual_total_recharged=actual.total_recharged,
        stored_total_spent=spent,
        actual_total_spent=actual.total_spent,
        stored_status=status,
        expected_status=expected_status,
        difference=balance - actual.balance,
        missing_balance_row=stored is None,
        stored_held=held,
        actual_held=actual_held,
    )


def _stored(row: Row[Any]) -> Stored:
    return (
        int(row.cached_balance),
        int(row.cached_total_recharged),
        int(row.cached_total_spent),
        str(row.cached_status),
        int(row.cached_held),
    )


def _stored_account(account: Balance) -> Stored:
    """The same figures as ``_stored``, from a locked balance row."""
    return (
        account.balance,
        account.total_recharged,
        account.total_spent,
        account.status.value,
        account.held,
    )


def _scanned_discrepancy(row: Row[Any], actual: LedgerTotals | None = None) -> Discrepancy | None:
    """A compare_chunk row's discrepancy (cache against checkpoint + new rows and holds)."""
    totals = _actual(row) if actual is None else actual
    return _discrepancy(
        row.user_id,
        _stored(row),
        totals,
        int(row.actual_held),
        credit_limit=int(row.credit_limit),
        rules=AccountPolicy.from_columns(row._mapping),
        suspend_at=row.suspend_at,
    )


def _chain_errors(
    conn: Connection, backend: Backend, low: int, high: int, incremental: bool
) -> dict[int, SyncError]:
    """The first broken row of each account in the chunk (hashes too in full mode)."""
    first = {} if incremental else _hash_chain_errors(conn, backend, low, high)
    for row in sync_audit.chain_breaks(conn, low, high, incremental=incremental):
        earlier = first.get(row.user_id)
        if earlier is not None and (earlier.transaction_id or 0) <= row.id:
            continue  # a hash break at or before this row is the one to report
        if row.balance_before != row.previous_after:
            why = (
                f"balance_before {row.balance_before} != previous balance_after "
                f"{row.previous_after} (this row or the one before it was altered or removed)"
            )
        else:
            why = (
                f"balance_after {row.balance_after} != balance_before {row.balance_before} "
                f"{row.effect:+d} ({row.transaction_type} of {row.amount})"
            )
        first[row.user_id] = SyncError(
            row.user_id,
            row.id,
            f"ledger chain broken at row {row.id} of account {row.user_id}: {why}",
        )
    return first


def _hash_chain_errors(
    conn: Connection, backend: Backend, low: int, high: int
) -> dict[int, SyncError]:
    return {
        user_id: SyncError(user_id, found.transaction_id, found.message)
        for user_id, found in integrity.chain_breaks(conn, backend, low, high).items()
    }


def _checkpoint(row: Row[Any], actual: LedgerTotals, now: datetime) -> dict[str, Any] | None:
    last_id = row.last_transaction_id or row.cp_last_transaction_id
    if last_id is None or row.row_count is None:
        return None  # no rows, or nothing new since the checkpoint
    return {
        "user_id": row.user_id,
        "last_transaction_id": int(last_id),
        "last_balance_after": actual.balance,  # the chain holds, so the last row ends here
        "balance": actual.balance,
        "total_recharged": actual.total_recharged,
        "total_spent": actual.total_spent,
        "row_count": actual.row_count,
        "verified_at": now,
    }


def _stale_checkpoint(row: Row[Any]) -> SyncError | None:
    """The checkpoint's last row must still be there, ending where the checkpoint says."""
    if row.cp_last_transaction_id is None or row.anchor_balance_after == row.cp_last_balance_after:
        return None
    return SyncError(
        row.user_id,
        int(row.cp_last_transaction_id),
        f"ledger row {row.cp_last_transaction_id} of account {row.user_id}, where its last "
        "verification ended, was removed or altered; its checkpoint is dropped: run verify --full",
    )


def _history_changed(user_id: int, checkpoint_id: int | None) -> SyncError:
    return SyncError(
        user_id,
        checkpoint_id,
        f"the ledger of account {user_id} up to row {checkpoint_id} changed after it was "
        "verified (its checkpoint's sums no longer match); its checkpoint is dropped: "
        "run verify --full",
    )


# -- the runs -------------------------------------------------------------------------


class Reconciler:
    """Verify, fix and rebuild over a Database; BalanceService delegates here."""

    def __init__(self, db: Database, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.db = db
        self.chunk_size = chunk_size

    def _chunks(self, user_id: int | None) -> Iterator[list[int]]:
        """The account ids of each chunk, read with keyset pagination."""
        if user_id is not None:
            yield [user_id]
            return
        after = 0
        while ids := self.db.read(
            partial(sync_audit.next_user_ids, after=after, limit=self.chunk_size)
        ):
            yield ids
            after = ids[-1]

    def _total(self, user_id: int | None) -> int:
        return 1 if user_id is not None else self.db.read(sync_audit.count_accounts)

    def _chunk_or_each(
        self, ids: list[int], run: Callable[[int, int], R]
    ) -> tuple[list[R], list[SyncError]]:
        """``run(low, high)`` over the chunk; if the database refuses that, over each account.

        A corrupt row (an amount whose sum overflows 64 bits, say) makes the chunk's SQL
        fail; alone, it fails only its own account, which becomes an error instead of
        stopping the run. A database that is down still raises.
        """
        try:
            return [run(ids[0], ids[-1])], []
        except StorageError:
            self.db.read(queries.ping)  # raises again if the database itself is the problem
        results: list[R] = []
        errors: list[SyncError] = []
        for user_id in ids:
            try:
                results.append(run(user_id, user_id))
            except StorageError as error:
                message = f"account {user_id} could not be checked: {error}"
                errors.append(SyncError(user_id, None, message))
        return results, errors

    def verify(
        self,
        user_id: int | None = None,
        *,
        fix: bool = False,
        full: bool = False,
        record: bool = True,
        scheduled_for: datetime | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Compare (and with ``fix``, repair) the cache; ``record=False`` writes nothing."""
        if user_id is not None and not self.db.read(
            partial(sync_audit.account_exists, user_id=user_id)
        ):
            raise AccountNotFound(user_id)
        run_id = (
            self._start_run("verify", fix=fix, full=full, user_id=user_id, at=scheduled_for)
            if record
            else None
        )
        report = SyncReport(run_id=run_id)
        with self._failure_recorded(run_id, lambda: _verify_counts(report)):
            self._verify_into(
                report, user_id, fix=fix, incremental=not full, record=record, progress=progress
            )
        if run_id is not None:
            self._finish_run(run_id, _verify_counts(report), outcome=_outcome(report))
        log.info(
            "verify run %s: checked %d, synced %d, fixed %d, out of sync %d, errors %d",
            run_id,
            report.checked,
            report.synced,
            report.fixed,
            len(report.discrepancies),
            len(report.errors),
        )
        return report

    def _verify_into(
        self,
        report: SyncReport,
        user_id: int | None,
        *,
        fix: bool,
        incremental: bool,
        record: bool,
        progress: Progress | None,
    ) -> None:
        total = self._total(user_id)
        for ids in self._chunks(user_id):
            scans, unreadable = self._chunk_or_each(
                ids, partial(self._scan, incremental=incremental)
            )
            now = clock.now()
            checkpoints: list[dict[str, Any]] = []
            dropped: list[int] = []
            unfixed: list[Discrepancy] = []
            for rows, breaks in scans:
                for row in rows:
                    actual = _actual(row)
                    found, problem = self._judge(row, actual, breaks.get(row.user_id), incremental)
                    if problem is not None:
                        dropped.append(row.user_id)
                    elif point := _checkpoint(row, actual, now):
                        checkpoints.append(point)
                    left = self._account_outcome(report, row.user_id, found, problem, fix, user_id)
                    unfixed += [left] if left else []
            for error in unreadable:
                dropped.append(error.user_id)
                self._account_outcome(report, error.user_id, None, error, fix, user_id)
            if record and (checkpoints or dropped or unfixed):
                assert report.run_id is not None
                found_events = [events.sync_discrepancy(report.run_id, d, now) for d in unfixed]
                self.db.write(
                    partial(
                        _save_chunk,
                        backend=self.db.backend,
                        checkpoints=checkpoints,
                        drop=dropped,
                        announced=found_events,
                    )
                )
            if progress is not None:
                progress(report.checked, total)
        if user_id is not None or not incremental:
            self._check_orphans(report, user_id)

    def _scan(
        self, low: int, high: int, *, incremental: bool
    ) -> tuple[list[Row[Any]], dict[int, SyncError]]:
        def work(conn: Connection) -> tuple[list[Row[Any]], dict[int, SyncError]]:
            rows = sync_audit.compare_chunk(conn, low, high, incremental=incremental)
            return rows, _chain_errors(conn, self.db.backend, low, high, incremental)

        return self.db.read(work)

    def _judge(
        self, row: Row[Any], actual: LedgerTotals, broken: SyncError | None, incremental: bool
    ) -> tuple[Discrepancy | None, SyncError | None]:
        """(discrepancy, ledger problem) of one scanned account."""
        problem = broken or (_stale_checkpoint(row) if incremental else None)
        if problem is not None:
            return None, problem
        found = _scanned_discrepancy(row, actual)
        if found is not None and incremental:
            return self._confirm(row)
        return found, None

    def _confirm(self, row: Row[Any]) -> tuple[Discrepancy | None, SyncError | None]:
        """Re-check an incremental discrepancy against the account's whole ledger.

        If the whole ledger agrees with the cache, the checkpoint's sums are what is
        wrong: history before it changed since it was verified.
        """
        full = self.db.read(
            partial(sync_audit.compare_chunk, low=row.user_id, high=row.user_id, incremental=False)
        )
        if not full:
            return None, None  # the account is gone
        found = _scanned_discrepancy(full[0])
        if found is None:
            return None, _history_changed(row.user_id, row.cp_last_transaction_id)
        return found, None

    def _account_outcome(
        self,
        report: SyncReport,
        user_id: int,
        found: Discrepancy | None,
        problem: SyncError | None,
        fix: bool,
        asked_for: int | None,
    ) -> Discrepancy | None:
        """Count the account's outcome in the report; return its discrepancy if it is
        left out of sync (a fixed account announced its own)."""
        report.checked += 1
        if problem is not None:
            # The ledger itself is in doubt: report it; never copy it into the cache.
            report.errors.append(problem)
            report.details.append(UserSync(user_id, "ledger_error", found))
            log.error("%s", problem.message)
            return None
        if found is not None and fix:
            assert report.run_id is not None, "a fix is always recorded"
            try:
                fixed = self._fix(user_id, report.run_id)
            except BalanceError as error:  # reported; the account stays out of sync
                message = f"fix of account {user_id} failed: {error}"
                report.errors.append(SyncError(user_id, None, message))
            else:
                if fixed is not None:
                    report.fixed += 1
                    report.details.append(UserSync(user_id, "fixed", fixed))
                    return None
                found = None  # a commit between the scan and the lock already agreed
        if found is None:
            report.synced += 1
            if asked_for is not None:
                report.details.append(UserSync(user_id, "in_sync"))
            return None
        log.warning("account %s out of sync: %s", user_id, found.to_json())
        report.details.append(UserSync(user_id, "out_of_sync", found))
        return found

    def _fix(self, user_id: int, run_id: int) -> Discrepancy | None:
        """Lock the account, recompute inside the lock, rewrite only what is still wrong."""

        def work(conn: Connection) -> Discrepancy | None:
            account = queries.lock_balance(conn, user_id)
            if account is None:
                return None
            stored = _stored_account(account)
            totals = queries.ledger_totals(conn, user_id)
            held = queries.held_by_active_holds(conn, user_id)
            found = _discrepancy(
                user_id,
                stored,
                totals,
                held,
                credit_limit=account.credit_limit,
                rules=account.policy,
                suspend_at=account.suspend_at,
            )
            if found is not None:
                _rewrite(conn, run_id, found)
            return found

        fixed = self.db.write(work)
        if fixed is not None:
            log.warning("fixed account %s: %s", user_id, fixed.changed_columns())
        return fixed

    def _check_orphans(self, report: SyncReport, user_id: int | None) -> None:
        """Ledger rows without a balance row: reported; a fix cannot guess the currency."""
        for row in self.db.read(lambda conn: sync_audit.orphan_ledger_accounts(conn, user_id)):
            actual = _actual_of_sums(row)
            found = _discrepancy(row.user_id, None, actual)
            assert found is not None
            report.checked += 1
            report.details.append(UserSync(row.user_id, "out_of_sync", found))
            report.errors.append(
                SyncError(
                    row.user_id,
                    None,
                    f"account {row.user_id} has {actual.row_count} ledger rows but no balance "
                    "row; open the account (with its currency), then run verify with fix",
                )
            )

    def discrepancies(self) -> list[Discrepancy]:
        """Every account out of sync, from a full scan that writes nothing."""
        report = self.verify(full=True, record=False)
        return report.discrepancies

    def rebuild(
        self,
        *,
        dry_run: bool = False,
        scheduled_for: datetime | None = None,
        progress: Progress | None = None,
    ) -> RebuildReport:
        """Recompute every cache column from the ledger, chunk by chunk under its locks.

        An account whose ledger chain is broken is reported and left as it is: its
        ledger must be restored first, or the damage would be copied into the cache.
        """
        run_id = (
            None
            if dry_run
            else self._start_run("rebuild", fix=True, full=True, user_id=None, at=scheduled_for)
        )
        report = RebuildReport(run_id=run_id, dry_run=dry_run)
        total = self._total(None)
        transaction = self.db.read if dry_run else self.db.write
        with self._failure_recorded(run_id, lambda: _rebuild_counts(report)):
            for ids in self._chunks(None):
                results, unreadable = self._chunk_or_each(
                    ids, lambda low, high: transaction(self._rebuild_chunk(low, high, run_id))
                )
                for changes, broken in results:
                    report.changed += len({change.user_id for change in changes})
                    report.changes.extend(changes)
                    report.errors.extend(broken)
                report.errors.extend(unreadable)
                report.checked += len(ids)
                if progress is not None:
                    progress(report.checked, total)
        if run_id is not None:
            outcome = "out_of_sync" if report.errors else "fixed" if report.changed else "in_sync"
            self._finish_run(run_id, _rebuild_counts(report), outcome=outcome)
        log.info(
            "rebuild run %s (dry run: %s): %d accounts, %d changed, %d errors",
            run_id,
            dry_run,
            report.checked,
            report.changed,
            len(report.errors),
        )
        return report

    def _rebuild_chunk(
        self, low: int, high: int, run_id: int | None
    ) -> Callable[[Connection], tuple[list[ColumnChange], list[SyncError]]]:
        def work(conn: Connection) -> tuple[list[ColumnChange], list[SyncError]]:
            if run_id is not None:
                sync_audit.lock_balances(conn, low, high)
            broken = _chain_errors(conn, self.db.backend, low, high, incremental=False)
            changes: list[ColumnChange] = []
            for row in sync_audit.compare_chunk(conn, low, high, incremental=False):
                if row.user_id in broken:
                    continue
                found = _scanned_discrepancy(row)
                if found is None:
                    continue
                changes.extend(
                    ColumnChange(found.user_id, column, str(old), str(new))
                    for column, old, new in found.changed_columns()
                )
                if run_id is not None:
                    _rewrite(conn, run_id, found)
            return changes, list(broken.values())

        return work

    # -- audit ------------------------------------------------------------------------

    def _start_run(
        self, kind: str, *, fix: bool, full: bool, user_id: int | None, at: datetime | None
    ) -> int:
        values = {
            "kind": kind,
            "fix": fix,
            "full_scan": full,
            "user_id": user_id,
            "scheduled_for": at,
            "started_at": clock.now(),
        }
        return self.db.write(lambda conn: sync_audit.start_sync_run(conn, values))

    @contextmanager
    def _failure_recorded(
        self, run_id: int | None, counts: Callable[[], dict[str, int]]
    ) -> Iterator[None]:
        """A run that raises is recorded as failed (with what it had counted), then re-raised."""
        try:
            yield
        except BaseException as error:
            if run_id is not None:
                try:
                    self._finish_run(run_id, counts(), outcome="failed", message=str(error))
                except BalanceError:
                    log.exception("could not record the failure of run %s", run_id)
            raise

    def _finish_run(
        self, run_id: int, counts: dict[str, int], *, outcome: str, message: str | None = None
    ) -> None:
        values = {
            **counts,
            "finished_at": clock.now(),
            "outcome": outcome,
            "message": None if message is None else message[:1024],
        }
        self.db.write(lambda conn: sync_audit.finish_sync_run(conn, run_id, values))

    def runs(self, limit: int) -> list[SyncRun]:
        return [
            SyncRun(**row)
            for row in self.db.read(lambda conn: sync_audit.recent_sync_runs(conn, limit))
        ]

    def totals(self) -> list[SyncTotals]:
        return [
            SyncTotals(
                kind=row["kind"],
                # SUM of a BIGINT is a DECIMAL on PostgreSQL and MariaDB
                **{c: int(row[c]) for c in ("runs", "discrepancies", "fixed", "errors")},
                last_finished_at=row["last_finished_at"],
            )
            for row in self.db.read(sync_audit.sync_run_totals)
        ]

    def fixes(self, run_id: int) -> list[ColumnChange]:
        rows = self.db.read(lambda conn: sync_audit.fixes_of_run(conn, run_id))
        return [
            ColumnChange(r["user_id"], r["column_name"], r["old_value"], r["new_value"])
            for r in rows
        ]

    # -- scheduled jobs -----------------------------------------------------------------

    def run_scheduled(self, job: str, scheduled_for: datetime) -> SyncReport | RebuildReport | None:
        """Run ``verify-fix`` or ``rebuild`` for one schedule slot, once across every host.

        Returns None when another runner holds the job's lock or already ran the slot.
        """
        kind = {"verify-fix": "verify", "rebuild": "rebuild"}[job]
        with self.db.backend.job_lock(self.db.engine, job, JOB_LEASE) as held:
            if not held:
                log.info("%s skipped: another run holds the lock", job)
                return None
            if self.db.read(lambda conn: sync_audit.slot_was_run(conn, kind, scheduled_for)):
                log.info(
                    "%s skipped: the run for %s already happened", job, scheduled_for.isoformat()
                )
                return None
            if kind == "verify":
                return self.verify(fix=True, scheduled_for=scheduled_for)
            return self.rebuild(scheduled_for=scheduled_for)


def _actual_of_sums(row: Row[Any]) -> LedgerTotals:
    return LedgerTotals(
        user_id=row.user_id,
        balance=int(row.balance),
        total_recharged=int(row.total_recharged),
        total_spent=int(row.total_spent),
        row_count=int(row.row_count),
    )


def _save_chunk(
    conn: Connection,
    backend: Backend,
    checkpoints: list[dict[str, Any]],
    drop: list[int],
    announced: list[dict[str, Any]],
) -> None:
    """A verified chunk's checkpoints, and the events of the discrepancies it left."""
    sync_audit.save_checkpoints(conn, backend, checkpoints, drop)
    outbox.append_events(conn, backend, announced)


def _rewrite(conn: Connection, run_id: int, found: Discrepancy) -> None:
    """Set the cache to the ledger's figures, record each changed column and announce
    it: sync.discrepancy_found, sync.fixed, and the status change if there is one."""
    now = clock.now()
    values: dict[str, Any] = {
        "balance": found.actual_balance,
        "total_recharged": found.actual_total_recharged,
        "total_spent": found.actual_total_spent,
        "status": found.expected_status,
        "held": found.actual_held,
    }
    announced = [events.sync_discrepancy(run_id, found, now), events.sync_fixed(run_id, found, now)]
    if found.stored_status is not None and found.stored_status != found.expected_status:
        values["suspend_at"] = None  # suspended, or back above the line: no grace runs
        change = StatusChange(
            user_id=found.user_id,
            old_status=AccountStatus(found.stored_status),
            new_status=AccountStatus(found.expected_status),
            balance=found.actual_balance,
            transaction_id=None,
        )
        announced.append(events.status_change(change, now))
    sync_audit.rewrite_balance(conn, found.user_id, values, now)
    sync_audit.record_fixes(conn, _fix_rows(run_id, found, now))
    for row in announced:
        outbox.append_event(conn, row)


def _fix_rows(run_id: int, found: Discrepancy, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "user_id": found.user_id,
            "column_name": column,
            "old_value": str(old),
            "new_value": str(new),
            "created_at": now,
        }
        for column, old, new in found.changed_columns()
    ]


def _outcome(report: SyncReport) -> str:
    if not report.in_sync:
        return "out_of_sync"
    return "fixed" if report.fixed else "in_sync"


def _verify_counts(report: SyncReport) -> dict[str, int]:
    return {
        "checked": report.checked,
        "synced": report.synced,
        "fixed": report.fixed,
        "discrepancies": report.fixed + len(report.discrepancies),
        "errors": len(report.errors),
    }


def _rebuild_counts(report: RebuildReport) -> dict[str, int]:
    return {
        "checked": report.checked,
        "synced": report.checked - report.changed - len(report.errors),
        "fixed": report.changed,
        "discrepancies": report.changed,
        "errors": len(report.errors),
    }
