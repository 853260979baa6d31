"""What reconciliation reports: discrepancies, errors, run reports and the audit trail's
rows, as plain dataclasses (Serialisable for the CLI and HTTP)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..models import (
    AccountPolicy,
    Serialisable,
)

CHUNK_SIZE = 1_000
NO_POLICY = AccountPolicy()  # an orphan's ledger has no account, so no policy

Progress = Callable[[int, int], object]  # (accounts done, accounts in all)


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
