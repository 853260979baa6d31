"""An account written without a ledger row: opened, or settled again by its policy (a
grace period ending, a new policy) with the status change and alerts it makes
(policy.py). Units of work for BalanceService (service.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from .. import clock, policy
from .. import validation as valid
from ..db import outbox, queries
from ..db.dialects import Backend
from ..errors import AccountExists
from ..models import (
    AccountPolicy,
    AccountStatus,
    Balance,
    StatusChange,
)
from ..outbox import events


def save_settled(
    conn: Connection,
    before: Balance,
    after: Balance,
    now: datetime,
    announced: list[dict[str, Any]],
    **cause: int | None,
) -> StatusChange | None:
    """Write an account settled by its policy (policy.py) without a ledger row, and
    announce ``announced``, then the status change and alerts it made."""
    queries.save_account(conn, after, now)
    change = policy.status_change(before, after, None)
    for row in [*announced, *events.account_changes(before, after, change, now, **cause)]:
        outbox.append_event(conn, row)
    return change


def new_account(
    user_id: int, currency: str, credit_limit: int, rules: AccountPolicy, now: datetime
) -> Balance:
    """A new account's row: no money yet, its alert flags already true of that."""
    empty = Balance(
        user_id=user_id,
        currency=currency,
        balance=0,
        total_recharged=0,
        total_spent=0,
        credit_limit=credit_limit,
        status=AccountStatus.ACTIVE,
        created_at=now,
        updated_at=now,
        policy=rules,
    )
    return policy.resettled(empty, now)


def settle_again(
    conn: Connection, *, user_id: int, now: datetime, new_policy: AccountPolicy | None = None
) -> tuple[Balance | None, StatusChange | None]:
    """Lock the account and settle it with its figures as they are (and a new policy,
    if given): a grace period that ran out suspends it, a new threshold may fire.
    Writes the account and announces the change; (None, None) if there is no account."""
    account = queries.lock_balance(conn, user_id)
    if account is None:
        return None, None
    rules = account.policy
    if new_policy is not None:
        rules = valid.account_policy(new_policy, account.credit_limit)
    after = policy.resettled(dataclasses.replace(account, policy=rules), now)
    return after, save_settled(conn, account, after, now, [])


def open_account(
    conn: Connection,
    backend: Backend,
    *,
    user_id: int,
    currency: str,
    credit_limit: int,
    rules: AccountPolicy,
    policy_given: bool,
) -> Balance:
    """Insert the account if it is absent, then lock it: two racing opens of a new account
    both succeed. AccountExists if it was opened with other settings (or another policy,
    when one is given)."""
    opened = new_account(user_id, currency, credit_limit, rules, clock.now())
    queries.insert_balance(conn, backend, opened)
    account = queries.lock_balance(conn, user_id)
    assert account is not None
    settings = (account.currency, account.credit_limit)
    if settings != (currency, credit_limit) or (policy_given and account.policy != rules):
        raise AccountExists(
            user_id,
            f"currency {account.currency}, credit limit {account.credit_limit}"
            f" and {account.policy}",
        )
    return account
