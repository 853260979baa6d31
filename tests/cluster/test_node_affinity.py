"""Node affinity on the Galera cluster (db/affinity.py): every write of an account on
its home node, batches and the group commit split by home, failover, no certification
conflict on a hot account raced from three services.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from balance_ledger import BalanceService, Charge, ChargeCoalescer, RetriesExhausted
from tests.cluster.galera_nodes import fresh_account, ledger_inserts, urls

__all__ = ["urls"]  # a fixture


def test_with_node_affinity_each_account_is_written_by_one_node(urls):
    with BalanceService.from_nodes(urls) as svc:
        accounts = [fresh_account(svc) for _ in range(12)]
        with ledger_inserts() as sent:
            for user_id in accounts:
                svc.recharge(user_id, 100)
                for _ in range(3):
                    svc.charge_service(user_id, 10, "vps")
    ports_of = {user_id: {port for port, user in sent if user == user_id} for user_id in accounts}
    assert all(len(ports) == 1 for ports in ports_of.values()), ports_of
    assert len(set().union(*ports_of.values())) > 1  # the accounts' homes are spread


def test_with_node_affinity_a_batch_is_written_part_by_part_on_each_home(urls):
    with BalanceService.from_nodes(urls) as svc:
        accounts = [fresh_account(svc) for _ in range(12)]
        for user_id in accounts:
            svc.recharge(user_id, 100)
        items = [Charge(user_id, 10, "vps") for user_id in accounts for _ in range(2)]
        with ledger_inserts() as sent:
            results = svc.charge_many(items)
            # The HTTP service's group commit goes through charge_many too.
            with (
                ChargeCoalescer(svc, window=0.05) as coalescer,
                ThreadPoolExecutor(len(accounts)) as pool,
            ):
                list(pool.map(lambda u: coalescer.charge(u, 10, "vps"), accounts))
        assert [r.balance_after for r in results] == [90, 80] * len(accounts)
        assert all(svc.get_balance(user_id).balance == 70 for user_id in accounts)
    ports_of = {user_id: {port for port, user in sent if user == user_id} for user_id in accounts}
    assert all(len(ports) == 1 for ports in ports_of.values()), ports_of
    assert len(set().union(*ports_of.values())) > 1


def test_with_node_affinity_a_node_that_fails_leaves_its_accounts_to_the_next(urls):
    dead = "mysql+pymysql://root@127.0.0.1:1/unused"
    with BalanceService.from_nodes([urls[0], dead, urls[2]]) as svc:
        accounts = [fresh_account(svc) for _ in range(12)]
        for user_id in accounts:
            svc.recharge(user_id, 100)
            assert svc.charge_service(user_id, 30, "vps").balance_after == 70


def test_with_node_affinity_a_hot_account_raced_from_three_services_never_conflicts(urls):
    """The same race as above, but every service sends an account's writes to its home
    node: no certification conflict, so no RetriesExhausted at all."""
    services = [BalanceService.from_nodes(urls) for _ in range(3)]
    hot = fresh_account(services[0])
    services[0].recharge(hot, 10**6)
    exhausted: list[BaseException] = []
    stop = time.monotonic() + 4

    def client(svc: BalanceService) -> None:
        while time.monotonic() < stop:
            try:
                svc.charge_service(hot, 1, "vps")
            except RetriesExhausted as error:
                exhausted.append(error)

    threads = [threading.Thread(target=client, args=(svc,)) for svc in services for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert exhausted == []
        assert services[0].verify_and_fix_balance(hot).in_sync
    finally:
        for svc in services:
            svc.close()


def test_the_cli_and_the_http_service_write_each_account_on_its_home_node(urls, monkeypatch):
    from fastapi.testclient import TestClient

    from balance_ledger.cli import main
    from balance_ledger.http.app import app_from_environment

    with BalanceService.from_nodes(urls) as svc:
        accounts = [fresh_account(svc) for _ in range(6)]
        for user_id in accounts:
            svc.recharge(user_id, 1_000)
        _, secret = svc.create_api_key("affinity", ["charge"])
    others = [arg for url in urls[1:] for arg in ("--other-node", url)]
    with ledger_inserts() as sent:
        for user_id in accounts:
            with pytest.raises(SystemExit) as exited:
                main(["--database-url", urls[0], *others, "charge", str(user_id), "5", "vps"])
            assert exited.value.code == 0
        monkeypatch.setenv("BALANCE_DATABASE_URL", urls[0])
        monkeypatch.setenv("BALANCE_OTHER_NODES", " ".join(urls[1:]))
        with TestClient(app_from_environment()) as http:
            for user_id in accounts:
                answer = http.post(
                    f"/v1/accounts/{user_id}/charges",
                    json={"amount": 5, "service_type": "vps"},
                    headers={"Authorization": f"Bearer {secret}"},
                )
                assert answer.status_code == 201, answer.text
    ports_of = {user_id: {port for port, user in sent if user == user_id} for user_id in accounts}
    assert all(len(ports) == 1 for ports in ports_of.values()), ports_of
    assert len(set().union(*ports_of.values())) > 1
