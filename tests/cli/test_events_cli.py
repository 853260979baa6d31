"""balance events tail: the outbox, oldest first, as text or NDJSON, and followed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.receiver import receiver


def test_tail_prints_every_event_in_order(balance, svc):
    svc.open_account(7)
    svc.recharge(7, 1_000)
    svc.charge_service(7, 300, "vps")

    code, out, err = balance("events", "tail")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[3] for line in lines] == ["balance.recharged", "balance.charged"]
    assert "amount=300" in lines[1]


def test_tail_json_is_one_object_per_line_after_an_id(balance, svc):
    svc.open_account(7)
    svc.open_account(8)
    first = svc.recharge(7, 1_000)
    svc.recharge(8, 5)
    svc.charge_service(7, 300, "vps")
    (recharged, *_) = svc.events()

    code, out, _ = balance(
        "events", "tail", "--json", "--user-id", "7", "--after-id", str(recharged.id)
    )

    assert code == 0
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert (line["type"], line["amount"], line["user_id"]) == ("balance.charged", 300, 7)
    assert line["balance_before"] == first.balance_after


def test_tail_follow_prints_events_written_after_it_started(database_url, svc):
    svc.open_account(7)
    command = [sys.executable, "-c", "from balance_ledger.cli import main; main()"]
    tail = ["events", "tail", "-f", "--json", "--interval", "0.1"]
    follower = subprocess.Popen(
        [*command, "--database-url", database_url, *tail],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        svc.recharge(7, 250)
        line = json.loads(follower.stdout.readline())
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        follower.stdout.close()

    assert (line["type"], line["amount"]) == ("balance.recharged", 250)


def test_webhook_add_list_remove(balance, svc):
    code, out, _ = balance("webhook", "add", "https://example.com/hook", "--events", "hold.voided")
    assert code == 0
    assert "whsec_" in out

    code, out, _ = balance("webhook", "list")
    assert (code, "https://example.com/hook" in out, "hold.voided" in out) == (0, True, True)
    assert "whsec_" not in out

    (hook,) = svc.list_webhooks()
    assert balance("webhook", "remove", str(hook.id))[0] == 0
    assert svc.list_webhooks()[0].removed_at is not None
    assert balance("webhook", "remove", "999")[0] == 1


def test_dispatch_once_delivers_and_retry_revives_a_dead_delivery(balance, svc):
    with receiver() as target:
        svc.add_webhook(target.url)
        svc.open_account(7)
        svc.recharge(7, 100)
        target.failures_left = 1

        code, out, _ = balance("dispatch", "--once", "--max-attempts", "1")
        assert (code, "dead 1" in out) == (0, True)
        (dead,) = svc.deliveries()
        code, out, _ = balance("events", "retry", str(dead.event_id))
        assert (code, "1 dead deliveries" in out) == (0, True)
        code, out, _ = balance("dispatch", "--once")

    assert (code, "delivered 1" in out) == (0, True)
    assert len(target.received) == 2
