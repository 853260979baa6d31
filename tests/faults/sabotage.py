"""How the fault tests break things: kill server sessions, fail a commit after it happened.

Session kills go through an administrator's connection to the server (never the
service's own pool), and wait until the session is really gone, so the victim's next
round trip fails deterministically.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, text
from sqlalchemy.exc import DBAPIError

GONE_SECONDS = 10  # how long a killed session may take to disappear

# A whole query message whose text is exactly COMMIT (not "READ COMMITTED" in a BEGIN):
# PostgreSQL's simple Query ('Q', int32 length 11), MariaDB's COM_QUERY (length 7, seq 0).
COMMIT_MESSAGES = (b"Q\x00\x00\x00\x0bCOMMIT\x00", b"\x07\x00\x00\x00\x03COMMIT")


def session_id(backend: str, dbapi_connection: Any) -> int:
    """The server's id of a driver connection (PostgreSQL pid, MariaDB thread id)."""
    if backend == "postgresql":
        return int(dbapi_connection.info.backend_pid)
    return int(dbapi_connection.thread_id())


def kill_sessions(admin: Engine, backend: str, sessions: list[int]) -> None:
    """Terminate these server sessions all at once; return when none of them exists."""
    with admin.connect() as conn:
        if backend == "postgresql":
            # One statement signals them all at the same instant (one by one, SQLAlchemy
            # would retire the rest of the pool after the first error, before their turn).
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": sessions},
            )
        else:
            for session in sessions:
                with suppress(DBAPIError):  # 1094: it ended by itself meanwhile
                    conn.execute(text(f"KILL {int(session)}"))
        _wait_until_gone(conn, backend, sessions)


def kill_all_sessions(admin: Engine, backend: str, database: str) -> int:
    """Terminate every session connected to ``database`` but the administrator's."""
    if backend == "postgresql":
        query = "SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
    else:
        query = (
            "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"
        )
    with admin.connect() as conn:
        sessions = list(conn.execute(text(query), {"db": database}).scalars())
    kill_sessions(admin, backend, sessions)
    return len(sessions)


def _wait_until_gone(conn: Connection, backend: str, sessions: list[int]) -> None:
    if not sessions:
        return
    table = (
        "pg_stat_activity WHERE pid"
        if backend == "postgresql"
        else "information_schema.processlist WHERE id"
    )
    query = text(f"SELECT count(*) FROM {table} IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    deadline = time.monotonic() + GONE_SECONDS
    while conn.execute(query, {"ids": sessions}).scalar():
        if time.monotonic() > deadline:
            raise AssertionError(f"sessions {sessions} still exist {GONE_SECONDS} s after the kill")
        time.sleep(0.01)


class OneShot:
    """Armed by a test, fired by the next commit, then harmless."""

    def __init__(self) -> None:
        self._armed = threading.Event()
        self.fired = threading.Event()

    def arm(self) -> None:
        self.fired.clear()
        self._armed.set()

    def take(self) -> bool:
        """True once per arm(): the caller is the one commit to sabotage."""
        if not self._armed.is_set():
            return False
        self._armed.clear()
        self.fired.set()
        return True


def lost_connection_error(engine: Engine) -> Exception:
    """The error each driver raises when the server's answer never comes back."""
    dbapi = engine.dialect.loaded_dbapi
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        return dbapi.OperationalError(2013, "Lost connection to server during query")
    if name == "postgresql":
        return dbapi.OperationalError("consuming input failed: server closed the connection")
    return dbapi.OperationalError("disk I/O error")


@contextmanager
def driver_error_after_commit(engine: Engine) -> Iterator[OneShot]:
    """Once armed, the next COMMIT really commits, then the connection closes and the
    driver raises a lost connection.

    Deterministic on every backend: the error comes from the dialect's ``do_commit``, the
    very place a real lost answer to COMMIT surfaces, after the server made it durable.
    """
    dialect = engine.dialect
    real_commit = dialect.do_commit
    shot = OneShot()

    def do_commit(pooled: Any) -> None:
        real_commit(pooled)
        if shot.take():
            # The driver's connection is gone, as after a real network failure (closing
            # the pool's proxy instead would return it to the pool under SQLAlchemy's feet).
            pooled.dbapi_connection.close()
            raise lost_connection_error(engine)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    try:
        yield shot
    finally:
        del dialect.do_commit


# What the statement of a movement written in one statement starts with (money/post.py:
# post_unchanged, db/unchanged.py; PostgreSQL).
ONE_STATEMENT = "WITH locked AS"


@contextmanager
def driver_error_after_one_statement(engine: Engine) -> Iterator[OneShot]:
    """Once armed, the next movement written in one autocommit statement really commits,
    then the connection closes and the driver raises a lost connection: the lost answer
    of a write that is its own commit."""
    shot = OneShot()

    def lose_the_answer(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if ONE_STATEMENT in statement and shot.take():
            cursor.connection.close()
            raise lost_connection_error(engine)

    event.listen(engine, "after_cursor_execute", lose_the_answer)
    try:
        yield shot
    finally:
        event.remove(engine, "after_cursor_execute", lose_the_answer)


class CommitCuttingProxy:
    """A TCP proxy to a database server that, once armed, lets the next COMMIT through,
    waits for the server's answer (the commit is durable by then), and instead of
    delivering it cuts the client's connection: an ambiguous commit, on a real socket.

    COMMIT is recognised in the client's bytes (both drivers send it as a plain query
    message of its own; TLS must be off). Only the connection that sent it is cut.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.shot = OneShot()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self._closed = threading.Event()
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            commit_sent = threading.Event()
            for pump in (
                threading.Thread(
                    target=self._to_server, args=(client, server, commit_sent), daemon=True
                ),
                threading.Thread(
                    target=self._to_client, args=(server, client, commit_sent), daemon=True
                ),
            ):
                self._threads.append(pump)
                pump.start()

    def _to_server(
        self, client: socket.socket, server: socket.socket, commit_sent: threading.Event
    ) -> None:
        with suppress(OSError):
            while data := client.recv(65536):
                if data.endswith(COMMIT_MESSAGES) and self.shot.take():
                    commit_sent.set()
                server.sendall(data)
        self._cut(client, server)

    def _to_client(
        self, server: socket.socket, client: socket.socket, commit_sent: threading.Event
    ) -> None:
        with suppress(OSError):
            while data := server.recv(65536):
                if commit_sent.is_set():
                    break  # the answer to COMMIT: the server committed; the client never hears
                client.sendall(data)
        self._cut(client, server)

    @staticmethod
    def _cut(*sockets: socket.socket) -> None:
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._threads[0].join(GONE_SECONDS)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                self._cut(sock)
                sock.close()
        for thread in self._threads:
            thread.join(GONE_SECONDS)
