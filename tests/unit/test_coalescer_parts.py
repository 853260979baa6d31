"""The group commit with node affinity: a batch is written part by part (one home node
each), so a part that fails is re-run charge by charge without charging the others
again. A stand-in service, no database: it writes what each call commits."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from balance_ledger import Charge, ChargeCoalescer, StorageError

HOMES = {1: "node-a", 2: "node-a", 3: "node-b"}  # accounts 1 and 2 share a home


class TwoNodeService:
    """charge_many writes each home's part in a transaction of its own, as
    BalanceService does with node affinity; node-a's part fails once."""

    def __init__(self) -> None:
        self.committed: list[int] = []
        self._node_a_down = True
        self._guard = threading.Lock()

    def split_by_home(self, user_ids: list[int]) -> list[list[int]]:
        parts: dict[str, list[int]] = {}
        for position, user_id in enumerate(user_ids):
            parts.setdefault(HOMES[user_id], []).append(position)
        return list(parts.values())

    def charge_many(self, items: list[Charge]) -> list[str]:
        for part in sorted(self.split_by_home([i.user_id for i in items]), key=len):
            users = [items[p].user_id for p in part]
            if HOMES[users[0]] == "node-a" and self._node_a_down:
                self._node_a_down = False
                raise StorageError("node-a: lost connection")
            with self._guard:
                self.committed.extend(users)
        return ["written"] * len(items)

    def charge(self, request: Charge) -> str:
        with self._guard:
            self.committed.append(request.user_id)
        return "written"


def test_a_part_that_fails_is_rerun_alone_and_the_others_are_not_charged_again():
    service = TwoNodeService()
    coalescer = ChargeCoalescer(service, window=1.0, max_batch=3)
    with coalescer, ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda u: coalescer.charge(u, 5, "vps"), (1, 2, 3)))
    assert answers == ["written"] * 3
    assert sorted(service.committed) == [1, 2, 3]  # each charged once
