"""One declaration per error class: its code, its HTTP status, and from it the CLI's exit."""

from __future__ import annotations

import pytest

from balance_ledger import errors
from balance_ledger.cli import EXIT_ERROR, EXIT_REFUSED, exit_code
from balance_ledger.errors import BalanceError

# The problem codes and statuses clients already depend on: they must not change.
PUBLISHED = {
    errors.InsufficientBalance: (402, "insufficient-balance"),
    errors.AccountSuspended: (409, "account-suspended"),
    errors.AccountNotFound: (404, "account-not-found"),
    errors.AccountExists: (409, "account-exists"),
    errors.TransactionNotFound: (404, "transaction-not-found"),
    errors.RefundExceedsCharge: (409, "refund-exceeds-charge"),
    errors.HoldNotFound: (404, "hold-not-found"),
    errors.WebhookNotFound: (404, "webhook-not-found"),
    errors.ApiKeyNotFound: (404, "api-key-not-found"),
    errors.HoldNotActive: (409, "hold-not-active"),
    errors.CurrencyMismatch: (409, "currency-mismatch"),
    errors.IdempotencyConflict: (409, "idempotency-conflict"),
    errors.JobBusy: (409, "job-busy"),
    errors.InvalidAmount: (422, "invalid-amount"),
    errors.InvalidRequest: (422, "invalid-request"),
    errors.SchemaMissing: (503, "schema-missing"),
    errors.RetriesExhausted: (503, "retries-exhausted"),
    errors.CommitUnknown: (503, "commit-unknown"),
    errors.NodeUnavailable: (503, "node-unavailable"),
    errors.StorageError: (503, "storage-error"),
}


def every_error_class() -> set[type[BalanceError]]:
    def below(kind: type[BalanceError]) -> set[type[BalanceError]]:
        return {s for d in kind.__subclasses__() for s in (d, *below(d))}

    return below(BalanceError)


def test_every_error_class_declares_its_published_status_and_code():
    assert every_error_class() == set(PUBLISHED)
    for kind, published in PUBLISHED.items():
        assert (kind.http_status, kind.code) == published, kind.__name__
    assert len({kind.code for kind in PUBLISHED}) == len(PUBLISHED), "one code per class"


@pytest.mark.parametrize("kind", sorted(PUBLISHED, key=lambda k: k.__name__), ids=str)
def test_the_cli_exit_code_follows_the_status(kind: type[BalanceError]):
    bad_input_or_broken = issubclass(kind, errors.InvalidRequest | errors.StorageError)
    expected = EXIT_ERROR if bad_input_or_broken else EXIT_REFUSED
    error = kind.__new__(kind)  # the exit code reads only the class's declaration
    assert exit_code(error) == expected
