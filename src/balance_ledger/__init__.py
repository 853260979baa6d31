"""balance-ledger: a prepaid-balance ledger that never overdraws, double-charges or drifts.

The public API is exactly what ``__all__`` lists; every module below is private.
"""

from .errors import (
    AccountExists,
    AccountNotFound,
    AccountSuspended,
    BalanceError,
    CurrencyMismatch,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidRequest,
    RefundExceedsCharge,
    RetriesExhausted,
    SchemaMissing,
    StorageError,
    TransactionNotFound,
)
from .models import (
    AccountStatus,
    Balance,
    LedgerTotals,
    Statement,
    StatusChange,
    Transaction,
    TransactionType,
)
from .reconcile import (
    ColumnChange,
    Discrepancy,
    RebuildReport,
    SyncError,
    SyncReport,
    SyncRun,
    UserSync,
)
from .service import BalanceService

__all__ = [
    "AccountExists",
    "AccountNotFound",
    "AccountStatus",
    "AccountSuspended",
    "Balance",
    "BalanceError",
    "BalanceService",
    "ColumnChange",
    "CurrencyMismatch",
    "Discrepancy",
    "IdempotencyConflict",
    "InsufficientBalance",
    "InvalidAmount",
    "InvalidRequest",
    "LedgerTotals",
    "RebuildReport",
    "RefundExceedsCharge",
    "RetriesExhausted",
    "SchemaMissing",
    "Statement",
    "StatusChange",
    "StorageError",
    "SyncError",
    "SyncReport",
    "SyncRun",
    "Transaction",
    "TransactionNotFound",
    "TransactionType",
    "UserSync",
]
