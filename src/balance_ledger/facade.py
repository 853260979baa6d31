"""The core every BalanceService method stands on: its database, its callbacks, and the
one way a write is run: ``_run`` (one transaction; the status callbacks after the COMMIT;
a remembered refusal raised once it is kept).

BalanceService (service.py: what a billing app calls) and Operations (operations.py:
what operators and the scheduler run) are this class's methods, by capability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import validation as valid
from .db import queries
from .db.affinity import Nodes
from .db.dialects import create_ledger_engine
from .db.migrate import upgrade_to_head
from .db.replica import Replica, ReplicaStatus
from .db.transactions import Database, Work
from .errors import InvalidRequest
from .models import AccountPolicy, AccountStatus, StatusChange
from .money.rules import Refused
from .money.snapshots import Snapshots
from .outbox import sinks
from .reconcile import Reconciler

log = logging.getLogger("balance_ledger.service")

StatusCallback = Callable[[StatusChange], object]
R = TypeVar("R")
T = TypeVar("T")


class Facade:
    """A ledger database, the status callbacks, and the transaction runner."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
        account_policy: AccountPolicy | None = None,
        one_statement: bool = True,
        replica: Engine | None = None,
        max_replica_lag: float = 10.0,
        other_nodes: list[Engine] | None = None,
    ) -> None:
        """``max_attempts``: how often a transaction the server aborted is run before
        ``RetriesExhausted``. ``account_policy``: what ``open_account`` gives an account
        opened without one (default: the seed's rule, no low-balance alert).
        ``one_statement``: on PostgreSQL, try each single movement in one statement
        first (money/post.py: post_unchanged); False: always under the account's lock.
        ``replica``: a PostgreSQL streaming replica of ``engine`` that the heavy reads go
        to (verify-chain, discrepancies, statements, history pages) while it is at most
        ``max_replica_lag`` seconds behind (0: only while caught up; db/replica.py);
        writes never do. ``other_nodes``: the other nodes of ``engine``'s MariaDB Galera
        cluster; each account's writes then go to one node (db/affinity.py)."""
        self.account_policy = account_policy or AccountPolicy()
        self._db = Database(engine, max_attempts=max_attempts)
        self._reconciler = Reconciler(self._db)
        self._on_suspend: list[StatusCallback] = [on_suspend] if on_suspend else []
        self._on_reactivate: list[StatusCallback] = [on_reactivate] if on_reactivate else []
        self._callbacks: dict[str, sinks.Callback] = {}  # add_callback's, by name
        # What single movements are decided on between writes (money/post.py:
        # post_unchanged); where one statement can write them all: PostgreSQL.
        one_statement = valid.flag(one_statement, "one_statement")
        chains = self._db.backend.chains_writes
        self._snapshots = Snapshots() if one_statement and chains else None
        self._nodes = None
        if other_nodes:
            if self._db.backend.name != "mariadb":
                raise InvalidRequest("node affinity is for the nodes of a MariaDB Galera cluster")
            others = [Database(node, max_attempts=max_attempts) for node in other_nodes]
            self._nodes = Nodes([self._db, *others])
        self._replica = None
        if replica is not None:
            max_lag = valid.seconds(max_replica_lag, "max_replica_lag")
            # A scan the standby cancels (a recovery conflict) is read from the
            # primary at once, not retried on the replica (db/replica.py).
            on_replica = Database(replica, max_attempts=1)
            self._replica = Replica(on_replica, self._db, max_lag=max_lag)

    @property
    def writes_one_at_a_time(self) -> bool:
        """True where the database takes one write transaction at a time (SQLite)."""
        return self._db.backend.writes_one_at_a_time

    @property
    def engine(self) -> Engine:
        """The connection pool, to read with or to hand to tools. Money moves only through
        the methods: they lock, check, retry and announce; a write through the engine does
        none of that (the cache drifts, and only ``verify_and_fix_balance`` says so)."""
        return self._db.engine

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
        account_policy: AccountPolicy | None = None,
        one_statement: bool = True,
        replica_url: str | URL | None = None,
        max_replica_lag: float = 10.0,
        other_nodes: Sequence[str | URL] = (),
        **engine_options: Any,
    ) -> Self:
        """Connect to ``sqlite:///…``, ``postgresql+psycopg://…`` or ``mysql+pymysql://…``
        (and to ``replica_url``, a PostgreSQL streaming replica for the heavy reads; or
        to ``other_nodes``, the other nodes of a MariaDB Galera cluster: from_nodes).

        ``engine_options`` go to SQLAlchemy's ``create_engine`` (``pool_size``, …).
        """
        if other_nodes and replica_url is not None:
            raise InvalidRequest(
                "other_nodes (MariaDB Galera) and replica_url (PostgreSQL) exclude each other"
            )
        nodes = [create_ledger_engine(node, **dict(engine_options)) for node in other_nodes]
        replica = None
        if replica_url is not None:
            # Fail over fast: a replica that does not answer is not waited for, and a
            # session there never writes.
            options = dict(engine_options)
            given = options.get("connect_args", {})
            read_only = "-c jit=off -c default_transaction_read_only=on"
            options["connect_args"] = {
                **given,
                "connect_timeout": 2,
                "options": f"{given['options']} {read_only}" if "options" in given else read_only,
            }
            replica = create_ledger_engine(replica_url, **options)
        return cls(
            create_ledger_engine(url, **engine_options),
            max_attempts=max_attempts,
            on_suspend=on_suspend,
            on_reactivate=on_reactivate,
            account_policy=account_policy,
            one_statement=one_statement,
            replica=replica,
            max_replica_lag=max_replica_lag,
            other_nodes=nodes,
        )

    @classmethod
    def from_nodes(
        cls,
        urls: Sequence[str | URL],
        *,
        max_attempts: int = 8,
        on_suspend: StatusCallback | None = None,
        on_reactivate: StatusCallback | None = None,
        account_policy: AccountPolicy | None = None,
        **engine_options: Any,
    ) -> Self:
        """Connect to every node of a MariaDB Galera cluster (``mysql+pymysql://…``);
        each account's writes go to one of them, its home, and to the next while that
        one fails (db/affinity.py). Everything else goes to the first node."""
        if len(urls) < 2:
            raise InvalidRequest("from_nodes needs the URLs of at least two nodes")
        return cls.from_url(
            urls[0],
            max_attempts=max_attempts,
            on_suspend=on_suspend,
            on_reactivate=on_reactivate,
            account_policy=account_policy,
            other_nodes=urls[1:],
            **engine_options,
        )

    def create_schema(self) -> None:
        """Apply every migration up to the newest (creates the tables if missing)."""
        self._db.run_outside_transaction(upgrade_to_head)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._nodes is not None:
            self._nodes.close()
        if self._replica is not None:
            self._replica.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- callbacks ---------------------------------------------------------------

    def on_suspend(self, callback: StatusCallback) -> StatusCallback:
        """Register ``callback(StatusChange)`` to run after a commit suspends an account."""
        self._on_suspend.append(callback)
        return callback

    def on_reactivate(self, callback: StatusCallback) -> StatusCallback:
        """Register ``callback(StatusChange)`` to run after a commit reactivates an account."""
        self._on_reactivate.append(callback)
        return callback

    def on_lock_wait(self, callback: Callable[[float], object]) -> Callable[[float], object]:
        """Register ``callback(seconds)``, told how long each account lock took to get.

        PostgreSQL and MariaDB: each ``SELECT … FOR UPDATE`` of balance rows. SQLite: each
        write transaction's wait for the database's write lock. Runs on the writing
        thread, inside the transaction: keep it quick (a histogram's observe).
        """
        for db in [self._db] if self._nodes is None else self._nodes.databases:
            db.on_lock_wait(callback)
        return callback

    def replica_status(self) -> ReplicaStatus | None:
        """Where the heavy reads go now: how far behind the replica is, and whether it
        is used (None without a replica)."""
        return None if self._replica is None else self._replica.status()

    def last_heavy_read(self) -> ReplicaStatus | None:
        """Where the calling thread's last heavy read went, and why (None without a
        replica, or before any)."""
        return None if self._replica is None else self._replica.last_read()

    def _heavy_read(self, operation: Callable[[Database], R]) -> R:
        """Run a read-only ``operation`` on the replica while it is usable, else on the
        primary (db/replica.py)."""
        if self._replica is None:
            return operation(self._db)
        return self._replica.read(operation)

    def ping(self) -> None:
        """Raise StorageError (or SchemaMissing) unless the database answers."""
        self._db.read(queries.ping)

    def _write(self, work: Work[T], user_id: int | None = None) -> T:
        """One write transaction; on a cluster with node affinity, on the home node of
        ``user_id`` (the account it writes)."""
        if self._nodes is None or user_id is None:
            return self._db.write(work)
        return self._nodes.write(user_id, lambda db: db.write(work))

    def split_by_home(self, user_ids: list[int]) -> list[list[int]]:
        """The positions of ``user_ids`` split by home node (db/affinity.py): one part
        per node, or all in one part without node affinity. charge_many writes each
        part in transactions of its own."""
        if self._nodes is None:
            return [list(range(len(user_ids)))]
        return self._nodes.by_home(user_ids)

    def _run(
        self, work: Work[tuple[R | Refused, StatusChange | None]], user_id: int | None = None
    ) -> R:
        """Run a unit of work in one transaction (on the home node of ``user_id``: see
        ``_write``); after the commit, tell the callbacks of the status change it made.
        A refusal it remembered under its key is raised now (raising inside would have
        rolled the remembering back)."""
        result, change = self._write(work, user_id)
        if change is not None:
            self._notify(change)
        if isinstance(result, Refused):
            raise result.error
        return result

    def _notify(self, change: StatusChange) -> None:
        suspended = change.new_status is AccountStatus.SUSPENDED
        callbacks = self._on_suspend if suspended else self._on_reactivate
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                # The money already moved and committed; a broken hook must not hide that.
                log.exception("status callback %r failed for account %s", callback, change.user_id)
