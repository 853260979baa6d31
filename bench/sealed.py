"""PostgreSQL: write the verify benchmark's ledger rows already sealed, with COPY.

The set-based populate writes rows without ``row_hash`` and leaves them to the
migration-0006 backfill, a row-by-row UPDATE (about 20,000 rows/s, and every row then
exists twice until VACUUM). Here each row's hash is computed in Python with the ledger's
own ``chain.seal`` before the row is written, so the rows are the ones its writers store,
and they are streamed with psycopg's COPY.

A row seals its predecessor's id, so ids are assigned explicitly, in account-then-row
order as the set-based ``INSERT … ORDER BY`` draws them, and the sequence is moved past
them afterwards. ``created_at`` is one aware UTC instant with microseconds, written with
its offset, so the ``timestamptz`` the server keeps reads back as the value hashed.

Hashing runs in worker processes, a block of accounts each; the calling process writes
the blocks in id order through one COPY, so the heap is laid out as the set-based load
lays it out, and at most ``2 * workers`` blocks are in flight.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg

from balance_ledger import BalanceService
from balance_ledger.chain.rules import SEALED_FIELDS, Link, seal

LEDGER = "user_balance_transactions"
SERVICE_TYPE = "bench"
BLOCK_ROWS = 50_000  # ledger rows a worker hashes per task
# The columns each COPY line holds, in order; the other columns are NULL.
COPY_LEDGER = (
    f"COPY {LEDGER} (id, user_id, transaction_type, amount, balance_before, balance_after, "
    "service_type, created_at, row_hash) FROM STDIN{options}"
)
_SEQUENCE = f"pg_get_serial_sequence('{LEDGER}', 'id')"


def _row(user_id: int, created_at: datetime) -> dict[str, Any]:
    """A ledger row's sealed fields as the ledger writes them: every field the bench
    does not set is NULL, ``created_at`` is the aware instant."""
    row: dict[str, Any] = dict.fromkeys(SEALED_FIELDS)
    row.update(user_id=user_id, service_type=SERVICE_TYPE, created_at=created_at)
    return row


def _stamp(created_at: datetime) -> str:
    """COPY's text for ``created_at``: always with microseconds, always with the offset."""
    assert created_at.tzinfo is not None, "a naive instant would take the session's zone"
    return created_at.astimezone(UTC).isoformat(timespec="microseconds")


def ledger_block(task: tuple[int, int, int, int, datetime]) -> bytes:
    """COPY text of accounts first..last, each ``rows_per_user`` sealed rows from genesis.

    Account u's row k (1-based) has id ``(u - 1) * rows_per_user + k``: k = 1 is a
    recharge of ``funds``, every later row a charge of 1 (the set-based populate's rows).
    """
    first, last, rows_per_user, funds, created_at = task
    stamp = _stamp(created_at)
    lines: list[str] = []
    append = lines.append
    for user in range(first, last + 1):
        row = _row(user, created_at)
        row.update(transaction_type="recharge", amount=funds, balance_before=0, balance_after=funds)
        row_id = (user - 1) * rows_per_user + 1
        row_hash = seal(None, row)
        append(f"{row_id}\t{user}\trecharge\t{funds}\t0\t{funds}\t{SERVICE_TYPE}\t{stamp}\t")
        append(f"{row_hash}\n")
        previous = Link(row_id, row_hash)
        row.update(transaction_type="charge", amount=1)
        for before in range(funds, funds - rows_per_user + 1, -1):
            row_id += 1
            row["balance_before"], row["balance_after"] = before, before - 1
            row_hash = seal(previous, row)
            append(
                f"{row_id}\t{user}\tcharge\t1\t{before}\t{before - 1}\t{SERVICE_TYPE}\t{stamp}\t"
                f"{row_hash}\n"
            )
            previous = Link(row_id, row_hash)
    return "".join(lines).encode()


_HEADS = f"""
    SELECT b.user_id, h.id, h.row_hash, h.balance_after
    FROM user_balances b
    CROSS JOIN LATERAL (
        SELECT t.id, t.row_hash, t.balance_after FROM {LEDGER} t
        WHERE t.user_id = b.user_id ORDER BY t.id DESC LIMIT 1
    ) h
    WHERE b.user_id BETWEEN %s AND %s
    ORDER BY b.user_id
"""


def charge_block(task: tuple[str, int, int, int, datetime]) -> bytes:
    """COPY text of one more charge of 1 for each account first..last, sealed onto its head.

    The heads (id, row_hash, balance_after of each account's newest row) are read here,
    in the worker; account ``first`` gets id ``first_id`` and the next ones follow.
    """
    conninfo, first, last, first_id, created_at = task
    stamp = _stamp(created_at)
    with psycopg.connect(conninfo) as conn:
        heads = conn.execute(_HEADS, (first, last)).fetchall()
    assert len(heads) == last - first + 1, f"accounts {first}..{last} must all have rows"
    lines: list[str] = []
    for offset, (user, head_id, head_hash, before) in enumerate(heads):
        assert head_hash is not None, f"account {user}'s head must be sealed"
        row = _row(user, created_at)
        row.update(
            transaction_type="charge", amount=1, balance_before=before, balance_after=before - 1
        )
        row_hash = seal(Link(head_id, head_hash), row)
        lines.append(
            f"{first_id + offset}\t{user}\tcharge\t1\t{before}\t{before - 1}\t{SERVICE_TYPE}\t"
            f"{stamp}\t{row_hash}\n"
        )
    return "".join(lines).encode()


def _in_order(
    function: Callable[[Any], bytes], tasks: Iterable[Any], workers: int
) -> Iterator[bytes]:
    """``function`` over ``tasks`` in worker processes; results in task order, at most
    ``2 * workers`` of them computed ahead of the consumer (the COPY)."""
    # spawn: the workers do not inherit the caller's pooled database connections.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque[Any] = deque()
        for task in tasks:
            pending.append(pool.apply_async(function, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@contextmanager
def _foreign_keys_added_after(conn: psycopg.Connection) -> Iterator[None]:
    """The ledger's foreign keys dropped for the block and added back after it, by name
    and definition as the server prints them, in the caller's transaction.

    Adding a key back checks every row in one join (a fraction of a second per million
    rows) instead of one trigger query per row, which is half the server's COPY time.
    Only for a COPY that no other session reads under: the drop locks the table.
    """
    keys = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
        (LEDGER,),
    ).fetchall()
    for name, _ in keys:
        conn.execute(f'ALTER TABLE {LEDGER} DROP CONSTRAINT "{name}"')
    yield
    for name, definition in keys:
        conn.execute(f'ALTER TABLE {LEDGER} ADD CONSTRAINT "{name}" {definition}')


def _blocks(users: int, per_account: int) -> Iterator[tuple[int, int]]:
    """(first, last) account ids of each task, about BLOCK_ROWS rows each."""
    size = max(1, BLOCK_ROWS // per_account)
    for first in range(1, users + 1, size):
        yield first, min(users, first + size - 1)


def _conninfo(svc: BalanceService) -> str:
    """The service's database as a libpq URL, for psycopg.connect in the workers."""
    url = svc.engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def load(
    svc: BalanceService,
    *,
    users: int,
    rows_per_user: int,
    funds: int,
    created_at: datetime,
    workers: int,
) -> int:
    """Accounts 1..users and their sealed ledger rows, in one transaction; the rows written.

    The ledger is emptied (TRUNCATE) in the same transaction so that COPY can write the
    rows FROZEN, already visible to every snapshot: no later pass rewrites 10M rows' hint
    bits. The foreign key to ``user_balances`` is checked once for all rows, when it is
    added back at the end (``_foreign_keys_added_after``).
    """
    charges = rows_per_user - 1
    raw = svc.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.transaction():
            conn.execute(
                "INSERT INTO user_balances (user_id, currency, balance, total_recharged, "
                "total_spent, credit_limit, status, created_at, updated_at) "
                "SELECT n, 'VND', %(balance)s, %(funds)s, %(charges)s, 0, 'active', %(at)s, %(at)s "
                "FROM generate_series(1, %(users)s) n",
                {
                    "balance": funds - charges,
                    "funds": funds,
                    "charges": charges,
                    "at": created_at,
                    "users": users,
                },
            )
            conn.execute(f"TRUNCATE {LEDGER}")
            tasks = (
                (first, last, rows_per_user, funds, created_at)
                for first, last in _blocks(users, rows_per_user)
            )
            with (
                _foreign_keys_added_after(conn),
                conn.cursor().copy(COPY_LEDGER.format(options=" WITH (FREEZE)")) as copy,
            ):
                for block in _in_order(ledger_block, tasks, workers):
                    copy.write(block)
            total = users * rows_per_user
            conn.execute(f"SELECT setval({_SEQUENCE}, %s)", (total,))
    finally:
        raw.close()
    return total


def add_one_charge_each(
    svc: BalanceService, *, users: int, created_at: datetime, workers: int
) -> int:
    """One more charge of 1 on each of accounts 1..users, sealed onto the account's head,
    and the cache moved to match, in one transaction; the rows written.

    Ids follow the ledger's largest, in account order, and the sequence is moved past them.
    The workers read the heads while the COPY runs, so the foreign key stays in place and
    checks each row, as for every INSERT.
    """
    conninfo = _conninfo(svc)
    raw = svc.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.transaction():
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {LEDGER}").fetchone()
            assert row is not None
            base = int(row[0])
            tasks = (
                (conninfo, first, last, base + first, created_at)
                for first, last in _blocks(users, 1)
            )
            with conn.cursor().copy(COPY_LEDGER.format(options="")) as copy:
                for block in _in_order(charge_block, tasks, workers):
                    copy.write(block)
            conn.execute(
                "UPDATE user_balances SET balance = balance - 1, total_spent = total_spent + 1, "
                "updated_at = %s",
                (created_at,),
            )
            conn.execute(f"SELECT setval({_SEQUENCE}, %s)", (base + users,))
    finally:
        raw.close()
    return users
