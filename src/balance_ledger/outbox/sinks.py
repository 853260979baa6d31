"""Where a delivery goes: an HTTP POST, a Redis stream, or a callback in this process.

A subscription's URL names its sink by scheme:

- ``http://``, ``https://``: POST the event's JSON, signed (signatures.py); a 2xx takes it.
- ``redis://``, ``rediss://host:port/db?stream=NAME[&maxlen=N]``: ``XADD NAME * id … type …
  payload … signature …``, the same body and signature; taken when XADD returns. redis-py
  is imported only here, and only when needed: the core runs without the ``redis`` extra.
- ``callback:<name>``: call the function ``BalanceService.add_callback`` registered under
  that name in this process; taken when it returns, failed when it raises.

A sink delivers one event and returns None when it was taken, else what went wrong (one
line for the delivery's ``last_error``). The dispatcher (dispatch.py) claims and settles;
it asks ``Sinks.serves`` first, so a process never claims a callback it does not have.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from .. import clock
from ..errors import shown
from ..models import Event
from . import signatures

Callback = Callable[[Event], None]

HTTP_SCHEMES = ("http", "https")
REDIS_SCHEMES = ("redis", "rediss")
CALLBACK_SCHEME = "callback"
REDIS_MISSING = "redis-py is not installed: pip install 'balance-ledger[redis]'"
REDIS_CLIENT_NAME = "balance-ledger-dispatcher"

_ERROR_LIMIT = 1024  # balance_event_deliveries.last_error


class Sink(Protocol):
    def deliver(self, event: Event, url: str, secret: str) -> str | None: ...


def body(event: Event) -> bytes:
    """What every sink sends: the event's JSON, its ``id`` and the payload."""
    return json.dumps({"id": event.id, **event.payload}, ensure_ascii=False).encode()


def failure_text(failure: BaseException) -> str:
    """An exception as a delivery's last_error: its type and message, on one line."""
    return " ".join(f"{type(failure).__name__}: {failure}".split())[:_ERROR_LIMIT]


def callback_url(name: str) -> str:
    return f"{CALLBACK_SCHEME}:{name}"


def callback_name(url: str) -> str | None:
    """The name in a ``callback:<name>`` URL; None for any other URL."""
    scheme, _, name = url.partition(":")
    return name if scheme == CALLBACK_SCHEME else None


class HttpSink:
    """POSTs to the subscription's URL with one shared client (its connection pool)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def deliver(self, event: Event, url: str, secret: str) -> str | None:
        content = body(event)
        headers = {
            "Content-Type": "application/json",
            "Balance-Event-Id": str(event.id),
            "Balance-Event-Type": event.event_type.value,
            signatures.HEADER: signatures.sign(secret, content, int(clock.now().timestamp())),
        }
        try:
            answer = self.client.post(url, content=content, headers=headers)
        except httpx.HTTPError as failure:
            return failure_text(failure)
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code}: {shown(answer.text[:200])}"[:_ERROR_LIMIT]

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True, slots=True)
class RedisStream:
    """A redis:// subscription: the server (a URL for redis-py) and the stream to XADD to."""

    server: str
    stream: str
    maxlen: int | None  # trim the stream to about this many entries (XADD MAXLEN ~)

    @classmethod
    def parse(cls, url: str) -> RedisStream:
        """Raise ValueError saying what is wrong with ``url``."""
        parts = urlsplit(url)
        if parts.scheme not in REDIS_SCHEMES or not parts.hostname:
            raise ValueError("a Redis URL is redis:// or rediss:// with a host")
        if parts.port == 0:  # parts.port raises ValueError for one that is not a number
            raise ValueError("a Redis URL's port is 1 to 65535")
        if not re.fullmatch(r"/?|/[0-9]+", parts.path):
            raise ValueError("a Redis URL's path is the database number (/0)")
        if parts.fragment:
            raise ValueError("a Redis URL has no #fragment")
        query = parse_qs(parts.query, keep_blank_values=True)
        if unknown := sorted(set(query) - {"stream", "maxlen"}):
            raise ValueError(f"unknown parameters {unknown}: a Redis URL takes stream and maxlen")
        streams = query.get("stream", [])
        if len(streams) != 1 or not streams[0]:
            raise ValueError("a Redis URL names one stream: ?stream=NAME")
        return cls(
            server=urlunsplit(parts._replace(query="", fragment="")),
            stream=streams[0],
            maxlen=_maxlen(query.get("maxlen")),
        )


def _maxlen(values: list[str] | None) -> int | None:
    if values is None:
        return None
    if len(values) != 1 or not re.fullmatch(r"[1-9][0-9]{0,17}", values[0]):
        raise ValueError("maxlen is one positive integer")
    return int(values[0])


def redis_installed() -> bool:
    try:
        importlib.import_module("redis")
    except ImportError:
        return False
    return True


class RedisSink:
    """XADDs to streams, with one client per server, made on first use and kept."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[str, Any] = {}

    def deliver(self, event: Event, url: str, secret: str) -> str | None:
        try:
            redis = importlib.import_module("redis")  # here: the extra is optional
        except ImportError:
            return REDIS_MISSING
        target = RedisStream.parse(url)  # validated when subscribed
        content = body(event)
        fields = {
            "id": str(event.id),
            "type": event.event_type.value,
            "payload": content,
            "signature": signatures.sign(secret, content, int(clock.now().timestamp())),
        }
        try:
            self._client(redis, target.server).xadd(
                target.stream, fields, maxlen=target.maxlen, approximate=True
            )
        except redis.RedisError as failure:
            return failure_text(failure)
        return None

    def _client(self, redis: Any, server: str) -> Any:
        if server not in self._clients:
            # No retries inside redis-py: one attempt is one XADD, and the dispatcher's
            # backoff schedules the next (a retried XADD could also add the entry twice).
            self._clients[server] = redis.Redis.from_url(
                server,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                client_name=REDIS_CLIENT_NAME,  # who it is, in CLIENT LIST
            )
        return self._clients[server]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class CallbackSink:
    """Calls the functions registered in this process, by name (a live view: a callback
    added after the dispatcher was made is served from then on)."""

    def __init__(self, callbacks: Mapping[str, Callback]) -> None:
        self.callbacks = callbacks

    def serves(self, url: str) -> bool:
        return callback_name(url) in self.callbacks

    def deliver(self, event: Event, url: str, secret: str) -> str | None:
        callback = self.callbacks.get(callback_name(url) or "")
        if callback is None:
            return f"no callback {shown(callback_name(url))} in this process"
        try:
            callback(event)
        except Exception as failure:  # the callback's bug is a failed attempt, not ours
            return failure_text(failure)
        return None


class Sinks:
    """The sinks of one dispatcher, chosen by each subscription's URL scheme."""

    def __init__(
        self,
        *,
        timeout: float,
        client: httpx.Client | None = None,
        callbacks: Mapping[str, Callback] | None = None,
    ) -> None:
        self.http = HttpSink(client or httpx.Client(timeout=timeout, follow_redirects=False))
        self.redis = RedisSink(timeout)
        self.callbacks = CallbackSink(callbacks if callbacks is not None else {})

    def serves(self, url: str) -> bool:
        """Whether this process can deliver to ``url``: HTTP and Redis anywhere, a callback
        only where it is registered."""
        scheme = urlsplit(url).scheme
        return scheme in HTTP_SCHEMES or scheme in REDIS_SCHEMES or self.callbacks.serves(url)

    def deliver(self, event: Event, url: str, secret: str) -> str | None:
        return self._sink(url).deliver(event, url, secret)

    def _sink(self, url: str) -> Sink:
        scheme = urlsplit(url).scheme
        if scheme in HTTP_SCHEMES:
            return self.http
        if scheme in REDIS_SCHEMES:
            return self.redis
        return self.callbacks

    def close(self) -> None:
        self.http.close()
        self.redis.close()
