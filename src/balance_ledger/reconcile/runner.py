"""The runs: verify (incremental or full), fix under the account's lock, rebuild, the
discrepancy scan, the audit trail and the scheduled slots, chunk by chunk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Row

from .. import clock
from ..db import queries, sync_audit
from ..db.scan import ChunkScan, scan_chunk
from ..db.transactions import Database
from ..errors import AccountNotFound, BalanceError, StorageError
from ..models import (
    LedgerTotals,
)
from ..outbox import events
from .audit import (
    count_passed,
    rebuild_counts,
    rewrite_cache,
    run_outcome,
    save_chunk,
    verify_counts,
)
from .chunks import SCANNERS, chunks_of_accounts, scanned_ahead
from .compare import (
    actual_of_sums,
    checkpoint_of,
    discrepancy_of,
    history_changed,
    ledger_figures,
    scanned_chunk,
    scanned_discrepancy,
    stale_checkpoint,
    stored_of_account,
)
from .reports import (
    CHUNK_SIZE,
    ColumnChange,
    Discrepancy,
    Progress,
    RebuildReport,
    SyncError,
    SyncReport,
    SyncRun,
    SyncTotals,
    UserSync,
)

log = logging.getLogger(__name__)
R = TypeVar("R")


class Reconciler:
    """Verify, fix and rebuild over a Database; BalanceService delegates here."""

    def __init__(
        self, db: Database, *, chunk_size: int = CHUNK_SIZE, scanners: int = SCANNERS
    ) -> None:
        self.db = db
        self.chunk_size = chunk_size
        self.scanners = 1 if db.backend.single_connection else scanners

    def _chunks(self, user_id: int | None, *, locked: bool = False) -> Iterator[list[int]]:
        """The accounts in chunks; ``locked``: each chunk's transaction locks them all."""
        if user_id is not None:
            return iter([[user_id]])
        size = self.chunk_size
        if locked:
            size = self.db.backend.locked_chunk_size(self.db.engine, size)
        return chunks_of_accounts(self.db, size)

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
        except StorageError as error:
            self.db.read(queries.ping)  # raises again if the database itself is the problem
            low, high = ids[0], ids[-1]
            log.warning("accounts %d..%d refused as a chunk (%s); one by one", low, high, error)
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
        with self._failure_recorded(run_id, lambda: verify_counts(report)):
            self._verify_into(
                report, user_id, fix=fix, incremental=not full, record=record, progress=progress
            )
        if run_id is not None:
            self._finish_run(run_id, verify_counts(report), outcome=run_outcome(report))
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
        scan = partial(
            self._chunk_or_each, run=partial(self._scan, incremental=incremental, record=record)
        )
        for scans, unreadable in scanned_ahead(self._chunks(user_id), scan, self.scanners):
            now = clock.now()
            checkpoints: list[dict[str, Any]] = []
            dropped: list[int] = []
            unfixed: list[Discrepancy] = []
            for scanned, breaks in scans:
                count_passed(report, scanned.passed, user_id)
                for row in scanned.rows:
                    actual = ledger_figures(row)
                    found, problem = self._judge(row, actual, breaks.get(row.user_id), incremental)
                    if problem is not None:
                        dropped.append(row.user_id)
                    elif point := checkpoint_of(row, actual, now):
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
                        save_chunk,
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
        self, low: int, high: int, *, incremental: bool, record: bool
    ) -> tuple[ChunkScan, dict[int, SyncError]]:
        """The chunk's scan. Where the statement can write (PostgreSQL), the accounts it
        finds plainly in sync are counted and, in a recorded run, checkpointed by it."""
        writes = record and self.db.backend.chains_writes
        at = clock.now() if writes else None
        scan = partial(
            scanned_chunk,
            backend=self.db.backend,
            low=low,
            high=high,
            incremental=incremental,
            passing=True,
            checkpoint_at=at,
        )
        return self.db.write(scan) if writes else self.db.read(scan)

    def _judge(
        self, row: Row[Any], actual: LedgerTotals, broken: SyncError | None, incremental: bool
    ) -> tuple[Discrepancy | None, SyncError | None]:
        """(discrepancy, ledger problem) of one scanned account."""
        problem = broken or (stale_checkpoint(row) if incremental else None)
        if problem is not None:
            return None, problem
        found = scanned_discrepancy(row, actual)
        if found is not None and incremental:
            return self._confirm(row)
        return found, None

    def _confirm(self, row: Row[Any]) -> tuple[Discrepancy | None, SyncError | None]:
        """Re-check an incremental discrepancy against the account's whole ledger.

        If the whole ledger agrees with the cache, the checkpoint's sums are what is
        wrong: history before it changed since it was verified.
        """
        user_id = row.user_id
        full = self.db.read(
            lambda conn: scan_chunk(conn, self.db.backend, user_id, user_id, incremental=False).rows
        )
        if not full:
            return None, None  # the account is gone
        found = scanned_discrepancy(full[0])
        if found is None:
            return None, history_changed(row.user_id, row.cp_last_transaction_id)
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
            stored = stored_of_account(account)
            totals = queries.ledger_totals(conn, user_id)
            held = queries.held_by_active_holds(conn, user_id)
            found = discrepancy_of(
                user_id,
                stored,
                totals,
                held,
                credit_limit=account.credit_limit,
                rules=account.policy,
                suspend_at=account.suspend_at,
            )
            if found is not None:
                rewrite_cache(conn, run_id, found)
            return found

        fixed = self.db.write(work)
        if fixed is not None:
            log.warning("fixed account %s: %s", user_id, fixed.changed_columns())
        return fixed

    def _check_orphans(self, report: SyncReport, user_id: int | None) -> None:
        """Ledger rows without a balance row: reported; a fix cannot guess the currency."""
        for row in self.db.read(lambda conn: sync_audit.orphan_ledger_accounts(conn, user_id)):
            actual = actual_of_sums(row)
            found = discrepancy_of(row.user_id, None, actual)
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
        with self._failure_recorded(run_id, lambda: rebuild_counts(report)):
            for ids in self._chunks(None, locked=not dry_run):
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
            self._finish_run(run_id, rebuild_counts(report), outcome=outcome)
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
            scanned, broken = scanned_chunk(conn, self.db.backend, low, high, incremental=False)
            changes: list[ColumnChange] = []
            for row in scanned.rows:
                if row.user_id in broken:
                    continue
                found = scanned_discrepancy(row)
                if found is None:
                    continue
                changes.extend(
                    ColumnChange(found.user_id, column, str(old), str(new))
                    for column, old, new in found.changed_columns()
                )
                if run_id is not None:
                    rewrite_cache(conn, run_id, found)
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
        with self.db.backend.job_lock(self.db.engine, job) as held:
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
