"""charge_many versus charge_service one by one: charges/s for the same items.

Items are spread over ``--accounts`` accounts (hourly VPS billing); ``--hot`` puts
every item on one account instead.
"""

from __future__ import annotations

import argparse
import os
import time

from balance_ledger import BalanceService, Transaction

from .charges import FUNDS, open_funded_accounts
from .databases import bench_database


def _items(count: int, accounts: int) -> list[dict[str, object]]:
    return [
        {"user_id": n % accounts + 1, "amount": 1, "service_type": "vps", "reference_id": n}
        for n in range(count)
    ]


def run(backend: str, size: int, accounts: int) -> tuple[float, float]:
    """(batch charges/s, one-by-one charges/s) for ``size`` items."""
    with bench_database(backend) as url, BalanceService.from_url(url) as svc:
        open_funded_accounts(svc, accounts)
        items = _items(size, accounts)
        started = time.perf_counter()
        results = svc.charge_many(items)
        batch = size / (time.perf_counter() - started)
        assert all(isinstance(r, Transaction) for r in results)
        started = time.perf_counter()
        for item in items:
            svc.charge_service(**item)  # type: ignore[arg-type]
        single = size / (time.perf_counter() - started)
        assert svc.get_balance(1).balance == FUNDS - 2 * len(items[0::accounts])
    return batch, single


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench batch", description=__doc__)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--hot", action="store_true", help="every item on one account")
    args = parser.parse_args(argv)
    accounts = 1 if args.hot else args.accounts
    print(
        f"{args.backend}: charge_many (independent) vs charge_service per item, one client, "
        f"items over {accounts:,} account(s); {os.cpu_count()} CPUs, server on the same machine"
    )
    print(f"{'items':>8}{'batch charges/s':>18}{'one by one/s':>15}{'speed-up':>10}")
    for size in map(int, args.sizes.split(",")):
        batch, single = run(args.backend, size, accounts)
        print(f"{size:>8,}{batch:>18,.0f}{single:>15,.0f}{batch / single:>9.1f}x", flush=True)
