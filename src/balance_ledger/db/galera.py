"""What a MariaDB Galera cluster needs that one server does not (dialects.py uses it),
and the lease rows that stand in for a session lock where there is none to share.

* **Detected** per connection: ``@@wsrep_on``.
* **Causal reads**: every session of a Galera node sets ``wsrep_sync_wait = 1``, so a
  read (the locking read of a movement included) first waits until the node has
  applied every write the cluster committed before it. Without it a charge on node 2
  right after a recharge confirmed by node 1 could be refused, and the previous lock
  holder's commit on another node could be unseen.
* **Job locks as lease rows** (``balance_job_locks``): ``GET_LOCK`` is not replicated,
  so two nodes could both hold it. SQLite takes the same path: it has no session lock.
  Two nodes taking one lease at once conflict when their write sets are certified;
  the loser does not hold the job.
* **A transaction aborted by another node's write set** while it opened a table's
  triggers: MariaDB reports 1064 "Unknown trigger has an error in its body" instead of
  a deadlock (measured: 4 of 12 threads racing one account from three nodes). Run
  again, as a deadlock is.
* **An id handed out twice**: while the cluster's membership changes, two nodes may
  give the same auto-increment id (a known Galera hazard; 1062 on a PRIMARY key). The
  transaction is run again, as for a certification failure (1213, which MariaDB
  reports as a deadlock).
* **Small locked chunks**: a transaction that locks many balance rows (a rebuild
  chunk) is aborted whenever another node's write set touches any of them, and is then
  run again from the start: at most LOCKED_ACCOUNTS accounts per such transaction.
* **A node that cannot serve** (outside the cluster's primary component, or still
  joining: error 1047) is ``NodeUnavailable``: use another node.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from .. import clock
from .tables import balance_job_locks as locks

# MariaDB: "WSREP has not yet prepared node for application use" (not in the primary
# component, or not synced yet).
NODE_NOT_READY = 1047
# A certification failure or deadlock, and a key another node's write set took first.
_LOST_THE_RACE = {(1213,), (1062,)}

# Measured on 3 nodes (python -m bench cluster --rebuild): 2,000 accounts rebuilt while 6
# threads charged them from every node took 25.1 s in chunks of 1,000 (each aborted 8
# times, then done account by account), 1.8 s in chunks of 250 (14 aborts), 0.9 s in
# chunks of 100 (6 aborts). The smaller the chunk, the fewer accounts another node's
# writes can abort it on, and the smaller its write set.
LOCKED_ACCOUNTS = 100

_galera: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def causal_reads_on_galera(dbapi_connection: Any, _record: object) -> None:
    """The engine's ``connect`` listener (MariaDB): causal reads on a Galera node."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT @@wsrep_on")
        (on,) = cursor.fetchone()
        if on:
            cursor.execute("SET SESSION wsrep_sync_wait = 1")
    finally:
        cursor.close()


def is_galera(engine: Engine) -> bool:
    """True when ``engine`` talks to a Galera node (asked once per engine)."""
    found = _galera.get(engine)
    if found is None:
        with engine.connect() as conn:
            found = bool(conn.exec_driver_sql("SELECT @@wsrep_on").scalar())
        _galera[engine] = found
    return found


# MariaDB 10.11 under a certification conflict: a transaction the cluster aborts while
# it is opening a table's triggers fails with this parse error instead of 1213.
_ABORTED_IN_TRIGGER = "Unknown trigger has an error in its body"


def is_aborted_by_cluster(args: tuple[object, ...]) -> bool:
    """A transaction another node's write set aborted (brute-force abort) in a way
    MariaDB reports as a syntax error (1064) of a trigger: run it again, as a 1213."""
    return args[0] == 1064 and len(args) > 1 and _ABORTED_IN_TRIGGER in str(args[1])


def is_id_clash(args: tuple[object, ...]) -> bool:
    """A duplicate PRIMARY key (MariaDB 1062): on Galera, an auto-increment id two nodes
    gave at once; elsewhere a row another writer inserted first, which the run decides
    again."""
    return args[0] == 1062 and len(args) > 1 and "for key 'PRIMARY'" in str(args[1])


def is_node_unavailable(error: DBAPIError) -> bool:
    args: tuple[object, ...] = getattr(error.orig, "args", ())
    return bool(args) and args[0] == NODE_NOT_READY


@contextmanager
def lease(engine: Engine, key: str, lasting: timedelta, *, write: dict[str, Any]) -> Iterator[bool]:
    """Hold the lease row ``key`` while the block runs, if nobody holds an unexpired one:
    yields whether it is held. ``write``: the execution options of a write transaction
    (SQLite's begin hook takes the write lock with them). A runner that dies keeps the
    lease until it expires (``lasting``)."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    now = clock.now()
    row = {"holder": holder, "expires_at": now + lasting}
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**write)
            with conn.begin():
                # Locked: a runner of this node waiting here sees the row the first one
                # wrote (SQLite's write transaction has the whole database already).
                mine = locks.c.name == key
                current = conn.execute(select(locks).where(mine).with_for_update()).first()
                held = current is None or current.expires_at <= now
                if current is None:
                    conn.execute(insert(locks).values(name=key, **row))
                elif held:
                    conn.execute(update(locks).where(mine).values(**row))
    except DBAPIError as error:
        args: tuple[object, ...] = getattr(error.orig, "args", ())
        if engine.dialect.name not in ("mysql", "mariadb") or args[:1] not in _LOST_THE_RACE:
            raise
        held = False  # another runner inserted it first, or another node's took it
    try:
        yield held
    finally:
        if held:
            with engine.begin() as conn:
                conn.execute(delete(locks).where(locks.c.name == key, locks.c.holder == holder))
