"""The public surface is exactly ``balance_ledger.__all__``, and every error is a BalanceError."""

from __future__ import annotations

import balance_ledger
from balance_ledger import errors


def test_all_is_sorted_and_complete():
    exported = {
        name
        for name, value in vars(balance_ledger).items()
        if not name.startswith("_") and not isinstance(value, type(balance_ledger))
    }
    assert balance_ledger.__all__ == sorted(balance_ledger.__all__)
    assert set(balance_ledger.__all__) == exported


def test_every_error_is_exported_and_derives_from_balance_error():
    error_classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert error_classes <= set(balance_ledger.__all__)
    for name in error_classes:
        assert issubclass(getattr(errors, name), balance_ledger.BalanceError)


def test_error_tree_in_docstring_names_every_error():
    for name in balance_ledger.__all__:
        value = getattr(balance_ledger, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert name in (errors.__doc__ or "")
