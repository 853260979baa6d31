"""A charging client for the kill -9 storm (test_kill9_storm.py), one process:

    python -m tests.faults.storm_worker URL ACK_FILE STOP_FILE --accounts 3,4 --prefix w7

Charges the accounts at random with keys PREFIX-1, PREFIX-2, … until STOP_FILE exists.
Only after a charge returns does it append "key transaction_id user_id amount" to
ACK_FILE and fsync it, so every line is a charge its caller was told about.

``--die in-transaction:N`` SIGKILLs the process during charge N after the balance UPDATE
(both writes done, COMMIT not sent): a moment of the locked path, which that worker
uses (``one_statement=False``; every other worker writes a charge in one statement
when it can); ``--die before-ack:N`` right after charge N returned (committed, not
acknowledged). Random kills rarely land on exactly those moments.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from balance_ledger import BalanceService, InsufficientBalance, StorageError
from tests.faults.ledger import Ack

STORAGE_RETRIES = 5  # a survivor should never need them; more is a failure
LIFETIME_SECONDS = 60  # never outlive a storm, even one whose pytest was killed


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("ack_file", type=Path)
    parser.add_argument("stop_file", type=Path)
    parser.add_argument("--accounts", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--die", default=None)
    args = parser.parse_args()
    accounts = [int(user_id) for user_id in args.accounts.split(",")]
    fate, _, fated_charge = (args.die or "").partition(":")
    fated = int(fated_charge) if fated_charge else 0

    one_statement = fate != "in-transaction"
    svc = BalanceService.from_url(
        args.url, pool_size=1, max_overflow=0, one_statement=one_statement
    )
    charge_number = 0

    def after_cursor_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if (
            fate == "in-transaction"
            and charge_number == fated
            and "UPDATE user_balances " in statement  # on PostgreSQL, inside the INSERT's CTE
        ):
            die()

    event.listen(svc.engine, "after_cursor_execute", after_cursor_execute)
    ack = os.open(args.ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    parent, give_up_at = os.getppid(), time.monotonic() + LIFETIME_SECONDS
    while not args.stop_file.exists() and os.getppid() == parent and time.monotonic() < give_up_at:
        charge_number += 1
        key = f"{args.prefix}-{charge_number}"
        # A fated charge goes to the first account, which never runs dry: it is not refused.
        user_id = accounts[0] if charge_number == fated else random.choice(accounts)
        amount = random.randint(1, 9)
        for attempt in range(1, STORAGE_RETRIES + 1):
            try:
                tx = svc.charge_service(user_id, amount, "vps", idempotency_key=key)
            except InsufficientBalance:
                break  # refused: nothing written, nothing to acknowledge
            except StorageError:
                if attempt == STORAGE_RETRIES:
                    raise
                time.sleep(0.05)  # the same key again: a replay if it did commit
            else:
                if fate == "before-ack" and charge_number == fated:
                    die()
                # One write() per line, then fsync: the ack survives our own SIGKILL.
                os.write(ack, Ack(key, tx.id, user_id, amount).line().encode())
                os.fsync(ack)
                break
    os.close(ack)
    svc.close()


if __name__ == "__main__":
    main()
