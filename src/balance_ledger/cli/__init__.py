"""The ``balance`` command-line tool: a thin adapter over BalanceService."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from ..errors import BalanceError, InvalidRequest, StorageError
from . import apikey as _apikey  # noqa: F401  (registers its commands on app)
from . import batch as _batch  # noqa: F401  (registers its commands on app)
from . import chain as _chain  # noqa: F401  (registers its commands on app)
from . import events as _events  # noqa: F401  (registers its commands on app)
from . import serve as _serve  # noqa: F401  (registers its commands on app)
from . import sync as _sync  # noqa: F401  (registers its commands on app)
from .app import app

__all__ = ["EXIT_ERROR", "EXIT_REFUSED", "app", "exit_code", "main"]

log = logging.getLogger(__name__)

EXIT_REFUSED = 1  # the ledger refused the operation (insufficient balance, …) / out of sync
EXIT_ERROR = 2  # malformed command line or argument, or the database failed


def _item(error: BalanceError) -> str:
    """An all_or_nothing batch's refusal names its item (1-based, as in the file)."""
    if error.batch_item is None:
        return ""
    return f"item {error.batch_item + 1} refused, nothing was charged: "


def exit_code(error: BalanceError) -> int:
    """From the error's status (errors.py): 422 and 5xx are bad input or a failed
    database (2); any other refusal is the ledger saying no (1)."""
    return EXIT_ERROR if error.http_status == 422 or error.http_status >= 500 else EXIT_REFUSED


def _described(error: BalanceError) -> str:
    """One line: which batch item, the error's class (not for a malformed argument,
    whose message says it all), its message, and whether its key replayed it."""
    if isinstance(error, StorageError):
        return f"{type(error).__name__}: {error}"
    kind = "" if isinstance(error, InvalidRequest) else f"{type(error).__name__}: "
    replayed = ""
    if error.replayed:
        replayed = " (replayed: the first attempt with this idempotency key was refused so)"
    return f"{_item(error)}{kind}{error}{replayed}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line on stderr for any error, never a traceback."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(args=argv, prog_name="balance", standalone_mode=False)
    except BalanceError as error:
        err.print(f"error: {_described(error)}", markup=False)
        sys.exit(exit_code(error))
    except typer.TyperException as error:  # click's usage errors
        if message := error.format_message():  # empty when help was shown instead
            err.print(f"error: {message}", markup=False)
        sys.exit(EXIT_ERROR)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as error:  # a bug: still one line; `balance -v` logs the traceback
        log.exception("unexpected error")
        err.print(f"error: unexpected {type(error).__name__}: {error}", markup=False)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)
