"""The defect that made a refusal an idempotency key's answer, reproduced with real workers.

Two ``balance serve`` processes share one database, as two workers (or hosts) behind a
load balancer. The client's first keyed charge reaches worker A, which is stalled
(SIGSTOP: in production a long GC pause, a pool wait, a slow network). The client gives
up on it and retries the same key on worker B: 402. The account is recharged. Worker A
resumes and handles the first attempt: it must answer the same 402 (replayed) and
charge nothing, or the client was told "refused" for a charge that went through.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.http.test_serve import serve_process

WAIT = 30.0
CHARGE = {"amount": 500, "service_type": "vps"}


@pytest.mark.race
def test_a_stalled_workers_late_first_attempt_replays_the_refusal(database_url: str):
    with serve_process(database_url) as a, serve_process(database_url) as b:
        at_a = {"Authorization": f"Bearer {a.secret}", "Idempotency-Key": "K1"}
        at_b = {"Authorization": f"Bearer {b.secret}"}
        opened = httpx.post(f"{b.base}/v1/accounts", json={"user_id": 7}, headers=at_b)
        assert opened.status_code == 201  # balance 0

        late: list[httpx.Response | Exception] = []

        def first_attempt() -> None:
            try:
                answer = httpx.post(
                    f"{a.base}/v1/accounts/7/charges", json=CHARGE, headers=at_a, timeout=WAIT
                )
                late.append(answer)
            except Exception as error:  # reported by the assertion below
                late.append(error)

        a.process.send_signal(signal.SIGSTOP)
        sender = threading.Thread(target=first_attempt, name="first-attempt")
        try:
            sender.start()
            time.sleep(1.0)  # the client's timeout: it stops waiting for worker A
            retry = httpx.post(
                f"{b.base}/v1/accounts/7/charges",
                json=CHARGE,
                headers={**at_b, "Idempotency-Key": "K1"},
                timeout=WAIT,
            )
            assert retry.status_code == 402, retry.text
            recharged = httpx.post(
                f"{b.base}/v1/accounts/7/recharges", json={"amount": 1_000}, headers=at_b
            )
            assert recharged.status_code == 201
            assert late == [], "worker A answered while stopped"
        finally:
            a.process.send_signal(signal.SIGCONT)
            sender.join(WAIT)
        assert not sender.is_alive()
        (answer,) = late
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 402, answer.text
        assert answer.headers["Idempotent-Replayed"] == "true"
        fields = ("code", "detail", "amount", "available", "user_id")
        assert {k: answer.json()[k] for k in fields} == {k: retry.json()[k] for k in fields}
        account = httpx.get(f"{b.base}/v1/accounts/7", headers=at_b).json()
        assert account["balance"] == 1_000
        rows = httpx.get(f"{b.base}/v1/accounts/7/transactions", headers=at_b).json()
        assert [row["transaction_type"] for row in rows["transactions"]] == ["recharge"]
