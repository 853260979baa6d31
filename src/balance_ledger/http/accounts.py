"""Accounts and their history: open, the balance card, ledger pages, statements, balance at."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from ..models import Scope
from . import bodies
from .deps import READ_FROM_DOCUMENTED, PageSize, Service, UserId, needs, tell_where_read

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


@router.post("", status_code=201, dependencies=needs(Scope.ADMIN))
def open_account(body: bodies.OpenAccount, svc: Service) -> dict[str, Any]:
    """Open an account; opening it again with the same settings returns it unchanged."""
    rules = None if body.policy is None else body.policy.rules()
    card = svc.open_account(
        body.user_id, currency=body.currency, credit_limit=body.credit_limit, policy=rules
    )
    return bodies.balance(card)


@router.put("/{user_id}/policy", dependencies=needs(Scope.ADMIN))
def set_policy(user_id: UserId, body: bodies.Policy, svc: Service) -> dict[str, Any]:
    """Replace the account's alert threshold and suspension rule; applies at once (the
    status it gives, and a balance.low it is now below, are announced)."""
    return bodies.balance(svc.set_account_policy(user_id, body.rules()))


@router.get("/{user_id}", dependencies=needs(Scope.READ))
def get_account(user_id: UserId, svc: Service) -> dict[str, Any]:
    """The balance card: balance, totals, status, credit limit, held, available."""
    return bodies.balance(svc.get_balance(user_id))


@router.get(
    "/{user_id}/transactions", dependencies=needs(Scope.READ), responses=READ_FROM_DOCUMENTED
)
def transactions(
    user_id: UserId,
    svc: Service,
    response: Response,
    limit: Annotated[int, PageSize] = 50,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> bodies.TransactionPage:
    """Ledger rows newest first; follow ``next_before_id`` for older ones."""
    rows = svc.get_transactions(user_id, limit=limit, before_id=before_id)
    tell_where_read(svc, response)
    following = rows[-1].id if len(rows) == limit else None
    return bodies.TransactionPage(
        transactions=[bodies.transaction(r) for r in rows], next_before_id=following
    )


@router.get("/{user_id}/statement", dependencies=needs(Scope.READ), responses=READ_FROM_DOCUMENTED)
def statement(
    user_id: UserId,
    svc: Service,
    response: Response,
    start: Annotated[datetime, Query(alias="from", description="Inclusive, with a UTC offset.")],
    end: Annotated[datetime, Query(alias="to", description="Exclusive, with a UTC offset.")],
) -> dict[str, Any]:
    """Opening balance, every movement in [from, to), closing balance, totals per type.

    Computed from the ledger alone, never from the cached balance.
    """
    period = svc.statement(user_id, start, end)
    tell_where_read(svc, response)
    return {
        "user_id": period.user_id,
        "currency": period.currency,
        "from": period.start,
        "to": period.end,
        "opening_balance": period.opening_balance,
        "closing_balance": period.closing_balance,
        "totals": period.totals,
        "transactions": [bodies.transaction(r) for r in period.transactions],
    }


@router.get("/{user_id}/balance", dependencies=needs(Scope.READ))
def balance_at(
    user_id: UserId,
    svc: Service,
    at: Annotated[datetime, Query(description="An instant with a UTC offset.")],
) -> dict[str, Any]:
    """The balance after every movement written at or before ``at``, from the ledger."""
    amount = svc.balance_at(user_id, at)
    currency = svc.get_balance(user_id).currency  # an amount is never sent without it
    return {"user_id": user_id, "currency": currency, "at": at, "balance": amount}
