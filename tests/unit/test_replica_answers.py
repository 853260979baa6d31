"""When the read replica is asked how far behind it is, and when its last answer is
reused (db/replica.py). The answers are stand-ins and the engines never connect: no
database here (tests/cluster/test_pg_replica.py runs against a real replica)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine

from balance_ledger import StorageError
from balance_ledger.db import replica as replica_module
from balance_ledger.db.replica import Replica, ReplicaStatus
from balance_ledger.db.transactions import Database

URL = "postgresql+psycopg://nobody@127.0.0.1:1/{}"


class Asked:
    """A Replica whose questions are counted and answered with ``answer``."""

    def __init__(self, max_lag: float, answer: tuple[bool, float | None], pause: float = 0):
        self.on_replica = Database(create_engine(URL.format("replica")))
        self.on_primary = Database(create_engine(URL.format("primary")))
        self.replica = Replica(self.on_replica, self.on_primary, max_lag=max_lag)
        self.count = 0
        used, lag = answer

        def ask() -> ReplicaStatus:
            self.count += 1
            time.sleep(pause)
            return ReplicaStatus("replica", used, lag, max_lag, "stand-in")

        self.replica._ask = ask  # type: ignore[method-assign]

    def read(self) -> Database:
        return self.replica.read(lambda db: db)


@pytest.fixture(autouse=True)
def kept_long(monkeypatch) -> None:
    monkeypatch.setattr(replica_module, "RECHECK_SECONDS", 60.0)


def test_a_usable_answer_is_reused_within_the_bound():
    asked = Asked(max_lag=10, answer=(True, 0.0))
    assert {asked.read() for _ in range(5)} == {asked.on_replica}
    assert asked.count == 1


def test_a_reused_answer_reports_its_age_as_lag():
    asked = Asked(max_lag=10, answer=(True, 2.0))
    asked.read()
    time.sleep(0.05)
    asked.read()
    status = asked.replica.last_read()
    assert status.lag_seconds >= 2.05
    assert status.reason.startswith("at most 2.")


def test_an_answer_is_not_reused_once_its_age_would_pass_the_bound():
    asked = Asked(max_lag=2.02, answer=(True, 2.0))
    asked.read()
    time.sleep(0.05)
    asked.read()
    assert asked.count == 2


def test_with_a_bound_of_zero_a_usable_answer_is_never_reused():
    asked = Asked(max_lag=0, answer=(True, 0.0))
    for _ in range(5):
        asked.read()
    assert asked.count == 5


def test_an_answer_that_sends_reads_to_the_primary_is_reused():
    asked = Asked(max_lag=0, answer=(False, None))
    assert {asked.read() for _ in range(5)} == {asked.on_primary}
    assert asked.count == 1


def test_every_answer_is_asked_again_once_old(monkeypatch):
    monkeypatch.setattr(replica_module, "RECHECK_SECONDS", 0.0)
    asked = Asked(max_lag=10, answer=(True, 0.0))
    for _ in range(3):
        asked.read()
    assert asked.count == 3


def test_threads_that_find_the_answer_old_wait_for_one_of_them_to_ask():
    asked = Asked(max_lag=10, answer=(True, 0.0), pause=0.2)
    threads = [threading.Thread(target=asked.read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert asked.count == 1


def test_a_replica_that_fails_a_read_midway_is_left_alone_until_asked_again():
    asked = Asked(max_lag=10, answer=(True, 0.0))
    went: list[Database] = []

    def read(db: Database) -> None:
        went.append(db)
        if db is asked.on_replica:
            raise StorageError("database error: the replica went away")

    asked.replica.read(read)
    asked.replica.read(read)
    assert went == [asked.on_replica, asked.on_primary, asked.on_primary]
    assert asked.replica.last_read().reason.startswith("failed midway")
    assert asked.count == 1
