"""A real ``balance dispatch`` process SIGKILLed while its POST is in flight loses nothing.

The killed process never settles its delivery; when the lease runs out a fresh
dispatcher claims it again and the receiver gets the event a second time, with the
same ``Balance-Event-Id`` (at least once, never lost).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

from balance_ledger import DeliveryStatus
from tests.dispatching import drain
from tests.receiver import receiver

BALANCE = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
LEASE_SECONDS = 2.0
START_SECONDS = 30  # for the subprocess to start and claim the delivery


def wait_for(condition: Callable[[], object], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_dispatcher_killed_with_its_post_in_flight_delivers_after_its_lease(
    database_url, svc, account_factory
):
    with receiver() as target:
        target.delay = 5.0  # far longer than it takes to see the POST arrive and kill
        svc.add_webhook(target.url)
        account_factory(balance=1_000)
        options = ["dispatch", "--lease", str(LEASE_SECONDS), "--interval", "0.05"]
        process = subprocess.Popen(
            [*BALANCE, "--database-url", database_url, *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: target.received or process.poll() is not None, START_SECONDS)
            assert process.poll() is None, process.stderr.read().decode()
        finally:
            process.kill()  # SIGKILL: no handler runs, nothing is settled
            process.wait(timeout=30)
            process.stderr.close()
        killed_at = time.monotonic()
        target.delay = 0.0
        (claimed,) = svc.deliveries()

        drain(svc)  # within the lease: the delivery is still the dead process's
        in_lease = len(target.received)
        time.sleep(max(0.0, killed_at + LEASE_SECONDS + 0.2 - time.monotonic()))
        drain(svc)

    assert process.returncode == -signal.SIGKILL
    assert (claimed.status, claimed.attempts) == (DeliveryStatus.DELIVERING, 1)
    assert in_lease == 1
    (delivery,) = svc.deliveries()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)
    first, again = target.received
    assert first.headers["Balance-Event-Id"] == again.headers["Balance-Event-Id"]
    assert first.body == again.body
    assert first.event["type"] == "balance.recharged"
