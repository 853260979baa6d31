"""Every failure balance-ledger reports is one of these; none moves money.

    BalanceError                  base of everything this package raises on purpose
    ├── AccountNotFound           no balance row for the user
    ├── AccountExists             open_account on a user that exists with other settings
    ├── AccountSuspended          a charge against a suspended account
    ├── TransactionNotFound       no ledger row with that id
    ├── RefundExceedsCharge       refunds of a charge would add up to more than it
    ├── HoldNotFound              no hold with that id
    ├── HoldNotActive             the hold was captured, voided or has expired
    ├── InsufficientBalance       the charge would take the balance below -credit_limit
    ├── CurrencyMismatch          the caller's currency is not the account's
    ├── IdempotencyConflict       a reused idempotency key with a different request
    ├── JobBusy                   another runner holds the job (anchor-chains) right now
    ├── ApiKeyNotFound            no API key with that id
    ├── WebhookNotFound           no webhook with that id
    ├── InvalidRequest            an argument is malformed (user id, text, currency, ...)
    │   └── InvalidAmount         not a positive int within BIGINT (or the result overflows)
    └── StorageError              the database failed or could not be reached
        ├── SchemaMissing         the ledger's tables are not there: migrate first
        ├── RetriesExhausted      deadlock / serialization failure retried too many times
        ├── NodeUnavailable       this Galera node cannot serve now: use another node
        └── CommitUnknown         the connection failed during COMMIT: it may have committed

A rejected call never moves money: the database transaction is rolled back before
the error reaches the caller, leaving nothing behind, with two exceptions on purpose:

- A **refusal** (``error.refusal``: insufficient balance, suspended account, currency
  mismatch, refund exceeding its charge, hold not active) of a request that carries
  an idempotency key is remembered under that key, and nothing else is written
  (idempotency.py). Every later attempt with the key gets the same error with the
  same context, ``replayed`` set, even if the account has changed since: a key has
  one answer. Malformed requests (``InvalidRequest``) and unknown accounts are not
  remembered; a retry with the key is decided afresh.
- ``CommitUnknown``: the database may have committed before the answer was lost;
  retry with the same idempotency key to learn which (the retry returns the
  committed row, or does the work once).

Each class has a stable ``code`` (the HTTP problem's, the CLI's error name).

Errors carry the context a caller needs to react (``user_id``, ``amount``,
``available``, ...) as attributes, and a message that says what was refused and why.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar


class BalanceError(Exception):
    """Base class of every error raised by balance-ledger."""

    #: Stable, one per class: the HTTP problem's ``code``.
    code: ClassVar[str] = "refused"
    #: The HTTP status of its problem document; the CLI's exit code derives from it too
    #: (422 and 5xx: 2, bad input or a failed database; any other: 1, refused).
    #: 402: a prepaid balance that cannot cover a charge is "payment required"; 409:
    #: the request is well-formed but the account's state refuses it.
    http_status: ClassVar[int] = 400
    #: A decision on the account's state, remembered under the request's idempotency key.
    refusal: ClassVar[bool] = False
    #: The item's index when ``charge_many(mode="all_or_nothing")`` raises it.
    batch_item: int | None = None
    #: True when this is the remembered answer of an earlier attempt with the same key.
    replayed: bool = False

    def context(self) -> dict[str, Any]:
        """The arguments the error was made with that it keeps (``user_id``, ``amount``,
        ...), by name. For a refusal, ``type(error)(**error.context())`` is the same
        error again (how a remembered refusal is replayed; tests/unit keeps it true)."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}


def refusal_class(code: str) -> type[BalanceError]:
    """The refusal class whose ``code`` this is (to rebuild a remembered refusal)."""
    for kind in _subclasses(BalanceError):
        if kind.refusal and kind.code == code:
            return kind
    raise LookupError(f"no refusal has the code {code!r}")


def _subclasses(kind: type[BalanceError]) -> list[type[BalanceError]]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_subclasses(direct))]


class AccountNotFound(BalanceError):
    code = "account-not-found"
    http_status = 404

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        super().__init__(f"account {user_id} does not exist; open it first")


class AccountExists(BalanceError):
    code = "account-exists"
    http_status = 409

    def __init__(self, user_id: int, detail: str) -> None:
        self.user_id = user_id
        super().__init__(f"account {user_id} already exists with {detail}")


class JobBusy(BalanceError):
    """Another runner, on this host or another, is running the same job right now."""

    code = "job-busy"
    http_status = 409

    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"another {job} run holds the job's lock; try again when it ends")


class AccountSuspended(BalanceError):
    code = "account-suspended"
    http_status = 409
    refusal = True

    def __init__(self, user_id: int, balance: int, credit_limit: int) -> None:
        self.user_id = user_id
        self.balance = balance
        self.credit_limit = credit_limit
        super().__init__(
            f"account {user_id} is suspended (balance {balance} is below the credit limit "
            f"of -{credit_limit}); recharge it before charging"
        )


class TransactionNotFound(BalanceError):
    code = "transaction-not-found"
    http_status = 404

    def __init__(self, transaction_id: int) -> None:
        self.transaction_id = transaction_id
        super().__init__(f"ledger row {transaction_id} does not exist")


class RefundExceedsCharge(BalanceError):
    code = "refund-exceeds-charge"
    http_status = 409
    refusal = True

    def __init__(self, transaction_id: int, amount: int, refundable: int) -> None:
        self.transaction_id = transaction_id
        self.amount = amount
        self.refundable = refundable
        super().__init__(
            f"charge {transaction_id} cannot be refunded {amount}: only {refundable} of it "
            "is not refunded yet"
        )


class HoldNotFound(BalanceError):
    code = "hold-not-found"
    http_status = 404

    def __init__(self, hold_id: int) -> None:
        self.hold_id = hold_id
        super().__init__(f"hold {hold_id} does not exist")


class HoldNotActive(BalanceError):
    code = "hold-not-active"
    http_status = 409
    refusal = True

    def __init__(self, hold_id: int, status: str) -> None:
        self.hold_id = hold_id
        self.status = status
        super().__init__(f"hold {hold_id} is {status}; only an active hold is captured or voided")


class InsufficientBalance(BalanceError):
    code = "insufficient-balance"
    http_status = 402
    refusal = True

    def __init__(self, user_id: int, amount: int, available: int) -> None:
        self.user_id = user_id
        self.amount = amount
        self.available = available
        super().__init__(
            f"account {user_id} cannot be charged {amount}: only {available} is available "
            "(balance plus credit limit)"
        )


class CurrencyMismatch(BalanceError):
    code = "currency-mismatch"
    http_status = 409
    refusal = True

    def __init__(self, user_id: int, account_currency: str, requested_currency: str) -> None:
        self.user_id = user_id
        self.account_currency = account_currency
        self.requested_currency = requested_currency
        super().__init__(
            f"account {user_id} holds {account_currency}, but the request is in "
            f"{requested_currency}"
        )


class IdempotencyConflict(BalanceError):
    code = "idempotency-conflict"
    http_status = 409

    def __init__(self, user_id: int, idempotency_key: str, detail: str) -> None:
        self.user_id = user_id
        self.idempotency_key = idempotency_key
        super().__init__(
            f"idempotency key {idempotency_key!r} of account {user_id} was already used "
            f"for a different request: {detail}"
        )


class ApiKeyNotFound(BalanceError):
    code = "api-key-not-found"
    http_status = 404

    def __init__(self, key_id: int) -> None:
        self.key_id = key_id
        super().__init__(f"API key {key_id} does not exist")


class WebhookNotFound(BalanceError):
    code = "webhook-not-found"
    http_status = 404

    def __init__(self, webhook_id: int) -> None:
        self.webhook_id = webhook_id
        super().__init__(f"webhook {webhook_id} does not exist")


class InvalidRequest(BalanceError):
    """An argument is malformed; raised before the database is touched."""

    code = "invalid-request"
    http_status = 422


class InvalidAmount(InvalidRequest):
    code = "invalid-amount"
    http_status = 422

    def __init__(self, amount: object, reason: str) -> None:
        self.amount = amount
        super().__init__(f"invalid amount {shown(amount)}: {reason}")


def shown(value: object) -> str:
    """``repr`` for messages; an enormous int is described (repr of one can itself fail)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StorageError(BalanceError):
    """The database failed; the operation was rolled back (or never started), except
    for ``CommitUnknown``."""

    code = "storage-error"
    http_status = 503


class SchemaMissing(StorageError):
    code = "schema-missing"
    http_status = 503

    def __init__(self, cause: str) -> None:
        super().__init__(
            "the ledger's tables do not exist in this database; run `balance db upgrade` "
            f"(or BalanceService.create_schema()) first ({cause})"
        )


class RetriesExhausted(StorageError):
    code = "retries-exhausted"
    http_status = 503

    def __init__(self, attempts: int, cause: str) -> None:
        self.attempts = attempts
        super().__init__(
            f"gave up after {attempts} attempts: the database kept aborting the transaction "
            f"(deadlock or lock timeout): {cause}"
        )


class NodeUnavailable(StorageError):
    """A Galera node outside the cluster's primary component, or still joining it,
    refused the statement; nothing was written. Another node can serve."""

    code = "node-unavailable"
    http_status = 503

    def __init__(self, cause: str) -> None:
        super().__init__(
            "this database node cannot serve now (it is not part of the cluster's primary "
            f"component, or still joining it): send the request to another node ({cause})"
        )


class CommitUnknown(StorageError):
    """The connection failed while COMMIT was in flight: the server may have committed."""

    code = "commit-unknown"
    http_status = 503

    def __init__(self, cause: str) -> None:
        super().__init__(
            "the connection failed during COMMIT, so the write may or may not have been "
            f"committed; retry with the same idempotency key to find out ({cause})"
        )
