"""The database's own reference for a charge: the same rows written with raw SQL.

One charge of ``amount`` to account ``uid`` debits the balance row only if the
account is active and the money is available (the ledger's rule), and appends the
ledger row with balance_before / balance_after taken from the locked row, in one
transaction. The CHECK constraints and the append-only triggers stay in force. The
reference leaves ``row_hash`` NULL: it neither reads the account's chain head nor
computes the SHA-256 link that the ledger's path does.

* PostgreSQL: ``pgbench`` running one statement per charge, a CTE (UPDATE … RETURNING,
  INSERT … SELECT).
* MariaDB has no UPDATE … RETURNING: a stored procedure runs the UPDATE and, if it
  debited the row, an INSERT … SELECT of the updated row; a client sends
  ``START TRANSACTION; CALL …; COMMIT`` as one round trip (PyMySQL, multi-statement,
  one thread per client). Measured cheaper than the same two statements inline.
* SQLite: the sqlite3 module, one connection per thread, ``BEGIN IMMEDIATE``,
  UPDATE … RETURNING, INSERT, COMMIT, with the ledger engine's pragmas.

Batch mode: ``batch_size`` such charges in one transaction (pgbench: BEGIN; the
statement ``batch_size`` times; COMMIT). Spread batches take one random account in
each ``1/batch_size`` of the ids, in ascending order, so that concurrent batches lock
in one order and never deadlock (charge_many sorts its accounts for the same reason).
"""

from __future__ import annotations

import glob
import os
import random
import re
import resource
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import pymysql
from pymysql.constants import CLIENT
from sqlalchemy import make_url

from .measure import Figures, Workload, drive

C = TypeVar("C", pymysql.Connection, sqlite3.Connection)


class _Connections:
    """The connections the client threads open; all closed when the run ends."""

    def __init__(self) -> None:
        self._open: list[pymysql.Connection | sqlite3.Connection] = []
        self._lock = threading.Lock()

    def add(self, conn: C) -> C:
        with self._lock:
            self._open.append(conn)
        return conn

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        for conn in self._open:
            conn.close()


_PG_CHARGE = """\
WITH charged AS (
    UPDATE user_balances
       SET balance = balance - :amount, total_spent = total_spent + :amount, updated_at = now()
     WHERE user_id = :{uid} AND status = 'active' AND balance - held - :amount >= -credit_limit
 RETURNING user_id, balance + :amount AS balance_before, balance AS balance_after
)
INSERT INTO user_balance_transactions
       (user_id, transaction_type, amount, balance_before, balance_after, service_type, created_at)
SELECT user_id, 'charge', CAST(:amount AS bigint), balance_before, balance_after, 'bench', now()
  FROM charged;
"""

MARIADB_PROCEDURE = """\
CREATE PROCEDURE bench_charge(IN p_user BIGINT, IN p_amount BIGINT)
BEGIN
    UPDATE user_balances
       SET balance = balance - p_amount, total_spent = total_spent + p_amount,
           updated_at = UTC_TIMESTAMP(6)
     WHERE user_id = p_user AND status = 'active' AND balance - held - p_amount >= -credit_limit;
    IF ROW_COUNT() = 1 THEN
        INSERT INTO user_balance_transactions
               (user_id, transaction_type, amount, balance_before, balance_after,
                service_type, created_at)
        SELECT user_id, 'charge', p_amount, balance + p_amount, balance, 'bench',
               UTC_TIMESTAMP(6)
          FROM user_balances WHERE user_id = p_user;
    END IF;
END"""

_SQLITE_UPDATE = """\
UPDATE user_balances
   SET balance = balance - :amount, total_spent = total_spent + :amount,
       updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
 WHERE user_id = :uid AND status = 'active' AND balance - held - :amount >= -credit_limit
RETURNING balance + :amount, balance"""

_SQLITE_INSERT = """\
INSERT INTO user_balance_transactions
       (user_id, transaction_type, amount, balance_before, balance_after, service_type, created_at)
VALUES (:uid, 'charge', :amount, :before, :after, 'bench', strftime('%Y-%m-%d %H:%M:%f', 'now'))"""


def describe(backend: str) -> str:
    """One line saying what the reference of ``backend`` runs."""
    return {
        "postgresql": "pgbench -n -M prepared, one CTE statement per charge "
        "(UPDATE … RETURNING + INSERT … SELECT); batch: BEGIN; N × it; COMMIT",
        "mariadb": "PyMySQL threads, one round trip per charge: START TRANSACTION; "
        "CALL bench_charge (UPDATE, then INSERT … SELECT if debited); COMMIT "
        "(no UPDATE … RETURNING; the procedure beat the inline multi-statement)",
        "sqlite": "sqlite3 threads: BEGIN IMMEDIATE; UPDATE … RETURNING; INSERT; COMMIT "
        "(WAL, synchronous=FULL as the ledger's engine)",
    }[backend]


def script(backend: str, accounts: int, batch_size: int) -> str:
    """The reference's SQL for one spread charge, and how a batch repeats it (for the docs)."""
    n = batch_size
    if backend == "postgresql":
        single = Workload("spread", "single", 1, 1, accounts, batch_size)
        return (
            f"{pgbench_script(single)}\n"
            f"-- batch: BEGIN; the statement × {n}, for :uid1 … :uid{n}; COMMIT;\n"
        )
    if backend == "mariadb":
        return (
            f"{MARIADB_PROCEDURE};\n\n"
            "START TRANSACTION; CALL bench_charge(:uid, 1); COMMIT;  -- one round trip\n"
            f"-- batch: START TRANSACTION; CALL bench_charge(:uid, 1) × {n}; COMMIT;\n"
            "--        a round trip each, as pgbench's batch\n"
        )
    return (
        f"BEGIN IMMEDIATE;\n{_SQLITE_UPDATE};\n-- only if the UPDATE returned a row:\n"
        f"{_SQLITE_INSERT};\nCOMMIT;\n-- batch: BEGIN IMMEDIATE; the pair × {n}; COMMIT;\n"
    )


def run(backend: str, url: str, work: Workload) -> Figures:
    if backend == "postgresql":
        return _pgbench(url, work)
    if backend == "mariadb":
        return _mariadb(url, work)
    return _sqlite(url, work)


# -- PostgreSQL: pgbench ---------------------------------------------------------------


def pgbench_script(work: Workload) -> str:
    lines = ["\\set amount 1"]
    if work.mode != "batch":  # single and coalesced: each caller's charge on its own
        uid = "\\set uid 1" if work.workload == "hot" else f"\\set uid random(1, {work.accounts})"
        return "\n".join([*lines, uid, _PG_CHARGE.format(uid="uid")])
    if work.workload == "hot":
        lines.append("\\set uid 1")
        statements = [_PG_CHARGE.format(uid="uid")] * work.batch_size
    else:
        for k, (low, high) in enumerate(work.stripes(), start=1):
            lines.append(f"\\set uid{k} random({low}, {high})")
        statements = [_PG_CHARGE.format(uid=f"uid{k}") for k in range(1, work.batch_size + 1)]
    return "\n".join([*lines, "BEGIN;", *statements, "COMMIT;"])


def find_pgbench() -> str:
    """BALANCE_BENCH_PGBENCH, else the newest server's pgbench, else the one on PATH."""
    if configured := os.environ.get("BALANCE_BENCH_PGBENCH"):
        return configured

    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/", path)
        return int(match.group(1)) if match else 0

    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=version)
    found = installed[-1] if installed else shutil.which("pgbench")
    if found is None:
        raise SystemExit(
            "pgbench not found: install the PostgreSQL server or set BALANCE_BENCH_PGBENCH"
        )
    return found


def _pgbench(url: str, work: Workload) -> Figures:
    parts = make_url(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = str(parts.password)
    # pgbench's -T takes whole seconds.
    seconds = max(1, round(work.seconds))
    with tempfile.TemporaryDirectory(prefix="balance-pgbench-") as folder:
        path = Path(folder) / "charge.sql"
        path.write_text(pgbench_script(work) + "\n")
        command = [
            find_pgbench(),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(work.clients),
            "-j",
            str(min(work.clients, 2)),
            "-T",
            str(seconds),
            "-f",
            str(path),
            "-h",
            parts.host or "127.0.0.1",
            "-p",
            str(parts.port or 5432),
            "-U",
            parts.username or "postgres",
            str(parts.database),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout + done.stderr
    tps = re.search(
        r"^tps = ([\d.]+) \((?:without initial connection time|excluding connections)",
        output,
        re.MULTILINE,
    )
    latency = re.search(r"^latency average = ([\d.]+) ms", output, re.MULTILINE)
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    if done.returncode != 0 or not (tps and latency and processed) or "aborted" in output:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{output[-2000:]}")
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(1)} failed transactions:\n{output[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Figures(
        charges=int(processed.group(1)) * work.per_transaction,
        charges_per_s=float(tps.group(1)) * work.per_transaction,
        avg_ms=float(latency.group(1)),
        client_cpu=100 * cpu / seconds,
    )


# -- MariaDB: PyMySQL threads -----------------------------------------------------------


def _mariadb(url: str, work: Workload) -> Figures:
    parts = make_url(url)
    options: dict[str, Any] = {
        "host": parts.host or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": str(parts.password or ""),
        "database": parts.database,
        "charset": "utf8mb4",
        "autocommit": True,  # the transaction is spelled out in the statements
        "client_flag": CLIENT.MULTI_STATEMENTS,
    }
    setup = pymysql.connect(**options)
    try:
        with setup.cursor() as cursor:
            cursor.execute("DROP PROCEDURE IF EXISTS bench_charge")
            cursor.execute(MARIADB_PROCEDURE)
    finally:
        setup.close()
    connections = _Connections()

    def client(n: int) -> Callable[[], int]:
        conn = connections.add(pymysql.connect(**options))
        cursor = conn.cursor()
        # The ledger's own isolation level (db/dialects.py).
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        rng = random.Random(n)

        def send(sql: str) -> None:
            cursor.execute(sql)
            while cursor.nextset():  # drain the CALL's and COMMIT's results
                pass

        def transaction() -> int:
            uids = work.reference_accounts(rng)
            if work.mode != "batch":
                send(f"START TRANSACTION; CALL bench_charge({uids[0]}, 1); COMMIT")
            else:  # a round trip per statement, as pgbench's batch script
                send("START TRANSACTION")
                for uid in uids:
                    send(f"CALL bench_charge({uid}, 1)")
                send("COMMIT")
            return len(uids)

        return transaction

    with connections:
        return drive(work.clients, work.seconds, client)


# -- SQLite: sqlite3 threads ------------------------------------------------------------


def _sqlite(url: str, work: Workload) -> Figures:
    path = make_url(url).database
    assert path, "bench SQLite databases are files"
    connections = _Connections()

    def client(n: int) -> Callable[[], int]:
        # Autocommit mode: BEGIN IMMEDIATE is sent explicitly, as the ledger's hook does.
        conn = connections.add(
            sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        )
        for pragma in ("foreign_keys = ON", "journal_mode = WAL", "synchronous = FULL"):
            conn.execute(f"PRAGMA {pragma}")
        rng = random.Random(n)

        def transaction() -> int:
            uids = work.reference_accounts(rng)
            conn.execute("BEGIN IMMEDIATE")
            for uid in uids:
                row = conn.execute(_SQLITE_UPDATE, {"uid": uid, "amount": 1}).fetchone()
                if row is not None:
                    values = {"uid": uid, "amount": 1, "before": row[0], "after": row[1]}
                    conn.execute(_SQLITE_INSERT, values)
            conn.execute("COMMIT")
            return len(uids)

        return transaction

    with connections:
        return drive(work.clients, work.seconds, client)
