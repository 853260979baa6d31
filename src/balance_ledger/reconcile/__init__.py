"""Layer 3 (reconcile/): verify the balance cache against the ledger, fix it, rebuild it.

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

Modules: reports.py (what a run reports), compare.py (one account against its
ledger), runner.py (``Reconciler``: the runs), audit.py (a run's writes and record);
the SQL is db/sync_audit.py.
"""

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
from .runner import Reconciler

__all__ = [
    "CHUNK_SIZE",
    "ColumnChange",
    "Discrepancy",
    "Progress",
    "RebuildReport",
    "Reconciler",
    "SyncError",
    "SyncReport",
    "SyncRun",
    "SyncTotals",
    "UserSync",
]
