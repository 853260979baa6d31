"""kill -9 storm: worker processes charging shared accounts are SIGKILLed at random.

Whenever a process dies, money is never lost, created or duplicated: every charge a
worker acknowledged is in the ledger exactly once with the id it was given, the only
rows nobody acknowledged are calls that killed workers had in flight (one each at most),
and the cache still equals the ledger. The storm runs once per backend; each test
checks one property of its outcome.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from balance_ledger import Balance, BalanceService, Discrepancy, SyncReport
from tests.faults.conftest import FaultDatabase
from tests.faults.ledger import (
    Ack,
    LedgerRow,
    charges,
    ledger_rows,
    new_user_ids,
    read_acks,
    recharged,
)

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
STORM_KILLS = 6  # random SIGKILLs of charging workers per storm
STORM_SECONDS = 3.0  # at least; every restart costs a Python start-up on 2 cores
MAX_SECONDS = 30
WAIT_SECONDS = 20  # for a killed or stopped worker to exit; nothing waits unbounded
PLENTY = 10**9
TIGHT = 60  # the second account runs dry mid-storm: refusals under kills


@dataclass
class Incarnation:
    """One worker process; a restarted worker is a new incarnation with a new prefix."""

    prefix: str
    fate: str | None  # "in-transaction:N" / "before-ack:N": it SIGKILLs itself there
    process: subprocess.Popen[bytes]
    ack_file: Path
    stderr_file: Path
    killed_by_storm: bool = False

    @property
    def sigkilled(self) -> bool:
        return self.process.returncode == -signal.SIGKILL

    @property
    def fated_key(self) -> str:
        assert self.fate is not None
        return f"{self.prefix}-{self.fate.partition(':')[2]}"

    def charging(self) -> bool:
        """Past its start-up: it has acknowledged a charge, so a kill lands mid-storm."""
        return self.ack_file.exists() and self.ack_file.stat().st_size > 0


@dataclass
class StormOutcome:
    accounts: list[int]
    incarnations: list[Incarnation]
    rows: list[LedgerRow]
    balances: dict[int, Balance]
    discrepancies: list[Discrepancy]
    report: SyncReport
    acks: list[Ack] = field(init=False)

    def __post_init__(self) -> None:
        self.acks = [ack for inc in self.incarnations for ack in read_acks(inc.ack_file)]

    @property
    def kills(self) -> int:
        return sum(inc.sigkilled for inc in self.incarnations)


class Storm:
    def __init__(self, url: str, accounts: list[int], workdir: Path) -> None:
        self.url = url
        self.accounts = accounts
        self.workdir = workdir
        self.stop_file = workdir / "stop"
        self.rng = random.Random()
        self.incarnations: list[Incarnation] = []

    def spawn(self, fate: str | None) -> None:
        prefix = f"w{len(self.incarnations)}"
        ack_file = self.workdir / f"{prefix}.ack"
        stderr_file = self.workdir / f"{prefix}.stderr"
        command = [sys.executable, "-m", "tests.faults.storm_worker", self.url]
        command += [str(ack_file), str(self.stop_file), "--prefix", prefix]
        command += ["--accounts", ",".join(map(str, self.accounts))]
        command += ["--die", fate] if fate else []
        path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        with stderr_file.open("wb") as stderr:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.incarnations.append(Incarnation(prefix, fate, process, ack_file, stderr_file))

    def random_fate(self) -> str | None:
        moment = self.rng.choice([None, None, None, None, "in-transaction", "before-ack"])
        return f"{moment}:{self.rng.randint(2, 8)}" if moment else None

    def live(self) -> list[Incarnation]:
        return [inc for inc in self.incarnations if inc.process.poll() is None]

    def storm_kills(self) -> int:
        return sum(inc.killed_by_storm for inc in self.incarnations)

    def run(self) -> None:
        """SIGKILL a random charging worker every few hundred ms, and restart it, until
        STORM_KILLS kills and STORM_SECONDS have passed (failing after MAX_SECONDS)."""
        # The first fated workers make sure both exact moments happen in every storm.
        for fate in ("in-transaction:3", "before-ack:3", *[None] * (WORKERS - 2)):
            self.spawn(fate)
        started = time.monotonic()
        while self.storm_kills() < STORM_KILLS or time.monotonic() - started < STORM_SECONDS:
            if time.monotonic() - started > MAX_SECONDS:
                pytest.fail(f"{self.storm_kills()} kills in {MAX_SECONDS} s: workers not charging")
            time.sleep(self.rng.uniform(0.05, 0.3))  # a random moment, not an assertion
            for _ in range(WORKERS - len(self.live())):  # fated deaths: restart them
                self.spawn(self.random_fate())
            victims = [inc for inc in self.live() if inc.fate is None and inc.charging()]
            if victims:
                victim = self.rng.choice(victims)
                victim.process.kill()
                victim.process.wait(WAIT_SECONDS)
                victim.killed_by_storm = True
                self.spawn(self.random_fate())

    def stop(self) -> None:
        """Let the live workers finish their current charge and exit."""
        self.stop_file.touch()
        for inc in self.live():
            try:
                inc.process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {inc.prefix} did not stop within {WAIT_SECONDS} s")

    def kill_leftovers(self) -> None:
        for inc in self.live():
            inc.process.kill()
            inc.process.wait(WAIT_SECONDS)

    def check_exits(self) -> None:
        """Every worker ended by SIGKILL or cleanly; anything else is a crash to report."""
        for inc in self.incarnations:
            if inc.process.returncode not in (0, -signal.SIGKILL):
                pytest.fail(
                    f"worker {inc.prefix} exited with {inc.process.returncode}:\n"
                    + inc.stderr_file.read_text()
                )


@pytest.fixture(scope="module")
def storm(any_db: FaultDatabase, tmp_path_factory: pytest.TempPathFactory) -> StormOutcome:
    plenty, tight = accounts = new_user_ids(2)
    with BalanceService.from_url(any_db.url) as svc:
        for user_id, funds in ((plenty, PLENTY), (tight, TIGHT)):
            svc.open_account(user_id)
            svc.recharge(user_id, funds, idempotency_key=f"opening-{user_id}")

    storm = Storm(any_db.url, accounts, tmp_path_factory.mktemp(f"storm-{any_db.backend}"))
    try:
        storm.run()
        storm.stop()
    finally:
        storm.kill_leftovers()
    storm.check_exits()

    with BalanceService.from_url(any_db.url) as svc:
        # Report only (no fix): a fix would hide exactly what this looks for.
        return StormOutcome(
            accounts=accounts,
            incarnations=storm.incarnations,
            rows=ledger_rows(svc.engine, accounts),
            balances={user_id: svc.get_balance(user_id) for user_id in accounts},
            discrepancies=svc.get_balance_discrepancies(),
            report=svc.verify_and_fix_balance(full=True),
        )


def test_the_storm_killed_workers_while_they_were_charging(storm):
    killed = [inc for inc in storm.incarnations if inc.killed_by_storm]
    assert len(killed) >= STORM_KILLS
    assert all(inc.sigkilled for inc in killed)
    # Restarted workers charged too: more incarnations acknowledged charges than were started.
    assert len({ack.key.partition("-")[0] for ack in storm.acks}) > WORKERS


def test_verify_finds_no_discrepancy_after_the_storm(storm):
    assert storm.discrepancies == []
    assert storm.report.in_sync
    assert storm.report.fixed == 0


def test_every_acknowledged_charge_is_in_the_ledger_exactly_once_with_its_id(storm):
    rows = charges(storm.rows)
    copies = Counter(row.idempotency_key for row in rows)
    by_key = {row.idempotency_key: row for row in rows}

    assert storm.acks
    assert [ack for ack in storm.acks if copies[ack.key] != 1] == []
    written = [by_key[ack.key] for ack in storm.acks]
    assert [(row.id, row.user_id, row.amount) for row in written] == [
        (ack.transaction_id, ack.user_id, ack.amount) for ack in storm.acks
    ]


def test_unacknowledged_charges_are_only_calls_killed_workers_had_in_flight(storm):
    acked = {ack.key for ack in storm.acks}
    unacked = [
        row.idempotency_key for row in charges(storm.rows) if row.idempotency_key not in acked
    ]
    incarnations = {inc.prefix: inc for inc in storm.incarnations}
    last_acked = Counter[str]()
    for ack in storm.acks:
        prefix, _, number = ack.key.partition("-")
        last_acked[prefix] = max(last_acked[prefix], int(number))

    assert len(unacked) <= storm.kills
    in_flight = Counter(key.partition("-")[0] for key in unacked)
    assert all(count == 1 for count in in_flight.values())
    assert all(incarnations[prefix].sigkilled for prefix in in_flight)
    # The one call it had in flight came after everything it acknowledged.
    assert all(int(key.partition("-")[2]) > last_acked[key.partition("-")[0]] for key in unacked)


def test_a_worker_killed_between_its_writes_and_commit_left_nothing(storm):
    deaths = [
        inc
        for inc in storm.incarnations
        if inc.fate and inc.fate.startswith("in-transaction") and inc.sigkilled
    ]
    written = {row.idempotency_key for row in storm.rows}

    assert deaths
    assert [inc.fated_key for inc in deaths if inc.fated_key in written] == []


def test_a_worker_killed_after_commit_before_its_ack_left_its_charge_exactly_once(storm):
    deaths = [
        inc
        for inc in storm.incarnations
        if inc.fate and inc.fate.startswith("before-ack") and inc.sigkilled
    ]
    copies = Counter(row.idempotency_key for row in storm.rows)

    assert deaths
    assert [copies[inc.fated_key] for inc in deaths] == [1] * len(deaths)


def test_balance_is_recharges_minus_charges_and_never_went_negative(storm):
    for user_id in storm.accounts:
        rows = [row for row in storm.rows if row.user_id == user_id]
        spent = sum(row.amount for row in charges(rows))
        balance = storm.balances[user_id]

        assert (balance.balance, balance.total_spent) == (recharged(rows, user_id) - spent, spent)
        assert min(row.balance_after for row in rows) >= 0
