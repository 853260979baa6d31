"""What a configuration runs, and the timing harness every client loop shares."""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """What each client does: which accounts, how many charges per transaction, how long."""

    workload: str  # hot: one account for everyone | spread: random among ``accounts``
    # single: a transaction per charge | batch: ``batch_size`` per transaction |
    # coalesced: a charge per call, merged into transactions of up to ``batch_size``
    mode: str
    clients: int
    seconds: float
    accounts: int
    batch_size: int
    keyed: bool = False  # every charge with its own idempotency key, as HTTP clients send

    @property
    def per_transaction(self) -> int:
        return self.batch_size if self.mode == "batch" else 1

    def stripes(self) -> list[tuple[int, int]]:
        """The id range each charge of a spread reference batch draws from, ascending."""
        n, size = self.accounts, self.batch_size
        return [(k * n // size + 1, (k + 1) * n // size) for k in range(size)]

    def reference_accounts(self, rng: random.Random) -> list[int]:
        """The accounts of one reference transaction, in lock order.

        A spread batch takes one random account per stripe: ascending, so concurrent
        reference batches lock in one order and never deadlock, as charge_many's do.
        """
        if self.workload == "hot":
            return [1] * self.per_transaction
        if self.mode != "batch":
            return [rng.randint(1, self.accounts)]
        return [rng.randint(low, high) for low, high in self.stripes()]


@dataclass(frozen=True)
class Figures:
    """One side of a measurement. Latencies are per transaction (a batch call in batch mode)."""

    charges: int
    charges_per_s: float
    avg_ms: float
    client_cpu: float  # % of one CPU used by the client process(es)
    p50_ms: float | None = None
    p99_ms: float | None = None


# A client: built in its own thread (so it can open its connection there), it returns
# the function that runs one transaction and says how many charges it made.
Client = Callable[[int], Callable[[], int]]


def drive(clients: int, seconds: float, make_client: Client) -> Figures:
    """Run ``clients`` threads for ``seconds`` once all are connected; time every transaction."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    counts = [0] * clients
    errors: list[BaseException] = []
    ready = threading.Barrier(clients + 1)
    go = threading.Event()  # set once the deadline is: connecting is not timed
    deadline = 0.0

    def client(n: int) -> None:
        try:
            transaction = make_client(n)
        except BaseException as error:  # reported after the join
            errors.append(error)
            ready.abort()
            return
        mine = latencies[n]
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        go.wait()
        try:
            while (started := time.perf_counter()) < deadline:
                counts[n] += transaction()
                mine.append(time.perf_counter() - started)
        except BaseException as error:  # reported after the join
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: raised below
        ready.wait()
    cpu_before, wall_before = os.times(), time.perf_counter()
    deadline = wall_before + seconds
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall_before
    cpu_after = os.times()
    if errors:
        raise errors[0]
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    merged = sorted(latency for per_client in latencies for latency in per_client)
    quantiles = statistics.quantiles(merged, n=100) if len(merged) > 1 else merged * 99
    return Figures(
        charges=sum(counts),
        charges_per_s=sum(counts) / wall,
        avg_ms=1000 * statistics.fmean(merged),
        client_cpu=100 * cpu / wall,
        p50_ms=1000 * quantiles[49],
        p99_ms=1000 * quantiles[98],
    )
