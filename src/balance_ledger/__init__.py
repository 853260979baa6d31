"""balance-ledger: a prepaid-balance ledger that never overdraws, double-charges or drifts.

The public API is exactly what ``__all__`` lists; every module below is private.
"""

from .chain import ChainBreak, ChainDigest, ChainReport
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
    RetriesExhausted,
    SchemaMissing,
    StorageError,
    TransactionNotFound,
)
from .models import (
    AccountStatus,
    Balance,
    Hold,
    HoldStatus,
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
    "ChainBreak",
    "ChainDigest",
    "ChainReport",
    "ColumnChange",
    "CurrencyMismatch",
    "Discrepancy",
    "Hold",
    "HoldNotActive",
    "HoldNotFound",
    "HoldStatus",
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
