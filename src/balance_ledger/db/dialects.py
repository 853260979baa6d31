"""Everything that differs between SQLite, PostgreSQL and MariaDB, in one place.

* How a connection is configured (isolation level, charset, pragmas).
* How a writer takes the account lock. PostgreSQL and MariaDB lock the balance
  row with ``SELECT ... FOR UPDATE`` (the statement lives in queries.py; SQLAlchemy
  drops the clause on SQLite). SQLite has no row locks: a writer opens its
  transaction with ``BEGIN IMMEDIATE``, which takes the database's write lock up
  front, so two writers can never both read a balance and then both debit it.
* Upserts (the verifier's checkpoints) and the cross-host lock a scheduled job
  takes: a PostgreSQL advisory lock, MariaDB ``GET_LOCK``, a lease row on SQLite and
  on a Galera cluster (galera.py, with the rest of what Galera needs).
* Which driver errors mean "the server aborted this transaction, run it again"
  (deadlock, serialization failure, lock timeout, SQLite busy), and which mean
  "the tables are not there".
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    Executable,
    FromClause,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    insert,
    literal,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from ..chain.rules import SEALED_FIELDS
from ..errors import InvalidRequest, shown
from . import galera

# The jobs one runner at a time does (job_lock), and on SQLite how long a runner that
# crashed holding one blocks it: longer than the job's longest healthy run.
JOB_LEASES = {
    "verify-fix": timedelta(hours=6),
    "rebuild": timedelta(hours=6),
    "anchor-chains": timedelta(hours=1),
}

# Execution option a write transaction carries; SQLite's begin hook reads it.
WRITE_OPTION = "balance_ledger_write"
# Execution option: a callable told how long each lock took to acquire, in seconds.
LOCK_WAIT_OPTION = "balance_ledger_lock_wait"

SQLITE_BUSY_TIMEOUT_SECONDS = 30

# PostgreSQL SQLSTATEs that mean the transaction was rolled back and may be retried.
_PG_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock timeout
# MariaDB error numbers: lock wait timeout, deadlock.
_MARIADB_RETRYABLE = {1205, 1213}
_PG_UNDEFINED_TABLE = "42P01"
_PG_ENDED = {"57P01", "57P02"}  # admin shutdown (pg_terminate_backend), crash shutdown
_MARIADB_NO_SUCH_TABLE = 1146
LEDGER_KEY_CONSTRAINT = "uq_user_balance_transactions_user_id_idempotency_key"


@cache
def _drawing_ids(table: Table) -> Select[Any]:
    """PostgreSQL: ``:count`` fresh ids of ``table``, as one array (fetching a thousand
    rows cost more than drawing them); built once."""
    sequence = func.pg_get_serial_sequence(table.name, "id")
    drawn = func.array_agg(func.nextval(sequence))
    return select(drawn).select_from(func.generate_series(1, bindparam("count")))


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" | "postgresql" | "mariadb"
    # An in-memory SQLite database lives in one connection that every thread shares,
    # so its transactions must take turns in Python.
    single_connection: bool = False

    @property
    def writes_one_at_a_time(self) -> bool:
        """True where one write transaction runs at a time (SQLite's write lock)."""
        return self.name == "sqlite"

    @property
    def chains_writes(self) -> bool:
        """True where one statement may insert into one table and update another (a
        data-modifying CTE): PostgreSQL. Saves a round trip per movement."""
        return self.name == "postgresql"

    def ended_by_server(self, error: DBAPIError) -> bool:
        """True when the server ended the session (terminated, or shutting down): whatever
        it was running is committed or rolled back for good, nothing of it runs on."""
        return self.name == "postgresql" and getattr(error.orig, "sqlstate", None) in _PG_ENDED

    @property
    def keys_by_constraint(self) -> bool:
        """True where a write leaves its idempotency keys to the ledger's unique
        constraint instead of reading them first (money/post.py: post, post_many):
        PostgreSQL, whose planner may read a key through the (user_id, id) index, row
        by row, when its statistics lag a hot account (docs/performance.md)."""
        return self.name == "postgresql"

    def is_key_taken(self, error: DBAPIError) -> bool:
        """True when an INSERT met the ledger's unique (user_id, idempotency_key)."""
        if self.name != "postgresql" or getattr(error.orig, "sqlstate", None) != "23505":
            return False
        diag = getattr(error.orig, "diag", None)
        return getattr(diag, "constraint_name", None) == LEDGER_KEY_CONSTRAINT

    def is_lock_busy(self, error: DBAPIError) -> bool:
        """True when a NOWAIT lock found the row locked by another session."""
        return self.name == "postgresql" and getattr(error.orig, "sqlstate", None) == "55P03"

    def commit_without_waiting(self, conn: Connection) -> None:
        """Let this transaction's COMMIT return before its WAL reaches the disk (PostgreSQL's
        ``synchronous_commit = off``, for this transaction only): a crash may lose it
        whole, never part of it. Only for writes the ledger can lose and redo, such as
        verify's checkpoints; nothing happens on the other backends."""
        if self.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")

    @property
    def commits_backfill_pages(self) -> bool:
        """True where a migration's backfill commits page by page: MariaDB, whose DDL
        commits anyway, and where on Galera a whole table would be one write set."""
        return self.name == "mariadb"

    def end_backfill_page(self, conn: Connection) -> None:
        if self.commits_backfill_pages:
            conn.exec_driver_sql("COMMIT")

    def is_retryable(self, error: DBAPIError) -> bool:
        """True when the server aborted the transaction and running it again is safe."""
        original = error.orig
        if self.name == "postgresql":
            return getattr(original, "sqlstate", None) in _PG_RETRYABLE
        if self.name == "mariadb":
            args: tuple[object, ...] = getattr(original, "args", ())
            return bool(args) and (
                args[0] in _MARIADB_RETRYABLE
                or galera.is_id_clash(args)
                or galera.is_aborted_by_cluster(args)
            )
        # SQLite: the busy timeout ran out waiting for another writer.
        return "database is locked" in str(original) or "database is busy" in str(original)

    def insert_if_absent(
        self, conn: Connection, table: Table, row: dict[str, Any], *, key: str
    ) -> None:
        """Insert ``row`` unless a row with the same ``key`` exists (never an error for it)."""
        if self.name == "mariadb":
            # A no-op update, not INSERT IGNORE, which would also swallow CHECK violations.
            stmt: Any = mysql.insert(table).on_duplicate_key_update({key: table.c[key]})
        else:
            dialect_insert = postgresql.insert if self.name == "postgresql" else sqlite.insert
            stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=[key])
        conn.execute(stmt, [row])

    def upsert(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], *, key: str
    ) -> None:
        """Insert ``rows``; where ``key`` exists already, overwrite the other columns."""
        columns = [name for name in rows[0] if name != key]
        if self.name == "postgresql" and len(rows) > 1:
            _upsert_unnested(conn, table, rows, key=key, columns=columns)
            return
        if self.name == "mariadb":
            mariadb_stmt = mysql.insert(table)
            stmt: Any = mariadb_stmt.on_duplicate_key_update(
                {name: mariadb_stmt.inserted[name] for name in columns}
            )
        else:
            dialect_insert = postgresql.insert if self.name == "postgresql" else sqlite.insert
            insert_stmt = dialect_insert(table)
            stmt = insert_stmt.on_conflict_do_update(
                index_elements=[key], set_={name: insert_stmt.excluded[name] for name in columns}
            )
        conn.execute(stmt, rows)

    def reserve_ids(self, conn: Connection, table: Table, count: int) -> list[int] | None:
        """``count`` fresh ids of ``table`` in ascending order, before inserting; None
        where the backend has no sequence to draw them from (MariaDB, SQLite)."""
        if self.name != "postgresql":
            return None
        stmt = _drawing_ids(table)
        return sorted(conn.execute(stmt, {"count": count}).scalar_one() or [])

    def insert_rows(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, all with the same columns of ``table`` (one left out takes its
        default: an id left out comes from its sequence).

        PostgreSQL: binary COPY, at half a microsecond of client CPU per row, where a
        multi-row INSERT spent 8 to 15 (psycopg parses and quotes every parameter of a
        statement too long for its cache). Elsewhere: an executemany.
        """
        if not rows:
            return
        if self.name != "postgresql":
            conn.execute(insert(table), rows)
            return
        columns = [c for c in table.c if c.name in rows[0]]
        names = [c.name for c in columns]
        statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(_copy_types(tuple(columns)))
                for row in rows:
                    copy.write_row([row[c] for c in names])
        except driver.Error as error:  # not through SQLAlchemy: wrap as it would
            disconnected = conn.dialect.is_disconnect(error, driver, None)
            if disconnected:
                conn.invalidate(error)
            raise DBAPIError.instance(
                statement, None, error, driver.Error, connection_invalidated=disconnected
            ) from error

    def row_hash_sql(
        self, rows: FromClause, previous_id: ColumnElement[Any], previous_hash: ColumnElement[Any]
    ) -> ColumnElement[str] | None:
        """The server's own computation of chain.seal over ``rows``, or None (SQLite).

        Byte for byte chain.canonical: PostgreSQL's json_build_array and MariaDB's
        JSON_ARRAY print the same text, which a test checks on both. Where they could
        differ (a control character MariaDB escapes in upper-case hex), the row only
        becomes a suspect that the Python walk then decides.
        """
        c = rows.c
        fields: list[Any] = [literal("v1"), *(c[name] for name in SEALED_FIELDS)]
        at = SEALED_FIELDS.index("created_at") + 1
        genesis = literal("0:" + "0" * 64)
        if self.name == "postgresql":
            fields[at] = func.to_char(
                func.timezone("UTC", c.created_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
            )
            link = func.coalesce(cast(previous_id, Text) + ":" + previous_hash, genesis)
            message = link + "\n" + cast(func.json_build_array(*fields), Text)
            return func.encode(func.sha256(func.convert_to(message, "UTF8")), "hex")
        if self.name == "mariadb":
            fields[at] = func.date_format(c.created_at, "%Y-%m-%dT%H:%i:%s.%fZ")
            link = func.coalesce(func.concat(previous_id, ":", previous_hash), genesis)
            return func.sha2(func.concat(link, "\n", func.json_array(*fields)), 256)
        return None

    @contextmanager
    def job_lock(self, engine: Engine, name: str, lease: timedelta | None = None) -> Iterator[bool]:
        """Try, without waiting, to become the one runner of job ``name`` on any host.

        Yields True while held. PostgreSQL and MariaDB use session locks that the
        server frees if this process dies; SQLite and a Galera cluster (whose
        ``GET_LOCK`` is per node) use a lease row that expires after the job's
        JOB_LEASES (``lease``: another, for a test; galera.py).
        """
        lease = JOB_LEASES[name] if lease is None else lease  # KeyError: not a job
        key = f"balance_ledger:{name}"
        if self.name == "sqlite" or (self.name == "mariadb" and galera.is_galera(engine)):
            with galera.lease(engine, key, lease, write={WRITE_OPTION: True}) as held:
                yield held
            return
        acquire, release = {
            "postgresql": (
                "SELECT pg_try_advisory_lock(hashtext(:key))",
                "SELECT pg_advisory_unlock(hashtext(:key))",
            ),
            # GET_LOCK names are server-wide: the database's name keeps two ledgers on
            # one server apart; hashed, since a lock name may be 64 characters at most.
            "mariadb": (
                f"SELECT GET_LOCK({_MARIADB_LOCK_NAME}, 0)",
                f"SELECT RELEASE_LOCK({_MARIADB_LOCK_NAME})",
            ),
        }[self.name]
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            held = bool(conn.execute(text(acquire), {"key": key}).scalar())
            try:
                yield held
            finally:
                if held:
                    conn.execute(text(release), {"key": key})

    def locked_chunk_size(self, engine: Engine, size: int) -> int:
        """How many accounts one transaction that locks them all (a rebuild chunk) may
        take: ``size``, but fewer on a Galera node (galera.LOCKED_ACCOUNTS)."""
        if self.name == "mariadb" and galera.is_galera(engine):
            return min(size, galera.LOCKED_ACCOUNTS)
        return size

    def is_node_unavailable(self, error: DBAPIError) -> bool:
        """True when a Galera node cannot serve now (galera.py): another node can."""
        return self.name == "mariadb" and galera.is_node_unavailable(error)

    def is_missing_table(self, error: DBAPIError) -> bool:
        original = error.orig
        if self.name == "postgresql":
            return getattr(original, "sqlstate", None) == _PG_UNDEFINED_TABLE
        if self.name == "mariadb":
            args: tuple[object, ...] = getattr(original, "args", ())
            return bool(args) and args[0] == _MARIADB_NO_SUCH_TABLE
        return "no such table" in str(original)


_MARIADB_LOCK_NAME = "CONCAT('balance_ledger:', SHA1(CONCAT(DATABASE(), ':', :key)))"


def _upsert_unnested(
    conn: Connection, table: Table, rows: list[dict[str, Any]], *, key: str, columns: list[str]
) -> None:
    """PostgreSQL: the upsert of many rows as one statement over unnested arrays, not an
    executemany (the verifier writes a checkpoint per account: about 5 s per million)."""
    names = [key, *columns]
    arrays = [
        cast(
            bindparam(f"all_{n}", type_=postgresql.ARRAY(table.c[n].type)),
            postgresql.ARRAY(table.c[n].type),
        )
        for n in names
    ]
    source = func.unnest(*arrays).table_valued(*names).render_derived()
    stmt = postgresql.insert(table).from_select(names, select(*source.c))
    stmt = stmt.on_conflict_do_update(
        index_elements=[key], set_={n: stmt.excluded[n] for n in columns}
    )
    conn.execute(stmt, {f"all_{n}": [row[n] for row in rows] for n in names})


@functools.cache
def _copy_types(columns: tuple[Column[Any], ...]) -> list[str]:
    """The PostgreSQL type name of each column, as psycopg's binary COPY needs them."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return [re.sub(r"\(.*\)", "", c.type.compile(dialect=dialect)).lower() for c in columns]


def backend_of(engine: Engine) -> Backend:
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        return Backend("mariadb")
    if name == "sqlite":
        return Backend(name, single_connection=_is_memory(engine.url))
    if name == "postgresql":
        return Backend(name)
    raise InvalidRequest(f"unsupported database {name!r}: use SQLite, PostgreSQL or MariaDB")


def create_ledger_engine(url: str | URL, **options: Any) -> Engine:
    """An engine configured for the ledger on whichever backend ``url`` names."""
    try:
        return _create_ledger_engine(make_url(url), options)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise InvalidRequest(f"cannot use database URL {shown(str(url))}: {error}") from error


def _create_ledger_engine(url: URL, options: dict[str, Any]) -> Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, options)
    if backend == "postgresql":
        options.setdefault("isolation_level", "READ COMMITTED")
        # No JIT: the verifier's per-chunk statements sit around jit_above_cost, and
        # compiling one cost 8x its run (incremental verify of 1M accounts at 16M rows:
        # 77 s with JIT, 61 s without). No ledger statement is long enough to gain.
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("options", "-c jit=off")
    elif backend in ("mysql", "mariadb"):
        # READ COMMITTED: a plain SELECT after the row lock sees rows committed by the
        # previous lock holder (REPEATABLE READ could keep an older snapshot).
        options.setdefault("isolation_level", "READ COMMITTED")
        if url.query.get("charset", "utf8mb4") != "utf8mb4":
            raise InvalidRequest("MariaDB connections must use charset=utf8mb4")
        url = url.update_query_dict({"charset": "utf8mb4"})
        options.setdefault("pool_recycle", 3600)
        engine = create_engine(url, **options)
        event.listen(engine, "connect", galera.causal_reads_on_galera)
        return engine
    else:
        raise InvalidRequest(f"unsupported database {backend!r}: use sqlite, postgresql or mysql")
    # No pool_pre_ping: transactions.py replaces a connection found dead on its first
    # statement, which costs nothing while connections are alive.
    return create_engine(url, **options)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _sqlite_engine(url: URL, options: dict[str, Any]) -> Engine:
    connect_args = options.setdefault("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_SECONDS)
    connect_args.setdefault("check_same_thread", False)
    if _is_memory(url):
        options.setdefault("poolclass", StaticPool)
        for pool_only in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(pool_only, None)
    engine = create_engine(url, **options)
    prepare_sqlite(engine)
    return engine


def prepare_sqlite(engine: Engine) -> None:
    """Install the connection and BEGIN hooks the ledger's locking relies on (idempotent).

    Also applied to SQLite engines the caller built, which lack them: without
    ``BEGIN IMMEDIATE`` two writers could both read a balance and both debit it.
    """
    if event.contains(engine, "begin", _sqlite_begin):
        return
    if _is_memory(engine.url) and not isinstance(engine.pool, StaticPool):
        raise InvalidRequest(
            "an in-memory SQLite engine must use StaticPool (one shared connection); "
            "BalanceService.from_url('sqlite://') builds one"
        )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    engine.dispose()  # connections opened before the hooks would lack them


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let the begin hook, not the driver, decide when transactions start.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait; a no-op in memory
    cursor.execute("PRAGMA synchronous = FULL")  # a committed charge survives power loss
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    options = connection.get_execution_options()
    if not options.get(WRITE_OPTION, False):
        connection.exec_driver_sql("BEGIN")
        return
    started = time.perf_counter()
    connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits for the database's write lock
    if (observe := options.get(LOCK_WAIT_OPTION)) is not None:
        observe(time.perf_counter() - started)


@contextmanager
def autocommit(conn: Connection) -> Iterator[None]:
    """The driver's connection in autocommit for the block: each statement commits on its
    own. Switched on the psycopg connection itself: SQLAlchemy's isolation-level option
    costs more client CPU than the one statement it is for (PostgreSQL only)."""
    driver = conn.connection.driver_connection
    driver.autocommit = True  # type: ignore[union-attr]
    try:
        yield
    finally:
        if not (driver.closed or driver.broken):  # type: ignore[union-attr]
            driver.autocommit = False  # type: ignore[union-attr]


@contextmanager
def planned_each_run(conn: Connection) -> Iterator[None]:
    """The block's statements planned on each run, for the tables as they are now.

    PostgreSQL: psycopg prepares a statement after five runs, and the server then keeps
    the plan it made for the tables as they were. A lookup by (user_id, idempotency_key)
    planned while the ledger was small read a hot account's key through the (user_id,
    id) index, filtering every row of the account: 2-3 ms per lookup at 20,000-30,000
    rows, and growing, until an ANALYZE made the server plan it again. Elsewhere: as is.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    driver = conn.connection.driver_connection
    kept = driver.prepare_threshold  # type: ignore[union-attr]
    driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        yield
    finally:
        driver.prepare_threshold = kept  # type: ignore[union-attr]


def execute_locking(
    conn: Connection, statement: Executable, params: Mapping[str, Any]
) -> CursorResult[Any]:
    """Run a ``FOR UPDATE`` statement, telling the lock-wait observer how long it took.

    SQLite ignores ``FOR UPDATE``: its wait is at ``BEGIN IMMEDIATE``, timed above.
    """
    observe = conn.get_execution_options().get(LOCK_WAIT_OPTION)
    if observe is None or conn.dialect.name == "sqlite":
        return conn.execute(statement, params)
    started = time.perf_counter()
    result = conn.execute(statement, params)  # the drivers buffer the rows: the wait is in here
    observe(time.perf_counter() - started)
    return result
