"""Driving dispatchers in tests: no backoff wait, and a pass until nothing is due."""

from __future__ import annotations

from datetime import timedelta

from balance_ledger import BalanceService

NO_WAIT = {"backoff": lambda attempts: timedelta(0)}


def drain(svc: BalanceService, **options: object) -> None:
    """Dispatch until nothing is due, retrying failures at once."""
    dispatcher = svc.dispatcher(**{**NO_WAIT, **options})
    try:
        dispatcher.drain()
    finally:
        dispatcher.close()
