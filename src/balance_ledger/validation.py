"""Argument checks that run before any database work.

Every public operation validates here first, so a malformed request costs no
round trip, takes no lock and can leave nothing behind.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeGuard, overload
from urllib.parse import SplitResult, urlsplit

from babel.numbers import list_currencies

from .errors import InvalidAmount, InvalidRequest, shown
from .models import AccountPolicy, EventType, Scope
from .outbox import sinks

BIGINT_MAX = 2**63 - 1
BIGINT_MIN = -(2**63)

# Column widths of the ledger (see db/tables.py); checked here so an oversized
# value is a typed error on every backend instead of a driver error on some.
TEXT_LIMITS = {
    "service_type": 64,
    "description": 1024,
    "reference_model": 128,
    "reference_id": 128,
    "idempotency_key": 255,
    "actor": 128,
    "name": 128,  # an API key's (balance_api_keys)
}

# XXX ("no currency") and XTS (reserved for testing) are codes, but no account's money.
_KNOWN_CURRENCIES = frozenset(list_currencies()) - {"XXX", "XTS"}


_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True is not an amount of money.
    return isinstance(value, int) and not isinstance(value, bool)


def amount(value: object) -> int:
    """A money amount in minor units: a positive ``int`` that fits in BIGINT."""
    if not _is_int(value):
        raise InvalidAmount(value, f"must be an int in minor units, not {type(value).__name__}")
    if value <= 0:
        raise InvalidAmount(value, "must be positive; the operation gives the sign")
    if value > BIGINT_MAX:
        raise InvalidAmount(value, f"must not exceed {BIGINT_MAX}")
    return value


def in_bigint_range(value: int, what: str, *, amount: int) -> int:
    """Guard a computed balance or total; an overflowing result refuses the amount."""
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise InvalidAmount(amount, f"the resulting {what} would not fit in a 64-bit integer")
    return value


def _bounded_int(value: object, what: str, low: int) -> int:
    if not _is_int(value):
        raise InvalidRequest(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= BIGINT_MAX:
        raise InvalidRequest(f"{what} must be between {low} and {BIGINT_MAX}, got {shown(value)}")
    return value


def user_id(value: object) -> int:
    return _bounded_int(value, "user id", 1)


def credit_limit(value: object) -> int:
    return _bounded_int(value, "credit limit", 0)


MAX_GRACE_PERIOD = timedelta(days=366)


def account_policy(value: object, credit_limit: int) -> AccountPolicy:
    """An AccountPolicy whose figures fit its account (with ``credit_limit``)."""
    if not isinstance(value, AccountPolicy):
        raise InvalidRequest(f"a policy is an AccountPolicy, not {type(value).__name__}")
    if value.low_balance_threshold is not None:
        _bounded_int(value.low_balance_threshold, "low_balance_threshold", 1)
    grace = _bounded_int(value.grace_amount, "grace_amount", 0)
    period = value.grace_period
    if period is not None and (
        not isinstance(period, timedelta) or not timedelta(0) <= period <= MAX_GRACE_PERIOD
    ):
        raise InvalidRequest(f"grace_period must be a timedelta of 0 to 366 days: {shown(period)}")
    if period is not None and period % timedelta(seconds=1):
        raise InvalidRequest("grace_period must be whole seconds")
    line = -(credit_limit + grace)
    if line < BIGINT_MIN:
        raise InvalidRequest("credit_limit + grace_amount must fit in a 64-bit integer")
    if value.reactivation_threshold is not None:
        # At or above the suspension line, or a reactivated account would be suspended
        # again by its next write.
        _bounded_int(value.reactivation_threshold, "reactivation_threshold", line)
    return value


def currency(value: object) -> str:
    """An ISO 4217 code; lower case is accepted and normalised."""
    if not isinstance(value, str) or len(value) != 3 or not value.isascii():
        raise InvalidRequest(f"currency must be a three-letter ISO 4217 code, got {value!r}")
    code = value.upper()
    if code not in _KNOWN_CURRENCIES:
        raise InvalidRequest(f"unknown currency {value!r}: not an ISO 4217 code")
    return code


@overload
def text(field: str, value: object, *, required: Literal[True]) -> str: ...
@overload
def text(field: str, value: object, *, required: bool = False) -> str | None: ...
def text(field: str, value: object, *, required: bool = False) -> str | None:
    """A free-text column value: str within the column width, printable text.

    Control characters (other than tab and line breaks) are refused: they corrupt
    terminals, CSV exports and statements, and no description needs them.
    """
    if value is None:
        if required:
            raise InvalidRequest(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a str, not {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRequest(f"{field} must not be empty")
    limit = TEXT_LIMITS[field]
    if len(value) > limit:
        raise InvalidRequest(f"{field} is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise InvalidRequest(f"{field} must not contain NUL characters")
    if _CONTROL.search(value):
        raise InvalidRequest(f"{field} must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates, e.g. from undecodable argv
        raise InvalidRequest(f"{field} is not valid Unicode text: {error.reason}") from None
    return value


def reference_id(value: object) -> str | None:
    """A reference id is stored as text; an int is accepted as its decimal string."""
    if _is_int(value):
        value = str(_bounded_int(value, "reference_id", 0))
    return text("reference_id", value)


def idempotency_key(value: object) -> str | None:
    if value == "":
        raise InvalidRequest("idempotency_key must not be empty; pass None for no key")
    return text("idempotency_key", value)


MAX_PAGE = 1_000  # the most rows one page of any listing holds (library, CLI, HTTP)


def page_size(value: object) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an int between 1 and {MAX_PAGE}, got {shown(value)}")
    return value


def cursor(value: object, what: str) -> int:
    """A keyset position: the last id seen, 0 before the first."""
    return _bounded_int(value, what, 0)


def optional_row_id(value: object) -> int | None:
    return None if value is None else _bounded_int(value, "before_id", 1)


def row_id(value: object, what: str) -> int:
    return _bounded_int(value, what, 1)


def flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be a bool, not {type(value).__name__}")
    return value


def seconds(value: object, what: str) -> float:
    """A non-negative, finite number of seconds (an int or a float; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10**9:
        raise InvalidRequest(f"{what} must be a number of seconds from 0, got {value!r}")
    return float(value)


def instant(value: object, what: str) -> datetime:
    """An aware datetime (a point in time, not a wall-clock reading)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidRequest(f"{what} must be a timezone-aware datetime, got {shown(value)}")
    try:
        value.astimezone(UTC)  # the database stores UTC; year 1 at +01:00 has no UTC date
    except OverflowError:
        raise InvalidRequest(f"{what} is out of range in UTC: {value.isoformat()}") from None
    return value


def api_key_name(value: object) -> str:
    """An API key's name: required, at most 128 characters, one line of printable text.

    Stricter than ``text``: no control character at all (tabs and line breaks
    included), since the name is printed in one cell of ``balance apikey list``.
    """
    name = text("name", value, required=True)
    assert name is not None
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise InvalidRequest("name must not contain control characters (tabs, line breaks, ...)")
    return name


_SCOPE_VALUES = frozenset(scope.value for scope in Scope)
_SCOPE_NAMES = ", ".join(scope.value for scope in Scope)


def scopes(value: object) -> frozenset[Scope]:
    """A non-empty collection of scope names (or ``Scope`` members), each one known."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest(f"scopes must be a list of scope names ({_SCOPE_NAMES})")
    found: set[Scope] = set()
    for name in value:
        if not isinstance(name, str) or name not in _SCOPE_VALUES:
            raise InvalidRequest(f"unknown scope {shown(name)}: use {_SCOPE_NAMES}")
        found.add(Scope(name))
    if not found:
        raise InvalidRequest(f"an API key needs at least one scope ({_SCOPE_NAMES})")
    return frozenset(found)


def subscription_url(value: object) -> str:
    """Where ``add_webhook`` delivers, at most 2,048 characters: an http(s) URL with a host,
    or a Redis stream, ``redis(s)://host[:port][/db]?stream=NAME[&maxlen=N]`` (outbox/sinks.py).

    ``callback:`` URLs are refused: only ``add_callback`` makes one, with its function.
    """
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidRequest(f"a webhook URL is a str of at most 2048 characters: {shown(value)}")
    # isprintable() is False for control characters (NUL, line breaks) and lone
    # surrogates, which no URL holds and some drivers cannot even store.
    if not value.isprintable() or " " in value:
        raise InvalidRequest(
            f"a webhook URL is one line without spaces or control characters: {shown(value)}"
        )
    parts = _split(value)
    if parts.scheme in sinks.REDIS_SCHEMES:
        return _redis_stream(value)
    if parts.scheme == sinks.CALLBACK_SCHEME:
        raise InvalidRequest(f"{shown(value)} is made by add_callback, with the function to call")
    if parts.scheme not in sinks.HTTP_SCHEMES or not parts.hostname:
        raise InvalidRequest(
            f"a webhook URL is http:// or https:// with a host, or redis:// or rediss:// "
            f"with ?stream=NAME: {shown(value)}"
        )
    return value


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as error:  # an unclosed [IPv6 address
        raise InvalidRequest(f"malformed URL {shown(url)}: {error}") from None


def _redis_stream(url: str) -> str:
    try:
        sinks.RedisStream.parse(url)
    except ValueError as error:
        raise InvalidRequest(f"{error}: {shown(url)}") from None
    if not sinks.redis_installed():
        raise InvalidRequest(f"cannot subscribe {shown(url)}: {sinks.REDIS_MISSING}")
    return url


# A callback's name: it becomes the subscription's URL, ``callback:<name>``.
_CALLBACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def callback_name(value: object) -> str:
    """1 to 128 letters, digits, ``_``, ``.``, ``-``; starting with a letter or digit."""
    if not isinstance(value, str) or not _CALLBACK_NAME.fullmatch(value):
        raise InvalidRequest(
            f"a callback's name is 1 to 128 letters, digits, _ . or -: {shown(value)}"
        )
    return value


def callback(value: object) -> Callable[..., object]:
    """Something to call with each Event (a function, a bound method, ...)."""
    if not callable(value):
        raise InvalidRequest(f"a callback is a function taking the Event: {shown(value)}")
    return value


_EVENT_TYPES = frozenset(kind.value for kind in EventType)


def event_types(value: object) -> str:
    """Event type names as stored: a sorted comma list, or ``*`` for every event."""
    if value is None:
        return "*"
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest("event_types must be a list of event type names, or None")
    names = set(value)
    if unknown := sorted(str(name) for name in names - _EVENT_TYPES):
        raise InvalidRequest(f"unknown event types {unknown}: see docs/events.md")
    if not names:
        raise InvalidRequest("a webhook needs at least one event type (None: every event)")
    return ",".join(sorted(names))


def webhook_secret(value: object) -> str:
    """The given HMAC secret (16 to 256 printable ASCII characters), or a new random one."""
    if value is None:
        return "whsec_" + secrets.token_urlsafe(32)
    if not isinstance(value, str) or not 16 <= len(value) <= 256 or not value.isprintable():
        raise InvalidRequest("a webhook secret is 16 to 256 printable characters")
    if not value.isascii():
        raise InvalidRequest("a webhook secret is ASCII")
    return value
